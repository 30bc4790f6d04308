//! Spec and status of the `SharedIP` resource.

// Repeated `printcolumn(name = …, type_ = …)` keys are separate columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A public IPv4 address or IPv6 range that Linode shares between the Linodes behind the
/// selected nodes, announced over BGP from the primary node(s) and, while no primary announces,
/// from the secondary node(s).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sharedip.io",
    version = "v1alpha1",
    kind = "SharedIP",
    plural = "sharedips",
    singular = "sharedip",
    shortname = "sip",
    status = "SharedIPStatus",
    derive = "PartialEq",
    doc = "A highly available shared IP on Linode: one public IPv4 address or IPv6 range that follows healthy nodes (primary first, secondary while no primary announces).",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.address",
        description = "The address in use: spec.address or spec.allocatedAddress"
    ),
    printcolumn(
        name = "Prefix",
        type_ = "integer",
        json_path = ".status.prefix",
        priority = "1",
        description = "The announced prefix length: spec.prefix, or its default for the address family"
    ),
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.primary",
        description = "Nodes selected as primary"
    ),
    printcolumn(
        name = "Secondary",
        type_ = "string",
        json_path = ".status.secondary",
        description = "Nodes selected as secondary"
    ),
    printcolumn(
        name = "Shared",
        type_ = "integer",
        json_path = ".status.sharedLinodeCount",
        description = "Linodes the address is shared with"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new(crate::address::prefix_rule(AddressFamily::IPv4))
        .message(crate::address::prefix_message(AddressFamily::IPv4))
        .field_path(".prefix"),
    validation = Rule::new(crate::address::prefix_rule(AddressFamily::IPv6))
        .message(crate::address::prefix_message(AddressFamily::IPv6))
        .field_path(".prefix"),
    validation = Rule::new(crate::address::family_rule())
        .message(crate::address::FAMILY_MESSAGE)
        .field_path(".family"),
    validation = Rule::new(crate::address::EXCLUSIVE_RULE)
        .message(crate::address::EXCLUSIVE_MESSAGE)
        .field_path(".address"),
    validation = Rule::new(crate::address::ALLOCATED_FIXED_RULE)
        .message(crate::address::ALLOCATED_FIXED_MESSAGE)
        .field_path(".allocatedAddress"),
)]
#[serde(rename_all = "camelCase")]
pub struct SharedIPSpec {
    /// The shared address: a public IPv4 address (for example 192.0.2.10) or an address inside a
    /// routed IPv6 range (for example 2001:db8:1:2::1). The address must belong to your Linode
    /// account and to the same region as the selected nodes. Nodes bind exactly this address on
    /// their loopback (or configured) interface. An address given here is never deleted from the
    /// account, whatever `reclaimPolicy` says.
    ///
    /// Leave unset to have the operator allocate an address on the cluster's IP holder (see
    /// `family`, `reclaimPolicy`); it records it in `allocatedAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::address::address_schema")]
    pub address: Option<String>,

    /// The address the operator allocated for this SharedIP, when `address` is unset. Written
    /// once by the operator, like a Service's clusterIP, and fixed from then on: it is part of
    /// the spec, not the status, so a SharedIP re-created from a backup (or restored with its
    /// manifest) keeps its address. Set it yourself only to restore a SharedIP with the address
    /// it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::address::allocated_address_schema")]
    pub allocated_address: Option<String>,

    /// The family of the address the operator allocates when `address` is unset: IPv4 (the
    /// default; a single address) or IPv6 (a routed range, /64 unless `prefix` is 56). When
    /// `address` or `allocatedAddress` is set, it must be their family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<AddressFamily>,

    /// Prefix length of the shared range: 32 for IPv4 (the only size Linode shares), 64 or 56 for
    /// an IPv6 range. Defaults to 32 for IPv4 and 64 for IPv6. It is announced to the route
    /// servers with this length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub prefix: Option<i32>,

    /// What happens to an address the operator allocated when the SharedIP is deleted: `Delete`
    /// (default) gives it back to Linode; `Retain` keeps it on the IP holder and lists it in the
    /// ConfigMap `sharedip-retained-<cluster id>` in the operator's namespace, where a later
    /// SharedIP with the same name (or one that names the address in `address`) takes it again.
    /// An address given in `address` is never deleted, whatever the policy. Deletions made by
    /// uninstalling the operator always retain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<ReclaimPolicy>,

