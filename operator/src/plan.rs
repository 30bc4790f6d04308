//! The first half of a reconcile: what a SharedIP should have, decided before anything changes.
//!
//! [`plan`] reads the SharedIP's spec, the other SharedIPs, the account (through the
//! [directory](crate::directory)) and the cluster's nodes, and returns either a [`Plan`] (the
//! address as the account knows it, the selected nodes, which of their Linodes receive it) or
//! the reason it cannot be shared ([`Blocked`]). It writes nothing: no share call, no status,
//! no event. The reconciler then executes the plan (share through the syncer, events, status),
//! or reports the block.
//!
//! The order of the checks is the order of the data's real dependencies: the address must
//! parse before anyone can tell whether another SharedIP claims it first; the account must
//! hold it before its region is known; selection comes next, and placement needs the regions
//! of the selected nodes' Linodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use sharedip_api::rules::linode_of;
use sharedip_api::{rules, AddressError, NodeStatus, SharedAddress, SharedIP, SharedLinode};
use sharedip_process::sync::lock;

use crate::directory::Directory;
use crate::linode_api::{AddressInfo, ApiError};
use crate::selection::{linodes_of, place, select_nodes, Placement, SelectedNode};
use crate::status::reason;

/// What a SharedIP should have: where its address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The address as the spec gives it.
    pub address: SharedAddress,
    /// The account's address or range that holds it: the network the share call names, its
    /// region, and the Linode that owns it.
    pub account: AddressInfo,
    /// The nodes the selectors choose, sorted by name, with their roles.
    pub selected: Vec<SelectedNode>,
    /// Which selected nodes' Linodes receive the address, and why the others do not.
    pub placement: Placement,
    /// The node behind the Linode that owns the address, if the cluster has one.
    pub owner_node: Option<String>,
    /// The Linodes behind every node of the cluster, selected or not: the share wave examines
    /// them all, so a share the status does not know (a crash between the share call and the
    /// status write) is still removed once its node is deselected.
    pub cluster_linodes: BTreeSet<u64>,
}

/// Why a SharedIP cannot be shared now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The SharedIP, as it is, cannot be shared: the user has to change something.
    Refused(Refusal),
    /// The account could not be read: nothing is known, so nothing changes on Linode's side.
    AccountUnreadable(ApiError),
}

/// A SharedIP refused, with the condition reason and message that say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    /// The spec's address, when it parses (the status reports its prefix).
    pub address: Option<SharedAddress>,
    /// What becomes of the sharing the SharedIP had before.
    pub previous: Previously,
    /// When to look at the SharedIP again.
    pub retry: Retry,
}

/// What becomes of the sharing a refused SharedIP had before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previously {
    /// Unshare the address it held from the Linodes its status names.
    Retire,
    /// Leave every share as it is: a duplicate must not undo the sharing of the SharedIP that
    /// keeps the address, and a selector that cannot be evaluated must not take traffic away.
    Keep,
}

/// When a refused SharedIP is looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only the spec can fix it: when the SharedIP changes.
    OnChange,
    /// Something outside the SharedIP can fix it (the address added to the account, the
    /// earlier claimant deleted): after the blocked-retry interval too.
    Later,
    /// Linode refused and is asked again only after this wait (or when the SharedIP changes).
    After(Duration),
}

impl Refusal {
    pub(crate) fn new(
        reason: &'static str,
        message: String,
        previous: Previously,
        retry: Retry,
    ) -> Self {
        Self {
            reason,
            message,
            address: None,
            previous,
            retry,
        }
    }

    fn of(mut self, address: &SharedAddress) -> Self {
        self.address = Some(*address);
        self
    }
}

impl From<Refusal> for Blocked {
    fn from(r: Refusal) -> Self {
        Blocked::Refused(r)
    }
}

