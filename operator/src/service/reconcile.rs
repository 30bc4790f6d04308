//! Reconciles one LoadBalancer Service: [`reconcile`] gives a Service of ours its address
//! through a generated SharedIP (or a user SharedIP it names) and shows it in its status;
//! a Service that is deleted or stops being ours gives it back ([`leave`]) before its
//! finalizer goes. Bad input is reported in an Event and the condition, and touches nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use serde_json::json;
use sharedip_api::conditions::Desired as DesiredCondition;
use sharedip_api::{EndpointGate, SharedIP};
use tracing::{info, warn};

use super::address::{self, Family, Request};
use super::endpoints::{self, Endpoints, TrafficPolicy};
use super::generated::{self, Desired, Member};
use super::ipv6;
use super::sharing::{self, SharingFacts};
use super::status::{self, Held};
use super::{
    service_key, ServiceSettings, ASSIGNED_ANNOTATION, AUTOSCALER_TAINT, EXCLUDE_LABEL, FINALIZER,
    MANAGED_BY, MANAGED_BY_LABEL,
};
use crate::reconciler::Context as SharedContext;

/// Field manager of the generated SharedIPs and of the Services' status.
pub const FIELD_MANAGER: &str = "sharedip-operator-services";
/// How long a Service waits for the SharedIP it gave up to be gone.
const RELEASE_POLL: Duration = Duration::from_secs(2);
/// Resync of a Service that is fine (changes of its SharedIP, slices and nodes wake it).
const RESYNC: Duration = Duration::from_secs(300);
/// Retry of a Service whose input is bad (its own change wakes it sooner).
const BAD_INPUT_RETRY: Duration = Duration::from_secs(600);
/// The refusal that is only a wait: the SharedIP of a previous address is being released.
const ADDRESS_CHANGING: &str = "AddressChanging";

/// Errors of a Service reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Service has no namespace or uid")]
    Incomplete,
    #[error(transparent)]
    Request(#[from] address::RequestError),
}

impl Error {
    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}

/// What the Service controller works with.
pub struct Context {
    /// The SharedIP controller's context: client, recorder, Node and SharedIP caches.
    pub shared: Arc<SharedContext>,
    pub settings: ServiceSettings,
    pub services: Store<Service>,
    /// Serializes decisions about which SharedIP serves which address: two Services asking
    /// for one address at once must not make two SharedIPs.
    pub groups: tokio::sync::Mutex<()>,
}

impl Context {
    fn client(&self) -> &kube::Client {
        &self.shared.client
    }

    fn sharedips(&self) -> Api<SharedIP> {
        Api::all(self.client().clone())
    }

    /// The generated SharedIPs, read from the API: the cache may not show one this operator
    /// just made, and a second one for the same address must never be made.
    async fn generated(&self) -> Result<Vec<SharedIP>, Error> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let list = self
            .sharedips()
            .list(&lp)
            .await
            .map_err(Error::kube("list generated SharedIPs"))?;
        Ok(list
            .items
            .into_iter()
            .filter(generated::is_generated)
            .collect())
    }

    async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        crate::events::record(
            &self.shared.recorder,
            svc,
            type_,
            reason,
            "Reconcile",
            note,
            None,
        )
        .await;
    }
}

fn member_of(svc: &Service) -> Result<Member, Error> {
    Ok(Member {
        namespace: svc.namespace().ok_or(Error::Incomplete)?,
        name: svc.name_any(),
        uid: svc.uid().ok_or(Error::Incomplete)?,
    })
}

fn has_finalizer(svc: &Service) -> bool {
    svc.finalizers().iter().any(|f| f == FINALIZER)
}

fn services_api(svc: &Service, ctx: &Context) -> Result<Api<Service>, Error> {
    let ns = svc.namespace().ok_or(Error::Incomplete)?;
    Ok(Api::namespaced(ctx.client().clone(), &ns))
}

