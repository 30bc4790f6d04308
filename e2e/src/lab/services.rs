//! Services and their endpoints in the lab, written by the harness.
//!
//! The lab runs no kube-controller-manager (its node lifecycle controller would mark the
//! kubelet-less Nodes NotReady), so nothing turns a Service's selector into EndpointSlices:
//! [`Lab::set_endpoints`] writes the EndpointSlices of a Service, one per address family, from
//! the lab's pods ([`super::pods`]), with the conditions a test wants, as the EndpointSlice
//! controller would from Pods. kube-proxy ([`super::kubeproxy`]) and the operator read it like any other.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use sharedip_api::SharedIP;

use super::cluster::{Lab, LabError};

/// The field manager of everything the lab writes.
const MANAGER: &str = "sharedip-lab";
/// `endpointslice.kubernetes.io/managed-by` of the lab's EndpointSlices.
pub const ENDPOINTS_MANAGER: &str = "sharedip-lab";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The class the operator serves by default.
pub const LOAD_BALANCER_CLASS: &str = "sharedip.io/linode";
/// The address a Service asks for.
pub const ADDRESS_ANNOTATION: &str = "sharedip.io/address";
/// Services with the same value may share an address.
pub const SHARING_KEY_ANNOTATION: &str = "sharedip.io/allow-shared-ip";
/// On a generated SharedIP: `namespace/name/uid` of every Service using its address, one a
/// line.
pub const MEMBERS_ANNOTATION: &str = "sharedip.io/services";
/// Nodes announcing a Service's address with the primary community.
pub const PRIMARY_NODES_ANNOTATION: &str = "sharedip.io/primary-nodes";
/// Nodes announcing a Service's address with the secondary community.
pub const SECONDARY_NODES_ANNOTATION: &str = "sharedip.io/secondary-nodes";
/// The addresses the operator assigned to a Service.
pub const ASSIGNED_ANNOTATION: &str = "sharedip.io/assigned-addresses";
/// The operator's finalizer on the Services it serves.
pub const SERVICE_FINALIZER: &str = "sharedip.io/service";
/// The operator's condition on a Service.
pub const ANNOUNCED_CONDITION: &str = "sharedip.io/Announced";
/// The label the operator puts on the SharedIPs it generates for Services.
pub const GENERATED_SELECTOR: &str = "app.kubernetes.io/managed-by=sharedip-operator";

/// The addresses in a Service's `status.loadBalancer.ingress` (its EXTERNAL-IP).
pub fn ingress_of(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The operator's condition on a Service: whether it is True, and its message.
pub fn announced_condition(svc: &Service) -> Option<(bool, String)> {
    svc.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ANNOUNCED_CONDITION)
        .map(|c| (c.status == "True", c.message.clone()))
}

/// The name of the SharedIP the operator generates for the Service with `uid`.
pub fn generated_name(uid: &str) -> String {
    format!("svc-{uid}")
}

/// One endpoint of a Service: a lab pod with the conditions its EndpointSlice entry has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The lab pod (its address is the endpoint's).
    pub pod: String,
    /// The entry's `nodeName` (the pod's node, unless a test says otherwise).
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl PodEndpoint {
    /// A ready, serving endpoint.
    pub fn ready(pod: &str, node: &str) -> PodEndpoint {
        PodEndpoint {
            pod: pod.to_owned(),
            node: node.to_owned(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A terminating endpoint, still `serving` or not (never ready, as the EndpointSlice
    /// controller writes it).
    pub fn terminating(pod: &str, node: &str, serving: bool) -> PodEndpoint {
        PodEndpoint {
            pod: pod.to_owned(),
            node: node.to_owned(),
            ready: false,
            serving,
            terminating: true,
        }
    }
}

/// A `type: LoadBalancer` Service `name` of class [`LOAD_BALANCER_CLASS`] without a selector
/// (the lab writes its endpoints): TCP `port` to `target_port` (port name `http`),
/// `externalTrafficPolicy: Cluster`, no node ports (kube-proxy needs none for the
/// load-balancer address). Change what a test needs before [`Lab::apply_service`].
pub fn load_balancer_service(name: &str, port: u16, target_port: u16) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": LOAD_BALANCER_CLASS,
            "allocateLoadBalancerNodePorts": false,
            "externalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target_port}],
        },
    }))
    .expect("a valid Service")
}

