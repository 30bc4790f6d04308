//! The client handle and its request loop: auth, retries, observation, pagination.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::ClientBuilder;
use crate::error::{ApiErrorEntry, Error, Result};
use crate::models::Page;
use crate::observer::ApiObserver;
use crate::retry::{self, RetryPolicy};
use crate::token::{Token, TokenSource};

/// A list call gives up when the server claims more pages than this (500 items per page by
/// default, so far beyond any real account); returning a truncated list silently would be
/// worse, since the operator acts on what is absent.
const MAX_PAGES: u32 = 1000;

/// Async client for the Linode API v4 subset that IP sharing needs.
///
/// Cheap to clone (one `Arc`); clones share the connection pool and the token cache.
#[derive(Clone)]
pub struct LinodeClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    request_timeout: Duration,
    retry: RetryPolicy,
    page_size: u32,
    token: TokenSource,
    observer: Option<Arc<dyn ApiObserver>>,
}

/// The HTTP methods this client uses, with `'static` names for observers and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }

    fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Delete => Method::DELETE,
        }
    }
}

/// One logical call (possibly several HTTP attempts).
pub(crate) struct Call<'a> {
    pub verb: Verb,
    /// Path template, for observers, logs and errors.
    pub endpoint: &'static str,
    /// Concrete path and query, appended to the base URL.
    pub path: String,
    pub filter: Option<&'a serde_json::Value>,
    pub json_body: Option<Vec<u8>>,
    /// Whether repeating the call after an answer that was lost, or a 5xx, is harmless.
    /// A call that is not (one that allocates or creates) is only retried when the request
    /// certainly never reached Linode's handler: a 429, or a connection that was never made.
    pub idempotent: bool,
}

impl<'a> Call<'a> {
    pub(crate) fn get(endpoint: &'static str, path: String) -> Self {
        Call {
            verb: Verb::Get,
            endpoint,
            path,
            filter: None,
            json_body: None,
            idempotent: true,
        }
    }

    /// A DELETE: repeating it is harmless (a repeat after a lost answer gets a 404).
    pub(crate) fn delete(endpoint: &'static str, path: String) -> Self {
        Call {
            verb: Verb::Delete,
            ..Call::get(endpoint, path)
        }
    }

    /// A POST with a JSON body; `idempotent` says whether it may be repeated after an
    /// ambiguous failure.
    pub(crate) fn post(
        endpoint: &'static str,
        path: String,
        body: &serde_json::Value,
        idempotent: bool,
    ) -> Self {
        Call {
            verb: Verb::Post,
            json_body: Some(body.to_string().into_bytes()),
            idempotent,
            ..Call::get(endpoint, path)
        }
    }
}

/// Outcome of a failed attempt.
enum Failure {
    /// Do not retry.
    Final(Error),
    /// Linode did not act on the request (429, or no connection was made): any call may be
    /// retried. `retry_after` is what the server asked for, if anything.
    Unsent {
        error: Error,
        retry_after: Option<Duration>,
    },
    /// The request may or may not have taken effect (5xx, timeout, connection lost): only an
    /// idempotent call may be retried.
    Ambiguous {
        error: Error,
        retry_after: Option<Duration>,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, deserialize_with = "crate::de::null_default")]
    errors: Vec<ApiErrorEntry>,
}

impl LinodeClient {
    /// A builder with defaults: [`crate::DEFAULT_BASE_URL`], 30 s request timeout, 10 s
    /// connect timeout, 4 retries, 250 ms..8 s backoff, `Retry-After` capped at 60 s, 500
    /// items per page, user agent `sharedip/<version>`.
    pub fn builder(token: TokenSource) -> ClientBuilder {
        ClientBuilder::new(token)
    }

    /// A client with the default configuration.
    pub fn new(token: TokenSource) -> Result<Self> {
        Self::builder(token).build()
    }

    pub(crate) fn from_parts(http: reqwest::Client, base: String, b: ClientBuilder) -> Self {
        LinodeClient {
            inner: Arc::new(Inner {
                http,
                base,
                request_timeout: b.request_timeout,
                retry: b.retry,
                page_size: b.page_size,
                token: b.token,
                observer: b.observer,
            }),
        }
    }

    /// The API root this client talks to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Where the client gets its token; [`TokenSource::watch`] follows a token file.
    pub fn token_source(&self) -> &TokenSource {
        &self.inner.token
    }

    /// Loads the token now (no network), so a missing or empty Secret fails at startup with a
    /// clear message instead of at the first reconcile.
    pub async fn check_token(&self) -> Result<()> {
        self.inner.token.token().await.map(drop)
    }