/// Reconciles one Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ours = ctx.settings.serves(&svc) && svc.metadata.deletion_timestamp.is_none();
    if !ours {
        if !has_finalizer(&svc) {
            return Ok(Action::await_change());
        }
        return leave(&svc, &ctx).await;
    }
    if !has_finalizer(&svc) {
        add_finalizer(&svc, &ctx).await?;
    }
    let request = match address::parse(&svc)
        .and_then(|r| generated::selectors(&r, &ctx.settings).map(|_| r))
    {
        Ok(r) => r,
        Err(e) => return refuse(&svc, &ctx, "InvalidAnnotation", &e.to_string()).await,
    };
    if let Some(name) = request.sharedip.clone() {
        return use_user_sharedip(&svc, &ctx, &name).await;
    }
    if request.families.contains(&Family::V6) && TrafficPolicy::of(&svc) == TrafficPolicy::Local {
        let msg = "an IPv6 address comes from the region's IPv6 range, which Linode announces as a whole from the nodes eligible for every IPv6 Service, so it cannot follow this Service's local endpoints: use externalTrafficPolicy: Cluster, or spec.ipFamilies [IPv4] to keep Local";
        return refuse(&svc, &ctx, "UnsupportedTrafficPolicy", msg).await;
    }
    let mut placed = Vec::with_capacity(request.families.len());
    {
        let _guard = ctx.groups.lock().await;
        for family in &request.families {
            let p = match family {
                Family::V4 => place(&svc, &ctx, &request).await?,
                Family::V6 => place_in_range(&svc, &ctx, &request).await?,
            };
            match p {
                Placed::Applied(p) => placed.push(*p),
                Placed::Refused(r) => {
                    drop(_guard);
                    return refuse(&svc, &ctx, r.reason, &r.message).await;
                }
            }
        }
        drop_other_families(&svc, &ctx, &request).await?;
    }
    record_assigned(&svc, &ctx, &placed, &request).await?;
    let held: Vec<Held<'_>> = placed
        .iter()
        .map(|p| Held {
            address: p.address,
            sharedip: Some(&p.sip),
        })
        .collect();
    let summary = endpoints_of(&ctx, &svc).await?.summary();
    show(&svc, &ctx, &held, status::announced(&held, &summary), true).await?;
    ctx.shared.backoff.succeeded(&backoff_key(&svc));
    Ok(Action::requeue(RESYNC))
}

/// A Service that no longer has a family (dual-stack turned single-stack) gives that
/// family's address back.
async fn drop_other_families(svc: &Service, ctx: &Context, request: &Request) -> Result<(), Error> {
    let dropped = request
        .assigned
        .addresses()
        .iter()
        .any(|a| !request.families.contains(&Family::of(*a)));
    if !dropped {
        return Ok(());
    }
    let me = member_of(svc)?;
    for sip in ctx.generated().await?.iter().filter(|s| {
        generated::members(s).contains(&me) && !request.families.contains(&generated::family_of(s))
    }) {
        leave_sharedip(sip, &me, ctx).await?;
    }
    Ok(())
}

fn backoff_key(svc: &Service) -> String {
    format!("service:{}", service_key(svc))
}

/// How a Service came to its SharedIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Its own, new.
    Created,
    /// Another Service's, under the sharing rules.
    Joined,
    /// The one it had.
    Kept,
}

/// Why a Service cannot have the address it asks for: the Event's reason and message.
struct Refusal {
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// The SharedIP serving one of a Service's addresses, and that address (None while it is
/// being allocated).
struct PlacedAddress {
    sip: SharedIP,
    address: Option<IpAddr>,
    outcome: Outcome,
}

enum Placed {
    Applied(Box<PlacedAddress>),
    Refused(Refusal),
}

/// Finds or makes the SharedIP for the Service's IPv4 address and applies what it should be.
async fn place(svc: &Service, ctx: &Context, request: &Request) -> Result<Placed, Error> {
    let me = member_of(svc)?;
    let all = ctx.generated().await?;
    let wanted = request.wanted(Family::V4);
    let (target, outcome) = match target(svc, ctx, &all, wanted, &me).await? {
        Ok(found) => found,
        Err(refusal) => return Ok(Placed::Refused(refusal)),
    };
    let members = members_with(ctx, target.as_ref(), &me);
    let new = if request.is_requested(Family::V4) {
        NewAddress {
            address: wanted,
            allocated: None,
        }
    } else {
        NewAddress {
            address: None,
            allocated: wanted,
        }
    };
    let group = Group {
        name: generated::name_for(&me.uid),
        family: Family::V4,
        members,
        new,
    };
    let desired = desire(ctx, target.as_ref(), &me, group, request).await?;
    let sip = apply(ctx, target, &desired, &me, outcome).await?;
    let address = generated::address_of(&sip);
    Ok(Placed::Applied(Box::new(PlacedAddress {
        sip,
        address,
        outcome,
    })))
}

/// Applies `desired` unless `current` already is it.
async fn apply(
    ctx: &Context,
    current: Option<SharedIP>,
    desired: &Desired,
    me: &Member,
    outcome: Outcome,
) -> Result<SharedIP, Error> {
    if let Some(c) = current.filter(|c| desired.is_met_by(c)) {
        return Ok(c);
    }
    let applied = ctx
        .sharedips()
        .patch(
            &desired.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired.manifest()),
        )
        .await
        .map_err(Error::kube(format!("apply SharedIP {}", desired.name)))?;
    info!(
        service = %me.key(), sharedip = %desired.name, outcome = ?outcome,
        ready = ?desired.gate.ready, terminating = ?desired.gate.terminating,
        "applied the Service's SharedIP"
    );
    Ok(applied)
}

