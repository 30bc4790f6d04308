//! The Linode API bearer token: a redacting [`Token`] type and a [`TokenSource`] that follows
//! Secret rotation.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use sharedip_process::sync::lock;
use tokio::sync::watch;

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

    /// Watches the token file: reads it now and then every `interval`, and publishes a new
    /// [`TokenFileState`] whenever its content changes or it becomes usable or unusable.
    ///
    /// Requests already re-read a changed file, but only when they run; a caller waiting out a
    /// backoff after an authentication failure learns from this that retrying now may work.
    /// The *content* is compared, not only the file's metadata: a Kubernetes Secret volume
    /// swaps the `..data` symlink to a new directory, and a file rewritten in place can keep
    /// its size and (coarse) modification time. A changed content also replaces the cached
    /// token, so the next request uses it whatever the file's metadata says.
    ///
    /// Returns None for a fixed token, which never changes. The polling task ends when every
    /// receiver is dropped. Must be called within a Tokio runtime.
    pub async fn watch(&self, interval: Duration) -> Option<watch::Receiver<TokenFileState>> {
        let Inner::File { path, .. } = &*self.inner else {
            return None;
        };
        let mut seen = Observed::default();
        let first = seen.update(self, read_token_file(path).await);
        let (tx, rx) = watch::channel(TokenFileState {
            version: 0,
            problem: first.unwrap_or_default(),
        });
        let source = self.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the file was just read
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                if let Some(problem) = seen.update(&source, read_token_file(&path).await) {
                    tx.send_modify(|s| {
                        s.version = s.version.wrapping_add(1);
                        s.problem = problem;
                    });
                }
            }
        });
        Some(rx)
    }
}

/// The token file as [`TokenSource::watch`] last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFileState {
    /// Incremented on every change of the file's content, or of whether it holds a usable
    /// token; 0 for the state at the start of the watch.
    pub version: u64,
    /// Why the file holds no usable token (missing, unreadable, empty, …), with its path; None
    /// when it does. Never contains the token.
    pub problem: Option<String>,
}

/// What the watcher saw last: a fingerprint of the token (never the token itself, so the
/// secret is not kept in one more place) or the problem.
#[derive(Default, PartialEq, Eq)]
enum Observed {
    #[default]
    Nothing,
    Token(u64),
    Problem(String),
}

impl Observed {
    /// Records what was read; returns the new problem state (`Some(None)`: usable) when it
    /// differs from what was seen before, None when nothing changed.
    fn update(
        &mut self,
        source: &TokenSource,
        read: Result<(FileStamp, Token)>,
    ) -> Option<Option<String>> {
        let (next, problem) = match read {
            Ok((stamp, token)) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                token.secret().hash(&mut h);
                let next = Observed::Token(h.finish());
                if next != *self {
                    if let Inner::File { cache, .. } = &*source.inner {
                        let mut guard = lock(cache);
                        *guard = Some(Cached { stamp, token });
                    }
                }
                (next, None)
            }
            Err(e) => {
                let text = e.to_string();
                (Observed::Problem(text.clone()), Some(text))
            }
        };
        if next == *self {
            return None;
        }
        *self = next;
        Some(problem)
    }
}

/// A token file problem, with the file's path.
fn token_error(path: &Path, problem: TokenProblem) -> Error {
    Error::Token {
        path: Some(path.to_path_buf()),
        problem,
    }
}

/// A failed stat or read of the token file: missing, or unreadable.
fn io_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        token_error(path, TokenProblem::Missing)
    } else {
        token_error(path, TokenProblem::Unreadable(e))
    }
}

/// Reads and parses the token file, whatever its metadata says.
async fn read_token_file(path: &Path) -> Result<(FileStamp, Token)> {
    let fail = |problem| token_error(path, problem);
    let io_fail = |e| io_error(path, e);
    // Stat before reading: if the file changes in between, the stamp is older than the text
    // and the next request re-reads it, which is harmless.
    let meta = tokio::fs::metadata(path).await.map_err(io_fail)?;
    let text = tokio::fs::read_to_string(path).await.map_err(io_fail)?;
    let token = Token::parse(&text).map_err(fail)?;
    Ok((FileStamp::of(&meta), token))
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
    let fail = |problem| token_error(path, problem);
    let io_fail = |e| io_error(path, e);

    let meta = tokio::fs::metadata(path).await.map_err(io_fail)?;
    let stamp = FileStamp::of(&meta);
    {
        let guard = lock(cache);
        if let Some(cached) = guard.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(cached.token.clone());
        }
    }

    // If the file changes between the stat above and this read, the cache holds the new text
    // under the old stamp; the next call sees a different stamp and reads again, so it heals.
    let text = tokio::fs::read_to_string(path).await.map_err(io_fail)?;
    let token = Token::parse(&text).map_err(fail)?;
    let mut guard = lock(cache);
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

    /// Waits (bounded) for the next published state.
    async fn next(rx: &mut watch::Receiver<TokenFileState>) -> TokenFileState {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a change within 10 s")
            .expect("watcher alive");
        rx.borrow_and_update().clone()
    }

    const TICK: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn watch_reports_a_file_that_appears_and_changes_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenSource::from_file(&path);
        let mut rx = source.watch(TICK).await.expect("a file source is watched");
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.version, 0);
        let problem = first.problem.expect("missing file reported");
        assert!(problem.contains("file not found"), "{problem}");

        std::fs::write(&path, "aaaa\n").unwrap();
        let s = next(&mut rx).await;
        assert_eq!((s.version, s.problem), (1, None));
        assert_eq!(source.token().await.unwrap().secret(), "aaaa");

        // Same length, same modification time, same inode: only the content tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "bbbb\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let s = next(&mut rx).await;
        assert_eq!((s.version, s.problem), (2, None));
        assert_eq!(
            source.token().await.unwrap().secret(),
            "bbbb",
            "the watcher refreshed the cached token"
        );

        std::fs::write(&path, "  \n").unwrap();
        let s = next(&mut rx).await;
        assert!(s.problem.unwrap().contains("token is empty"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn watch_follows_a_secret_volume_symlink_swap() {
        use std::os::unix::fs::symlink;
        // The layout the kubelet writes: token -> ..data/token, ..data -> ..<timestamp>.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/token"), "old-token").unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/token", d.join("token")).unwrap();
        let source = TokenSource::from_file(d.join("token"));
        let mut rx = source.watch(TICK).await.unwrap();
        assert_eq!(rx.borrow_and_update().problem, None);
        assert_eq!(source.token().await.unwrap().secret(), "old-token");

        std::fs::create_dir(d.join("..2026_02")).unwrap();
        std::fs::write(d.join("..2026_02/token"), "new-token").unwrap();
        symlink("..2026_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2026_01")).unwrap();
        let s = next(&mut rx).await;
        assert_eq!((s.version, s.problem), (1, None));
        assert_eq!(source.token().await.unwrap().secret(), "new-token");
    }

    #[tokio::test]
    async fn static_tokens_are_not_watched_and_the_task_ends_with_its_receivers() {
        let s = TokenSource::from_string("t").unwrap();
        assert!(s.watch(TICK).await.is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t").unwrap();
        let source = TokenSource::from_file(&path);
        let rx = source.watch(TICK).await.unwrap();
        assert_eq!(
            Arc::strong_count(&source.inner),
            2,
            "the task holds a clone"
        );
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&source.inner) > 1 {
                tokio::time::sleep(TICK).await;
            }
        })
        .await
        .expect("the polling task ends once nobody listens");
    }
}
