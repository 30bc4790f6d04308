//! Typed errors of the Linode client.
//!
//! No variant ever holds the API token: errors carry the endpoint *template*, the HTTP status,
//! Linode's `reason`/`field` entries (with any echo of the token scrubbed), or the underlying
//! transport/decode error, none of which contain request headers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Result type of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One entry of Linode's error body `{"errors": [{"reason": .., "field": ..}]}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiErrorEntry {
    /// What went wrong, in Linode's words.
    #[serde(default, deserialize_with = "crate::de::null_default")]
    pub reason: String,
    /// The request field the error is about, when Linode names one (may be a dotted path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl fmt::Display for ApiErrorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} (field `{field}`)", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Why the API token could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenProblem {
    /// The token file does not exist.
    #[error("file not found (is the Secret mounted?)")]
    Missing,
    /// The token file exists but could not be read.
    #[error("cannot read file: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The token is empty or only whitespace.
    #[error("token is empty")]
    Empty,
    /// The token contains characters that cannot go into an HTTP header (e.g. an inner newline).
    #[error("token contains characters not allowed in an HTTP header")]
    InvalidCharacters,
}

/// Everything a Linode API call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Linode answered with a non-success status (4xx other than an exhausted 429, or 5xx after
    /// the retries ran out).
    #[error(
        "Linode API {method} {endpoint} returned HTTP {status}: {}",
        DisplayEntries(errors)
    )]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Path template, e.g. `/linode/instances/{linodeId}/ips`.
        endpoint: &'static str,
        /// HTTP status code.
        status: u16,
        /// Linode's error entries (empty when the body was not Linode's error format).
        errors: Vec<ApiErrorEntry>,
    },
    /// Linode kept answering 429 until the retries ran out.
    #[error(
        "Linode API {method} {endpoint} is rate limited (HTTP 429){}",
        DisplayRetryAfter(*retry_after)
    )]
    RateLimited {
        /// HTTP method.
        method: &'static str,
        /// Path template.
        endpoint: &'static str,
        /// The last `Retry-After` Linode sent, uncapped, if any.
        retry_after: Option<Duration>,
    },
    /// Connection or protocol failure (refused, reset, TLS, malformed HTTP).
    #[error("Linode API {method} {endpoint}: transport error: {source}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Path template.
        endpoint: &'static str,
        /// The underlying HTTP client error (never contains request headers).
        #[source]
        source: reqwest::Error,
    },
    /// The request did not complete within the configured per-request timeout.
    #[error("Linode API {method} {endpoint} timed out after {timeout:?}")]
    Timeout {
        /// HTTP method.
        method: &'static str,
        /// Path template.
        endpoint: &'static str,
        /// The configured per-request timeout.
        timeout: Duration,
    },
    /// A success response whose body does not match the expected schema (including address
    /// strings that are not IP addresses).
    #[error("Linode API {method} {endpoint}: cannot decode response: {source}")]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// Path template.
        endpoint: &'static str,
        /// What did not match.
        #[source]
        source: serde_json::Error,
    },
    /// The API token could not be obtained.
    #[error("Linode API token{}: {problem}", DisplayPath(path.as_ref()))]
    Token {
        /// The token file, when the token comes from a file.
        path: Option<PathBuf>,
        /// What is wrong with it.
        #[source]
        problem: TokenProblem,
    },
    /// The client configuration is invalid (bad base URL, bad user agent, ...).
    #[error("invalid Linode client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status Linode answered with, if the error comes from an HTTP response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// True for HTTP 404 (the Linode, address or range does not exist or is not visible to the
    /// token).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when trying again later may succeed: 5xx, 429, transport errors and timeouts.
    /// Token, configuration, decode and other 4xx errors need a change first. Before trying
    /// a creating call again, see [`Error::may_have_taken_effect`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status >= 500,
            Error::RateLimited { .. } | Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Decode { .. } | Error::Token { .. } | Error::Config(_) => false,
        }
    }

    /// True when the call failed but Linode may still have acted on it: a 5xx (possibly from
    /// a proxy after the change was committed), a timeout, a connection lost after the
    /// request was sent, or a success answer whose body could not be decoded. The client
    /// never repeats a creating call after such a failure (see
    /// [`crate::LinodeClient::allocate_ipv4`]); the caller has to look at what exists before
    /// it asks again. False when the request certainly changed nothing: 4xx, 429, a
    /// connection that was never made, and errors before any request.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status >= 500,
            Error::Timeout { .. } | Error::Decode { .. } => true,
            Error::Transport { source, .. } => !source.is_connect() && !source.is_builder(),
            Error::RateLimited { .. } | Error::Token { .. } | Error::Config(_) => false,
        }
    }

    /// Linode's reasons joined with `"; "` (each with its field), for a condition or an
    /// Event; `None` for errors that are not [`Error::Api`] or carry no entries.
    pub fn linode_reason(&self) -> Option<String> {
        match self {
            Error::Api { errors, .. } if !errors.is_empty() => {
                Some(DisplayEntries(errors).to_string())
            }
            _ => None,
        }
    }

    /// Linode's `reason`/`field` entries, empty for errors that are not [`Error::Api`].
    pub fn api_errors(&self) -> &[ApiErrorEntry] {
        match self {
            Error::Api { errors, .. } => errors,
            _ => &[],
        }
    }

    /// The endpoint template of the failed call, when the error comes from a call.
    pub fn endpoint(&self) -> Option<&'static str> {
        match self {
            Error::Api { endpoint, .. }
            | Error::RateLimited { endpoint, .. }
            | Error::Transport { endpoint, .. }
            | Error::Timeout { endpoint, .. }
            | Error::Decode { endpoint, .. } => Some(endpoint),
            Error::Token { .. } | Error::Config(_) => None,
        }
    }
}