/// Decides where `sip`'s address goes, from the other SharedIPs, the account and the nodes
/// (flapping nodes with the labels they are held at). Changes nothing.
pub async fn plan(
    sip: &SharedIP,
    sharedips: &[Arc<SharedIP>],
    nodes: &[Arc<Node>],
    directory: &Directory,
) -> Result<Plan, Blocked> {
    let address = claimed_address(sip, sharedips)?;
    let allocated = sip.spec.address.is_none();
    let account = account_address(&address, allocated, directory).await?;
    let selected = match select_nodes(&sip.spec, nodes.iter().map(AsRef::as_ref)) {
        Ok(s) => s,
        Err(e) => {
            // The CRD refuses such selectors at admission, so this one was stored before the
            // CRD had the rule (an upgrade): report it, and keep the address shared where it
            // is, as the agents keep announcing it, rather than take traffic away.
            let message = format!("{e}; the address stays shared where it was until it is fixed");
            let refusal = Refusal::new(
                reason::INVALID_SPEC,
                message,
                Previously::Keep,
                Retry::OnChange,
            );
            return Err(refusal.of(&address).into());
        }
    };
    let wanted: Vec<u64> = selected.iter().filter_map(|n| n.linode).collect();
    let facts = directory
        .linodes(&wanted)
        .await
        .map_err(Blocked::AccountUnreadable)?;
    let placement = place(&selected, &account.region, account.owner, &facts);
    let owner_node = account.owner.and_then(|owner| node_of(nodes, owner));
    Ok(Plan {
        address,
        account,
        selected,
        placement,
        owner_node,
        cluster_linodes: linodes_of(nodes.iter().map(AsRef::as_ref)),
    })
}

/// The spec's address, unless it has none yet, it is invalid or an earlier SharedIP claims it.
fn claimed_address(sip: &SharedIP, sharedips: &[Arc<SharedIP>]) -> Result<SharedAddress, Refusal> {
    let address = SharedAddress::from_spec(&sip.spec).map_err(|e| {
        let message = e.to_string();
        match e {
            // Writing spec.allocatedAddress (or spec.address) changes the SharedIP; until then
            // whatever it shared stays, as nothing says where the address goes.
            AddressError::NotAllocated => Refusal::new(
                reason::AWAITING_ADDRESS,
                message,
                Previously::Keep,
                Retry::OnChange,
            ),
            _ => Refusal::new(
                reason::INVALID_SPEC,
                message,
                Previously::Retire,
                Retry::OnChange,
            ),
        }
    })?;
    if let Some(duplicate) = rules::earlier_claimant(sip, sharedips.iter().map(AsRef::as_ref)) {
        let message = duplicate.to_string();
        let refusal = Refusal::new(reason::DUPLICATE, message, Previously::Keep, Retry::Later);
        return Err(refusal.of(&address));
    }
    Ok(address)
}

/// The account's address or range holding `address`, when its prefix is the range's.
async fn account_address(
    address: &SharedAddress,
    allocated: bool,
    directory: &Directory,
) -> Result<AddressInfo, Blocked> {
    let Some(info) = directory
        .address(address)
        .await
        .map_err(Blocked::AccountUnreadable)?
    else {
        if allocated {
            // Never replaced by another address behind the user's back: DNS points at this one.
            let message = format!(
                "{} was allocated for this SharedIP (spec.allocatedAddress) but is no longer in the Linode account; was its IP holder Linode deleted? The operator does not allocate a different address on its own because DNS and clients point at this one: restore it, or delete this SharedIP and create it again to get a new address",
                address.address()
            );
            let refusal = Refusal::new(
                reason::ADDRESS_LOST,
                message,
                Previously::Retire,
                Retry::Later,
            );
            return Err(refusal.of(address).into());
        }
        let message = format!(
            "{} is not an IPv4 address or IPv6 range of this Linode account; add it in Cloud Manager (or with the API) first",
            address.address()
        );
        let refusal = Refusal::new(
            reason::NOT_IN_ACCOUNT,
            message,
            Previously::Retire,
            Retry::Later,
        );
        return Err(refusal.of(address).into());
    };
    if !address.is_ipv4() && info.prefix != address.prefix() {
        let message = format!(
            "spec.prefix is {} but the account's range {}/{} is a /{}; set spec.prefix to {}",
            address.prefix(),
            info.network,
            info.prefix,
            info.prefix,
            info.prefix
        );
        let refusal = Refusal::new(
            reason::PREFIX_MISMATCH,
            message,
            Previously::Retire,
            Retry::OnChange,
        );
        return Err(refusal.of(address).into());
    }
    Ok(info)
}

