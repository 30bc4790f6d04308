//! The Linode API v4 subset: routes, the auth / fault / logging middleware, handlers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::account::{Account, Lookup};
use super::error::ApiError;
use super::filter::Filter;
use super::holds::HeldOperation;
use super::lifecycle::{AssignRequest, CreateLinode};
use super::model::{LinodeId, ShareKey};
use super::pagination::Page;
use super::render::{self, V4Schema};
use super::request_log::{ShareCall, UNMATCHED};
use super::server::App;

type ApiResult = Result<Json<Value>, ApiError>;

/// Filterable fields of `Linode` (`x-linode-filterable` in the spec).
const LINODE_FILTERABLE: &[&str] = &["label", "region", "image", "group", "tags", "id", "ipv4"];
/// Filterable fields of `GET /networking/ips` items.
const IP_FILTERABLE: &[&str] = &["address", "prefix", "type", "rdns", "region"];
/// Linode types: `class` is what a client picks the cheapest type by.
const TYPE_FILTERABLE: &[&str] = &["class", "id", "label", "vcpus", "memory", "disk"];
/// `IPv6Range` has no filterable field.
const RANGE_FILTERABLE: &[&str] = &[];

/// The API routes, mounted by the server under `/v4` and `/v4beta`. Path parameters are
/// named as in the spec so a route's template is the spec's path key.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/linode/instances", get(list_linodes).post(create_linode))
        .route("/linode/types", get(list_types))
        .route(
            "/linode/instances/{linodeId}",
            get(get_linode).put(update_linode).delete(delete_linode),
        )
        .route(
            "/linode/instances/{linodeId}/ips",
            get(linode_ips).post(add_linode_ip),
        )
        .route(
            "/linode/instances/{linodeId}/ips/{address}",
            get(get_linode_ip)
                .put(update_linode_ip)
                .delete(remove_linode_ip),
        )
        .route("/networking/ips", get(list_ips).post(allocate_ip))
        .route("/networking/ips/{address}", get(get_ip).put(update_ip))
        .route("/networking/ips/assign", post(assign_ips))
        .route("/networking/ips/share", post(share))
        .route("/networking/ipv4/share", post(share))
        .route(
            "/networking/ipv6/ranges",
            get(list_ranges).post(create_range),
        )
        .route(
            "/networking/ipv6/ranges/{range}",
            get(get_range).delete(delete_range),
        )
        .merge(super::reserved::routes())
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

/// Answer for paths that match no route.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// `/v4/x` and `/v4beta/x` → `/x`.
pub(crate) fn strip_version(path: &str) -> &str {
    path.strip_prefix("/v4beta")
        .or_else(|| path.strip_prefix("/v4"))
        .unwrap_or(path)
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length leaks, content does not: enough for a test server, and cheap.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Latency, injected faults, auth, then the handler; every answer is counted.
pub(crate) async fn api_layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |m| strip_version(m.as_str()))
        .to_owned();
    // Counted until the answer leaves, or until the client goes away and the request is
    // dropped.
    let _in_flight = app.log.begin(method.as_str(), &template);
    let latency = app.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = if let Some(fault) = app.faults.take(&method, &path, strip_version(&path)) {
        tracing::info!(%method, %path, status = fault.status.as_u16(), "injected fault");
        fault.into_response()
    } else if !authorized(req.headers(), app.token.expose()) {
        ApiError::unauthorized().into_response()
    } else {
        next.run(req).await
    };
    let status = resp.status().as_u16();
    tracing::debug!(%method, %path, %template, status, "api request");
    app.log.record(method.as_str(), &template, status);
    let delay = app.faults.reply_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::invalid_json())
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match parse_body(body)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Request body must be a JSON object",
            None,
        )),
    }
}

fn req_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            Err(ApiError::bad_request(format!("{field} is required"), field))
        }
        Some(v) => Ok(v),
    }
}

fn req_id(obj: &Map<String, Value>, field: &str) -> Result<LinodeId, ApiError> {
    req_field(obj, field)?
        .as_u64()
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be an integer"), field))
}

fn req_bool(obj: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    req_field(obj, field)?
        .as_bool()
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be a boolean"), field))
}

fn req_ipv4_type(obj: &Map<String, Value>) -> Result<(), ApiError> {
    match req_field(obj, "type")?.as_str() {
        Some("ipv4") => Ok(()),
        _ => Err(ApiError::bad_request(
            "Only IPv4 addresses may be allocated",
            "type",
        )),
    }
}

fn rdns_field(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match obj.get("rdns") {
        None => Err(ApiError::bad_request("rdns is required", "rdns")),
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(
            "rdns must be a string or null",
            "rdns",
        )),
    }
}