    /// Set to `AcceptOutage` to move the address from the node's Linode that owns it to the
    /// cluster's IP holder; Linode cannot move a shared address, so the operator unshares it
    /// everywhere, assigns it to the holder and shares it again: the address is unreachable for
    /// at least Linode's share propagation (10–20 s on Linode). Without it, an address owned by
    /// a node's Linode only earns a warning (recycling that node deletes the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_to_holder: Option<MoveToHolder>,

    /// Nodes that announce the address with the primary community; the route servers prefer
    /// them. Usually one node.
    pub primary: RoleSelector,

    /// Nodes that announce the address with the secondary community; they receive the traffic
    /// only while no primary announces. A node matched by both selectors acts as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<RoleSelector>,

    /// Whether traffic moves back to a primary node when it announces again after a failure.
    /// When false, every selected node announces with the same (secondary) community, so the
    /// route servers keep using whichever node currently carries the traffic (the guides' "same
    /// role on both nodes"). Default true.
    #[serde(default = "default_true")]
    pub failback: bool,

    /// Announce from a node only while a Ready pod matching this gate runs on it — typically the
    /// ingress controller that serves the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gate: Option<ReadinessGate>,

    /// Which nodes have endpoints of the LoadBalancer Service this SharedIP serves. The operator
    /// writes it into the SharedIPs it makes for Services, from the Service's EndpointSlices
    /// and `externalTrafficPolicy`; a node announces only while it is listed `ready`, and a
    /// node listed `terminating` hands the address over (make-before-break). Not for
    /// SharedIPs you write yourself: use `readinessGate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_gate: Option<EndpointGate>,

    /// Overrides of the BGP parameters the node agents use for this address. Leave unset on
    /// Linode: the defaults match Linode's route servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpOverrides>,

    /// Whether a planned move of the address (a drain, a deselection, a terminating endpoint)
    /// keeps established TCP connections: for a window after the move, the node that takes
    /// the traffic forwards the packets of connections it does not serve, through a tunnel,
    /// to the node that held the address, which answers them. `Off`; `On`; or `Auto` (the
    /// default): on between two nodes once a two-way self-test of the tunnel between them
    /// passed, so a firewall that blocks the tunnel makes the move reset the connections
    /// instead of stalling them. Takes effect on nodes whose agents run with flow handover
    /// (the default). Hard failures (a node or link lost) still end the connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_handover: Option<FlowHandoverMode>,

    /// How long, in seconds, the node that handed the address over keeps answering the
    /// connections it had (default 300). Connections also end when that node's server or
    /// endpoint does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 3600))]
    pub flow_handover_window_seconds: Option<i32>,
}

/// Whether planned moves keep established connections (flow handover).
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[schemars(transform = without_description)]
pub enum FlowHandoverMode {
    /// Moves reset established connections.
    Off,
    /// Moves keep them, on nodes whose agents can, without testing the tunnel first.
    On,
    /// As `On`, between two nodes whose tunnel passed a two-way self-test during the move
    /// (the default).
    #[default]
    Auto,
}

/// The default of `flowHandoverWindowSeconds`.
pub const FLOW_HANDOVER_WINDOW_SECONDS: i32 = 300;

fn default_true() -> bool {
    true
}

impl SharedIPSpec {
    /// The address the SharedIP uses: `address`, or else the one the operator allocated.
    pub fn address_in_use(&self) -> Option<&str> {
        self.address
            .as_deref()
            .or(self.allocated_address.as_deref())
    }

    /// Whether the address is (or is to be) one the operator allocates: `allocatedAddress` is
    /// set, or `address` is not. Only such an address is ever deleted from the account.
    pub fn is_allocated(&self) -> bool {
        self.allocated_address.is_some() || self.address.is_none()
    }

    /// `reclaimPolicy`, or its default `Delete`. It governs only an allocated address
    /// ([`Self::is_allocated`]): an address given in `address` is never deleted.
    pub fn effective_reclaim_policy(&self) -> ReclaimPolicy {
        self.reclaim_policy.unwrap_or_default()
    }

    /// Whether planned moves of the address keep established connections, as far as the
    /// spec says (the node agents must be able to, too).
    pub fn wants_flow_handover(&self) -> bool {
        self.flow_handover.unwrap_or_default() != FlowHandoverMode::Off
    }

