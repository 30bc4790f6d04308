//! Bearer-token authentication and authorization through the Kubernetes API, the way
//! controller-runtime's `filters.WithAuthenticationAndAuthorization` and kube-rbac-proxy do it:
//! the token goes to a TokenReview, the user it names to a SubjectAccessReview for the
//! non-resource URL and verb of the request (`get /metrics`). No token or a bad one: 401;
//! a user without the RBAC: 403.
//!
//! Verdicts are cached briefly per (token, path, verb) so a scrape every few seconds costs
//! the apiserver two requests a minute. Tokens are kept only as keyed hashes.
//!
//! Anyone who reaches the port may send a bearer token, so what an unauthenticated client can
//! make the apiserver do is bounded:
//!
//! - only strings shaped like a JWT (ServiceAccount and OIDC tokens; three base64url segments,
//!   the first a JSON header) of at most 16 KiB are reviewed, anything else is a 401 at once;
//! - reviews of tokens not recently allowed take from a process-wide budget of
//!   [`REVIEWS_PER_SECOND`] (bursts of [`REVIEW_BURST`]); over it the answer is 429 with
//!   `Retry-After`, without asking the apiserver. A 429 rather than a 401, because the token
//!   may well be valid: a 401 would send a scraper's owner looking for a wrong token or RBAC,
//!   and some clients drop or refresh their credentials on a 401, while 429 says "later";
//! - a token allowed in the last 10 minutes is re-reviewed outside that budget, so junk
//!   tokens cannot keep Prometheus out;
//! - concurrent requests with the same token, path and verb share one review;
//! - when the cache is full, expired entries go first, then "not authenticated", then
//!   "forbidden"; an allowed entry only when nothing else is left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sharedip_process::sync::lock;
use tokio::sync::OnceCell;

/// How long an allowed request's verdict is reused (controller-runtime: 1 min for the
/// authentication).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is reused (controller-runtime caches denials for 30 s).
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// How long "this token is not valid" is reused: short, so a freshly minted token works soon.
pub const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(10);
/// Bound of one TokenReview or SubjectAccessReview call.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the cache.
const CACHE_ENTRIES: usize = 256;
/// Reviews per second of tokens not recently allowed, for the whole process.
pub const REVIEWS_PER_SECOND: f64 = 5.0;
/// How many such reviews may come at once before the rate applies.
pub const REVIEW_BURST: f64 = 20.0;
/// How long after its verdict expired an allowed token is still re-reviewed outside the
/// budget: a scraper keeps the same token for far longer (kubelet-rotated tokens live an hour
/// at least) and asks more often.
const KNOWN_FOR: Duration = Duration::from_secs(600);
/// Longer bearer tokens are refused without asking the apiserver.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and authorized.
    Allowed,
    /// No bearer token, or the apiserver does not accept it (401).
    Unauthenticated,
    /// The token's user may not do this (403).
    Forbidden {
        /// Who asked.
        user: String,
    },
    /// The apiserver could not be asked: 401 for the TokenReview (as Kubernetes' own
    /// authentication filter answers), 500 for the SubjectAccessReview. Never cached.
    ReviewFailed {
        /// Which review failed.
        review: &'static str,
        /// Why.
        error: String,
    },
    /// Over the budget of reviews: not asked, try again later (429). Never cached.
    Throttled {
        /// When the budget has room again.
        retry_after: Duration,
    },
}

/// Asks the apiserver whether a bearer token may `verb` a non-resource `path`.
pub struct Authorizer {
    client: kube::Client,
    key: ring::hmac::Key,
    cache: Mutex<HashMap<CacheKey, (Verdict, Instant)>>,
    /// Reviews under way, shared by the requests that ask the same question meanwhile.
    inflight: Mutex<HashMap<CacheKey, Arc<OnceCell<Verdict>>>>,
    budget: Mutex<TokenBucket>,
}

/// The budget of reviews: `burst` at most, refilled at `rate` per second.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one review from the budget, or says when one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(60)))
    }
}

/// Whether a cached verdict answers, or the question must go to the apiserver.
enum Lookup {
    Fresh(Verdict),
    /// Expired, but the token was allowed recently: its review need not wait for the budget.
    Known,
    Unknown,
}