/// Linode IDs in paths: anything that is not a known integer ID is "Not found".
fn path_id(raw: &str) -> Result<LinodeId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

fn path_ip(raw: &str) -> Result<IpAddr, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

/// A paginated, filtered list answer.
pub(crate) fn list(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    filterable: &[&str],
    items: Vec<Value>,
) -> ApiResult {
    let page = Page::from_query(q)?;
    let items = match headers.get("x-filter") {
        None => items,
        Some(h) => {
            let text = h.to_str().map_err(|_| {
                ApiError::bad_request("X-Filter must be a valid JSON object", "X-Filter")
            })?;
            Filter::parse(text, filterable)?.apply(items)
        }
    };
    Ok(Json(page.envelope(items)))
}

async fn list_linodes(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let items = app
        .state
        .read(|a| a.linodes.values().map(|l| render::linode(a, l)).collect());
    list(&headers, &q, LINODE_FILTERABLE, items)
}

async fn get_linode(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = path_id(&id)?;
    app.state
        .read(|a| Ok(Json(render::linode(a, a.linode(id)?))))
}

async fn update_linode(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = path_id(&id)?;
    let body = parse_body(&body)?;
    app.state.write(|a| {
        let l = a.update_linode(id, &body)?;
        Ok(Json(render::linode(a, &l)))
    })
}

async fn delete_linode(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = path_id(&id)?;
    app.state.write(|a| a.delete_linode_api(id))?;
    tracing::info!(linode_id = id, "linode deleted");
    Ok(Json(json!({})))
}

async fn linode_ips(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = path_id(&id)?;
    app.state
        .read(|a| Ok(Json(render::linode_ips(a, a.linode(id)?))))
}

async fn add_linode_ip(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = path_id(&id)?;
    let obj = body_object(&body)?;
    let knobs = app.faults.allocation();
    let rec = app.state.write(|a| {
        a.linode(id)?;
        req_ipv4_type(&obj)?;
        let public = req_bool(&obj, "public")?;
        a.allocate_api(id, public, &knobs)
    })?;
    tracing::info!(linode_id = id, address = %rec.address, "ipv4 allocated");
    app.holds.hold(HeldOperation::Ipv4Allocate).await;
    Ok(Json(render::ipv4(&rec, V4Schema::IpAddress)))
}

/// An address as seen from Linode `id`: its own IPv4s, IPv4s shared with it, its SLAAC and
/// link-local addresses.
fn linode_address(a: &Account, id: LinodeId, ip: IpAddr) -> Result<Value, ApiError> {
    let l = a.linode(id)?;
    match a.lookup(ip) {
        Some(Lookup::V4(rec))
            if rec.linode_id == id
                || a.shared_list(id).any(|k| *k == ShareKey::V4(rec.address)) =>
        {
            Ok(render::account_ipv4(a, rec, V4Schema::IpAddress))
        }
        Some(Lookup::Slaac(o)) if o.id == l.id => Ok(render::slaac(l, true, false)),
        Some(Lookup::LinkLocal(o)) if o.id == l.id => Ok(render::link_local(l, true)),
        _ => Err(ApiError::not_found()),
    }
}

async fn get_linode_ip(
    State(app): State<Arc<App>>,
    Path((id, address)): Path<(String, String)>,
) -> ApiResult {
    let id = path_id(&id)?;
    let ip = path_ip(&address)?;
    app.state.read(|a| linode_address(a, id, ip).map(Json))
}

async fn update_linode_ip(
    State(app): State<Arc<App>>,
    Path((id, address)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let id = path_id(&id)?;
    let ip = path_ip(&address)?;
    let obj = body_object(&body)?;
    app.state.write(|a| {
        // Only the Linode's own addresses: shared ones belong to another Linode.
        match a.lookup(ip) {
            Some(Lookup::V4(rec)) if rec.linode_id == id => {}
            Some(Lookup::Slaac(l)) if l.id == id => {}
            _ => {
                a.linode(id)?;
                return Err(ApiError::not_found());
            }
        }
        a.set_rdns(ip, rdns_field(&obj)?)?;
        linode_address(a, id, ip).map(Json)
    })
}

async fn remove_linode_ip(
    State(app): State<Arc<App>>,
    Path((id, address)): Path<(String, String)>,
) -> ApiResult {
    let id = path_id(&id)?;
    let ip = match path_ip(&address)? {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Only IPv4 addresses can be deleted",
                None,
            ));
        }
    };
    app.state.write(|a| {
        a.remove_ipv4(id, ip)?;
        a.counters.ipv4_deleted += 1;
        Ok(())
    })?;
    tracing::info!(linode_id = id, address = %ip, "ipv4 deleted");
    Ok(Json(json!({})))
}