    /// Whether flow handover between two nodes waits for the tunnel's self-test (`Auto`).
    pub fn tests_flow_handover_tunnel(&self) -> bool {
        self.flow_handover.unwrap_or_default() == FlowHandoverMode::Auto
    }

    /// `flowHandoverWindowSeconds`, or its default.
    pub fn flow_handover_window(&self) -> std::time::Duration {
        let secs = self
            .flow_handover_window_seconds
            .unwrap_or(FLOW_HANDOVER_WINDOW_SECONDS)
            .clamp(5, 3600);
        std::time::Duration::from_secs(u64::from(secs.unsigned_abs()))
    }

    /// The family of the SharedIP's address: that of the address in use when it is an IP
    /// address, else `family` (default IPv4), the family the operator allocates.
    pub fn family(&self) -> AddressFamily {
        match self.address_in_use().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(std::net::IpAddr::V4(_))) => AddressFamily::IPv4,
            Some(Ok(std::net::IpAddr::V6(_))) => AddressFamily::IPv6,
            _ => self.family.unwrap_or_default(),
        }
    }
}

/// Drops a type's own description from its schema. The CRD's schema of an optional enum field
/// takes the description of the enum over the field's, and the field's says what it is for.
fn without_description(schema: &mut schemars::Schema) {
    schema.remove("description");
}

/// An address family: IPv4 (a single address) or IPv6 (a routed range).
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[schemars(transform = without_description)]
pub enum AddressFamily {
    /// A single public IPv4 address.
    #[default]
    IPv4,
    /// A routed IPv6 range, /64 or /56.
    IPv6,
}

impl std::fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressFamily::IPv4 => "IPv4",
            AddressFamily::IPv6 => "IPv6",
        })
    }
}

/// Consent to move an address owned by a node's Linode to the IP holder, with its outage.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = without_description)]
pub enum MoveToHolder {
    /// Move it, accepting that the address is unreachable while Linode propagates the shares.
    AcceptOutage,
}

/// What becomes of an address the operator allocated when its SharedIP is deleted.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[schemars(transform = without_description)]
pub enum ReclaimPolicy {
    /// Give the address back to Linode.
    #[default]
    Delete,
    /// Keep the address on the IP holder, for a later SharedIP to take again.
    Retain,
}

impl std::fmt::Display for ReclaimPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReclaimPolicy::Delete => "Delete",
            ReclaimPolicy::Retain => "Retain",
        })
    }
}

/// Which nodes take a role.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSelector {
    /// Label selector over Node objects (matchLabels and/or matchExpressions). It must not be
    /// empty: an empty selector would select every node of the cluster.
    #[x_kube(
        validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)")
            .message("nodeSelector must set matchLabels or matchExpressions; an empty selector would select every node"),
        validation = Rule::new(crate::selector::match_labels_keys_rule())
            .message(crate::selector::match_labels_keys_message().as_str()),
        validation = Rule::new(crate::selector::match_labels_values_rule())
            .message(crate::selector::match_labels_values_message().as_str()),
    )]
    #[schemars(schema_with = "crate::selector::label_selector_schema")]
    pub node_selector: LabelSelector,
}

/// A pod that must be Ready on a node before that node announces the address.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessGate {
    /// Namespace of the pods, for example ingress-nginx.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Label selector of the pods, for example app.kubernetes.io/name=ingress-nginx.
    #[x_kube(
        validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)")
            .message("podSelector must set matchLabels or matchExpressions"),
        validation = Rule::new(crate::selector::match_labels_keys_rule())
            .message(crate::selector::match_labels_keys_message().as_str()),
        validation = Rule::new(crate::selector::match_labels_values_rule())
            .message(crate::selector::match_labels_values_message().as_str()),
    )]
    #[schemars(schema_with = "crate::selector::label_selector_schema")]
    pub pod_selector: LabelSelector,
}

/// The nodes that may announce a Service's address, as the operator computed them from the
/// Service's endpoints. A selected node in neither list does not announce.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointGate {
    /// The Service, as namespace/name.
    #[schemars(length(min = 1, max = 317))]
    pub service: String,
    /// Nodes that may announce: with `externalTrafficPolicy: Local`, those with a ready local
    /// endpoint (or, when no node has one, a serving one); with `Cluster`, every eligible node
    /// while the Service has a ready (else a serving) endpoint anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<String>,
    /// Nodes whose local endpoints are all terminating but still serving while another node
    /// has a ready one (`Local` only): they withdraw once a ready node announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminating: Vec<String>,
}