/// A request's share of a review under way; the last one out removes it from the map.
struct Inflight<'a> {
    map: &'a Mutex<HashMap<CacheKey, Arc<OnceCell<Verdict>>>>,
    key: &'a CacheKey,
    cell: Option<Arc<OnceCell<Verdict>>>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        // Every clone and drop of these cells happens under the lock, so the count is exact.
        if let Some(cell) = self.cell.take() {
            let ours = map.get(self.key).is_some_and(|c| Arc::ptr_eq(c, &cell));
            if ours && (cell.initialized() || Arc::strong_count(&cell) <= 2) {
                map.remove(self.key);
            }
            drop(cell);
        }
    }
}

/// Whether `token` is shaped like a JWT (JWS compact serialization): three non-empty base64url
/// segments, the first a JSON object (`{"` encodes as `eyJ`), at most 16 KiB long.
/// ServiceAccount tokens, bound or legacy, and OIDC ID tokens all are.
pub fn looks_like_jwt(token: &str) -> bool {
    let base64url = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut segments = token.split('.');
    token.len() <= MAX_TOKEN_LEN
        && token.starts_with("eyJ")
        && segments.by_ref().take(3).filter(|s| base64url(s)).count() == 3
        && segments.next().is_none()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    token: [u8; 32],
    path: String,
    verb: String,
}

impl Authorizer {
    /// An authorizer using `client`'s identity for the reviews (it needs `create` on
    /// `tokenreviews.authentication.k8s.io` and `subjectaccessreviews.authorization.k8s.io`).
    pub fn new(client: kube::Client) -> Result<Arc<Self>, crate::TlsError> {
        Self::with_budget(client, REVIEWS_PER_SECOND, REVIEW_BURST)
    }