async fn list_ips(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    // The spec marks this GET's body `required`; clients send none, so none is fine.
    let skip_ipv6_rdns = if body.is_empty() {
        false
    } else {
        match body_object(&body)?.get("skip_ipv6_rdns") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "skip_ipv6_rdns must be a boolean",
                    "skip_ipv6_rdns",
                ))
            }
        }
    };
    let items = app.state.read(|a| {
        let mut items: Vec<Value> = a
            .ipv4
            .values()
            .filter(|r| r.public)
            .map(|r| render::account_ipv4(a, r, V4Schema::IpAddress))
            .collect();
        // Reserved addresses on no Linode are listed too, as recorded at Linode.
        items.extend(
            a.reserved
                .values()
                .filter(|r| !a.ipv4.contains_key(&r.address))
                .map(|r| super::reserved::render(a, r)),
        );
        items.extend(
            a.linodes
                .values()
                .map(|l| render::slaac(l, true, skip_ipv6_rdns)),
        );
        items
    });
    list(&headers, &q, IP_FILTERABLE, items)
}

async fn allocate_ip(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let obj = body_object(&body)?;
    req_ipv4_type(&obj)?;
    let public = req_bool(&obj, "public")?;
    let id = req_id(&obj, "linode_id")?;
    let knobs = app.faults.allocation();
    let rec = app.state.write(|a| {
        if !a.linodes.contains_key(&id) {
            return Err(ApiError::bad_request("Linode not found", "linode_id"));
        }
        a.allocate_api(id, public, &knobs)
    })?;
    tracing::info!(linode_id = id, address = %rec.address, "ipv4 allocated");
    app.holds.hold(HeldOperation::Ipv4Allocate).await;
    Ok(Json(render::ipv4(&rec, V4Schema::IpAddress)))
}

fn account_address(a: &Account, ip: IpAddr) -> Result<Value, ApiError> {
    match a.lookup(ip) {
        Some(Lookup::V4(rec)) => Ok(render::account_ipv4(a, rec, V4Schema::IpAddress)),
        Some(Lookup::Slaac(l)) => Ok(render::slaac(l, true, false)),
        Some(Lookup::LinkLocal(l)) => Ok(render::link_local(l, true)),
        None => match ip {
            // A reserved address on no Linode.
            IpAddr::V4(v4) => a
                .reserved
                .get(&v4)
                .map(|r| super::reserved::render(a, r))
                .ok_or_else(ApiError::not_found),
            IpAddr::V6(_) => Err(ApiError::not_found()),
        },
    }
}

async fn get_ip(State(app): State<Arc<App>>, Path(address): Path<String>) -> ApiResult {
    let ip = path_ip(&address)?;
    app.state.read(|a| account_address(a, ip).map(Json))
}

async fn update_ip(
    State(app): State<Arc<App>>,
    Path(address): Path<String>,
    body: Bytes,
) -> ApiResult {
    let ip = path_ip(&address)?;
    let obj = body_object(&body)?;
    app.state.write(|a| {
        if matches!(a.lookup(ip), None | Some(Lookup::LinkLocal(_))) {
            return Err(ApiError::not_found());
        }
        a.set_rdns(ip, rdns_field(&obj)?)?;
        account_address(a, ip).map(Json)
    })
}

/// `POST /networking/ips/assign`: moves addresses and ranges between Linodes of one region.
async fn assign_ips(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let value = parse_body(&body)?;
    let req: AssignRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid request: {e}"),
            None,
        )
    })?;
    app.state.write(|a| a.assign(&req))?;
    tracing::info!(region = %req.region, assignments = req.assignments.len(), "ips assigned");
    Ok(Json(json!({})))
}

/// `POST /linode/instances`.
async fn create_linode(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let knobs = app.faults.allocation();
    if let Some(f) = &knobs.linode_create_failure {
        return Err(ApiError::new(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            f.reason.clone(),
            None,
        ));
    }
    let req = CreateLinode::parse(&body)?;
    let (linode, body) = app.state.write(|a| {
        let l = a.create_linode_api(&req, &knobs)?;
        let body = render::linode(a, &l);
        Ok((l, body))
    })?;
    tracing::info!(linode_id = linode.id, label = %linode.label, region = %linode.region, "linode created");
    app.holds.hold(HeldOperation::LinodeCreate).await;
    Ok(Json(body))
}