/// BGP parameters that replace the node agent's defaults for this address.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BgpOverrides {
    /// Community announced by primary nodes: standard "ASN:value" (default 65000:1) or large
    /// "ASN:data1:data2" (for example 63949:1:1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(COMMUNITY_RULE).message(COMMUNITY_MESSAGE))]
    #[schemars(length(max = 32))]
    pub primary_community: Option<String>,
    /// Community announced by secondary nodes: standard "ASN:value" (default 65000:2) or large
    /// "ASN:data1:data2" (for example 63949:1:2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(COMMUNITY_RULE).message(COMMUNITY_MESSAGE))]
    #[schemars(length(max = 32))]
    pub secondary_community: Option<String>,
    /// Local AS number of the node agents (default 65001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub local_asn: Option<i64>,
    /// AS number of the route servers (default 65000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub peer_asn: Option<i64>,
}

const COMMUNITY_RULE: &str = "self.matches('^[0-9]{1,10}:[0-9]{1,10}(:[0-9]{1,10})?$') && (self.split(':').size() == 2 ? self.split(':').all(p, int(p) <= 65535) : self.split(':').all(p, int(p) <= 4294967295))";
const COMMUNITY_MESSAGE: &str = "a community is either standard ASN:value with both parts 0-65535 (for example 65000:1) or large ASN:data1:data2 with each part 0-4294967295 (for example 63949:1:1)";

/// Observed state, written by the operator (conditions, sharing) and by each node agent (its own
/// entry in `nodes`, through server-side apply).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SharedIPStatus {
    /// The generation of the spec that the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The address in use: spec.address or spec.allocatedAddress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Ready: the address is shared with every selected node and announced. Shared: the Linode
    /// API shares the address with the Linodes of every selected node. Announced: a node
    /// announces it. Each carries a reason and a message when it is not True.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Nodes selected as primary, comma separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Nodes selected as secondary, comma separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,

    /// The Linode that owns the address in the Linode API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerStatus>,

    /// The address as the Linode API names it (IPv4 address or IPv6 range base) that
    /// `sharedWith` refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_address: Option<String>,

    /// The prefix length announced for the address: `spec.prefix`, or its default for the
    /// address family when unset (32 for IPv4, 64 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<i32>,

    /// Number of Linodes the address is shared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_linode_count: Option<i32>,

    /// The Linodes the operator shares the address with, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["linodeId".into()]))]
    pub shared_with: Vec<SharedLinode>,

    /// Selected nodes that cannot take part, and why (no providerID, Linode in another region…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub excluded_nodes: Vec<ExcludedNode>,

    /// One entry per participating node, written by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub nodes: Vec<NodeStatus>,
}

/// The owner of the address according to the Linode API.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OwnerStatus {
    /// Linode ID of the owner.
    pub linode_id: i64,
    /// Region of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The owner's node, when the owner is itself a node of this cluster. Recycling that node
    /// deletes the Linode and with it the address; prefer an IP holder Linode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A Linode the address is shared with.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SharedLinode {
    /// Linode ID.
    pub linode_id: i64,
    /// The node behind this Linode.
    pub node: String,
    /// The node's role: Primary or Secondary.
    pub role: Role,
    /// Since when the address is shared with this Linode: when the share call that added it
    /// succeeded (or, for a share found already in place, when the operator first recorded it).
    /// Linode's route servers accept the Linode's route only some seconds later, so a recent
    /// time means the share may still be propagating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// A selected node that does not take part, and why.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ExcludedNode {
    /// Node name.
    pub name: String,
    /// Machine-readable reason, for example NodeWithoutProviderID or LinodeInOtherRegion.
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The role of a node for one SharedIP.
#[derive(
    schemars::JsonSchema,
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub enum Role {
    /// Announces with the primary community.
    Primary,
    /// Announces with the secondary community.
    Secondary,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
        })
    }
}