struct DisplayEntries<'a>(&'a [ApiErrorEntry]);

impl fmt::Display for DisplayEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no error details in the response");
        }
        for (i, entry) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

struct DisplayRetryAfter(Option<Duration>);

impl fmt::Display for DisplayRetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(
                f,
                "; retries exhausted, Linode asked to wait {}s",
                d.as_secs()
            ),
            None => f.write_str("; retries exhausted"),
        }
    }
}

struct DisplayPath<'a>(Option<&'a PathBuf>);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " file {}", p.display()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_display_shows_reasons_and_fields() {
        let e = Error::Api {
            method: "POST",
            endpoint: "/networking/ips/share",
            status: 400,
            errors: vec![
                ApiErrorEntry {
                    reason: "Invalid IP".into(),
                    field: Some("ips".into()),
                },
                ApiErrorEntry {
                    reason: "Something else".into(),
                    field: None,
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "Linode API POST /networking/ips/share returned HTTP 400: \
             Invalid IP (field `ips`); Something else"
        );
        assert_eq!(e.status(), Some(400));
        assert!(!e.is_retryable());
        assert!(!e.is_not_found());
    }

    #[test]
    fn helpers_classify() {
        let e = Error::Api {
            method: "GET",
            endpoint: "/linode/instances/{linodeId}",
            status: 404,
            errors: vec![],
        };
        assert!(e.is_not_found());
        assert!(e.to_string().contains("no error details"));
        let e = Error::Api {
            method: "GET",
            endpoint: "/x",
            status: 503,
            errors: vec![],
        };
        assert!(e.is_retryable());
        let e = Error::RateLimited {
            method: "GET",
            endpoint: "/x",
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(e.status(), Some(429));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("wait 7s"), "{e}");
        let e = Error::Token {
            path: Some("/etc/sharedip/linode/token".into()),
            problem: TokenProblem::Missing,
        };
        assert_eq!(
            e.to_string(),
            "Linode API token file /etc/sharedip/linode/token: file not found (is the Secret mounted?)"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.endpoint(), None);
    }

    #[test]
    fn what_may_have_taken_effect_and_linode_reason() {
        let api = |status: u16, errors: Vec<ApiErrorEntry>| Error::Api {
            method: "POST",
            endpoint: "/linode/instances/{linodeId}/ips",
            status,
            errors,
        };
        assert!(api(502, vec![]).may_have_taken_effect());
        assert!(!api(400, vec![]).may_have_taken_effect());
        let timeout = Error::Timeout {
            method: "POST",
            endpoint: "/x",
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.may_have_taken_effect());
        let limited = Error::RateLimited {
            method: "POST",
            endpoint: "/x",
            retry_after: None,
        };
        assert!(!limited.may_have_taken_effect());
        assert!(!Error::Config("x".into()).may_have_taken_effect());

        let e = api(
            400,
            vec![
                ApiErrorEntry {
                    reason: "Please open a Support Ticket".into(),
                    field: None,
                },
                ApiErrorEntry {
                    reason: "Too many".into(),
                    field: Some("type".into()),
                },
            ],
        );
        assert_eq!(
            e.linode_reason().as_deref(),
            Some("Please open a Support Ticket; Too many (field `type`)")
        );
        assert_eq!(api(500, vec![]).linode_reason(), None);
        assert_eq!(limited.linode_reason(), None);
    }
}
