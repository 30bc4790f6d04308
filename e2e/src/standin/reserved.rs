//! Reserved IPv4 addresses (`/networking/reserved/ips`), experimental.
//!
//! No OpenAPI subset we hold has them, so the shapes, reasons and semantics follow recordings
//! of Linode's API made by its Go client's tests (vendored in `fixtures/reserved/`, see the
//! README there):
//! - a reservation is a public IPv4 address of one region, with tags, assigned to at most one
//!   Linode; `linode_id`, `rdns` and `assigned_entity` are `null` while it is unassigned;
//! - deleting its Linode leaves it on the account, unassigned;
//! - `POST /networking/ips/assign` puts an unassigned one on a Linode of its region;
//! - unreserving an assigned one leaves the address on its Linode as an ordinary (ephemeral)
//!   address, as the recorded `PUT /networking/ips/{address}` with `reserved: false` does.
//!
//! An assigned reserved address is an ordinary address of its Linode for everything else,
//! sharing included. Whether Linode lets a reserved address be shared is unverified.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::account::Account;
use super::api;
use super::error::ApiError;
use super::faults::AllocationKnobs;
use super::server::App;

/// Linode's answer (404) to any reserved-IP call of an account without access to the
/// feature, as a Kubernetes cloud controller logged it (no recording of it is published).
pub const RESERVED_IPS_DENIED_REASON: &str =
    "Account doesn't have permission to access the 'Reserved IPs' feature.";

/// Linode's refusal (400) of a reservation beyond the account's limit, as recorded (with its
/// two spaces).
pub const RESERVED_IPV4_LIMIT_REASON: &str = "Additional Reserved IPv4 addresses require \
     technical justification.  Please contact support describing your requirement.";

/// A reserved IPv4 address; also the entry of a seed's `reserved_ipv4`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The address (public).
    pub address: Ipv4Addr,
    /// Its region; it can only be assigned to Linodes there.
    pub region: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The body of `POST /networking/reserved/ips`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Account {
    /// Whether `address` is reserved.
    pub(crate) fn is_reserved(&self, address: Ipv4Addr) -> bool {
        self.reserved.contains_key(&address)
    }

    /// A reserved address may only go to a Linode of its region.
    pub(crate) fn check_reserved_region(
        &self,
        address: Ipv4Addr,
        region: &str,
    ) -> Result<(), ApiError> {
        match self.reserved.get(&address) {
            Some(r) if r.region != region => Err(ApiError::bad_request(
                format!("{address} is reserved in region {}, not {region}", r.region),
                "address",
            )),
            _ => Ok(()),
        }
    }

    /// Adds a reservation (admin / seed; no limit). An address already on a Linode is
    /// reserved where it is.
    pub fn add_reservation(&mut self, spec: &Reservation) -> Result<(), ApiError> {
        if spec.region.is_empty() {
            return Err(ApiError::bad_request("region is required", "region"));
        }
        if self.is_reserved(spec.address) {
            return Err(ApiError::bad_request(
                format!("{} is already reserved", spec.address),
                "address",
            ));
        }
        if let Some(rec) = self.ipv4.get(&spec.address) {
            if !rec.public || rec.region != spec.region {
                return Err(ApiError::bad_request(
                    format!(
                        "{} is a {} address in region {}",
                        spec.address,
                        if rec.public { "public" } else { "private" },
                        rec.region
                    ),
                    "address",
                ));
            }
        }
        self.reserved.insert(spec.address, spec.clone());
        Ok(())
    }

    /// `POST /networking/reserved/ips`: reserves the next free public address of the pool.
    fn reserve_api(
        &mut self,
        region: &str,
        tags: Vec<String>,
        knobs: &AllocationKnobs,
    ) -> Result<Reservation, ApiError> {
        if !super::lifecycle::valid_region(region) {
            return Err(ApiError::bad_request("region is not valid", "region"));
        }
        if let Some(limit) = knobs.reserved_ipv4_limit {
            if self.reserved.len() >= limit as usize {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    RESERVED_IPV4_LIMIT_REASON,
                    None,
                ));
            }
        }
        let address = self.allocate_ipv4(true, &BTreeSet::new())?;
        let r = Reservation {
            address,
            region: region.to_owned(),
            tags,
        };
        self.reserved.insert(address, r.clone());
        self.counters.ipv4_reserved += 1;
        Ok(r)
    }

    /// `DELETE /networking/reserved/ips/{address}`: an assigned address stays on its Linode.
    fn release_api(&mut self, address: Ipv4Addr) -> Result<(), ApiError> {
        self.reserved
            .remove(&address)
            .ok_or_else(ApiError::not_found)?;
        self.counters.ipv4_released += 1;
        Ok(())
    }
}