/// Finds or makes the region's range-level SharedIP, joins it, and gives the Service its own
/// address inside the range: the one it asks for, the one it had, or the lowest free one.
async fn place_in_range(svc: &Service, ctx: &Context, request: &Request) -> Result<Placed, Error> {
    let me = member_of(svc)?;
    let region = match ipv6::region_of(&ctx.shared.nodes.state()) {
        Ok(r) => r,
        Err(m) => return Ok(Placed::Refused(Refusal::new("NoIPv6Range", m))),
    };
    let name = ipv6::range_name(&region);
    let all = ctx.generated().await?;
    for sip in all.iter().filter(|s| {
        generated::family_of(s) == Family::V6
            && s.name_any() != name
            && generated::members(s).contains(&me)
    }) {
        leave_sharedip(sip, &me, ctx).await?;
    }
    let existing = all.iter().find(|s| s.name_any() == name).cloned();
    if existing
        .as_ref()
        .is_some_and(|s| s.metadata.deletion_timestamp.is_some())
    {
        return Ok(Placed::Refused(Refusal::new(
            ADDRESS_CHANGING,
            format!("waiting for the IPv6 SharedIP {name} of the region to be released"),
        )));
    }
    let wanted = match request.wanted(Family::V6) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let new = match new_range(ctx, request, wanted) {
        Ok(n) => n,
        Err(r) => return Ok(Placed::Refused(r)),
    };
    // An address that cannot be had is refused before the Service joins the range.
    if let Some(sip) = &existing {
        if let Err(r) = own_address_in_range(svc, ctx, sip, request, wanted) {
            return Ok(Placed::Refused(r));
        }
    }
    let members = members_with(ctx, existing.as_ref(), &me);
    let outcome = [Outcome::Created, Outcome::Joined][usize::from(existing.is_some())];
    let group = Group {
        name,
        family: Family::V6,
        members,
        new,
    };
    let desired = desire(ctx, existing.as_ref(), &me, group, request).await?;
    let sip = apply(ctx, existing, &desired, &me, outcome).await?;
    let address = match own_address_in_range(svc, ctx, &sip, request, wanted) {
        Ok(a) => a.map(IpAddr::V6),
        Err(r) => return Ok(Placed::Refused(r)),
    };
    Ok(Placed::Applied(Box::new(PlacedAddress {
        sip,
        address,
        outcome,
    })))
}

/// The range a new range-level SharedIP is made with: the /64 of the address asked for
/// (spec.address) or assigned before (spec.allocatedAddress), else allocated.
fn new_range(
    ctx: &Context,
    request: &Request,
    wanted: Option<Ipv6Addr>,
) -> Result<NewAddress, Refusal> {
    match wanted {
        Some(w) => {
            let base = IpAddr::V6(ipv6::base_of(w, ipv6::DEFAULT_PREFIX));
            let sips = ctx.shared.sharedips.state();
            // A user SharedIP of the range is known by its base (asked for) or by its `::1`
            // (allocated): either way it covers `w`.
            if let Some(user) = sips.iter().find(|s| {
                !generated::is_generated(s)
                    && s.metadata.deletion_timestamp.is_none()
                    && matches!(generated::address_of(s), Some(IpAddr::V6(a)) if ipv6::contains(a, ipv6::DEFAULT_PREFIX, w))
            }) {
                return Err(Refusal::new(
                    "AddressInUse",
                    format!("{w} is inside the range of SharedIP {}", user.name_any()),
                ));
            }
            if request.is_requested(Family::V6) {
                Ok(NewAddress {
                    address: Some(base),
                    allocated: None,
                })
            } else {
                Ok(NewAddress {
                    address: None,
                    allocated: Some(base),
                })
            }
        }
        None => Ok(NewAddress {
            address: None,
            allocated: None,
        }),
    }
}

