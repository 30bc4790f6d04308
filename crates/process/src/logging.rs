//! Logging: text or JSON lines on stderr; the level from `RUST_LOG` when set, else from the
//! `--log-level` option.
//!
//! Both binaries log to stderr, so stdout stays for what a command prints (the agent's `status`
//! table) and the kubelet and journald collect the logs as they do any other stream.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// Whether `level` is a level name or a filter with targets, and not a bare unknown word:
/// `EnvFilter` would read `warning` as "everything from target `warning`", i.e. silence.
fn is_filter(level: &str) -> bool {
    let l = level.trim().to_ascii_lowercase();
    matches!(
        l.as_str(),
        "trace" | "debug" | "info" | "warn" | "error" | "off"
    ) || l.contains('=')
        || l.contains(',')
}

/// The filter: `rust_log` (the `RUST_LOG` variable) when it parses, else `level`, else `info`;
/// and whether `level` was refused.
fn filter(level: &str, rust_log: Option<&str>) -> (EnvFilter, bool) {
    let given = is_filter(level)
        .then(|| EnvFilter::try_new(level).ok())
        .flatten();
    let refused = given.is_none();
    let filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or(given)
        .unwrap_or_else(|| EnvFilter::new("info"));
    (filter, refused)
}

/// The subscriber writing `format` lines through `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// Installs the global subscriber; a second call (tests) keeps the first. An unknown `level`
/// falls back to `info` with a warning, as lelastic does.
pub fn init(format: LogFormat, level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, refused) = filter(level, rust_log.as_deref());
    // Colours only for a terminal: in a file, the journal or a log collector the escape codes
    // are noise that breaks grep.
    let ansi = std::io::stderr().is_terminal();
    let _ = subscriber(format, filter, std::io::stderr, ansi).try_init();
    if refused && rust_log.is_none() {
        tracing::warn!(
            loglevel = level,
            "unknown log level; use trace, debug, info, warn, error or a RUST_LOG filter; logging at info"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn levels_and_filters() {
        for ok in [
            "info",
            "WARN",
            "trace",
            "sharedip_node_agent=debug,info",
            "info,h2=off",
        ] {
            assert!(is_filter(ok), "{ok}");
        }
        for bad in ["warning", "verbose", ""] {
            assert!(!is_filter(bad), "{bad}");
        }
    }

    /// Everything the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            crate::sync::lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `format` writes for an info and a debug event, with `level` and `rust_log`.
    fn lines(format: LogFormat, level: &str, rust_log: Option<&str>) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let (filter, _) = filter(level, rust_log);
        let sub = subscriber(format, filter, move || writer.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(peer = "2001:db8::1", "session established");
            tracing::debug!(peer = "2001:db8::1", "keepalive");
        });
        let text = String::from_utf8(crate::sync::lock(&out.0).clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_lines_carry_the_fields_at_the_top_level() {
        let lines = lines(LogFormat::Json, "info", None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "session established");
        assert_eq!(v["peer"], "2001:db8::1");
        assert!(v.get("fields").is_none(), "flattened: {v}");
    }

    #[test]
    fn text_lines_are_plain_without_a_terminal() {
        let lines = lines(LogFormat::Text, "info", None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("session established"), "{line}");
        assert!(line.contains("peer=\"2001:db8::1\""), "{line}");
        assert!(!line.contains('\x1b'), "no colour codes: {line:?}");
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
    }

    #[test]
    fn rust_log_wins_over_the_level_and_a_bad_level_means_info() {
        assert_eq!(lines(LogFormat::Text, "debug", None).len(), 2);
        assert_eq!(lines(LogFormat::Text, "warn", None).len(), 0);
        assert_eq!(lines(LogFormat::Text, "warn", Some("debug")).len(), 2);
        // A RUST_LOG that does not parse leaves the level in charge.
        assert_eq!(lines(LogFormat::Text, "debug", Some("=x=")).len(), 2);
        let (_, refused) = filter("warning", None);
        assert!(refused);
        assert_eq!(lines(LogFormat::Text, "warning", None).len(), 1);
        assert!(!filter("sharedip_operator=debug,info", None).1);
    }
}
