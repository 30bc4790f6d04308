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
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
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
    validation = Rule::new("!isIP(self.address) || ip(self.address).family() != 4 || !has(self.prefix) || self.prefix == 32")
        .message("IPv4 shared addresses must use prefix 32 (Linode shares single IPv4 addresses)")
        .field_path(".prefix"),
    validation = Rule::new("!isIP(self.address) || ip(self.address).family() != 6 || !has(self.prefix) || self.prefix == 64 || self.prefix == 56")
        .message("IPv6 shared ranges must use prefix 64 or 56 (the size of the Linode IPv6 range)")
        .field_path(".prefix"),
)]
#[serde(rename_all = "camelCase")]
pub struct SharedIPSpec {
    /// The shared address: a public IPv4 address (for example 192.0.2.10) or an address inside a
    /// routed IPv6 range (for example 2001:db8:1:2::1). The address must belong to your Linode
    /// account and to the same region as the selected nodes. Nodes bind exactly this address on
    /// their loopback (or configured) interface.
    #[x_kube(
        validation = Rule::new("isIP(self)").message("spec.address must be an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::1, without a prefix length (set spec.prefix instead)"),
        validation = Rule::new("!isIP(self) || !ip(self).isUnspecified()").message("spec.address must not be the unspecified address (0.0.0.0 or ::)"),
        validation = Rule::new("!isIP(self) || !ip(self).isLoopback()").message("spec.address must not be a loopback address (127.0.0.0/8 or ::1)"),
        validation = Rule::new("!isIP(self) || !(ip(self).isLinkLocalUnicast() || ip(self).isLinkLocalMulticast())").message("spec.address must not be a link-local address (unicast 169.254.0.0/16, fe80::/10; multicast 224.0.0.0/24, ff02::/16)"),
        validation = Rule::new("!isIP(self) || !(cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self))").message("spec.address must not be a multicast address (224.0.0.0/4, ff00::/8)"),
        validation = Rule::new("self != '255.255.255.255'").message("spec.address must not be the broadcast address 255.255.255.255"),
    )]
    #[schemars(length(max = 64))]
    pub address: String,

    /// Prefix length of the shared range: 32 for IPv4 (the only size Linode shares), 64 or 56 for
    /// an IPv6 range. Defaults to 32 for IPv4 and 64 for IPv6. It is announced to the route
    /// servers with this length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub prefix: Option<i32>,

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

    /// Overrides of the BGP parameters the node agents use for this address. Leave unset on
    /// Linode: the defaults match Linode's route servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpOverrides>,
}

fn default_true() -> bool {
    true
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
}