/// The Service's own address in the range of `sip`: None while the range is allocated.
fn own_address_in_range(
    svc: &Service,
    ctx: &Context,
    sip: &SharedIP,
    request: &Request,
    wanted: Option<Ipv6Addr>,
) -> Result<Option<Ipv6Addr>, Refusal> {
    let Some(IpAddr::V6(address)) = generated::address_of(sip) else {
        return Ok(None);
    };
    let prefix = sip
        .spec
        .prefix
        .or(sip.status.as_ref().and_then(|s| s.prefix))
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(ipv6::DEFAULT_PREFIX);
    // An allocated range is known by the address the nodes bind (its `::1`), one asked for
    // by its base: both stand for the same range.
    let base = ipv6::base_of(address, prefix);
    // The addresses the range's other Services hold.
    let others: Vec<(Ipv6Addr, Arc<Service>)> = live_member_services(ctx, sip)
        .into_iter()
        .filter(|s| s.uid() != svc.uid())
        .filter_map(|s| match address::parse(&s).ok()?.wanted(Family::V6) {
            Some(IpAddr::V6(a)) => Some((a, s)),
            _ => None,
        })
        .collect();
    let Some(w) = wanted else {
        let taken = others.iter().map(|(a, _)| *a).collect();
        return ipv6::pick(base, prefix, &taken).map(Some).ok_or_else(|| {
            Refusal::new(
                "RangeFull",
                format!("no free address left in the IPv6 range {base}/{prefix}"),
            )
        });
    };
    if !ipv6::usable(base, prefix, w) {
        let why = if request.is_requested(Family::V6) {
            "asked for"
        } else {
            "assigned"
        };
        return Err(Refusal::new(
            "AddressOutsideRange",
            format!(
                "{w} ({why}) is not a usable address of the region's IPv6 range {base}/{prefix} (its base and {} are the nodes')",
                crate::allocation::bound_in_range(base)
            ),
        ));
    }
    let holders: Vec<(String, SharingFacts)> = others
        .iter()
        .filter(|(a, _)| *a == w)
        .map(|(_, s)| (service_key(s), SharingFacts::of(s)))
        .collect();
    sharing::check(&SharingFacts::of(svc), &holders)
        .map(|()| Some(w))
        .map_err(|e| Refusal::new("SharingRefused", format!("{w} is in use: {e}")))
}

/// The generated SharedIP the Service is in (leaving those of an address it no longer asks
/// for), else one it may join, else None: a new one is made. Refused when the address is a
/// user SharedIP's, or another group's the sharing rules keep it from.
async fn target(
    svc: &Service,
    ctx: &Context,
    all: &[SharedIP],
    wanted: Option<IpAddr>,
    me: &Member,
) -> Result<Result<(Option<SharedIP>, Outcome), Refusal>, Error> {
    let mut current = None;
    let mut stale = Vec::new();
    for sip in all
        .iter()
        .filter(|s| generated::family_of(s) == Family::V4 && generated::members(s).contains(me))
    {
        let keeps = match (wanted, generated::address_of(sip)) {
            (Some(w), Some(a)) => w == a,
            _ => true,
        };
        if keeps && current.is_none() && sip.metadata.deletion_timestamp.is_none() {
            current = Some(sip.clone());
        } else {
            stale.push(sip);
        }
    }
    let found = match current {
        Some(sip) => Some((sip, Outcome::Kept)),
        None => match find_group(svc, ctx, all, wanted, me) {
            Ok(group) => group.map(|sip| (sip, Outcome::Joined)),
            Err(refusal) => return Ok(Err(refusal)),
        },
    };
    if let (None, Some(ip)) = (&found, wanted) {
        if let Some(refusal) = unavailable(ctx, all, ip) {
            return Ok(Err(refusal));
        }
    }
    // Only now that the new address is known to be available does the Service let go of the
    // old one: a refused change leaves it with the address it had.
    for sip in stale {
        leave_sharedip(sip, me, ctx).await?;
    }
    if let Some((sip, outcome)) = found {
        return Ok(Ok((Some(sip), outcome)));
    }
    let name = generated::name_for(&me.uid);
    if all.iter().any(|s| s.name_any() == name) {
        // Its SharedIP of the previous address is still being released.
        return Ok(Err(Refusal::new(
            ADDRESS_CHANGING,
            format!("waiting for SharedIP {name} of the previous address to be released"),
        )));
    }
    Ok(Ok((None, Outcome::Created)))
}

/// Why a new SharedIP for `ip` cannot be made now, if it cannot: a user SharedIP has the
/// address, or a SharedIP that had it is being deleted. That one still has the address shared
/// and its finalizer will unshare it, so a new one made now would lose the address to it (a
/// Service deleted and another created for its address, a Helm release reinstalled): wait.
fn unavailable(ctx: &Context, generated: &[SharedIP], ip: IpAddr) -> Option<Refusal> {
    let sips = ctx.shared.sharedips.state();
    let of_ip = |s: &&SharedIP| generated::address_of(s) == Some(ip);
    if let Some(going) = generated
        .iter()
        .chain(sips.iter().map(AsRef::as_ref))
        .filter(of_ip)
        .find(|s| s.metadata.deletion_timestamp.is_some())
    {
        return Some(Refusal::new(
            ADDRESS_CHANGING,
            format!(
                "waiting for SharedIP {}, which held {ip} before, to be released",
                going.name_any()
            ),
        ));
    }
    let user = generated::find_by_address(sips.iter().map(AsRef::as_ref), ip)
        .filter(|s| !generated::is_generated(s))?;
    Some(Refusal::new(
        "AddressInUse",
        format!(
            "{ip} is the address of SharedIP {}; name it with annotation {} to use it, or choose another address",
            user.name_any(),
            super::SHAREDIP_ANNOTATION
        ),
    ))
}

