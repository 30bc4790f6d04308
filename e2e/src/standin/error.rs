//! Error types: the Linode-shaped API error every endpoint answers with, and the
//! stand-in's own startup / seed errors.

use std::fmt;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// One entry of Linode's error body `{"errors":[{"reason","field"}]}`.
///
/// `field` is omitted rather than `null` when the error concerns no field:
/// the spec's `ErrorObject.field` is a non-nullable string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// What went wrong, in Linode's words where known.
    pub reason: String,
    /// The request field that caused the error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer of the stand-in's Linode API: an HTTP status and Linode's error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// The entries of the `errors` array (never empty).
    pub errors: Vec<ErrorObject>,
    /// `Retry-After` seconds, set for injected 429 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with one entry.
    pub fn new(status: StatusCode, reason: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            status,
            errors: vec![ErrorObject {
                reason: reason.into(),
                field: field.map(str::to_owned),
            }],
            retry_after: None,
        }
    }

    /// 400 on a given field.
    pub fn bad_request(reason: impl Into<String>, field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, Some(field))
    }

    /// 404 `{"errors":[{"reason":"Not found"}]}`, Linode's answer for unknown objects and paths.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", None)
    }

    /// 401 `{"errors":[{"reason":"Invalid Token"}]}`.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Invalid Token", None)
    }

    /// 400 for a body that is not JSON.
    pub fn invalid_json() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Invalid JSON", None)
    }

    /// 405 for a known path with a method it does not have.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", None)
    }

    /// The `errors` body as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "errors": self.errors })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status.as_u16())?;
        for e in &self.errors {
            match &e.field {
                Some(field) => write!(f, "; {field}: {}", e.reason)?,
                None => write!(f, "; {}", e.reason)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Errors of starting the stand-in or loading its seed.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The seed file could not be read.
    #[error("cannot read seed file {path}: {source}")]
    SeedRead {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The seed file is not valid YAML/JSON of the seed format.
    #[error("seed file {path} is not a valid seed: {source}")]
    SeedParse {
        /// The file.
        path: std::path::PathBuf,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// The seed is well-formed but describes an impossible state.
    #[error("seed rejected: {0}")]
    SeedApply(#[from] ApiError),
    /// The token is empty (it would accept `Authorization: Bearer `).
    #[error("the API token must not be empty")]
    EmptyToken,
}
