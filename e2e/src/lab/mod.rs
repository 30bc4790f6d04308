//! The end-to-end lab: a real control plane, the Linode API stand-in, four route
//! servers and a router, node namespaces with the real agent, two real operators and a
//! client, and opt-in kube-proxies, pods and Service endpoints; see [`cluster`] and
//! [`Lab::start`].
pub mod admission;
pub mod cluster;
pub mod expect;
pub mod kubeproxy;
pub mod pods;
pub mod processes;
pub mod report;
pub mod routing;
pub mod services;
pub mod topology;
pub mod traffic;

pub use admission::{Propagation, Refusal};
pub use cluster::{role_spec, Lab, LabConfig, LabError, NodeSpec};
pub use expect::{Wanted, WantedAddress};
pub use pods::{LabPod, POD_PORT};
pub use services::{load_balancer_service, PodEndpoint};
