//! The admin API under `/_standin` (no auth): seed state, read the sharing state and the
//! request counts, set faults. Errors use the same `{"errors":[...]}` body as the API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::faults::{AllocationKnobs, FaultRule, ShareFailure};
use super::holds::HeldOperation;
use super::model::{LinodeId, NewIpv4, NewIpv6Range, NewLinode};
use super::render::{self, V4Schema};
use super::seed::{Seed, SeedShare};
use super::server::App;

type AdminResult = Result<Json<Value>, ApiError>;

/// Longest a `GET /_standin/sharing?after=N` waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/_standin/healthz", get(|| async { "ok" }))
        .route("/_standin/state", get(dump))
        .route("/_standin/seed", post(seed))
        .route("/_standin/reset", post(reset))
        .route("/_standin/linodes", post(create_linode))
        .route("/_standin/linodes/{id}", delete(delete_linode))
        .route("/_standin/ipv4", post(add_ipv4))
        .route("/_standin/ipv6-ranges", post(add_range))
        .route("/_standin/share", post(share))
        .route("/_standin/sharing", get(sharing))
        .route("/_standin/requests", get(requests).delete(reset_requests))
        .route("/_standin/faults", get(faults).delete(clear_faults))
        .route("/_standin/faults/http", post(add_fault))
        .route("/_standin/faults/latency", put(set_latency))
        .route("/_standin/faults/reply-delay", put(set_reply_delay))
        .route("/_standin/counters", get(counters))
        .route(
            "/_standin/faults/allocation",
            get(allocation).put(set_allocation),
        )
        .route("/_standin/holds", get(holds).put(arm_hold))
        .route("/_standin/holds/release", post(release_holds))
        .route(
            "/_standin/faults/share/{id}",
            put(fail_share).delete(clear_share_failure),
        )
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}"), "body"))
}

fn path_id(raw: &str) -> Result<LinodeId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

async fn dump(State(app): State<Arc<App>>) -> AdminResult {
    serde_json::to_value(app.state.dump())
        .map(Json)
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                None,
            )
        })
}

async fn seed(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let seed: Seed = parse(&body)?;
    app.state.apply_seed(&seed)?;
    Ok(Json(json!({})))
}

async fn reset(State(app): State<Arc<App>>) -> AdminResult {
    app.state.reset();
    app.faults.clear();
    app.holds.clear();
    app.log.reset();
    Ok(Json(json!({})))
}

async fn create_linode(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let spec: NewLinode = parse(&body)?;
    let l = app.state.create_linode(&spec)?;
    Ok(Json(app.state.read(|a| render::linode(a, &l))))
}

async fn delete_linode(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    app.state.delete_linode(path_id(&id)?)?;
    Ok(Json(json!({})))
}

async fn add_ipv4(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let spec: NewIpv4 = parse(&body)?;
    let rec = app.state.add_ipv4(&spec)?;
    Ok(Json(render::ipv4(&rec, V4Schema::IpAddress)))
}

async fn add_range(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let spec: NewIpv6Range = parse(&body)?;
    let r = app.state.add_ipv6_range(&spec)?;
    Ok(Json(app.state.read(|a| render::ipv6_range(a, &r))))
}

async fn share(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let s: SeedShare = parse(&body)?;
    app.state.write(|a| a.set_shared(s.linode_id, &s.ips))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct SharingQuery {
    /// Wait until the version is greater than this.
    after: Option<u64>,
    /// How long to wait at most (ms, capped at 30 s).
    timeout_ms: Option<u64>,
}

/// The sharing view; with `?after=N`, waits (bounded) until its version exceeds N.
async fn sharing(State(app): State<Arc<App>>, Query(q): Query<SharingQuery>) -> AdminResult {
    let mut rx = app.state.subscribe();
    if let Some(after) = q.after {
        let wait = q
            .timeout_ms
            .map_or(MAX_WAIT, Duration::from_millis)
            .min(MAX_WAIT);
        // A timeout just returns the current view; the caller compares versions.
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.version > after)).await;
    }
    let snap = rx.borrow().clone();
    serde_json::to_value(snap).map(Json).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        )
    })
}

async fn requests(State(app): State<Arc<App>>) -> AdminResult {
    Ok(Json(json!({
        "counts": app.log.counts(),
        "share_calls": app.log.share_calls(),
        "in_flight": app.log.in_flight_counts(),
    })))
}

async fn reset_requests(State(app): State<Arc<App>>) -> AdminResult {
    app.log.reset();
    Ok(Json(json!({})))
}

async fn faults(State(app): State<Arc<App>>) -> AdminResult {
    serde_json::to_value(app.faults.view())
        .map(Json)
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                None,
            )
        })
}

async fn clear_faults(State(app): State<Arc<App>>) -> AdminResult {
    app.faults.clear();
    app.holds.clear();
    Ok(Json(json!({})))
}

async fn add_fault(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let rule: FaultRule = parse(&body)?;
    app.faults.inject(rule)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    ms: u64,
}

async fn set_latency(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let l: Latency = parse(&body)?;
    app.faults.set_latency(Duration::from_millis(l.ms));
    Ok(Json(json!({})))
}

async fn set_reply_delay(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let l: Latency = parse(&body)?;
    app.faults.set_reply_delay(Duration::from_millis(l.ms));
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShareFailureBody {
    status: Option<u16>,
    reason: Option<String>,
}

async fn fail_share(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> AdminResult {
    let b: ShareFailureBody = if body.is_empty() {
        ShareFailureBody::default()
    } else {
        parse(&body)?
    };
    let d = ShareFailure::default();
    app.faults.fail_share_for(
        path_id(&id)?,
        ShareFailure {
            status: b.status.unwrap_or(d.status),
            reason: b.reason.unwrap_or(d.reason),
        },
    )?;
    Ok(Json(json!({})))
}

async fn clear_share_failure(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    app.faults.clear_share_failure(path_id(&id)?);
    Ok(Json(json!({})))
}

fn to_json<T: serde::Serialize>(v: &T) -> AdminResult {
    serde_json::to_value(v).map(Json).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        )
    })
}

async fn counters(State(app): State<Arc<App>>) -> AdminResult {
    to_json(&app.state.read(|a| a.counters().clone()))
}

async fn allocation(State(app): State<Arc<App>>) -> AdminResult {
    to_json(&app.faults.allocation())
}

async fn set_allocation(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let knobs: AllocationKnobs = parse(&body)?;
    app.faults.set_allocation(knobs)?;
    Ok(Json(json!({})))
}

async fn holds(State(app): State<Arc<App>>) -> AdminResult {
    to_json(&app.holds.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmHold {
    operation: HeldOperation,
    count: u32,
}

async fn arm_hold(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let b: ArmHold = parse(&body)?;
    app.holds.arm(b.operation, b.count);
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Release {
    id: Option<u64>,
}

async fn release_holds(State(app): State<Arc<App>>, body: Bytes) -> AdminResult {
    let b: Release = if body.is_empty() {
        Release::default()
    } else {
        parse(&body)?
    };
    let released = app.holds.release(b.id);
    if released == 0 && b.id.is_some() {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({ "released": released })))
}