/// A generated SharedIP the Service may join: the one of the address it asks for (if the
/// sharing rules allow), or, without an address but with a sharing key, one whose Services
/// all agree to share with it (MetalLB's behaviour). Err: refused, with the reason.
fn find_group(
    svc: &Service,
    ctx: &Context,
    all: &[SharedIP],
    wanted: Option<IpAddr>,
    me: &Member,
) -> Result<Option<SharedIP>, Refusal> {
    let facts = SharingFacts::of(svc);
    let holders = |sip: &SharedIP| -> Vec<(String, SharingFacts)> {
        live_member_services(ctx, sip)
            .into_iter()
            .filter(|s| s.uid().as_deref() != Some(me.uid.as_str()))
            .map(|s| (service_key(&s), SharingFacts::of(&s)))
            .collect()
    };
    let live = all
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none());
    match wanted {
        Some(ip) => {
            let Some(sip) = generated::find_by_address(all.iter(), ip) else {
                return Ok(None);
            };
            match sharing::check(&facts, &holders(sip)) {
                Ok(()) => Ok(Some(sip.clone())),
                Err(e) => Err(Refusal::new(
                    "SharingRefused",
                    format!("{ip} is in use: {e}"),
                )),
            }
        }
        None if facts.key.is_some() => Ok(live
            .filter(|s| generated::family_of(s) == Family::V4 && generated::address_of(s).is_some())
            .find(|s| {
                let h = holders(s);
                !h.is_empty() && sharing::check(&facts, &h).is_ok()
            })
            .cloned()),
        None => Ok(None),
    }
}

/// The Services of a generated SharedIP that still exist and are ours (the cache always has
/// a Service whose reconcile added it, so one missing from it is gone).
fn live_member_services(ctx: &Context, sip: &SharedIP) -> Vec<Arc<Service>> {
    generated::members(sip)
        .into_iter()
        .filter_map(|m| {
            let svc = ctx
                .services
                .get(&ObjectRef::new(&m.name).within(&m.namespace))?;
            (svc.uid().as_deref() == Some(m.uid.as_str())
                && svc.metadata.deletion_timestamp.is_none()
                && ctx.settings.serves(&svc))
            .then_some(svc)
        })
        .collect()
}

/// The living Services of `sip` (if any) and `me`, sorted.
fn members_with(ctx: &Context, sip: Option<&SharedIP>, me: &Member) -> Vec<Member> {
    let mut members = sip.map(live_members(ctx)).unwrap_or_default();
    if !members.contains(me) {
        members.push(me.clone());
    }
    members.sort();
    members
}

fn live_members(ctx: &Context) -> impl Fn(&SharedIP) -> Vec<Member> + '_ {
    move |sip| {
        live_member_services(ctx, sip)
            .iter()
            .filter_map(|s| member_of(s).ok())
            .collect()
    }
}

/// The address of a SharedIP to make: asked for (spec.address) or allocated before
/// (spec.allocatedAddress, to restore it); neither: allocate.
struct NewAddress {
    address: Option<IpAddr>,
    allocated: Option<IpAddr>,
}

/// The Services of one SharedIP, and what a new one is made with.
struct Group {
    /// The name of a new one.
    name: String,
    family: Family,
    members: Vec<Member>,
    new: NewAddress,
}