    fn with_budget(
        client: kube::Client,
        rate: f64,
        burst: f64,
    ) -> Result<Arc<Self>, crate::TlsError> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| crate::TlsError::Random)?;
        Ok(Arc::new(Self {
            client,
            key,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            budget: Mutex::new(TokenBucket::new(rate, burst)),
        }))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Verdict, Instant)>> {
        lock(&self.cache)
    }

    fn lookup(&self, key: &CacheKey, now: Instant) -> Lookup {
        match self.cache().get(key) {
            Some((v, expires)) if *expires > now => Lookup::Fresh(v.clone()),
            Some((Verdict::Allowed, expires)) if *expires + KNOWN_FOR > now => Lookup::Known,
            _ => Lookup::Unknown,
        }
    }

    /// The verdict for `token` (the bearer token, if any) doing `verb` on `path`.
    pub async fn authorize(&self, token: Option<&str>, path: &str, verb: &str) -> Verdict {
        let Some(token) = token.filter(|t| looks_like_jwt(t)) else {
            return Verdict::Unauthenticated;
        };
        let mut mac = [0u8; 32];
        mac.copy_from_slice(ring::hmac::sign(&self.key, token.as_bytes()).as_ref());
        let key = CacheKey {
            token: mac,
            path: path.to_string(),
            verb: verb.to_string(),
        };
        if let Lookup::Fresh(v) = self.lookup(&key, Instant::now()) {
            return v;
        }
        let cell = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let share = Inflight {
            map: &self.inflight,
            key: &key,
            cell: Some(cell.clone()),
        };
        let verdict = cell
            .get_or_init(|| self.review_and_cache(token, &key))
            .await
            .clone();
        drop(share);
        verdict
    }

    async fn review_and_cache(&self, token: &str, key: &CacheKey) -> Verdict {
        // Looked up again: a review of the same question may have ended since.
        let known = match self.lookup(key, Instant::now()) {
            Lookup::Fresh(v) => return v,
            Lookup::Known => true,
            Lookup::Unknown => false,
        };
        if !known {
            if let Err(retry_after) = lock(&self.budget).take(Instant::now()) {
                return Verdict::Throttled { retry_after };
            }
        }
        let verdict = self.review(token, &key.path, &key.verb).await;
        let ttl = match &verdict {
            Verdict::Allowed => ALLOWED_TTL,
            Verdict::Forbidden { .. } => DENIED_TTL,
            Verdict::Unauthenticated => UNAUTHENTICATED_TTL,
            Verdict::ReviewFailed { .. } | Verdict::Throttled { .. } => return verdict,
        };
        let now = Instant::now();
        let mut cache = self.cache();
        if !cache.contains_key(key) && cache.len() >= CACHE_ENTRIES {
            make_room(&mut cache, now);
        }
        cache.insert(key.clone(), (verdict.clone(), now + ttl));
        verdict
    }

    async fn review(&self, token: &str, path: &str, verb: &str) -> Verdict {
        let user = match self.token_review(token).await {
            Ok(Some(user)) => user,
            Ok(None) => return Verdict::Unauthenticated,
            Err(error) => {
                return Verdict::ReviewFailed {
                    review: "TokenReview",
                    error,
                }
            }
        };
        let name = user.username.clone().unwrap_or_default();
        match self.access_review(user, path, verb).await {
            Ok(true) => Verdict::Allowed,
            Ok(false) => Verdict::Forbidden { user: name },
            Err(error) => Verdict::ReviewFailed {
                review: "SubjectAccessReview",
                error,
            },
        }
    }

    /// The user behind `token`, or `None` when the apiserver does not authenticate it.
    async fn token_review(&self, token: &str) -> Result<Option<UserInfo>, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| format!("no answer within {REVIEW_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
        Ok(answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user))
    }

    async fn access_review(&self, user: UserInfo, path: &str, verb: &str) -> Result<bool, String> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| format!("no answer within {REVIEW_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// Frees at least one place in a full cache, giving up allowed verdicts last: first what has
/// expired (except recently allowed tokens), then "not authenticated", then "forbidden", and
/// only then the allowed entry that expires first.
fn make_room(cache: &mut HashMap<CacheKey, (Verdict, Instant)>, now: Instant) {
    cache.retain(|_, (v, expires)| {
        *expires > now || (*v == Verdict::Allowed && *expires + KNOWN_FOR > now)
    });
    if cache.len() >= CACHE_ENTRIES {
        cache.retain(|_, (v, _)| *v != Verdict::Unauthenticated);
    }
    if cache.len() >= CACHE_ENTRIES {
        cache.retain(|_, (v, _)| !matches!(v, Verdict::Forbidden { .. }));
    }
    while cache.len() >= CACHE_ENTRIES {
        let Some(first) = cache
            .iter()
            .min_by_key(|(_, (_, expires))| *expires)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        cache.remove(&first);
    }
}

/// The bearer token of an `Authorization` header (scheme case-insensitive, as RFC 7235 says).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The RBAC verb of a request on a non-resource URL, as the apiserver maps HTTP methods.
pub fn verb_of(method: &Method) -> String {
    match *method {
        Method::GET | Method::HEAD => "get".into(),
        Method::POST => "post".into(),
        Method::PUT => "put".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => "delete".into(),
        ref other => other.as_str().to_ascii_lowercase(),
    }
}

/// axum middleware: lets the request through only when the bearer token's user may do it.
/// Use with `Router::route_layer(axum::middleware::from_fn_with_state(authorizer,
/// require_authorization))` on the protected routes.
pub async fn require_authorization(
    State(auth): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let verb = verb_of(request.method());
    let verdict = auth
        .authorize(bearer_token(request.headers()), &path, &verb)
        .await;
    match verdict {
        Verdict::Allowed => next.run(request).await,
        refused => refusal(refused, &path, &verb),
    }
}

/// The answer to a request that is not let through.
fn refusal(verdict: Verdict, path: &str, verb: &str) -> Response {
    match verdict {
        Verdict::Allowed | Verdict::Unauthenticated => unauthorized(),
        Verdict::Forbidden { user } => {
            tracing::debug!(%user, %path, %verb, "forbidden");
            (StatusCode::FORBIDDEN, "Forbidden\n").into_response()
        }
        Verdict::ReviewFailed { review, error } => {
            tracing::warn!(review, %error, %path, "cannot check a request's token with the apiserver");
            if review == "TokenReview" {
                unauthorized()
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n").into_response()
            }
        }
        Verdict::Throttled { retry_after } => {
            tracing::debug!(%path, ?retry_after, "too many token reviews, not asking the apiserver");
            // Whole seconds, rounded up: Retry-After has no fractions.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, seconds.max(1).to_string())],
                "Too Many Requests\n",
            )
                .into_response()
        }
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "Unauthorized\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// The token the fake apiserver knows (alice's).
    const GOOD: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    /// A JWT-shaped token the fake apiserver does not know.
    fn junk(i: usize) -> String {
        format!("eyJhbGciOiJSUzI1NiJ9.eyJqdW5rIjo{i}.c2ln")
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer_token(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&h("Basic abc")), None);
        assert_eq!(bearer_token(&h("Bearer ")), None);
        assert_eq!(bearer_token(&h("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    /// An in-memory apiserver for the two reviews: token [`GOOD`] is user alice, anything else
    /// is not authenticated; alice may get /metrics only. `fail` makes the next TokenReview
    /// answer 500. Counts the reviews.
    async fn fake_apiserver(
        fail: Arc<std::sync::atomic::AtomicBool>,
    ) -> (kube::Client, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::post;
        use axum::Json;
        let calls = Arc::new(AtomicUsize::new(0));
        let (c1, c2) = (calls.clone(), calls.clone());
        let app = axum::Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(move |Json(tr): Json<TokenReview>| async move {
                    c1.fetch_add(1, Ordering::SeqCst);
                    if fail.swap(false, Ordering::SeqCst) {
                        return Err(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    let good = tr.spec.token.as_deref() == Some(GOOD);
                    Ok(Json(serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "metadata": {}, "spec": {},
                        "status": if good {
                            serde_json::json!({"authenticated": true,
                                "user": {"username": "alice", "groups": ["g"]}})
                        } else {
                            serde_json::json!({"authenticated": false, "error": "invalid"})
                        },
                    })))
                }),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(move |Json(sar): Json<SubjectAccessReview>| async move {
                    c2.fetch_add(1, Ordering::SeqCst);
                    let a = sar.spec.non_resource_attributes.unwrap_or_default();
                    let allowed = sar.spec.user.as_deref() == Some("alice")
                        && sar.spec.groups == Some(vec!["g".to_string()])
                        && a.path.as_deref() == Some("/metrics")
                        && a.verb.as_deref() == Some("get");
                    Json(serde_json::json!({
                        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                        "metadata": {}, "spec": {}, "status": {"allowed": allowed},
                    }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (kube::Client::try_from(config).unwrap(), calls)
    }

    #[tokio::test]
    async fn verdicts_are_cached_and_failures_are_not() {
        let fail = Arc::new(AtomicBool::new(false));
        let (client, calls) = fake_apiserver(fail.clone()).await;
        let auth = Authorizer::new(client).unwrap();
        let calls = || calls.load(Ordering::SeqCst);

        assert_eq!(
            auth.authorize(None, "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(
            auth.authorize(Some(""), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 0, "no token, no review");

        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 2, "one TokenReview, one SubjectAccessReview");
        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 2, "cached");
        assert_eq!(
            auth.authorize(Some(GOOD), "/status", "get").await,
            Verdict::Forbidden {
                user: "alice".into()
            }
        );
        assert_eq!(calls(), 4, "another path is another question");
        assert_eq!(
            auth.authorize(Some(&junk(1)), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(
            auth.authorize(Some(&junk(1)), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 5, "a bad token is reviewed once, then cached");

        fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            auth.authorize(Some(&junk(2)), "/metrics", "get").await,
            Verdict::ReviewFailed {
                review: "TokenReview",
                ..
            }
        ));
        assert_eq!(
            auth.authorize(Some(&junk(2)), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 7, "a failed review is not cached");

        let long = format!("{GOOD}{}", "x".repeat(MAX_TOKEN_LEN));
        assert_eq!(
            auth.authorize(Some(&long), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 7);
    }

    #[test]
    fn verbs() {
        assert_eq!(verb_of(&Method::GET), "get");
        assert_eq!(verb_of(&Method::HEAD), "get");
        assert_eq!(verb_of(&Method::DELETE), "delete");
    }

    #[test]
    fn only_jwt_shaped_tokens_are_reviewed() {
        assert!(looks_like_jwt(GOOD));
        assert!(looks_like_jwt(&junk(7)));
        for bad in [
            "",
            "good",
            "abcdef.0123456789abcdef",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln.ZXh0cmE",
            "eyJhbGciOiJSUzI1NiJ9..c2ln",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIi+OiJhbGljZSJ9.c2ln",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln=",
            "YWJj.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ] {
            assert!(!looks_like_jwt(bad), "{bad:?}");
        }
        assert!(!looks_like_jwt(&format!(
            "{GOOD}{}",
            "x".repeat(MAX_TOKEN_LEN)
        )));
    }

    #[tokio::test]
    async fn junk_bearer_strings_cost_no_review() {
        let (client, calls) = fake_apiserver(Arc::new(AtomicBool::new(false))).await;
        let auth = Authorizer::new(client).unwrap();
        for i in 0..100 {
            let junk = format!("junk-{i}");
            assert_eq!(
                auth.authorize(Some(&junk), "/metrics", "get").await,
                Verdict::Unauthenticated
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn reviews_of_unknown_tokens_are_rate_limited_but_not_of_allowed_ones() {
        let (client, calls) = fake_apiserver(Arc::new(AtomicBool::new(false))).await;
        // Next to no refill: the test does not depend on how fast it runs.
        let auth = Authorizer::with_budget(client, 1e-6, 3.0).unwrap();
        let calls = || calls.load(Ordering::SeqCst);

        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 2);
        for i in 0..2 {
            assert_eq!(
                auth.authorize(Some(&junk(i)), "/metrics", "get").await,
                Verdict::Unauthenticated
            );
        }
        assert_eq!(calls(), 4, "the budget of three is spent");
        for i in 2..50 {
            assert!(matches!(
                auth.authorize(Some(&junk(i)), "/metrics", "get").await,
                Verdict::Throttled { retry_after } if retry_after > Duration::ZERO
            ));
        }
        assert_eq!(calls(), 4, "over the budget, the apiserver is not asked");
        assert!(
            matches!(
                auth.authorize(Some(GOOD), "/status", "get").await,
                Verdict::Throttled { .. }
            ),
            "a question not asked before waits for the budget"
        );

        // Alice's verdict expires: her token is re-reviewed outside the budget.
        for (_, expires) in auth.cache().values_mut() {
            *expires = Instant::now() - Duration::from_secs(1);
        }
        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 6);
        // Whereas an expired "not authenticated" is not a free pass.
        assert!(matches!(
            auth.authorize(Some(&junk(0)), "/metrics", "get").await,
            Verdict::Throttled { .. }
        ));
        assert_eq!(calls(), 6);
    }

    #[test]
    fn throttled_is_429_with_retry_after() {
        let answer = refusal(
            Verdict::Throttled {
                retry_after: Duration::from_millis(1200),
            },
            "/metrics",
            "get",
        );
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            refusal(Verdict::Unauthenticated, "/metrics", "get").status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_flood_of_invalid_tokens_does_not_evict_allowed_verdicts() {
        let (client, calls) = fake_apiserver(Arc::new(AtomicBool::new(false))).await;
        // A budget that never runs out, to fill the cache.
        let auth = Authorizer::with_budget(client, 1e6, 1e6).unwrap();
        let calls = || calls.load(Ordering::SeqCst);
        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        for i in 0..2 * CACHE_ENTRIES {
            assert_eq!(
                auth.authorize(Some(&junk(i)), "/metrics", "get").await,
                Verdict::Unauthenticated
            );
        }
        assert!(auth.cache().len() <= CACHE_ENTRIES);
        let before = calls();
        assert_eq!(
            auth.authorize(Some(GOOD), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), before, "alice's verdict is still cached");
    }

    #[test]
    fn a_full_cache_gives_up_allowed_verdicts_last() {
        let now = Instant::now();
        let key = |i: usize| CacheKey {
            token: [0; 32],
            path: format!("/{i}"),
            verb: "get".into(),
        };
        let forbidden = Verdict::Forbidden { user: "u".into() };
        let mut cache = HashMap::new();
        for i in 0..CACHE_ENTRIES {
            let verdict = match i % 4 {
                0 => Verdict::Allowed,
                1 => forbidden.clone(),
                _ => Verdict::Unauthenticated,
            };
            cache.insert(key(i), (verdict, now + Duration::from_secs(60)));
        }
        make_room(&mut cache, now);
        assert!(cache.len() < CACHE_ENTRIES);
        assert!(cache.values().all(|(v, _)| *v != Verdict::Unauthenticated));
        assert_eq!(
            cache
                .values()
                .filter(|(v, _)| *v == Verdict::Allowed)
                .count(),
            CACHE_ENTRIES / 4
        );

        // Only allowed verdicts: the one expiring first goes.
        let mut cache = HashMap::new();
        for i in 0..CACHE_ENTRIES {
            let expires = now + Duration::from_secs(10 + i as u64);
            cache.insert(key(i), (Verdict::Allowed, expires));
        }
        make_room(&mut cache, now);
        assert_eq!(cache.len(), CACHE_ENTRIES - 1);
        assert!(!cache.contains_key(&key(0)));
    }

    #[tokio::test]
    async fn concurrent_identical_questions_share_one_review() {
        let (client, calls) = fake_apiserver(Arc::new(AtomicBool::new(false))).await;
        let auth = Authorizer::new(client).unwrap();
        let asks = (0..10).map(|_| auth.authorize(Some(GOOD), "/metrics", "get"));
        let verdicts = tokio::time::timeout(Duration::from_secs(30), join_all(asks))
            .await
            .unwrap();
        assert!(verdicts.iter().all(|v| *v == Verdict::Allowed));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one TokenReview, one SAR");
        assert!(lock(&auth.inflight).is_empty());
    }

    /// Polls all of `futures` together (the crate has no `futures` dependency).
    async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, o) in set.iter_mut().zip(out.iter_mut()) {
                if o.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *o = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }
}
