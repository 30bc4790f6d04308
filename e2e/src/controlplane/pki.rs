//! The throwaway PKI of one control plane: a CA, the apiserver's serving certificate, an
//! admin client certificate in `system:masters`, and the ServiceAccount token signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::Error;

/// Files written by [`Pki::write`]; all PEM.
#[derive(Debug, Clone)]
pub(crate) struct PkiFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_private_key: PathBuf,
    pub sa_public_key: PathBuf,
}

/// Generated key material (ECDSA P-256 everywhere; Go's TLS stack and the ServiceAccount
/// token signer (ES256) both accept it, and it is much faster to generate than RSA).
pub(crate) struct Pki {
    ca_cert: String,
    serving_cert: String,
    serving_key: String,
    admin_cert: String,
    admin_key: String,
    sa_key: KeyPair,
}

/// Common name of the admin client certificate.
pub const ADMIN_USER: &str = "sharedip-e2e-admin";

impl Pki {
    pub(crate) fn generate() -> Result<Self, Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("sharedip-e2e-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        // The names clients use to reach this apiserver: loopback only, plus the in-cluster
        // service names so a binary that builds its URL from them still verifies.
        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])?;
        serving.distinguished_name = name("kube-apiserver", None);
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        // Kubernetes maps CN to the user name and O to groups; system:masters bypasses RBAC.
        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::default();
        admin.distinguished_name = name(ADMIN_USER, Some("system:masters"));
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        Ok(Self {
            ca_cert: ca_cert.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            sa_key: KeyPair::generate()?,
        })
    }

    /// Writes every file into `dir` (private keys with mode 0600).
    pub(crate) fn write(&self, dir: &Path) -> Result<PkiFiles, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_private_key: dir.join("sa.key"),
            sa_public_key: dir.join("sa.pub"),
        };
        write_file(&files.ca_cert, &self.ca_cert, false)?;
        write_file(&files.serving_cert, &self.serving_cert, false)?;
        write_file(&files.serving_key, &self.serving_key, true)?;
        write_file(&files.admin_cert, &self.admin_cert, false)?;
        write_file(&files.admin_key, &self.admin_key, true)?;
        write_file(&files.sa_private_key, &self.sa_key.serialize_pem(), true)?;
        write_file(&files.sa_public_key, &self.sa_key.public_key_pem(), false)?;
        Ok(files)
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// Writes `contents` to `path`; `private` files get mode 0600 from the start.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