    /// Runs a call with retries and decodes a JSON success body.
    pub(crate) async fn call_json<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T> {
        let (body, token) = self.call(call).await?;
        serde_json::from_slice(&body).map_err(|source| Error::Decode {
            method: call.verb.as_str(),
            endpoint: call.endpoint,
            source: scrub_decode_error(source, &token),
        })
    }

    /// Fetches every page of a paginated list.
    pub(crate) async fn list_all<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        filter: Option<&serde_json::Value>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut page = 1u32;
        loop {
            let mut call = Call::get(
                endpoint,
                format!("{path}?page={page}&page_size={}", self.inner.page_size),
            );
            call.filter = filter;
            let envelope: Page<T> = self.call_json(&call).await?;
            let decode_err = |msg: String| Error::Decode {
                method: Verb::Get.as_str(),
                endpoint,
                source: <serde_json::Error as serde::de::Error>::custom(msg),
            };
            // A server that ignores `page` would make us collect duplicates forever.
            if let Some(got) = envelope.page.filter(|got| *got != page) {
                return Err(decode_err(format!(
                    "asked for page {page}, response is page {got}"
                )));
            }
            items.extend(envelope.data);
            // `pages` is re-read on every page: the collection may grow while we walk it.
            let pages = envelope.pages.unwrap_or(1);
            if page >= pages {
                return Ok(items);
            }
            if page >= MAX_PAGES {
                return Err(decode_err(format!(
                    "response claims {pages} pages; refusing to fetch more than {MAX_PAGES}"
                )));
            }
            page += 1;
        }
    }

    /// Runs a call: attempts with retries, returns the success body and the token used.
    pub(crate) async fn call(&self, call: &Call<'_>) -> Result<(Vec<u8>, Token)> {
        let policy = &self.inner.retry;
        let mut retry = 0u32;
        loop {
            // Fetched per attempt so a Secret rotated during a backoff is used by the retry.
            let token = self.inner.token.token().await?;
            match self.attempt(call, &token, retry + 1).await {
                Ok(body) => return Ok((body, token)),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Ambiguous { error, .. }) if !call.idempotent => {
                    tracing::warn!(
                        method = call.verb.as_str(),
                        endpoint = call.endpoint,
                        status = error.status(),
                        error = %error,
                        "Linode API call failed and may have taken effect; not repeating it"
                    );
                    return Err(error);
                }
                Err(
                    Failure::Unsent { error, retry_after }
                    | Failure::Ambiguous { error, retry_after },
                ) => {
                    if retry >= policy.max_retries {
                        return Err(error);
                    }
                    let delay = policy.delay(retry, retry_after);
                    tracing::warn!(
                        method = call.verb.as_str(),
                        endpoint = call.endpoint,
                        attempt = retry + 1,
                        status = error.status(),
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "Linode API call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
            }
        }
    }

    /// One HTTP attempt.
    async fn attempt(
        &self,
        call: &Call<'_>,
        token: &Token,
        attempt: u32,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let method = call.verb.as_str();
        let endpoint = call.endpoint;
        let request = self.request(call, token);
        let start = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let elapsed = start.elapsed();
                self.observe(endpoint, method, None, elapsed);
                tracing::debug!(
                    method,
                    endpoint,
                    attempt,
                    elapsed_ms = millis(elapsed),
                    error = %e,
                    "Linode API request failed"
                );
                return Err(self.transport_failure(call, e));
            }
        };
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        let body = response.bytes().await;
        let elapsed = start.elapsed();
        self.observe(endpoint, method, Some(status.as_u16()), elapsed);
        tracing::debug!(
            method,
            endpoint,
            status = status.as_u16(),
            attempt,
            elapsed_ms = millis(elapsed),
            "Linode API request"
        );
        let body = body.map_err(|e| self.transport_failure(call, e))?;

        classify(call, status, retry_after, &body, token)
    }

    /// The request of one attempt: the token, JSON in and out, the filter header.
    fn request(&self, call: &Call<'_>, token: &Token) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.inner.base, call.path);
        let mut request = self
            .inner
            .http
            .request(call.verb.method(), url)
            .header(AUTHORIZATION, token.header().clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(filter) = call.filter {
            request = request.header("X-Filter", crate::filter::header_value(filter));
        }
        if let Some(body) = &call.json_body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.clone());
        }
        request
    }

    fn transport_failure(&self, call: &Call<'_>, e: reqwest::Error) -> Failure {
        let method = call.verb.as_str();
        let endpoint = call.endpoint;
        // A failed connect means the request was never sent; anything later (a reset, a
        // timeout while waiting for the answer) may come after Linode acted on it.
        let unsent = e.is_connect();
        let is_builder = e.is_builder();
        let error = if e.is_timeout() {
            Error::Timeout {
                method,
                endpoint,
                timeout: self.inner.request_timeout,
            }
        } else {
            Error::Transport {
                method,
                endpoint,
                source: e,
            }
        };
        if is_builder {
            Failure::Final(error)
        } else if unsent {
            Failure::Unsent {
                error,
                retry_after: None,
            }
        } else {
            Failure::Ambiguous {
                error,
                retry_after: None,
            }
        }
    }

    fn observe(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        if let Some(observer) = &self.inner.observer {
            observer.observe(endpoint, method, status, elapsed);
        }
    }
}