impl Plan {
    /// Keeps the address on `linode` although its node no longer takes it (see
    /// [`departure`]): the share wave leaves it there and the status goes on naming it.
    pub fn keep(&mut self, linode: u64, entry: &SharedLinode) {
        self.placement
            .share_with
            .entry(linode)
            .or_insert_with(|| (entry.node.clone(), entry.role));
    }
}

/// The default bound of the wait for a leaving node's agent to withdraw: long enough for an
/// agent that is alive to notice its deselection and report it, short enough that a share
/// with a node whose agent is dead does not linger.
pub const DEFAULT_UNSHARE_AFTER_WITHDRAW_TIMEOUT: Duration = Duration::from_secs(60);

/// What becomes of the share with a Linode whose node no longer takes the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Its agent still announces: removing the share now would have the route servers drop
    /// the route that may carry the traffic. Look again after `remaining` at the latest.
    Keep { remaining: Duration },
    /// Remove the share now, for this reason.
    Release(Released),
}

/// Why a share with a leaving Linode is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Its agent reports that it no longer announces the address.
    Withdrawn,
    /// Its agent has no entry in the status (never had one, or took it away).
    NoEntry,
    /// Its Node no longer exists.
    NodeGone,
    /// Its agent still reports announcing after the wait's bound.
    TimedOut,
}

impl Released {
    pub fn as_str(self) -> &'static str {
        match self {
            Released::Withdrawn => "withdrawn",
            Released::NoEntry => "no agent entry",
            Released::NodeGone => "node gone",
            Released::TimedOut => "timed out",
        }
    }
}

/// The Linodes the status names that the plan no longer shares with, when the address is
/// still the one they hold: those a [`departure`] decides on. An address that changed is
/// retired from them at once, as agents withdraw it at once.
pub fn leaving<'a>(
    plan: &Plan,
    previous_address: Option<std::net::IpAddr>,
    previous: &'a BTreeMap<u64, SharedLinode>,
) -> Vec<(u64, &'a SharedLinode)> {
    if previous_address != Some(plan.account.network) {
        return Vec::new();
    }
    previous
        .iter()
        .filter(|(l, _)| !plan.placement.share_with.contains_key(l))
        .filter(|(l, _)| Some(**l) != plan.account.owner)
        .map(|(l, e)| (*l, e))
        .collect()
}

/// Whether the share with the Linode of `node`, which no longer takes the address, stays:
/// until the node's agent reports in `entries` that it no longer announces, its entry or its
/// Node is gone, or it has been waited for `timeout`.
pub fn departure(
    node: &str,
    node_exists: bool,
    entries: &[NodeStatus],
    waited: Duration,
    timeout: Duration,
) -> Departure {
    if !node_exists {
        return Departure::Release(Released::NodeGone);
    }
    match entries.iter().find(|e| e.name == node) {
        None => Departure::Release(Released::NoEntry),
        Some(e) if !e.announcing => Departure::Release(Released::Withdrawn),
        Some(_) if waited >= timeout => Departure::Release(Released::TimedOut),
        Some(_) => Departure::Keep {
            remaining: timeout.saturating_sub(waited),
        },
    }
}

