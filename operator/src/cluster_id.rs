//! The cluster's identity: what makes "ours" exact when several clusters share one Linode
//! account and region.
//!
//! The share call sets a Linode's whole list and Linode records nothing about who shared an
//! address, so the operator cannot ask Linode which shares are its own. It keeps its own record
//! instead (the [`crate::ledger`]), named after and stamped with this identity, and never acts
//! on a record of another identity.
//!
//! The identity comes from `--cluster-id` / `CLUSTER_ID` (chart value `clusterId`), or by
//! default from the UID of the `kube-system` namespace: stable for the life of the cluster,
//! distinct for every cluster (also for a cluster restored from another's backup, which must not
//! act on the original's shares), and readable with a `get` on one namespace.

use std::fmt;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

/// The namespace whose UID is the default identity.
pub const DEFAULT_SOURCE_NAMESPACE: &str = "kube-system";

/// Longest identity: it must fit a label value and, prefixed, a ConfigMap name.
pub const MAX_LEN: usize = 63;

/// A validated cluster identity: an RFC 1123 label (lower-case letters, digits and `-`, starting
/// and ending with a letter or digit, at most 63 characters). A namespace UID is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(String);

/// Where the identity came from (logged at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    NamespaceUid,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("--cluster-id"),
            Source::NamespaceUid => write!(f, "UID of namespace {DEFAULT_SOURCE_NAMESPACE}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cluster id {value:?} is not valid: {why}; use lower-case letters, digits and '-', \
         starting and ending with a letter or digit, at most {MAX_LEN} characters"
    )]
    Invalid { value: String, why: &'static str },
    #[error(
        "cannot read the UID of namespace {DEFAULT_SOURCE_NAMESPACE} to derive the cluster id \
         ({source}); grant `get` on that namespace or set --cluster-id (chart value clusterId)"
    )]
    Read {
        #[source]
        source: kube::Error,
    },
    #[error(
        "namespace {DEFAULT_SOURCE_NAMESPACE} has no UID; set --cluster-id (chart value clusterId)"
    )]
    NoUid,
}

impl ClusterId {
    /// Validates `value` as an identity.
    pub fn new(value: &str) -> Result<Self, IdentityError> {
        let invalid = |why| IdentityError::Invalid {
            value: value.to_string(),
            why,
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if value.len() > MAX_LEN {
            return Err(invalid("it is too long"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "it contains a character other than a-z, 0-9 and '-'",
            ));
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(invalid("it starts or ends with '-'"));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity to use: the configured one when set (validated), else the UID of `kube-system`.
pub async fn resolve(
    client: &kube::Client,
    configured: Option<&str>,
) -> Result<(ClusterId, Source), IdentityError> {
    if let Some(v) = configured.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok((ClusterId::new(v)?, Source::Flag));
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get(DEFAULT_SOURCE_NAMESPACE)
        .await
        .map_err(|source| IdentityError::Read { source })?;
    let uid = ns.metadata.uid.ok_or(IdentityError::NoUid)?;
    Ok((
        ClusterId::new(&uid.to_ascii_lowercase())?,
        Source::NamespaceUid,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uids_and_labels() {
        for ok in [
            "0b0c6f5e-4a8e-4d3c-9a57-2f5d8b1c0e11",
            "prod-eu",
            "a",
            &"x".repeat(63),
        ] {
            assert_eq!(ClusterId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_what_cannot_name_a_configmap_or_label() {
        for (bad, why) in [
            ("", "empty"),
            ("Prod", "character"),
            ("prod.eu", "character"),
            ("prod_eu", "character"),
            ("-prod", "starts or ends"),
            ("prod-", "starts or ends"),
            (&"x".repeat(64), "too long"),
        ] {
            let e = ClusterId::new(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("lower-case letters"), "{e}");
        }
    }
}