/// A reserved address as the reserved-IP endpoints (and `/networking/ips` for an unassigned
/// one) answer it, with every field of the recordings.
pub fn render(acct: &Account, r: &Reservation) -> Value {
    let assigned = acct
        .ipv4
        .get(&r.address)
        .and_then(|rec| acct.linodes.get(&rec.linode_id).map(|l| (rec, l)));
    // The `.1` of its /24, as for any public address.
    let o = r.address.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 1).to_string();
    let (linode_id, rdns, entity) = match assigned {
        Some((rec, l)) => (
            json!(l.id),
            json!(rec.rdns),
            json!({"id": l.id, "type": "linode", "label": l.label,
                   "url": format!("/v4/linode/instances/{}", l.id)}),
        ),
        None => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "address": r.address.to_string(),
        "gateway": gateway,
        "subnet_mask": "255.255.255.0",
        "prefix": 24,
        "type": "ipv4",
        "public": true,
        "rdns": rdns,
        "linode_id": linode_id,
        "interface_id": null,
        "region": r.region,
        "vpc_nat_1_1": null,
        "reserved": true,
        "assigned_entity": entity,
        "tags": r.tags,
    })
}

/// The reserved-IP routes, merged into the API's.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/networking/reserved/ips", get(list).post(reserve))
        .route(
            "/networking/reserved/ips/{address}",
            get(get_one).delete(release),
        )
}

/// The knobs, or Linode's refusal when the account has no access to the feature.
fn gate(app: &App) -> Result<AllocationKnobs, ApiError> {
    let knobs = app.faults.allocation();
    if knobs.reserved_ips_denied {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            RESERVED_IPS_DENIED_REASON,
            None,
        ));
    }
    Ok(knobs)
}

/// Addresses in paths; anything that is not an IPv4 address is "Not found", as recorded.
fn path_v4(raw: &str) -> Result<Ipv4Addr, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    gate(&app)?;
    let items = app
        .state
        .read(|a| a.reserved.values().map(|r| render(a, r)).collect());
    // No recording filters this list, so no field is filterable.
    api::list(&headers, &q, &[], items)
}

async fn get_one(
    State(app): State<Arc<App>>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&app)?;
    let address = path_v4(&address)?;
    app.state.read(|a| {
        let r = a.reserved.get(&address).ok_or_else(ApiError::not_found)?;
        Ok(Json(render(a, r)))
    })
}

async fn reserve(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let knobs = gate(&app)?;
    let value = api::parse_body(&body)?;
    let req: ReserveRequest = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid request: {e}"),
            None,
        )
    })?;
    let region = req.region.unwrap_or_default();
    let (address, body) = app.state.write(|a| {
        let r = a.reserve_api(&region, req.tags.unwrap_or_default(), &knobs)?;
        Ok((r.address, render(a, &r)))
    })?;
    tracing::info!(%address, %region, "ipv4 reserved");
    Ok(Json(body))
}

async fn release(
    State(app): State<Arc<App>>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&app)?;
    let address = path_v4(&address)?;
    app.state.write(|a| a.release_api(address))?;
    tracing::info!(%address, "reserved ipv4 released");
    Ok(Json(json!({})))
}
