//! The sharedip operator: reconciles SharedIP resources into Linode IP Sharing.
//!
//! Layout: [`reconciler`] decides per SharedIP; [`selection`] maps nodes to Linodes;
//! [`share_syncer`] turns every SharedIP's wish into at most one share call per Linode per wave;
//! [`directory`] caches what the account holds; [`leader`] elects one active replica.
//! [`cluster_id`] names this cluster; [`ledger`] records which Linodes received its addresses;
//! [`sweep`] removes its shares no SharedIP wants any more; [`uninstall`] unshares everything of
//! this cluster and lets go of every SharedIP for `helm uninstall`.

pub mod cluster_id;
pub mod config;
pub mod controller;
pub mod crd;
pub mod directory;
pub mod events;
#[cfg(test)]
mod fake_linode;
pub mod http;
pub mod leader;
pub mod ledger;
pub mod linode_api;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod reconciler;
pub mod selection;
pub mod share_syncer;
pub mod status;
pub mod sweep;
pub mod telemetry;
pub mod uninstall;