/// The SharedIP a group of Services wants. Its node selectors and reclaim policy are those of
/// the group's first Service (sorted by namespace/name), so every member's reconcile wants
/// the same and none undoes another's write; its endpoint gate serves them all.
async fn desire(
    ctx: &Context,
    existing: Option<&SharedIP>,
    me: &Member,
    group: Group,
    request: &Request,
) -> Result<Desired, Error> {
    let services: Vec<Arc<Service>> = group
        .members
        .iter()
        .filter_map(|m| {
            ctx.services
                .get(&ObjectRef::new(&m.name).within(&m.namespace))
        })
        .collect();
    // The group's first Service decides; this one's request was checked, so it is the
    // fallback when the first one's annotations became invalid meanwhile.
    let first_request = services
        .first()
        .and_then(|s| address::parse(s).ok())
        .filter(|r| generated::selectors(r, &ctx.settings).is_ok())
        .unwrap_or_else(|| request.clone());
    let (primary, secondary, failback) =
        generated::selectors(&first_request, &ctx.settings).map_err(Error::Request)?;
    let eligible = eligible_nodes(&ctx.shared.nodes.state(), &primary, secondary.as_ref());
    let mut gates: Vec<EndpointGate> = Vec::with_capacity(services.len());
    for s in &services {
        gates.push(endpoints::gate(
            &service_key(s),
            TrafficPolicy::of(s),
            &endpoints_of(ctx, s).await?,
            &eligible,
        ));
    }
    let gate = if gates.is_empty() {
        EndpointGate {
            service: me.key(),
            ..EndpointGate::default()
        }
    } else {
        endpoints::combine(&gates)
    };
    let (address, allocated) = match existing {
        Some(sip) => (
            sip.spec.address.as_deref().and_then(|a| a.parse().ok()),
            sip.spec
                .allocated_address
                .as_deref()
                .and_then(|a| a.parse().ok()),
        ),
        None => (group.new.address, group.new.allocated),
    };
    Ok(Desired {
        name: existing.map_or(group.name, ResourceExt::name_any),
        members: group.members,
        address,
        allocated,
        family: group.family,
        primary,
        secondary,
        failback,
        reclaim_policy: first_request.reclaim_policy.or(request.reclaim_policy),
        gate,
    })
}

/// Nodes that may announce a Service's address: a Linode behind them, not excluded from
/// external load balancers, not about to be deleted by the cluster autoscaler, selected.
pub fn eligible_nodes(
    nodes: &[Arc<Node>],
    primary: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    secondary: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> BTreeSet<String> {
    use kube::core::{Selector, SelectorExt};
    let to_sel = |s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        Selector::try_from(s.clone()).ok()
    };
    let selectors: Vec<Selector> = std::iter::once(primary)
        .chain(secondary)
        .filter_map(to_sel)
        .collect();
    let empty = Default::default();
    nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.as_ref().unwrap_or(&empty);
            let spec = n.spec.as_ref();
            let linode = sharedip_api::rules::linode_of(n).is_some();
            let leaving = spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == AUTOSCALER_TAINT));
            linode
                && !leaving
                && !labels.contains_key(EXCLUDE_LABEL)
                && n.metadata.deletion_timestamp.is_none()
                && selectors.iter().any(|s| s.matches(labels))
        })
        .map(|n| n.name_any())
        .collect()
}

/// The Service's endpoints, from every slice labelled with its name. Read from the API when
/// needed rather than cached: the operator would otherwise hold every EndpointSlice of the
/// cluster, for the few Services it serves.
async fn endpoints_of(ctx: &Context, svc: &Service) -> Result<Endpoints, Error> {
    let ns = svc.namespace().ok_or(Error::Incomplete)?;
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client().clone(), &ns);
    let lp =
        ListParams::default().labels(&format!("kubernetes.io/service-name={}", svc.name_any()));
    let slices = api.list(&lp).await.map_err(Error::kube(format!(
        "list the EndpointSlices of {}",
        service_key(svc)
    )))?;
    Ok(Endpoints::from_slices(slices.items.iter()))
}

/// Takes `me` out of a generated SharedIP: deletes it when no Service is left, else applies
/// it for the others.
async fn leave_sharedip(sip: &SharedIP, me: &Member, ctx: &Context) -> Result<(), Error> {
    let name = sip.name_any();
    let mut others: Vec<Member> = live_members(ctx)(sip);
    others.retain(|m| m != me);
    if others.is_empty() {
        if sip.metadata.deletion_timestamp.is_none() {
            info!(service = %me.key(), sharedip = %name, "deleting the Service's SharedIP: no Service uses it any more");
            match ctx
                .sharedips()
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("delete SharedIP {name}"))(e)),
            }
        }
        return Ok(());
    }
    let mut members = generated::members(sip);
    members.retain(|m| m != me);
    let body = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "metadata": {
            "name": name,
            "annotations": { super::MEMBERS_ANNOTATION: members.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n") },
        },
    });
    // A merge patch of the annotation only: the others' next reconcile (woken by this change)
    // applies the rest (labels, endpoint gate) for the group without us.
    ctx.sharedips()
        .patch(&name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map_err(Error::kube(format!("leave SharedIP {name}")))?;
    info!(service = %me.key(), sharedip = %name, "the Service left a shared SharedIP");
    Ok(())
}