/// `GET /linode/types`.
async fn list_types(Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> ApiResult {
    let items = super::types::LINODE_TYPES
        .iter()
        .map(super::types::LinodeType::render)
        .collect();
    list(&headers, &q, TYPE_FILTERABLE, items)
}

/// `POST /networking/ips/share` and `POST /networking/ipv4/share`: sets the Linode's whole
/// shared list.
async fn share(State(app): State<Arc<App>>, matched: MatchedPath, body: Bytes) -> Response {
    let template = strip_version(matched.as_str()).to_owned();
    let parsed = parse_body(&body);
    let obj = parsed.as_ref().ok().and_then(Value::as_object);
    let mut call = ShareCall {
        template,
        linode_id: obj.and_then(|o| o.get("linode_id")).and_then(Value::as_u64),
        ips: obj
            .and_then(|o| o.get("ips"))
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect()),
        status: 200,
    };
    let result = parsed.and_then(|v| share_inner(&app, v));
    let resp = match result {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => {
            tracing::info!(linode_id = ?call.linode_id, status = e.status.as_u16(), error = %e, "share call rejected");
            e.into_response()
        }
    };
    call.status = resp.status().as_u16();
    app.log.record_share(call);
    resp
}

fn share_inner(app: &App, body: Value) -> Result<(), ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Request body must be a JSON object",
            None,
        )
    })?;
    let linode_id = req_id(obj, "linode_id")?;
    let ips: Vec<String> = req_field(obj, "ips")?
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ApiError::bad_request("ips must be a list of IP addresses", "ips"))?;
    if let Some(e) = app.faults.share_failure(linode_id) {
        return Err(e);
    }
    let changed = app.state.write(|a| a.set_shared(linode_id, &ips))?;
    tracing::info!(linode_id, ips = ?ips, changed, "shared list set");
    Ok(())
}

async fn list_ranges(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let items = app.state.read(|a| {
        a.ranges
            .values()
            .map(|r| render::ipv6_range(a, r))
            .collect()
    });
    list(&headers, &q, RANGE_FILTERABLE, items)
}

async fn create_range(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let obj = body_object(&body)?;
    let prefix = match req_field(&obj, "prefix_length")?.as_u64() {
        Some(56) => 56,
        Some(64) => 64,
        _ => {
            return Err(ApiError::bad_request(
                "prefix_length must be 56 or 64",
                "prefix_length",
            ))
        }
    };
    let by_id = obj.get("linode_id").filter(|v| !v.is_null());
    let by_target = obj.get("route_target").filter(|v| !v.is_null());
    let created = app.state.write(|a| {
        let owner = match (by_id, by_target) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "linode_id and route_target are mutually exclusive",
                    "route_target",
                ))
            }
            (None, None) => return Err(ApiError::bad_request("linode_id or route_target is required", "linode_id")),
            (Some(v), None) => {
                let id = v
                    .as_u64()
                    .ok_or_else(|| ApiError::bad_request("linode_id must be an integer", "linode_id"))?;
                a.linodes
                    .get(&id)
                    .map(|l| l.id)
                    .ok_or_else(|| ApiError::bad_request("Linode not found", "linode_id"))?
            }
            (None, Some(v)) => {
                let target: Ipv6Addr = v
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ApiError::bad_request("route_target must be an IPv6 address", "route_target"))?;
                a.linodes
                    .values()
                    .find(|l| l.slaac == target)
                    .map(|l| l.id)
                    .ok_or_else(|| ApiError::bad_request("route_target is not the SLAAC address of one of your Linodes", "route_target"))?
            }
        };
        let r = a.create_range_api(owner, prefix)?;
        a.counters.ranges_created += 1;
        let target = a.linode(owner)?.slaac;
        Ok(json!({"range": format!("{}/{}", r.range, r.prefix), "route_target": target.to_string()}))
    }).map(Json)?;
    tracing::info!(range = %created["range"], "ipv6 range created");
    app.holds.hold(HeldOperation::RangeCreate).await;
    Ok(created)
}

fn path_range(raw: &str) -> Result<Ipv6Addr, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

async fn get_range(State(app): State<Arc<App>>, Path(range): Path<String>) -> ApiResult {
    let base = path_range(&range)?;
    app.state.read(|a| {
        let r = a.ranges.get(&base).ok_or_else(ApiError::not_found)?;
        Ok(Json(render::ipv6_range_bgp(a, r)))
    })
}

async fn delete_range(State(app): State<Arc<App>>, Path(range): Path<String>) -> ApiResult {
    let base = path_range(&range)?;
    app.state.write(|a| {
        a.delete_range(base)?;
        a.counters.ranges_deleted += 1;
        Ok(())
    })?;
    tracing::info!(range = %base, "ipv6 range deleted");
    Ok(Json(json!({})))
}