/// How long `node`'s agent still answers connections of the address it handed over (flow
/// handover: its entry's `flowHandover.handingOverUntil`), if it does. Its Linode keeps its
/// share until then, whatever it announces: Linode filters the source addresses of a
/// Linode's packets, and the node's replies carry the shared address.
pub fn handing_over_left(
    node: &str,
    entries: &[NodeStatus],
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Duration> {
    let until = entries
        .iter()
        .find(|e| e.name == node)?
        .flow_handover
        .as_ref()?
        .handing_over_until
        .as_ref()?
        .0;
    let left = Duration::try_from(until.duration_since(now)).ok()?;
    (!left.is_zero()).then_some(left)
}

/// Since when each kept share has waited for its node's agent, per SharedIP and Linode. In
/// memory: a restarted operator starts the wait again, which the timeout still bounds.
#[derive(Debug, Default)]
pub struct DepartureClock {
    started: Mutex<HashMap<(String, u64), Instant>>,
}

impl DepartureClock {
    /// How long `sharedip`'s share with `linode` has waited at `now`, and whether the wait
    /// starts now.
    pub fn waited(&self, sharedip: &str, linode: u64, now: Instant) -> (Duration, bool) {
        let mut started = lock(&self.started);
        match started.get(&(sharedip.to_string(), linode)) {
            Some(at) => (now.saturating_duration_since(*at), false),
            None => {
                started.insert((sharedip.to_string(), linode), now);
                (Duration::ZERO, true)
            }
        }
    }

    /// Forgets the waits of `sharedip` except those for `waiting`.
    pub fn retain(&self, sharedip: &str, waiting: &BTreeSet<u64>) {
        lock(&self.started).retain(|(s, l), _| s != sharedip || waiting.contains(l));
    }
}

/// The name of the node whose providerID is `linode`.
fn node_of(nodes: &[Arc<Node>], linode: u64) -> Option<String> {
    nodes
        .iter()
        .find(|n| linode_of(n) == Some(linode))
        .map(|n| n.name_any())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use serde_json::json;
    use sharedip_api::Role;

    use super::*;
    use crate::directory::DirectoryConfig;
    use crate::fake_linode::FakeLinode;
    use crate::selection;

    fn node(name: &str, role: &str, linode: u64) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("role".to_string(), role.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(format!("linode://{linode}")),
                ..Default::default()
            }),
            status: None,
        })
    }

    /// A SharedIP selecting `role=a` as primary and `role=b` as secondary, created at
    /// `created` seconds past the epoch.
    fn sharedip(name: &str, address: &str, prefix: Option<i32>, created: i64) -> Arc<SharedIP> {
        let mut sip: SharedIP = serde_json::from_value(json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {"name": name},
            "spec": {
                "address": address,
                "prefix": prefix,
                "primary": {"nodeSelector": {"matchLabels": {"role": "a"}}},
                "secondary": {"nodeSelector": {"matchLabels": {"role": "b"}}},
            },
        }))
        .unwrap();
        let at = k8s_openapi::jiff::Timestamp::from_second(created).unwrap();
        sip.metadata.creation_timestamp = Some(Time(at));
        Arc::new(sip)
    }

    /// An account with Linodes 1 and 2 in us-east, 3 in eu-west, and 192.0.2.10 (owned by 9,
    /// an IP holder outside the cluster) and 2001:db8:1:2::/64 in us-east.
    fn account() -> Directory {
        let fake = FakeLinode::with_linodes(&[1, 2, 9]);
        fake.add_linode(3, "eu-west");
        fake.add_address("192.0.2.10", 32, "us-east", Some(9));
        fake.add_address("2001:db8:1:2::", 64, "us-east", Some(9));
        Directory::new(fake, DirectoryConfig::default())
    }

    fn nodes() -> Vec<Arc<Node>> {
        vec![node("a1", "a", 1), node("b2", "b", 2), node("b3", "b", 3)]
    }

    fn refusal(result: Result<Plan, Blocked>) -> Refusal {
        match result {
            Err(Blocked::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_duplicate_is_refused_and_keeps_the_earlier_claimants_shares() {
        let earlier = sharedip("first", "192.0.2.10", None, 1_000);
        let later = sharedip("second", "192.0.2.10", None, 2_000);
        let all = vec![earlier.clone(), later.clone()];
        let r = refusal(plan(&later, &all, &nodes(), &account()).await);
        assert_eq!(r.reason, reason::DUPLICATE);
        assert!(r.message.contains("\"first\""), "{}", r.message);
        assert_eq!(r.previous, Previously::Keep);
        assert_eq!(r.retry, Retry::Later);
        assert_eq!(r.address.map(|a| a.prefix()), Some(32));
        // The earlier one is planned as usual.
        assert!(plan(&earlier, &all, &nodes(), &account()).await.is_ok());
    }

    #[tokio::test]
    async fn an_invalid_address_is_refused_until_the_spec_changes() {
        let sip = sharedip("web", "192.0.2.300", None, 1_000);
        let r = refusal(plan(&sip, std::slice::from_ref(&sip), &nodes(), &account()).await);
        assert_eq!(r.reason, reason::INVALID_SPEC);
        assert_eq!(r.address, None);
        assert_eq!(r.previous, Previously::Retire);
        assert_eq!(r.retry, Retry::OnChange);
    }

    /// Until the operator allocates an address, a SharedIP without one is refused, and keeps
    /// what it shared: nothing says yet where the address goes. Once allocated, the address is
    /// planned as a given one.
    #[tokio::test]
    async fn a_sharedip_without_an_address_awaits_one() {
        let mut sip = (*sharedip("web", "192.0.2.10", None, 1_000)).clone();
        sip.spec.address = None;
        let sip = Arc::new(sip);
        let r = refusal(plan(&sip, std::slice::from_ref(&sip), &nodes(), &account()).await);
        assert_eq!(r.reason, reason::AWAITING_ADDRESS);
        assert_eq!(
            r.message,
            "no address yet: the operator allocates one (spec.address is unset)"
        );
        assert_eq!(r.address, None);
        assert_eq!(r.previous, Previously::Keep);
        assert_eq!(r.retry, Retry::OnChange);

        let mut allocated = (*sip).clone();
        allocated.spec.allocated_address = Some("192.0.2.10".into());
        let allocated = Arc::new(allocated);
        let p = plan(
            &allocated,
            std::slice::from_ref(&allocated),
            &nodes(),
            &account(),
        )
        .await
        .unwrap();
        assert_eq!(p.address.to_string(), "192.0.2.10/32");
    }

    #[tokio::test]
    async fn an_address_not_in_the_account_is_refused_and_retired() {
        let sip = sharedip("web", "192.0.2.99", None, 1_000);
        let r = refusal(plan(&sip, std::slice::from_ref(&sip), &nodes(), &account()).await);
        assert_eq!(r.reason, reason::NOT_IN_ACCOUNT);
        assert!(r.message.contains("192.0.2.99"), "{}", r.message);
        assert_eq!(r.previous, Previously::Retire);
        assert_eq!(r.retry, Retry::Later);
    }

    #[tokio::test]
    async fn a_prefix_other_than_the_ranges_waits_for_the_spec() {
        let sip = sharedip("v6", "2001:db8:1:2::abcd", Some(56), 1_000);
        let r = refusal(plan(&sip, std::slice::from_ref(&sip), &nodes(), &account()).await);
        assert_eq!(r.reason, reason::PREFIX_MISMATCH);
        assert!(r.message.contains("set spec.prefix to 64"), "{}", r.message);
        assert_eq!(r.retry, Retry::OnChange);
    }

    #[tokio::test]
    async fn a_node_in_another_region_is_excluded_and_the_others_receive_the_address() {
        let sip = sharedip("web", "192.0.2.10", None, 1_000);
        let p = plan(&sip, std::slice::from_ref(&sip), &nodes(), &account())
            .await
            .unwrap();
        assert_eq!(
            p.account.network,
            "192.0.2.10".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            p.selected
                .iter()
                .map(|n| (n.name.as_str(), n.role))
                .collect::<Vec<_>>(),
            vec![
                ("a1", Role::Primary),
                ("b2", Role::Secondary),
                ("b3", Role::Secondary)
            ]
        );
        assert_eq!(p.placement.linodes(), BTreeSet::from([1, 2]));
        assert_eq!(p.placement.excluded.len(), 1);
        assert_eq!(p.placement.excluded[0].name, "b3");
        assert_eq!(
            p.placement.excluded[0].reason,
            selection::reason::OTHER_REGION
        );
        assert_eq!(p.owner_node, None);
        assert_eq!(p.cluster_linodes, BTreeSet::from([1, 2, 3]));
    }

    fn entry(name: &str, announcing: bool) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            announcing,
            ..Default::default()
        }
    }

    fn shared(node: &str, role: Role) -> SharedLinode {
        SharedLinode {
            linode_id: 0,
            node: node.into(),
            role,
            since: None,
        }
    }

    #[tokio::test]
    async fn a_deselected_linode_whose_agent_announces_stays_wanted_until_it_withdraws() {
        let sip = sharedip("web", "192.0.2.10", None, 1_000);
        // b2 was shared before and is no longer selected.
        let nodes = vec![node("a1", "a", 1), node("b2", "other", 2)];
        let mut p = plan(&sip, std::slice::from_ref(&sip), &nodes, &account())
            .await
            .unwrap();
        assert_eq!(p.placement.linodes(), BTreeSet::from([1]));
        let previous = BTreeMap::from([
            (1, shared("a1", Role::Primary)),
            (2, shared("b2", Role::Secondary)),
        ]);
        let network = Some(p.account.network);
        let out = leaving(&p, network, &previous);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        // An address that changed is not kept anywhere.
        let other: std::net::IpAddr = "192.0.2.99".parse().unwrap();
        assert!(leaving(&p, Some(other), &previous).is_empty());

        let timeout = Duration::from_secs(60);
        let announcing = [entry("a1", true), entry("b2", true)];
        let d = departure("b2", true, &announcing, Duration::from_secs(5), timeout);
        assert_eq!(
            d,
            Departure::Keep {
                remaining: Duration::from_secs(55)
            }
        );
        p.keep(2, out[0].1);
        assert_eq!(p.placement.linodes(), BTreeSet::from([1, 2]));
        assert_eq!(
            p.placement.share_with.get(&2),
            Some(&("b2".to_string(), Role::Secondary))
        );
        // Kept shares are not "leaving" again in the same plan.
        assert!(leaving(&p, network, &previous).is_empty());
    }

    #[test]
    fn a_kept_share_is_released_on_withdrawal_on_timeout_and_when_its_node_or_entry_goes() {
        let timeout = Duration::from_secs(60);
        let early = Duration::from_secs(1);
        let withdrawn = [entry("b2", false)];
        assert_eq!(
            departure("b2", true, &withdrawn, early, timeout),
            Departure::Release(Released::Withdrawn)
        );
        let announcing = [entry("b2", true)];
        assert_eq!(
            departure("b2", true, &announcing, timeout, timeout),
            Departure::Release(Released::TimedOut)
        );
        assert_eq!(
            departure("b2", false, &announcing, early, timeout),
            Departure::Release(Released::NodeGone)
        );
        assert_eq!(
            departure("b2", true, &[entry("a1", true)], early, timeout),
            Departure::Release(Released::NoEntry)
        );
    }

    #[test]
    fn a_node_handing_its_connections_over_keeps_its_share_until_its_window_ends() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let later = |s: i64| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s))
                    .unwrap(),
            )
        };
        let mut b2 = entry("b2", false);
        assert_eq!(
            handing_over_left("b2", std::slice::from_ref(&b2), now),
            None
        );
        b2.flow_handover = Some(sharedip_api::FlowHandoverStatus {
            endpoint: "2001:db8:1::11".into(),
            handing_over_until: Some(later(90)),
            ..Default::default()
        });
        let entries = [entry("a1", true), b2.clone()];
        assert_eq!(
            handing_over_left("b2", &entries, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(handing_over_left("a1", &entries, now), None);
        b2.flow_handover.as_mut().unwrap().handing_over_until = Some(later(0));
        assert_eq!(handing_over_left("b2", &[b2], now), None);
    }

    #[test]
    fn the_departure_clock_starts_once_and_forgets_what_is_no_longer_waited_for() {
        let clock = DepartureClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.waited("web", 2, t0), (Duration::ZERO, true));
        let t1 = t0 + Duration::from_secs(7);
        assert_eq!(clock.waited("web", 2, t1), (Duration::from_secs(7), false));
        assert_eq!(clock.waited("other", 2, t1), (Duration::ZERO, true));
        clock.retain("web", &BTreeSet::new());
        assert_eq!(clock.waited("web", 2, t1), (Duration::ZERO, true));
        assert_eq!(clock.waited("other", 2, t1), (Duration::ZERO, false));
    }

    #[tokio::test]
    async fn the_owner_linode_behind_a_node_is_named_and_not_shared_with() {
        let sip = sharedip("web", "192.0.2.10", None, 1_000);
        let mut nodes = nodes();
        nodes.push(node("holder", "a", 9));
        let p = plan(&sip, std::slice::from_ref(&sip), &nodes, &account())
            .await
            .unwrap();
        assert_eq!(p.owner_node.as_deref(), Some("holder"));
        assert_eq!(p.placement.owner_nodes, vec!["holder".to_string()]);
        assert!(!p.placement.linodes().contains(&9));
    }
}
