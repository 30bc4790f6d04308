//! The Linode API bearer token: a redacting [`Token`] type and a [`TokenSource`] that follows
//! Secret rotation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use reqwest::header::HeaderValue;

use crate::error::{Error, Result, TokenProblem};

/// A Linode personal access token.
///
/// Its `Debug` prints `Token(<redacted>)` and it has no `Display`, so it cannot end up in a log
/// line or an error message by accident.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    // Built once per token so every request reuses it; marked sensitive so the HTTP stack never
    // prints it either.
    header: HeaderValue,
}

impl Token {
    /// Builds a token from its text; surrounding whitespace (a Secret's trailing newline) is
    /// trimmed. Fails when nothing is left or when it cannot go into an HTTP header.
    pub fn new(token: &str) -> Result<Self> {
        Self::parse(token).map_err(|problem| Error::Token {
            path: None,
            problem,
        })
    }

    fn parse(raw: &str) -> std::result::Result<Self, TokenProblem> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(TokenProblem::Empty);
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {trimmed}"))
            .map_err(|_| TokenProblem::InvalidCharacters)?;
        header.set_sensitive(true);
        Ok(Token {
            secret: Arc::from(trimmed),
            header,
        })
    }

    /// The `Authorization` header value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The raw secret; only used to scrub echoes of it from server error bodies.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the client gets its token from. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

enum Inner {
    Static(Token),
    File {
        path: PathBuf,
        cache: Mutex<Option<Cached>>,
    },
}

struct Cached {
    stamp: FileStamp,
    token: Token,
}

/// What identifies one version of the token file. Kubernetes rotates a mounted Secret by
/// swapping a symlink to a freshly written file, so the inode changes even when the size and a
/// coarse mtime would not.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            dev: meta.dev(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

impl TokenSource {
    /// A fixed token (tests, standalone tools).
    pub fn from_token(token: Token) -> Self {
        TokenSource {
            inner: Arc::new(Inner::Static(token)),
        }
    }

    /// A fixed token from its text; see [`Token::new`].
    pub fn from_string(token: &str) -> Result<Self> {
        Token::new(token).map(Self::from_token)
    }

    /// A token file, typically a mounted Kubernetes Secret such as
    /// `/etc/sharedip/linode/token`. The file is not read here: every request stats it and
    /// re-reads it when it changed, so a rotated Secret is picked up without a restart. Use
    /// [`TokenSource::token`] at startup to fail fast when it is missing.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        TokenSource {
            inner: Arc::new(Inner::File {
                path: path.into(),
                cache: Mutex::new(None),
            }),
        }
    }

    /// The token file, if the token comes from a file.
    pub fn path(&self) -> Option<&Path> {
        match &*self.inner {
            Inner::Static(_) => None,
            Inner::File { path, .. } => Some(path),
        }
    }

    /// The current token, re-reading the file if it changed since the last call.
    pub async fn token(&self) -> Result<Token> {
        match &*self.inner {
            Inner::Static(token) => Ok(token.clone()),
            Inner::File { path, cache } => load_file(path, cache).await,
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Inner::Static(_) => f.write_str("TokenSource::Static(<redacted>)"),
            Inner::File { path, .. } => f
                .debug_struct("TokenSource::File")
                .field("path", path)
                .finish_non_exhaustive(),
        }
    }
}

async fn load_file(path: &Path, cache: &Mutex<Option<Cached>>) -> Result<Token> {
    let fail = |problem| Error::Token {
        path: Some(path.to_path_buf()),
        problem,
    };
    let io_fail = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            fail(TokenProblem::Missing)
        } else {
            fail(TokenProblem::Unreadable(e))
        }
    };

    let meta = tokio::fs::metadata(path).await.map_err(io_fail)?;
    let stamp = FileStamp::of(&meta);
    {
        let guard = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = guard.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(cached.token.clone());
        }
    }

    // If the file changes between the stat above and this read, the cache holds the new text
    // under the old stamp; the next call sees a different stamp and reads again, so it heals.
    let text = tokio::fs::read_to_string(path).await.map_err(io_fail)?;
    let token = Token::parse(&text).map_err(fail)?;
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    let rotated = guard.is_some();
    *guard = Some(Cached {
        stamp,
        token: token.clone(),
    });
    drop(guard);
    if rotated {
        tracing::info!(path = %path.display(), "Linode API token file changed; reloaded it");
    } else {
        tracing::debug!(path = %path.display(), "Linode API token loaded");
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_trims_and_redacts() {
        let t = Token::new("  abc123\n").unwrap();
        assert_eq!(t.secret(), "abc123");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(t.header().is_sensitive());
        assert_eq!(t.header().to_str().unwrap(), "Bearer abc123");
    }

    #[test]
    fn token_rejects_empty_and_bad_chars() {
        let e = Token::new(" \n\t").unwrap_err();
        assert!(matches!(
            e,
            Error::Token {
                problem: TokenProblem::Empty,
                ..
            }
        ));
        let e = Token::new("abc\ndef-secretpart").unwrap_err();
        assert!(matches!(
            e,
            Error::Token {
                problem: TokenProblem::InvalidCharacters,
                ..
            }
        ));
        assert!(!format!("{e} {e:?}").contains("secretpart"));
    }

    #[test]
    fn source_debug_is_redacted() {
        let s = TokenSource::from_string("topsecret").unwrap();
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
