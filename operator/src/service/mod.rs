//! LoadBalancer Services: a `type: LoadBalancer` Service of our class gets a failover address in
//! `status.loadBalancer.ingress`, served by a SharedIP the operator makes for it.
//!
//! ```text
//!  Service ─┐                         address.rs    what the Service asks for (annotations)
//!  EndpointSlices ─┤ controller.rs ─► reconcile.rs ─► sharing.rs   may it use that address?
//!  Nodes ─┤        (watches, sweep)      │            node_selector.rs, endpoints.rs
//!  SharedIPs ─┘                          ├─► generated.rs  the SharedIP `svc-<uid>` it wants
//!                                        └─► status.rs     EXTERNAL-IP, condition, Events
//! ```
//!
//! The generated SharedIP goes through the SharedIP controller like any other (allocation,
//! sharing, agents, status), so a Service gets the same guarantees as a SharedIP.

pub mod address;
pub mod controller;
pub mod endpoints;
pub mod generated;
pub mod ipv6;
pub mod node_selector;
pub mod reconcile;
pub mod sharing;
pub mod status;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The address a Service asks for (comma-separated, one per family, for dual-stack).
pub const ADDRESS_ANNOTATION: &str = "sharedip.io/address";
/// A user SharedIP whose address the Service uses (the SharedIP is never modified).
pub const SHAREDIP_ANNOTATION: &str = "sharedip.io/sharedip";
/// Services with the same value may share an address (MetalLB's rules).
pub const SHARING_KEY_ANNOTATION: &str = "sharedip.io/allow-shared-ip";
/// Nodes that announce with the primary community (kubectl `-l` syntax).
pub const PRIMARY_NODES_ANNOTATION: &str = "sharedip.io/primary-nodes";
/// Nodes that announce with the secondary community (kubectl `-l` syntax).
pub const SECONDARY_NODES_ANNOTATION: &str = "sharedip.io/secondary-nodes";
/// `Delete` (default) or `Retain`: what happens to an allocated address with the Service.
pub const RECLAIM_POLICY_ANNOTATION: &str = "sharedip.io/reclaim-policy";
/// Written by the operator once an address is assigned, so it never silently changes.
pub const ASSIGNED_ANNOTATION: &str = "sharedip.io/assigned-addresses";
/// On every Service we serve, so its address is released before it goes.
pub const FINALIZER: &str = "sharedip.io/service";
/// The condition in the Service's `status.conditions`.
pub const ANNOUNCED_CONDITION: &str = "sharedip.io/Announced";

/// Labels and annotations tying a generated SharedIP to its Services.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "sharedip-operator";
pub const SERVICE_NAMESPACE_LABEL: &str = "sharedip.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "sharedip.io/service-name";
pub const SERVICE_UID_LABEL: &str = "sharedip.io/service-uid";
/// `namespace/name/uid` of every Service using the generated SharedIP's address, one per line.
pub const MEMBERS_ANNOTATION: &str = "sharedip.io/services";

/// Nodes with this label never announce a Service's address (the Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The cluster autoscaler's taint on a node it is about to delete.
pub const AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The default `loadBalancerClass`.
pub const DEFAULT_CLASS: &str = "sharedip.io/linode";

/// Which Services are ours and the defaults for them.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// The `spec.loadBalancerClass` we serve.
    pub class: String,
    /// Also serve LoadBalancer Services without a class (clusters without Linode's CCM).
    pub serve_classless: bool,
    /// Nodes that announce with the primary community when a Service does not say.
    pub primary_nodes: Option<LabelSelector>,
    /// Nodes that announce with the secondary community when a Service does not say.
    pub secondary_nodes: Option<LabelSelector>,
    /// How often generated SharedIPs whose Services are all gone are looked for.
    pub sweep_interval: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            class: DEFAULT_CLASS.to_owned(),
            serve_classless: false,
            primary_nodes: None,
            secondary_nodes: None,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl ServiceSettings {
    /// Whether `svc` is a LoadBalancer Service we serve. Nothing else is ever touched.
    pub fn serves(&self, svc: &Service) -> bool {
        let Some(spec) = svc.spec.as_ref() else {
            return false;
        };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return false;
        }
        match spec.load_balancer_class.as_deref() {
            Some(class) => class == self.class,
            None => self.serve_classless,
        }
    }
}

/// `namespace/name` of a Service, for messages and the endpoint gate.
pub fn service_key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;

    use super::*;

    fn svc(type_: &str, class: Option<&str>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                load_balancer_class: class.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn serves_only_load_balancers_of_its_class() {
        let s = ServiceSettings::default();
        assert!(s.serves(&svc("LoadBalancer", Some(DEFAULT_CLASS))));
        assert!(!s.serves(&svc("LoadBalancer", Some("io.cilium/bgp-control-plane"))));
        assert!(
            !s.serves(&svc("LoadBalancer", None)),
            "class-less is opt-in"
        );
        assert!(!s.serves(&svc("NodePort", Some(DEFAULT_CLASS))));
        assert!(!s.serves(&Service::default()));
        let classless = ServiceSettings {
            serve_classless: true,
            ..ServiceSettings::default()
        };
        assert!(classless.serves(&svc("LoadBalancer", None)));
        assert!(!classless.serves(&svc("LoadBalancer", Some("other"))));
    }
}
