//! Client configuration and its builder.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::client::LinodeClient;
use crate::error::{Error, Result};
use crate::observer::ApiObserver;
use crate::retry::RetryPolicy;
use crate::token::TokenSource;

/// Linode's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.linode.com/v4";
/// `sharedip/<version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("sharedip/", env!("CARGO_PKG_VERSION"));
/// Largest `page_size` Linode accepts.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Smallest `page_size` Linode accepts.
pub const MIN_PAGE_SIZE: u32 = 25;
/// Default per-request timeout (connect, send, and reading the whole response).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`LinodeClient`]; start from [`LinodeClient::builder`].
#[must_use]
pub struct ClientBuilder {
    pub(crate) token: TokenSource,
    pub(crate) base_url: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) page_size: u32,
    pub(crate) user_agent: String,
    pub(crate) observer: Option<Arc<dyn ApiObserver>>,
}

impl ClientBuilder {
    pub(crate) fn new(token: TokenSource) -> Self {
        ClientBuilder {
            token,
            base_url: DEFAULT_BASE_URL.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            page_size: MAX_PAGE_SIZE,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            observer: None,
        }
    }

    /// API root including the version, e.g. `https://api.linode.com/v4` (default) or
    /// `http://127.0.0.1:8080/v4` for a local stand-in.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Bound on one HTTP attempt, from connecting until the whole body is read.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bound on establishing the connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Replaces the whole retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Retries after the first attempt (0 disables retrying).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.retry.max_retries = retries;
        self
    }

    /// Exponential backoff: first delay `base`, doubling, never above `cap` (before jitter).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.retry.backoff_base = base;
        self.retry.backoff_cap = cap;
        self
    }

    /// Upper bound applied to `Retry-After`.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.retry.max_retry_after = max;
        self
    }

    /// Items per page for list calls, 25..=500 (default 500, the fewest calls).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// `User-Agent` header (default `sharedip/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Receives one observation per HTTP attempt (metrics).
    pub fn observer(mut self, observer: Arc<dyn ApiObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates the configuration and builds the client. Does not touch the network or the
    /// token file.
    pub fn build(self) -> Result<LinodeClient> {
        let base = validate_base_url(&self.base_url)?;
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than zero".into()));
        }
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(Error::Config(format!(
                "page size {} is outside {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}",
                self.page_size
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent.clone())
            // A redirect would carry the bearer token to wherever it points; Linode's API does
            // not redirect, so treat any 3xx as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(LinodeClient::from_parts(http, base, self))
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("token", &self.token)
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("page_size", &self.page_size)
            .field("user_agent", &self.user_agent)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Checks the base URL and returns it without a trailing slash, ready for `base + path`.
fn validate_base_url(raw: &str) -> Result<String> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| Error::Config(format!("base URL is not a valid URL: {e}")))?;
    // Messages name the parts, not the raw string, which could hold something secret.
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "base URL must use http or https, not {}",
            url.scheme()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Config(
            "base URL must not have a query or fragment".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Config(
            "base URL must not contain credentials".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Error::Config("base URL has no host".into()))?;
    if url.scheme() == "http" && !is_loopback_host(host) {
        tracing::warn!(
            base_url = %url,
            "Linode API base URL uses plain http to a non-loopback host; the token travels unencrypted"
        );
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_normalised() {
        assert_eq!(
            validate_base_url("https://api.linode.com/v4/").unwrap(),
            "https://api.linode.com/v4"
        );
        assert_eq!(
            validate_base_url("http://127.0.0.1:8080/v4").unwrap(),
            "http://127.0.0.1:8080/v4"
        );
        assert_eq!(
            validate_base_url("http://[::1]:8080").unwrap(),
            "http://[::1]:8080"
        );
    }

    #[test]
    fn bad_base_urls_rejected() {
        for bad in [
            "api.linode.com",
            "ftp://x/v4",
            "https://x/v4?a=b",
            "https://u:p@x/v4",
        ] {
            assert!(
                matches!(validate_base_url(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(!is_loopback_host("192.0.2.1"));
    }

    #[test]
    fn builder_validates() {
        let t = TokenSource::from_string("t").unwrap();
        assert!(LinodeClient::builder(t.clone())
            .page_size(10)
            .build()
            .is_err());
        assert!(LinodeClient::builder(t.clone())
            .page_size(501)
            .build()
            .is_err());
        assert!(LinodeClient::builder(t.clone())
            .request_timeout(Duration::ZERO)
            .build()
            .is_err());
        assert!(LinodeClient::builder(t).build().is_ok());
    }
}
