//! The API token never shows up in errors (Display, alternate Display, Debug, source chain),
//! in `Debug` of the client types, or in log output, even when a server echoes it back.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linode_client::{Error, LinodeClient, Token, TokenSource};
use serde_json::json;
use support::{bounded, MockServer, Reply};

const TOKEN: &str = "tok-NEVER-SHOW-8c1f0e55aa";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_secret_free(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "{what} leaks the token: {text}");
    // A truncated echo must not leak a usable prefix either.
    assert!(
        !text.contains(&TOKEN[..12]),
        "{what} leaks part of the token: {text}"
    );
}

fn assert_error_secret_free(e: &Error) {
    assert_secret_free("Display", &e.to_string());
    assert_secret_free("alternate Display", &format!("{e:#}"));
    assert_secret_free("Debug", &format!("{e:?}"));
    assert_secret_free("pretty Debug", &format!("{e:#?}"));
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        assert_secret_free("source", &s.to_string());
        assert_secret_free("source Debug", &format!("{s:?}"));
        source = s.source();
    }
}

#[tokio::test]
async fn token_never_in_errors_debug_or_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded, so a thread-local default sees every event.
    let _guard = tracing::subscriber::set_default(subscriber);

    bounded(async {
        let echo = format!("Bearer {TOKEN}");
        let server = MockServer::start(move |req, _| {
            let sent = req.header("authorization").unwrap_or_default();
            match req.path.as_str() {
                // Error bodies and success bodies that echo the Authorization header.
                "/v4/linode/instances/1" => Reply::json(
                    401,
                    json!({"errors": [{"reason": format!("Invalid token {sent}"), "field": sent}]}),
                ),
                "/v4/linode/instances/2" => Reply::raw(403, &format!("<html>{sent}</html>")),
                "/v4/linode/instances/3" => Reply::json(500, json!({"errors": [{"reason": sent}]})),
                "/v4/linode/instances/4" => Reply::json(200, json!({"id": sent})),
                "/v4/linode/instances/5" => Reply::json(429, json!({})).header("retry-after", "0"),
                "/v4/linode/instances/6" => {
                    Reply::json(200, json!({})).delayed(Duration::from_secs(5))
                }
                _ => Reply::raw(200, &echo),
            }
        })
        .await;
        let client = LinodeClient::builder(TokenSource::from_string(TOKEN).unwrap())
            .base_url(server.base_url())
            .max_retries(1)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .request_timeout(Duration::from_millis(300))
            .build()
            .unwrap();

        let mut errors = Vec::new();
        for id in 1..=7 {
            errors.push(client.get_linode(id).await.unwrap_err());
        }
        assert!(matches!(errors[0], Error::Api { status: 401, .. }));
        assert_eq!(
            errors[0].api_errors()[0].reason,
            "Invalid token Bearer <redacted>"
        );
        assert!(matches!(errors[1], Error::Api { status: 403, .. }));
        assert!(matches!(errors[2], Error::Api { status: 500, .. }));
        assert!(matches!(errors[3], Error::Decode { .. }));
        assert!(matches!(errors[4], Error::RateLimited { .. }));
        assert!(matches!(errors[5], Error::Timeout { .. }));
        assert!(matches!(errors[6], Error::Decode { .. }));

        // Transport error: nothing listens on this port any more.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dead = LinodeClient::builder(TokenSource::from_string(TOKEN).unwrap())
            .base_url(format!("http://127.0.0.1:{port}/v4"))
            .max_retries(0)
            .build()
            .unwrap();
        let e = dead.get_linode(1).await.unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        errors.push(e);

        // Token errors: a token with a forbidden character, and a bad token file.
        errors.push(Token::new(&format!("{TOKEN}\n{TOKEN}")).unwrap_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\r\nmore")).unwrap();
        errors.push(TokenSource::from_file(&path).token().await.unwrap_err());

        for e in &errors {
            assert_error_secret_free(e);
        }

        let token = Token::new(TOKEN).unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert_secret_free("Token Debug", &format!("{token:#?}"));
        assert_secret_free("client Debug", &format!("{client:?} {client:#?}"));
        let source = TokenSource::from_string(TOKEN).unwrap();
        assert_secret_free("TokenSource Debug", &format!("{source:?}"));
        let builder = LinodeClient::builder(source);
        assert_secret_free("builder Debug", &format!("{builder:?}"));
    })
    .await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Linode API request"),
        "nothing was logged: {logs}"
    );
    assert!(logs.contains("retrying"), "no retry warning logged: {logs}");
    assert_secret_free("logs", &logs);
}