/// Gives back everything the Service held, then lets it go: leaves (or deletes) its generated
/// SharedIPs, waits until those it was alone in are gone (their finalizer unshares the
/// address and releases an allocated one), clears what it showed when it stays (a type
/// change), and removes the finalizer.
async fn leave(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    let me = member_of(svc)?;
    let waiting = {
        let _guard = ctx.groups.lock().await;
        let all = ctx.generated().await?;
        let mut waiting = Vec::new();
        for sip in all.iter().filter(|s| generated::members(s).contains(&me)) {
            leave_sharedip(sip, &me, ctx).await?;
            if generated::members(sip).len() == 1 || live_members(ctx)(sip).iter().all(|m| m == &me)
            {
                waiting.push(sip.name_any());
            }
        }
        waiting
    };
    if !waiting.is_empty() {
        info!(service = %me.key(), sharedips = ?waiting, "waiting for the Service's SharedIPs to be released");
        return Ok(Action::requeue(RELEASE_POLL));
    }
    let api = services_api(svc, ctx)?;
    if svc.metadata.deletion_timestamp.is_none() {
        // Still there, no longer ours: what we showed must go with the address.
        let body = status::manifest(svc, &[], None, Timestamp::now());
        api.patch_status(
            &svc.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::kube("clear the Service's status"))?;
        if svc.annotations().contains_key(ASSIGNED_ANNOTATION) {
            let body = json!({"metadata": {"annotations": {ASSIGNED_ANNOTATION: null}}});
            api.patch(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(body),
            )
            .await
            .map_err(Error::kube("remove the assigned-address annotation"))?;
        }
    }
    remove_finalizer(svc, &api).await?;
    ctx.event(
        svc,
        EventType::Normal,
        "AddressReleased",
        "the Service no longer holds a failover address".into(),
    )
    .await;
    info!(service = %me.key(), "released the Service");
    Ok(Action::await_change())
}

async fn add_finalizer(svc: &Service, ctx: &Context) -> Result<(), Error> {
    let mut finalizers = svc.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(
        svc,
        &services_api(svc, ctx)?,
        finalizers,
        "add the Service finalizer",
    )
    .await
}

async fn remove_finalizer(svc: &Service, api: &Api<Service>) -> Result<(), Error> {
    let finalizers: Vec<String> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match set_finalizers(svc, api, finalizers, "remove the Service finalizer").await {
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 404 => Ok(()),
        other => other,
    }
}

/// A merge patch carrying the resourceVersion the list was computed from: the apiserver
/// refuses it (409) when another writer changed the Service meanwhile, so no finalizer of
/// someone else is lost; the retry works from the new version.
async fn set_finalizers(
    svc: &Service,
    api: &Api<Service>,
    finalizers: Vec<String>,
    what: &str,
) -> Result<(), Error> {
    let body = json!({"metadata": {
        "resourceVersion": svc.resource_version(),
        "finalizers": finalizers,
    }});
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(body),
    )
    .await
    .map_err(Error::kube(what))?;
    Ok(())
}

