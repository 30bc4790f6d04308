//! The metrics registry in the text format Prometheus scrapes.

use prometheus_client::registry::Registry;

/// The content type of what [`encode`] writes: prometheus-client writes OpenMetrics 1.0.0 text
/// (ending with `# EOF`), which Prometheus parses only when the response says so.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's metrics as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail, and the registry's own metric types encode infallibly.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn openmetrics_text_with_the_prefix() {
        let mut registry = Registry::with_prefix("sharedip");
        let c = Counter::<u64>::default();
        registry.register("share_calls", "Share calls", c.clone());
        c.inc();
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE sharedip_share_calls counter\n"),
            "{text}"
        );
        assert!(text.contains("sharedip_share_calls_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
