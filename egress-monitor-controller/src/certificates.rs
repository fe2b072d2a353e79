//! `egress-monitor-controller certificates`: a CA of the fleet's own and the controller's TLS
//! certificate signed by it, for a fleet without a PKI. The nodes get the CA (`--controller-ca
//! ca.crt`); the controller serves the certificate and key (`--tls-cert controller.crt
//! --tls-key controller.key`). A single self-signed certificate (`openssl req -x509`) does not
//! do: it is a CA, and TLS clients refuse a CA as the server's own certificate.
//!
//! The CA's key is not kept: nobody can sign another certificate the nodes would trust. To
//! renew, make a new pair and give the nodes the new `ca.crt` beside the old one first (a
//! `--controller-ca` file may hold several), then serve the new certificate.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("`{name}` is neither a DNS name nor an IP address: {message}")]
    Name { name: String, message: String },
    #[error("cannot make the certificates: {0}")]
    Generate(String),
    #[error(
        "{0} exists already: choose another --out, or remove it to make a new pair (the nodes then need the new ca.crt)"
    )]
    Exists(PathBuf),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`make`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    /// For the nodes' `--controller-ca`.
    pub ca: PathBuf,
    /// For the controller's `--tls-cert` and `--tls-key` (the key readable by its owner only).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a certificate for `names` (the DNS names and IP addresses the nodes use to
/// reach the controller) valid for `days`, in `dir` (created if missing). Existing files are
/// never overwritten.
pub fn make(names: &[String], dir: &Path, days: u32) -> Result<Made, CertificateError> {
    let made = Made {
        ca: dir.join("ca.crt"),
        cert: dir.join("controller.crt"),
        key: dir.join("controller.key"),
    };
    for path in [&made.ca, &made.cert, &made.key] {
        if path.exists() {
            return Err(CertificateError::Exists(path.clone()));
        }
    }
    let generate = |err: rcgen::Error| CertificateError::Generate(err.to_string());
    let now = OffsetDateTime::now_utc();
    // An hour's slack for clocks behind the controller's.
    let (not_before, not_after) = (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    );

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca.distinguished_name
        .push(DnType::CommonName, "egress-monitor controller CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_key = KeyPair::generate().map_err(generate)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(generate)?;
    let issuer = Issuer::new(ca, ca_key);

    for name in names {
        if name.parse::<std::net::IpAddr>().is_err() && !dns_name(name) {
            return Err(CertificateError::Name {
                name: name.clone(),
                message: "labels of letters, digits and '-', separated by '.'".into(),
            });
        }
    }
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(generate)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names
            .first()
            .map_or("egress-monitor controller", String::as_str),
    );
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (leaf.not_before, leaf.not_after) = (not_before, not_after);
    let leaf_key = KeyPair::generate().map_err(generate)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(generate)?;

    std::fs::create_dir_all(dir).map_err(|source| CertificateError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_new(&made.key, &leaf_key.serialize_pem(), 0o600)?;
    write_new(&made.cert, &leaf_cert.pem(), 0o644)?;
    write_new(&made.ca, &ca_cert.pem(), 0o644)?;
    Ok(made)
}

/// Whether `name` is a host name: dot-separated labels of 1-63 letters, digits and '-' (not at
/// either end), 253 bytes at most.
fn dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Creates `path` with `mode` (never replacing a file) and writes `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CertificateError> {
    let write = |source| CertificateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write)?;
    file.write_all(text.as_bytes()).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_and_a_server_certificate_signed_by_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        let made = make(&["controller.internal".into(), "10.0.0.4".into()], &out, 30).unwrap();
        let key_mode = std::fs::metadata(&made.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        let ca = std::fs::read_to_string(&made.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        // Never over what exists.
        assert!(matches!(
            make(&["controller.internal".into()], &out, 30),
            Err(CertificateError::Exists(_))
        ));
        for bad in ["not a name", "-x.internal", "a..b", ""] {
            assert!(
                matches!(
                    make(&[bad.into()], &dir.path().join("other"), 30),
                    Err(CertificateError::Name { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(
            !dir.path().join("other").exists(),
            "nothing written for a bad name"
        );
    }
}