impl fmt::Debug for LinodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("LinodeClient")
            .field("base_url", &i.base)
            .field("token", &i.token)
            .field("request_timeout", &i.request_timeout)
            .field("retry", &i.retry)
            .field("page_size", &i.page_size)
            .field("observer", &i.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// What a response means: its body on success; a retryable failure on 429 and 5xx (honouring
/// Retry-After); a final one otherwise.
fn classify(
    call: &Call<'_>,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    token: &Token,
) -> std::result::Result<Vec<u8>, Failure> {
    let method = call.verb.as_str();
    let endpoint = call.endpoint;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Linode rate-limits before it handles a request, so even a creating call may repeat.
        return Err(Failure::Unsent {
            error: Error::RateLimited {
                method,
                endpoint,
                retry_after,
            },
            retry_after,
        });
    }
    let error = Error::Api {
        method,
        endpoint,
        status: status.as_u16(),
        errors: parse_error_body(body, token),
    };
    if status.is_server_error() {
        // A 503 may carry Retry-After too; honour it the same way as on 429. A 5xx may come
        // from a proxy after Linode committed the change, so it is ambiguous.
        Err(Failure::Ambiguous { error, retry_after })
    } else {
        Err(Failure::Final(error))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Linode's `{"errors": [...]}`, or a short excerpt when the body is something else (a proxy's
/// HTML page). Anything echoing the token is scrubbed before it can reach an error message.
fn parse_error_body(body: &[u8], token: &Token) -> Vec<ApiErrorEntry> {
    const EXCERPT_CHARS: usize = 200;
    let mut entries = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed.errors,
        _ if body.iter().all(u8::is_ascii_whitespace) => Vec::new(),
        _ => {
            let text = redact(&String::from_utf8_lossy(body), token);
            let excerpt: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(EXCERPT_CHARS)
                .collect();
            vec![ApiErrorEntry {
                reason: format!("unrecognised error body: {}", excerpt.trim()),
                field: None,
            }]
        }
    };
    for entry in &mut entries {
        entry.reason = redact(&entry.reason, token);
        entry.field = entry.field.as_deref().map(|f| redact(f, token));
    }
    entries
}

/// serde_json quotes offending values in its messages; should a body ever echo the token,
/// keep only a redacted message.
fn scrub_decode_error(error: serde_json::Error, token: &Token) -> serde_json::Error {
    let message = error.to_string();
    if message.contains(token.secret()) {
        <serde_json::Error as serde::de::Error>::custom(redact(&message, token))
    } else {
        error
    }
}

fn redact(text: &str, token: &Token) -> String {
    text.replace(token.secret(), "<redacted>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_parsing() {
        let t = Token::new("sekrit-token").unwrap();
        let e = parse_error_body(
            br#"{"errors":[{"reason":"Not found"},{"reason":"bad","field":"ips"}]}"#,
            &t,
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].field, None);
        assert_eq!(e[1].field.as_deref(), Some("ips"));

        let e = parse_error_body(b"<html>Bad gateway sekrit-token</html>", &t);
        assert_eq!(e.len(), 1);
        assert!(e[0].reason.contains("Bad gateway"));
        assert!(!e[0].reason.contains("sekrit-token"));

        let e = parse_error_body(
            br#"{"errors":[{"reason":"token sekrit-token invalid","field":null}]}"#,
            &t,
        );
        assert_eq!(e[0].reason, "token <redacted> invalid");

        assert!(parse_error_body(b"  ", &t).is_empty());
        let long = "x".repeat(10_000);
        let e = parse_error_body(long.as_bytes(), &t);
        assert!(e[0].reason.len() < 300);
    }
}
