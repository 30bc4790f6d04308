//! Rendering of the SharedIP CustomResourceDefinition.

use kube::CustomResourceExt;
use sharedip_api::SharedIP;

/// The CRD as YAML, with a header telling readers where it comes from.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&SharedIP::crd())?;
    Ok(format!(
        "# Generated from crates/api/src/types.rs by `cargo run -p sharedip-operator --bin crdgen`.\n# Do not edit by hand.\n{body}"
    ))
}
