//! Bearer-token authentication and authorization through the Kubernetes API, the way
//! controller-runtime's `filters.WithAuthenticationAndAuthorization` and kube-rbac-proxy do it:
//! the token goes to a TokenReview, the user it names to a SubjectAccessReview for the
//! non-resource URL and verb of the request (`get /metrics`). No token or a bad one: 401;
//! a user without the RBAC: 403.
//!
//! Verdicts are cached briefly per (token, path, verb) so a scrape every few seconds costs
//! the apiserver two requests a minute. Tokens are kept only as keyed hashes.

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

/// How long an allowed request's verdict is reused (controller-runtime: 1 min for the
/// authentication).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is reused (controller-runtime caches denials for 30 s).
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// How long "this token is not valid" is reused: short, so a freshly minted token works soon.
pub const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(10);
/// Bound of one TokenReview or SubjectAccessReview call.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the cache; when it is full of live entries it starts over.
const CACHE_ENTRIES: usize = 256;
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
}

/// Asks the apiserver whether a bearer token may `verb` a non-resource `path`.
pub struct Authorizer {
    client: kube::Client,
    key: ring::hmac::Key,
    cache: Mutex<HashMap<CacheKey, (Verdict, Instant)>>,
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
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| crate::TlsError::Random)?;
        Ok(Arc::new(Self {
            client,
            key,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Verdict, Instant)>> {
        match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The verdict for `token` (the bearer token, if any) doing `verb` on `path`.
    pub async fn authorize(&self, token: Option<&str>, path: &str, verb: &str) -> Verdict {
        let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN) else {
            return Verdict::Unauthenticated;
        };
        let mut mac = [0u8; 32];
        mac.copy_from_slice(ring::hmac::sign(&self.key, token.as_bytes()).as_ref());
        let key = CacheKey {
            token: mac,
            path: path.to_string(),
            verb: verb.to_string(),
        };
        let now = Instant::now();
        if let Some((v, expires)) = self.cache().get(&key) {
            if *expires > now {
                return v.clone();
            }
        }
        let verdict = self.review(token, path, verb).await;
        let ttl = match &verdict {
            Verdict::Allowed => ALLOWED_TTL,
            Verdict::Forbidden { .. } => DENIED_TTL,
            Verdict::Unauthenticated => UNAUTHENTICATED_TTL,
            Verdict::ReviewFailed { .. } => return verdict,
        };
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, expires)| *expires > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (verdict.clone(), now + ttl));
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
        Verdict::Unauthenticated => unauthorized(),
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

    /// An in-memory apiserver for the two reviews: token "good" is user alice, anything else
    /// is not authenticated; alice may get /metrics only. `fail` makes the next TokenReview
    /// answer 500. Counts the reviews.
    async fn fake_apiserver(
        fail: Arc<std::sync::atomic::AtomicBool>,
    ) -> (kube::Client, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::post;
        use axum::Json;
        use std::sync::atomic::{AtomicUsize, Ordering};
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
                    let good = tr.spec.token.as_deref() == Some("good");
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
        use std::sync::atomic::{AtomicBool, Ordering};
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
            auth.authorize(Some("good"), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 2, "one TokenReview, one SubjectAccessReview");
        assert_eq!(
            auth.authorize(Some("good"), "/metrics", "get").await,
            Verdict::Allowed
        );
        assert_eq!(calls(), 2, "cached");
        assert_eq!(
            auth.authorize(Some("good"), "/status", "get").await,
            Verdict::Forbidden {
                user: "alice".into()
            }
        );
        assert_eq!(calls(), 4, "another path is another question");
        assert_eq!(
            auth.authorize(Some("bad"), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(
            auth.authorize(Some("bad"), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 5, "a bad token is reviewed once, then cached");

        fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            auth.authorize(Some("other"), "/metrics", "get").await,
            Verdict::ReviewFailed {
                review: "TokenReview",
                ..
            }
        ));
        assert_eq!(
            auth.authorize(Some("other"), "/metrics", "get").await,
            Verdict::Unauthenticated
        );
        assert_eq!(calls(), 7, "a failed review is not cached");

        let long = "x".repeat(MAX_TOKEN_LEN + 1);
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
}
