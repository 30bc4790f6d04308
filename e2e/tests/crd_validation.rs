//! The CRD's OpenAPI and CEL validation, through a real kube-apiserver: every bad spec is
//! rejected at apply time with a message a user understands, and good specs are accepted.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::CustomResourceExt;
use serde_json::{json, Value};
use sharedip_api::{address, AddressFamily, SharedIP};
use sharedip_e2e::controlplane::ControlPlane;

fn api(cp: &ControlPlane) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sharedip.io", "v1alpha1", "SharedIP");
    Api::all_with(
        cp.client(),
        &ApiResource::from_gvk_with_plural(&gvk, "sharedips"),
    )
}

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid object")
}

fn spec(address: &str, prefix: Option<i64>) -> Value {
    let mut s = json!({
        "address": address,
        "primary": {"nodeSelector": {"matchLabels": {"sharedip.io/role": "primary"}}},
        "secondary": {"nodeSelector": {"matchLabels": {"sharedip.io/role": "secondary"}}},
    });
    if let Some(p) = prefix {
        s["prefix"] = json!(p);
    }
    s
}

async fn create(cp: &ControlPlane, name: &str, spec: Value) -> Result<(), String> {
    match api(cp)
        .create(&PostParams::default(), &object(name, spec))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

/// Merges `spec` into the SharedIP's spec (a null removes a field), as `kubectl patch --type
/// merge` does.
async fn update(cp: &ControlPlane, name: &str, spec: Value) -> Result<(), String> {
    let patch = Patch::Merge(json!({"spec": spec}));
    match api(cp).patch(name, &PatchParams::default(), &patch).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

async fn start() -> ControlPlane {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    cp.apply_crds(&dir).await.expect("CRDs apply");
    cp
}

#[tokio::test]
async fn rejects_bad_specs_with_clear_messages() {
    let cp = tokio::time::timeout(std::time::Duration::from_secs(240), start())
        .await
        .expect("control plane within 240 s");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "not-ip",
            spec("not-an-ip", None),
            "spec.address must be an IPv4 or IPv6 address",
        ),
        (
            "with-len",
            spec("192.0.2.10/32", None),
            "without a prefix length",
        ),
        (
            "v4-prefix",
            spec("192.0.2.10", Some(24)),
            "IPv4 shared addresses must use prefix 32",
        ),
        (
            "v6-prefix",
            spec("2001:db8::1", Some(48)),
            "IPv6 shared ranges must use prefix 64 or 56",
        ),
        (
            "v6-128",
            spec("2001:db8::1", Some(128)),
            "IPv6 shared ranges must use prefix 64 or 56",
        ),
        (
            "loopback4",
            spec("127.0.0.1", None),
            "must not be a loopback address",
        ),
        (
            "loopback6",
            spec("::1", None),
            "must not be a loopback address",
        ),
        (
            "unspec4",
            spec("0.0.0.0", None),
            "must not be the unspecified address",
        ),
        (
            "unspec6",
            spec("::", None),
            "must not be the unspecified address",
        ),
        (
            "mcast4",
            spec("224.0.0.5", None),
            "must not be a multicast address",
        ),
        (
            "mcast6",
            spec("ff02::1", None),
            "link-local address (unicast 169.254.0.0/16, fe80::/10; multicast 224.0.0.0/24, ff02::/16)",
        ),
        (
            "llmcast4",
            spec("224.0.0.251", None),
            "multicast 224.0.0.0/24",
        ),
        (
            "mcast6g",
            spec("ff0e::1", None),
            "must not be a multicast address",
        ),
        (
            "ll4",
            spec("169.254.10.1", None),
            "must not be a link-local address",
        ),
        (
            "ll6",
            spec("fe80::1", None),
            "must not be a link-local address",
        ),
        (
            "bcast",
            spec("255.255.255.255", None),
            "must not be the broadcast address",
        ),
        (
            "no-primary",
            json!({"address": "192.0.2.10"}),
            "spec.primary: Required value",
        ),
        (
            "no-selector",
            json!({"address": "192.0.2.10", "primary": {}}),
            "spec.primary.nodeSelector: Required value",
        ),
        (
            "empty-selector",
            json!({"address": "192.0.2.10", "primary": {"nodeSelector": {}}}),
            "nodeSelector must set matchLabels or matchExpressions",
        ),
        (
            "empty-secondary",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
                   "secondary": {"nodeSelector": {"matchLabels": {}}}}),
            "nodeSelector must set matchLabels or matchExpressions",
        ),
        (
            "bad-community",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
                   "bgp": {"primaryCommunity": "65536:1"}}),
            "a community is either standard ASN:value",
        ),
        (
            "bad-community-text",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
                   "bgp": {"secondaryCommunity": "primary"}}),
            "a community is either standard ASN:value",
        ),
    ];
    let mut failures = Vec::new();
    for (name, s, expected) in &cases {
        match create(&cp, name, s.clone()).await {
            Ok(()) => failures.push(format!(
                "{name}: accepted, expected rejection with {expected:?}"
            )),
            Err(msg) if msg.contains(expected) => {}
            Err(msg) => failures.push(format!("{name}: message {msg:?} lacks {expected:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "validation mismatches:\n{}",
        failures.join("\n")
    );

    // And the good ones pass.
    let good: Vec<(&str, Value)> = vec![
        ("ok-v4", spec("192.0.2.10", None)),
        ("ok-v4-32", spec("198.51.100.7", Some(32))),
        ("ok-v6-64", spec("2001:db8:1:2::1", Some(64))),
        ("ok-v6-56", spec("2001:db8:1:200::", Some(56))),
        (
            "ok-full",
            json!({"address": "192.0.2.11",
                   "primary": {"nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["edge"]}]}},
                   "failback": false,
                   "readinessGate": {"namespace": "ingress-nginx", "podSelector": {"matchLabels": {"app": "ingress"}}},
                   "bgp": {"primaryCommunity": "63949:1:1", "secondaryCommunity": "65000:2", "localAsn": 65001, "peerAsn": 65000}}),
        ),
    ];
    for (name, s) in good {
        create(&cp, name, s)
            .await
            .unwrap_or_else(|m| panic!("{name} rejected: {m}"));
    }
    // Defaults are applied by the apiserver.
    let ok: Api<SharedIP> = Api::all(cp.client());
    let o = ok.get("ok-v4").await.expect("get ok-v4");
    assert!(o.spec.failback, "failback defaults to true");
}

#[tokio::test]
async fn generated_crd_matches_committed_file() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/sharedip.io_sharedips.yaml"),
    )
    .expect("crds/sharedip.io_sharedips.yaml exists");
    let generated = sharedip_operator::crd::crd_yaml().expect("renders");
    assert_eq!(
        committed, generated,
        "crds/ is stale: run `cargo run -p sharedip-operator --bin crdgen`"
    );
    assert_eq!(SharedIP::crd_name(), "sharedips.sharedip.io");
}

/// A spec whose primary nodeSelector is `selector`.
fn with_selector(selector: Value) -> Value {
    json!({"address": "192.0.2.10", "primary": {"nodeSelector": selector}})
}

fn expression(key: &str, operator: &str, values: Option<&[&str]>) -> Value {
    let mut e = json!({"key": key, "operator": operator});
    if let Some(v) = values {
        e["values"] = json!(v);
    }
    json!({"matchExpressions": [e]})
}

/// Label selectors: the apiserver applies no rules of its own to a custom resource's selector,
/// so the CRD's schema must refuse what a built-in object's selector would.
#[tokio::test]
async fn rejects_bad_label_selectors_and_accepts_good_ones() {
    let cp = tokio::time::timeout(std::time::Duration::from_secs(240), start())
        .await
        .expect("control plane within 240 s");
    let long_key = format!("{}/role", "a".repeat(254));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown-operator",
            with_selector(expression("pool", "Near", Some(&["x"]))),
            "Unsupported value: \"Near\"",
        ),
        (
            "lowercase-operator",
            with_selector(expression("pool", "in", Some(&["x"]))),
            "supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
        ),
        (
            "in-without-values",
            with_selector(expression("pool", "In", None)),
            "matchExpressions with operator In or NotIn need at least one value",
        ),
        (
            "notin-empty-values",
            with_selector(expression("pool", "NotIn", Some(&[]))),
            "matchExpressions with operator In or NotIn need at least one value",
        ),
        (
            "exists-with-values",
            with_selector(expression("pool", "Exists", Some(&["x"]))),
            "matchExpressions with operator Exists or DoesNotExist take no values",
        ),
        (
            "bad-expression-key",
            with_selector(expression("pool name", "Exists", None)),
            "matchExpressions key must be a label key",
        ),
        (
            "bad-expression-prefix",
            with_selector(expression("Example.COM/role", "Exists", None)),
            "matchExpressions key must be a label key",
        ),
        (
            "bad-expression-value",
            with_selector(expression("pool", "In", Some(&["not ok"]))),
            "matchExpressions values must be label values",
        ),
        (
            "bad-label-key",
            with_selector(json!({"matchLabels": {"role=primary": "x"}})),
            "matchLabels keys must be a label key",
        ),
        (
            "long-label-prefix",
            with_selector(json!({"matchLabels": {long_key.as_str(): "x"}})),
            "matchLabels keys must be a label key",
        ),
        (
            "bad-label-value",
            with_selector(json!({"matchLabels": {"role": "-primary"}})),
            "matchLabels values must be label values",
        ),
        (
            "bad-secondary",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
                   "secondary": {"nodeSelector": expression("pool", "In", Some(&[]))}}),
            "spec.secondary.nodeSelector.matchExpressions[0].values",
        ),
        (
            "bad-pod-selector",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
                   "readinessGate": {"namespace": "ingress", "podSelector": expression("app", "Near", None)}}),
            "spec.readinessGate.podSelector.matchExpressions[0].operator",
        ),
        (
            "too-many-terms",
            with_selector(
                json!({"matchLabels": (0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            "must have at most 32 items",
        ),
    ];
    let mut failures = Vec::new();
    for (name, s, expected) in &cases {
        match create(&cp, name, s.clone()).await {
            Ok(()) => failures.push(format!(
                "{name}: accepted, expected rejection with {expected:?}"
            )),
            Err(msg) if msg.contains(expected) => {}
            Err(msg) => failures.push(format!("{name}: message {msg:?} lacks {expected:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "validation mismatches:\n{}",
        failures.join("\n")
    );

    let max_key = format!("{}/{}", "a".repeat(253), "n".repeat(63));
    let good: Vec<(&str, Value)> = vec![
        (
            "ok-exists",
            with_selector(expression("sharedip.io/role", "Exists", None)),
        ),
        (
            "ok-doesnotexist",
            with_selector(json!({"matchExpressions": [
                {"key": "node.kubernetes.io/exclude-from-external-load-balancers", "operator": "DoesNotExist", "values": []}
            ]})),
        ),
        (
            "ok-notin",
            with_selector(expression(
                "topology.kubernetes.io/zone",
                "NotIn",
                Some(&["us-east-1a", "b"]),
            )),
        ),
        (
            "ok-prefixed-labels",
            with_selector(json!({"matchLabels": {
                "sharedip.io/role": "primary",
                "lke.linode.com/pool-id": "12345",
                "kubernetes.io/hostname": "lke1-abc-1",
                "empty": "",
                max_key.as_str(): "v",
            }})),
        ),
        (
            "ok-both",
            json!({"address": "192.0.2.10",
                   "primary": {"nodeSelector": {"matchLabels": {"role": "primary"},
                                                "matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "b"]}]}},
                   "secondary": {"nodeSelector": expression("role", "Exists", None)},
                   "readinessGate": {"namespace": "ingress-nginx", "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}}),
        ),
    ];
    for (name, s) in good {
        create(&cp, name, s)
            .await
            .unwrap_or_else(|m| panic!("{name} rejected: {m}"));
    }
}

/// A spec without an address, plus `extra`.
fn unaddressed(extra: Value) -> Value {
    let mut s = json!({
        "primary": {"nodeSelector": {"matchLabels": {"sharedip.io/role": "primary"}}},
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

/// The fields of an address the operator allocates: `spec.address` may be left unset,
/// `spec.family` and `spec.prefix` then say what to allocate, and `spec.allocatedAddress` is
/// written once and then fixed.
#[tokio::test]
async fn allocation_fields_are_checked_at_admission() {
    let cp = tokio::time::timeout(std::time::Duration::from_secs(240), start())
        .await
        .expect("control plane within 240 s");
    let ipv4_prefix = address::prefix_message(AddressFamily::IPv4);
    let ipv6_prefix = address::prefix_message(AddressFamily::IPv6);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "given-and-allocated",
            unaddressed(json!({"address": "192.0.2.10", "allocatedAddress": "192.0.2.20"})),
            address::EXCLUSIVE_MESSAGE,
        ),
        (
            "family-mismatch",
            unaddressed(json!({"address": "192.0.2.10", "family": "IPv6"})),
            address::FAMILY_MESSAGE,
        ),
        (
            "family-mismatch-allocated",
            unaddressed(json!({"allocatedAddress": "2001:db8:1:2::", "family": "IPv4"})),
            address::FAMILY_MESSAGE,
        ),
        (
            "ipv4-family-prefix-64",
            unaddressed(json!({"family": "IPv4", "prefix": 64})),
            ipv4_prefix,
        ),
        (
            "default-family-prefix-64",
            unaddressed(json!({"prefix": 64})),
            ipv4_prefix,
        ),
        (
            "ipv6-family-prefix-48",
            unaddressed(json!({"family": "IPv6", "prefix": 48})),
            ipv6_prefix,
        ),
        (
            "allocated-prefix",
            unaddressed(json!({"allocatedAddress": "192.0.2.20", "prefix": 56})),
            ipv4_prefix,
        ),
        (
            "allocated-loopback",
            unaddressed(json!({"allocatedAddress": "127.0.0.1"})),
            "spec.allocatedAddress must not be a loopback address",
        ),
        (
            "allocated-with-length",
            unaddressed(json!({"allocatedAddress": "192.0.2.20/32"})),
            "spec.allocatedAddress must be an IPv4 or IPv6 address",
        ),
        (
            "bad-reclaim-policy",
            unaddressed(json!({"reclaimPolicy": "Keep"})),
            "spec.reclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Retain\"",
        ),
        (
            "bad-family",
            unaddressed(json!({"family": "ipv4"})),
            "spec.family: Unsupported value: \"ipv4\"",
        ),
    ];
    let mut failures = Vec::new();
    for (name, s, expected) in &cases {
        match create(&cp, name, s.clone()).await {
            Ok(()) => failures.push(format!(
                "{name}: accepted, expected rejection with {expected:?}"
            )),
            Err(msg) if msg.contains(expected) => {}
            Err(msg) => failures.push(format!("{name}: message {msg:?} lacks {expected:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "validation mismatches:\n{}",
        failures.join("\n")
    );

    let good: Vec<(&str, Value)> = vec![
        ("ok-unaddressed", unaddressed(json!({}))),
        (
            "ok-v6-56",
            unaddressed(json!({"family": "IPv6", "prefix": 56})),
        ),
        (
            "ok-v4-retain",
            unaddressed(json!({"family": "IPv4", "prefix": 32, "reclaimPolicy": "Retain"})),
        ),
        (
            "ok-given-family",
            unaddressed(
                json!({"address": "2001:db8:1:2::1", "family": "IPv6", "reclaimPolicy": "Delete"}),
            ),
        ),
        (
            "ok-restored",
            unaddressed(json!({"allocatedAddress": "2001:db8:1:200::", "prefix": 56})),
        ),
    ];
    for (name, s) in good {
        create(&cp, name, s)
            .await
            .unwrap_or_else(|m| panic!("{name} rejected: {m}"));
    }
    // Nothing is defaulted: the family and policy left unset stay unset, so a later address
    // of either family agrees with the spec.
    let typed: Api<SharedIP> = Api::all(cp.client());
    let o = typed
        .get("ok-unaddressed")
        .await
        .expect("get ok-unaddressed");
    assert_eq!(
        (o.spec.address, o.spec.family, o.spec.reclaim_policy),
        (None, None, None)
    );

    // The operator writes the address it allocated once; then it stays.
    update(
        &cp,
        "ok-unaddressed",
        json!({"allocatedAddress": "192.0.2.20"}),
    )
    .await
    .unwrap_or_else(|m| panic!("first allocatedAddress rejected: {m}"));
    let o = typed
        .get("ok-unaddressed")
        .await
        .expect("get ok-unaddressed");
    assert_eq!(o.spec.allocated_address.as_deref(), Some("192.0.2.20"));
    let updates: Vec<(&str, Value, &str)> = vec![
        (
            "changed",
            json!({"allocatedAddress": "192.0.2.21"}),
            address::ALLOCATED_FIXED_MESSAGE,
        ),
        (
            "removed",
            json!({"allocatedAddress": null}),
            address::ALLOCATED_FIXED_MESSAGE,
        ),
        (
            "address-added",
            json!({"address": "192.0.2.10"}),
            address::EXCLUSIVE_MESSAGE,
        ),
    ];
    for (what, patch, expected) in &updates {
        match update(&cp, "ok-unaddressed", patch.clone()).await {
            Ok(()) => failures.push(format!(
                "{what}: accepted, expected rejection with {expected:?}"
            )),
            Err(msg) if msg.contains(expected) => {}
            Err(msg) => failures.push(format!("{what}: message {msg:?} lacks {expected:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "update mismatches:\n{}",
        failures.join("\n")
    );
    // Other fields still change.
    update(&cp, "ok-unaddressed", json!({"reclaimPolicy": "Retain"}))
        .await
        .unwrap_or_else(|m| panic!("reclaimPolicy change rejected: {m}"));
}
