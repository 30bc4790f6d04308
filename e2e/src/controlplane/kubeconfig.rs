//! Kubeconfig files for the control plane, readable by kubectl, helm and kube-rs alike.

use std::path::Path;

use super::{pki::write_file, Error};

/// How a kubeconfig authenticates.
pub(crate) enum Credentials<'a> {
    /// A client certificate and key (PEM files).
    ClientCertificate { cert: &'a Path, key: &'a Path },
    /// A bearer token, written inline into the file (so the file is mode 0600).
    Token(&'a str),
}

/// Writes a single-context kubeconfig pointing at `server` that trusts `ca_cert`.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &str,
    credentials: Credentials<'_>,
) -> Result<(), Error> {
    let user_entry = match credentials {
        Credentials::ClientCertificate { cert, key } => serde_json::json!({
            "client-certificate": cert,
            "client-key": key,
        }),
        Credentials::Token(token) => serde_json::json!({ "token": token }),
    };
    // JSON is YAML, and serde_json escapes whatever the paths contain.
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "sharedip-e2e",
            "cluster": { "server": server, "certificate-authority": ca_cert },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "sharedip-e2e",
            "context": { "cluster": "sharedip-e2e", "user": user },
        }],
        "current-context": "sharedip-e2e",
        "preferences": {},
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::io(format!("encoding {}", path.display()), e.into()))?;
    write_file(path, &text, true)
}