/// The name of the lab's EndpointSlice of `service` for an address family.
fn slice_name(service: &str, family: &str) -> String {
    format!("{service}-lab-{}", family.to_lowercase())
}

/// The EndpointSlice object of `service` in `namespace` for one address family.
fn slice(
    namespace: &str,
    service: &str,
    family: &str,
    endpoints: &[(IpAddr, &PodEndpoint)],
    protocol: &str,
    port_name: &str,
    port: u16,
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, e)| {
            json!({
                "addresses": [address.to_string()],
                "nodeName": e.node,
                // The pod an endpoint is, as the EndpointSlice controller names it: a pod in
                // the slices of both families is one endpoint to whoever counts them.
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": e.pod},
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service, family),
            "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: ENDPOINTS_MANAGER},
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": port_name, "protocol": protocol, "port": port}],
    })
}

impl Lab {
    /// Creates namespace `name` unless it exists. The lab has no namespace controller, so a
    /// deleted namespace would stay Terminating: tests leave their namespaces and delete what
    /// is in them.
    pub async fn create_namespace(&self, name: &str) -> Result<(), LabError> {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| LabError::Config(format!("namespace {name}: {e}")))?;
        match Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(LabError::kube(format!("create namespace {name}"))(e)),
        }
    }

    fn services(&self, namespace: &str) -> Api<Service> {
        Api::namespaced(self.client(), namespace)
    }

    fn endpoint_slice_api(&self, namespace: &str) -> Api<EndpointSlice> {
        Api::namespaced(self.client(), namespace)
    }

    /// Creates or updates `service` in `namespace` (server-side apply of the fields it sets:
    /// a field left out of a later apply is removed).
    pub async fn apply_service(&self, namespace: &str, service: &Service) -> Result<(), LabError> {
        let name = service
            .metadata
            .name
            .clone()
            .ok_or_else(|| LabError::Config("a Service without a name".into()))?;
        let mut obj = serde_json::to_value(service)
            .map_err(|e| LabError::Config(format!("Service {name}: {e}")))?;
        // Server-side apply takes neither a status nor server-set metadata.
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                meta.remove(key);
            }
            meta.insert("namespace".into(), namespace.into());
        }
        self.services(namespace)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(LabError::kube(format!("apply Service {namespace}/{name}")))?;
        Ok(())
    }

    /// Service `namespace/name`, if it exists.
    pub async fn service(&self, namespace: &str, name: &str) -> Result<Option<Service>, LabError> {
        self.services(namespace)
            .get_opt(name)
            .await
            .map_err(LabError::kube(format!("get Service {namespace}/{name}")))
    }

    /// Deletes Service `namespace/name` (finalizers, if any, still run); absent is fine.
    pub async fn delete_service(&self, namespace: &str, name: &str) -> Result<(), LabError> {
        match self
            .services(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(LabError::kube(format!("delete Service {namespace}/{name}"))(e)),
        }
    }

    /// Sets the Service's `status.loadBalancer.ingress` to `addresses` (`ipMode: VIP`), what a
    /// load-balancer controller writes; kube-proxy programs only the addresses listed there.
    /// An empty list clears it.
    pub async fn set_service_ingress(
        &self,
        namespace: &str,
        name: &str,
        addresses: &[IpAddr],
    ) -> Result<(), LabError> {
        let ingress: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"ip": a.to_string(), "ipMode": "VIP"}))
            .collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        self.services(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(LabError::kube(format!(
                "set the ingress of Service {namespace}/{name}"
            )))?;
        Ok(())
    }

    /// Writes the endpoints of Service `service` in `namespace`: one EndpointSlice per address
    /// family of the pods (`addressType: IPv4` and `IPv6`, the lab's pods have both), each
    /// labelled [`SERVICE_NAME_LABEL`]`=<service>` and
    /// [`MANAGED_BY_LABEL`]`=`[`ENDPOINTS_MANAGER`], with TCP port `port` named `port_name`
    /// (the Service port's name; `""` for an unnamed one). An empty list leaves the slices
    /// without endpoints: the Service has none. kube-proxy reads the slices of the families
    /// the Service has and ignores the others, as with the EndpointSlice controller's.
    pub async fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        endpoints: &[PodEndpoint],
        port_name: &str,
        port: u16,
    ) -> Result<(), LabError> {
        self.set_endpoints_of_protocol(namespace, service, endpoints, "TCP", port_name, port)
            .await
    }

    /// [`Lab::set_endpoints`] for a Service port of `protocol` (`TCP`, `UDP`): kube-proxy
    /// pairs a Service port with the slices' port of the same name and protocol, so a UDP
    /// Service's slices must say UDP.
    pub async fn set_endpoints_of_protocol(
        &self,
        namespace: &str,
        service: &str,
        endpoints: &[PodEndpoint],
        protocol: &str,
        port_name: &str,
        port: u16,
    ) -> Result<(), LabError> {
        let mut v4 = Vec::with_capacity(endpoints.len());
        let mut v6 = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let pod = self
                .pod(&e.pod)
                .ok_or_else(|| LabError::Config(format!("no lab pod named {:?}", e.pod)))?;
            v4.push((IpAddr::V4(pod.address()), e));
            v6.push((IpAddr::V6(pod.address_v6()), e));
        }
        for (family, list) in [("IPv4", &v4), ("IPv6", &v6)] {
            let name = slice_name(service, family);
            let obj = slice(namespace, service, family, list, protocol, port_name, port);
            self.endpoint_slice_api(namespace)
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
                .map_err(LabError::kube(format!(
                    "apply EndpointSlice {namespace}/{name}"
                )))?;
        }
        tracing::debug!(namespace, service, ?endpoints, "endpoints written");
        Ok(())
    }

    async fn delete_slice(&self, namespace: &str, name: &str) -> Result<(), LabError> {
        match self
            .endpoint_slice_api(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(LabError::kube(format!(
                "delete EndpointSlice {namespace}/{name}"
            ))(e)),
        }
    }

    /// Deletes every EndpointSlice the lab wrote for `service` in `namespace`.
    pub async fn delete_endpoints(&self, namespace: &str, service: &str) -> Result<(), LabError> {
        for slice in self.endpoint_slices(namespace, service).await? {
            if let Some(name) = slice.metadata.name {
                self.delete_slice(namespace, &name).await?;
            }
        }
        Ok(())
    }

    /// The SharedIPs the operator generated for Services.
    pub async fn generated_sharedips(&self) -> Result<Vec<SharedIP>, LabError> {
        let lp = ListParams::default().labels(GENERATED_SELECTOR);
        Ok(Api::<SharedIP>::all(self.client())
            .list(&lp)
            .await
            .map_err(LabError::kube("list the generated SharedIPs"))?
            .items)
    }

    /// The EndpointSlices of `service` in `namespace` (by [`SERVICE_NAME_LABEL`]), whoever
    /// wrote them.
    pub async fn endpoint_slices(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<EndpointSlice>, LabError> {
        let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
        Ok(self
            .endpoint_slice_api(namespace)
            .list(&lp)
            .await
            .map_err(LabError::kube(format!(
                "list the EndpointSlices of {namespace}/{service}"
            )))?
            .items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_carries_the_labels_conditions_and_port() {
        let ready = PodEndpoint::ready("pod-b", "node-b");
        let leaving = PodEndpoint::terminating("pod-a", "node-a", true);
        let a: IpAddr = "198.51.100.129".parse().unwrap();
        let b: IpAddr = "198.51.100.130".parse().unwrap();
        let v = slice(
            "web",
            "echo",
            "IPv4",
            &[(a, &ready), (b, &leaving)],
            "UDP",
            "http",
            8080,
        );
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("echo-lab-ipv4"));
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "echo");
        assert_eq!(labels[MANAGED_BY_LABEL], "sharedip-lab");
        assert_eq!(s.address_type, "IPv4");
        let port = &s.ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.protocol.as_deref(), port.port),
            (Some("http"), Some("UDP"), Some(8080))
        );
        let e = &s.endpoints;
        assert_eq!(e[0].addresses, vec!["198.51.100.129".to_owned()]);
        assert_eq!(e[0].node_name.as_deref(), Some("node-b"));
        let target = e[0].target_ref.as_ref().unwrap();
        assert_eq!(
            (target.kind.as_deref(), target.name.as_deref()),
            (Some("Pod"), Some("pod-b"))
        );
        let c = e[1].conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
    }

    #[test]
    fn the_load_balancer_service_is_of_the_operators_class() {
        let s = load_balancer_service("echo", 80, 8080);
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some(LOAD_BALANCER_CLASS)
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.selector, None);
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(
            port.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
        );
    }
}