/// One node agent's view of a SharedIP.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// The node's role: Primary or Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Whether the node announces the address to the route servers right now.
    #[serde(default)]
    pub announcing: bool,
    /// Why the node announces or not, for example Announced, Draining, ReadinessGateFailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// BGP sessions established with the route servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_established: Option<i32>,
    /// BGP sessions configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_total: Option<i32>,
    /// When `announcing` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The node's part in a flow handover, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_handover: Option<FlowHandoverStatus>,
}

/// A node's part in a flow handover of the address.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowHandoverStatus {
    /// The node's tunnel endpoint: its own IPv6 address.
    pub endpoint: String,
    /// Set while the node hands the address over: until when it answers the connections it
    /// had, forwarded to it by the nodes in their `forwardingTo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handing_over_until: Option<Time>,
    /// Nodes handing the address over whose connections this node forwards to them (its
    /// forwarding is in place).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarding_to: Vec<String>,
    /// While the node hands the address over: the nodes whose forwarded connections it
    /// answers (its receiving side is in place). A node taking the address back waits for
    /// its name here before it announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receiving_from: Vec<String>,
    /// Set when the node cannot take part for this address, and why (a LoadBalancer
    /// Service's dataplane it does not serve, such as kube-proxy in IPVS mode): other nodes
    /// neither forward to it nor wait for it, and its moves reset the connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Nodes whose tunnel self-test probes reached this node through the tunnel of a window
    /// with them. With `flowHandover: Auto`, two nodes forward each other's connections only
    /// once each lists the other here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_heard_from: Vec<String>,
    /// Nodes whose tunnel with this node failed its self-test during the current move
    /// (`flowHandover: Auto`): the probes of one of the two did not reach the other in time,
    /// as when a firewall blocks the tunnel's port. Flow handover between the two is off
    /// until the move ends, and its connections reset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_failed_with: Vec<String>,
}

impl FlowHandoverStatus {
    /// Whether the node takes part in flow handover of this address.
    pub fn takes_part(&self) -> bool {
        self.unavailable.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> SharedIPSpec {
        let mut s = serde_json::json!({
            "primary": {"nodeSelector": {"matchLabels": {"role": "a"}}},
        });
        if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        serde_json::from_value(s).unwrap()
    }

    #[test]
    fn the_address_in_use_is_the_given_one_or_else_the_allocated_one() {
        let given = spec(serde_json::json!({"address": "192.0.2.10"}));
        assert_eq!(given.address_in_use(), Some("192.0.2.10"));
        assert!(!given.is_allocated());
        let waiting = spec(serde_json::json!({}));
        assert_eq!(waiting.address_in_use(), None);
        assert!(waiting.is_allocated());
        let allocated = spec(serde_json::json!({"allocatedAddress": "192.0.2.20"}));
        assert_eq!(allocated.address_in_use(), Some("192.0.2.20"));
        assert!(allocated.is_allocated());
    }

    #[test]
    fn reclaim_policy_defaults_to_delete() {
        assert_eq!(
            spec(serde_json::json!({})).effective_reclaim_policy(),
            ReclaimPolicy::Delete
        );
        let retain = spec(serde_json::json!({"reclaimPolicy": "Retain"}));
        assert_eq!(retain.effective_reclaim_policy(), ReclaimPolicy::Retain);
        assert!(
            serde_json::from_value::<ReclaimPolicy>(serde_json::json!("retain")).is_err(),
            "the API names are exact"
        );
    }

    #[test]
    fn the_family_is_the_addresss_or_else_the_one_to_allocate() {
        assert_eq!(spec(serde_json::json!({})).family(), AddressFamily::IPv4);
        let v6 = spec(serde_json::json!({"family": "IPv6"}));
        assert_eq!(v6.family(), AddressFamily::IPv6);
        assert_eq!(
            serde_json::to_value(v6.family).unwrap(),
            serde_json::json!("IPv6")
        );
        let given = spec(serde_json::json!({"address": "2001:db8::1"}));
        assert_eq!(given.family(), AddressFamily::IPv6);
        let allocated =
            spec(serde_json::json!({"allocatedAddress": "192.0.2.20", "family": "IPv6"}));
        assert_eq!(
            allocated.family(),
            AddressFamily::IPv4,
            "the address decides"
        );
        let unusable = spec(serde_json::json!({"address": "nonsense", "family": "IPv6"}));
        assert_eq!(unusable.family(), AddressFamily::IPv6);
    }
}
