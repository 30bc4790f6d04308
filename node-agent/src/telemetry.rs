//! Logging setup: `RUST_LOG` (or `--loglevel`) for levels, text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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

/// Installs the global subscriber; a second call keeps the first. An unknown `--loglevel`
/// falls back to `info` with a warning, as lelastic does.
pub fn init(format: LogFormat, level: &str) {
    let given = is_filter(level)
        .then(|| EnvFilter::try_new(level).ok())
        .flatten();
    let fallback = given.is_none();
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or(given)
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only for a terminal: in a file or the journal the escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if fallback && std::env::var_os("RUST_LOG").is_none() {
        tracing::warn!(
            loglevel = level,
            "unknown log level; use trace, debug, info, warn, error or a RUST_LOG filter; logging at info"
        );
    }
}

#[cfg(test)]
mod tests {
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
}
