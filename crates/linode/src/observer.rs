//! A hook through which the operator counts Linode API calls (metrics).

use std::time::Duration;

/// Receives one observation per HTTP attempt (retries included), so metrics can count calls by
/// endpoint and status.
///
/// Called on the request path: keep it cheap and non-blocking (e.g. increment a counter).
pub trait ApiObserver: Send + Sync {
    /// `endpoint` is the path template (e.g. `/linode/instances/{linodeId}/ips`, see
    /// [`crate::endpoints`]), `method` the HTTP method, `status` the HTTP status or `None` when
    /// no response arrived (connection error, timeout), `elapsed` the attempt's duration.
    fn observe(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    );
}

/// Any suitable closure is an observer.
impl<F> ApiObserver for F
where
    F: Fn(&'static str, &'static str, Option<u16>, Duration) + Send + Sync,
{
    fn observe(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        self(endpoint, method, status, elapsed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn closures_are_observers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let observer: Arc<dyn ApiObserver> = Arc::new(
            move |endpoint: &'static str,
                  method: &'static str,
                  status: Option<u16>,
                  _: Duration| {
                assert_eq!((endpoint, method, status), ("/x", "GET", Some(200)));
                seen.fetch_add(1, Ordering::Relaxed);
            },
        );
        observer.observe("/x", "GET", Some(200), Duration::from_millis(3));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