/// Writes the addresses the Service got into its annotation (once), so they survive
/// restarts, a lost SharedIP and Service updates.
async fn record_assigned(
    svc: &Service,
    ctx: &Context,
    placed: &[PlacedAddress],
    request: &Request,
) -> Result<(), Error> {
    let mut assigned = request.assigned;
    if !request.families.contains(&Family::V4) {
        assigned.v4 = None;
    }
    if !request.families.contains(&Family::V6) {
        assigned.v6 = None;
    }
    for a in placed.iter().filter_map(|p| p.address) {
        match a {
            IpAddr::V4(a) => assigned.v4 = Some(a),
            IpAddr::V6(a) => assigned.v6 = Some(a),
        }
    }
    if assigned == request.assigned {
        return Ok(());
    }
    let value = (!assigned.is_empty()).then(|| assigned.to_annotation());
    let body = json!({"metadata": {"annotations": {ASSIGNED_ANNOTATION: value}}});
    services_api(svc, ctx)?
        .patch(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
        .map_err(Error::kube("record the assigned address"))?;
    for p in placed {
        let Some(address) = p.address else { continue };
        if request.assigned.addresses().contains(&address) {
            continue;
        }
        let how = if request.is_requested(Family::of(address)) {
            "requested"
        } else if p.outcome == Outcome::Joined && address.is_ipv4() {
            "shared with another Service"
        } else if address.is_ipv6() {
            "from the region's IPv6 range"
        } else {
            "allocated"
        };
        info!(service = %service_key(svc), %address, how, "address assigned to the Service");
        ctx.event(
            svc,
            EventType::Normal,
            "AddressAssigned",
            format!("{address} ({how})"),
        )
        .await;
    }
    Ok(())
}

/// Applies the Service's status when it changed, with an Event when its state changes
/// (`announce_changes`: refusals publish their own).
async fn show(
    svc: &Service,
    ctx: &Context,
    held: &[Held<'_>],
    condition: DesiredCondition,
    announce_changes: bool,
) -> Result<(), Error> {
    let ingress = status::ingress(svc, held);
    if status::is_current(svc, &ingress, &condition) {
        return Ok(());
    }
    let before = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| sharedip_api::conditions::find(cs, super::ANNOUNCED_CONDITION))
        .map(|c| (c.status == "True", c.reason.clone()));
    let body = status::manifest(svc, &ingress, Some(&condition), Timestamp::now());
    services_api(svc, ctx)?
        .patch_status(
            &svc.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::kube("apply the Service's status"))?;
    if !announce_changes {
        return Ok(());
    }
    // One Event per change of state, saying why the Service is pending or who announces it.
    let was_true = before.as_ref().is_some_and(|(t, _)| *t);
    let same_reason = before.as_ref().is_some_and(|(_, r)| *r == condition.reason);
    if condition.status && !was_true {
        let note = condition.message.clone();
        ctx.event(svc, EventType::Normal, "Announced", note).await;
    } else if !condition.status && (was_true || !same_reason) {
        let type_ = if was_true || condition.reason == "NotShared" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let reason = if was_true {
            "NotAnnounced"
        } else {
            condition.reason.as_str()
        };
        ctx.event(svc, type_, reason, condition.message.clone())
            .await;
    }
    Ok(())
}

/// Reports bad input: an Event, and the condition; the ingress stays as it was (nothing else
/// is touched while the user fixes it).
async fn refuse(
    svc: &Service,
    ctx: &Context,
    reason: &'static str,
    message: &str,
) -> Result<Action, Error> {
    let condition = status::refused(reason, message);
    let shown: Vec<Held<'_>> = svc
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .map(|a| Held {
            address: Some(a),
            sharedip: None,
        })
        .collect();
    let fresh = !svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| sharedip_api::conditions::find(cs, super::ANNOUNCED_CONDITION))
        .is_some_and(|c| c.reason == reason && c.message == message);
    let waiting = reason == ADDRESS_CHANGING;
    if fresh {
        ctx.shared.metrics.observe_service_refusal(reason);
        warn!(service = %service_key(svc), reason, message, "refused the Service");
        let type_ = if waiting {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.event(svc, type_, reason, message.to_owned()).await;
    }
    // The refusal's own Event was published above.
    show(svc, ctx, &shown, condition, false).await?;
    Ok(Action::requeue(if waiting {
        RELEASE_POLL
    } else {
        BAD_INPUT_RETRY
    }))
}

/// A Service that names a user SharedIP shows that SharedIP's address; the SharedIP is never
/// modified or deleted. A generated SharedIP it was in before is left.
async fn use_user_sharedip(svc: &Service, ctx: &Context, name: &str) -> Result<Action, Error> {
    let me = member_of(svc)?;
    {
        let _guard = ctx.groups.lock().await;
        for sip in ctx
            .generated()
            .await?
            .iter()
            .filter(|s| generated::members(s).contains(&me))
        {
            leave_sharedip(sip, &me, ctx).await?;
        }
    }
    let sip = match ctx.sharedips().get_opt(name).await.map_err(Error::kube(format!("get SharedIP {name}")))? {
        Some(s) if generated::is_generated(&s) => {
            return refuse(svc, ctx, "InvalidAnnotation", &format!(
                "SharedIP {name} is the operator's, made for other Services: to share their address use annotation {}",
                super::SHARING_KEY_ANNOTATION
            ))
            .await
        }
        Some(s) => s,
        None => {
            return refuse(svc, ctx, "SharedIPNotFound", &format!("SharedIP {name} (annotation {}) does not exist", super::SHAREDIP_ANNOTATION)).await
        }
    };
    let held = [Held {
        address: generated::address_of(&sip),
        sharedip: Some(&sip),
    }];
    let summary = endpoints_of(ctx, svc).await?.summary();
    show(svc, ctx, &held, status::announced(&held, &summary), true).await?;
    Ok(Action::requeue(RESYNC))
}

/// Retries with the SharedIP controller's backoff.
pub fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    let (attempt, delay) = ctx.shared.backoff.failed(&backoff_key(&svc));
    warn!(service = %service_key(&svc), error = %error, attempt, retry_in = ?delay, "Service reconcile failed");
    Action::requeue(delay)
}
