//! Azure attested documents: the proof a node runs on the Azure VM it says.
//!
//! The instance metadata service signs a small JSON document (`vmId`, `subscriptionId`, the
//! nonce the caller chose, a validity window) as PKCS #7 signed data, with a certificate
//! issued to `metadata.azure.com` by one of Microsoft's TLS issuing CAs. Only the signing
//! certificate travels in the document: the issuing CAs come from `--attestation-intermediates`
//! (Microsoft publishes them), the roots from `--attestation-roots` (by default the public
//! web roots, Microsoft's among them).
//!
//! A document is accepted when: the certificate chains to a trust root for TLS server use and
//! is valid now, it is issued to the expected name, its key signed the content (directly, or
//! through signed attributes whose message digest is the content's), the content says the
//! nonce the controller gave out, the window covers now, and the subscription is an allowed
//! one. SHA-1 signatures are refused.

use std::path::Path;

use cms::{content_info::ContentInfo, signed_data::SignedData};
use der::{Decode as _, Encode as _, asn1::ObjectIdentifier as Oid};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime, pem::PemObject};
use sha2::Digest as _;
use webpki::{EndEntityCert, KeyUsage, ring as algs};

/// The name Azure's attested documents are signed as (Azure public cloud).
pub const AZURE_SIGNER_NAME: &str = "metadata.azure.com";

/// A document's own validity window may have begun this much ahead of the controller's clock.
const CLOCK_SKEW_S: i64 = 300;

const ID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
const ATTR_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
const ATTR_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const RSA_SHA256: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const RSA_SHA384: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const RSA_SHA512: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");

/// Why a document was not accepted. The messages name what failed, never another node's
/// identifiers.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the attested document's encoding is `{0}`, not pkcs7")]
    Encoding(String),
    #[error("the attested document is not PKCS #7 signed data: {0}")]
    Malformed(String),
    #[error(
        "the attested document's certificate does not chain to a trust root ({0:?}); on Azure, give Microsoft's issuing CAs with --attestation-intermediates"
    )]
    Chain(webpki::Error),
    #[error("the attested document is not signed as {0}")]
    Name(String),
    #[error("the attested document's signature does not verify: {0}")]
    Signature(String),
    #[error("the attested document is not for the nonce this controller gave out")]
    Nonce,
    #[error("the attested document is outside its validity window ({0})")]
    Window(String),
    #[error("the attested document's subscription is not one this controller accepts")]
    Subscription,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Where the trust comes from (the controller's `--attestation-…` options).
#[derive(Clone, Debug)]
pub struct Settings {
    /// PEM trust roots; `None`: the public web roots.
    pub roots: Option<std::path::PathBuf>,
    /// PEM issuing CAs the documents' certificates chain through.
    pub intermediates: Option<std::path::PathBuf>,
    /// The name the signing certificate is issued to.
    pub signer_name: String,
    /// Subscriptions whose VMs may attest; empty: any.
    pub subscriptions: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            roots: None,
            intermediates: None,
            signer_name: AZURE_SIGNER_NAME.to_owned(),
            subscriptions: Vec::new(),
        }
    }
}

/// What a verified document says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    pub vm_id: String,
    pub subscription_id: String,
}

/// How documents are checked: trust roots, issuing CAs, the signer's name, allowed
/// subscriptions (none listed: any).
pub struct Verifier {
    roots: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    signer_name: ServerName<'static>,
    subscriptions: Vec<String>,
}

impl Verifier {
    /// Reads the trust roots and issuing CAs the settings name.
    pub fn new(settings: &Settings) -> Result<Verifier, TrustError> {
        let signer_name = settings.signer_name.as_str();
        let roots = match settings.roots.as_deref() {
            None => webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            Some(path) => pem_certificates(path)?
                .iter()
                .map(|der| {
                    webpki::anchor_from_trusted_cert(der)
                        .map(|anchor| anchor.to_owned())
                        .map_err(|err| TrustError::Invalid {
                            path: path.display().to_string(),
                            message: format!("a certificate is not a usable trust root: {err:?}"),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let intermediates = match settings.intermediates.as_deref() {
            None => Vec::new(),
            Some(path) => pem_certificates(path)?,
        };
        let signer_name =
            ServerName::try_from(signer_name.to_owned()).map_err(|_| TrustError::Invalid {
                path: "--attestation-signer".into(),
                message: format!("`{signer_name}` is not a DNS name"),
            })?;
        Ok(Verifier {
            roots,
            intermediates,
            signer_name,
            subscriptions: settings.subscriptions.clone(),
        })
    }

    /// Whether attested documents are taken at all: only with a list of subscriptions (any
    /// Azure VM anywhere can get a validly signed document).
    pub fn enabled(&self) -> bool {
        !self.subscriptions.is_empty()
    }

    /// Checks a document (`encoding`, base64 `signature`) against the nonce given out, at
    /// `now_s` (Unix seconds).
    pub fn verify(
        &self,
        encoding: &str,
        signature_b64: &str,
        nonce: &str,
        now_s: u64,
    ) -> Result<Attested, AttestError> {
        use base64::Engine as _;
        if !encoding.eq_ignore_ascii_case("pkcs7") {
            return Err(AttestError::Encoding(encoding.chars().take(32).collect()));
        }
        let compact: String = signature_b64.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|err| AttestError::Malformed(format!("not base64 ({err})")))?;
        let signed = Signed::parse(&der)?;
        let leaf = EndEntityCert::try_from(&signed.signer)
            .map_err(|err| AttestError::Malformed(format!("the signer's certificate: {err:?}")))?;
        // Only the configured issuing CAs: certificates the document carries besides the
        // signer's (Azure's carry none) are not taken as intermediates.
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots,
            &self.intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now_s)),
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(AttestError::Chain)?;
        leaf.verify_is_valid_for_subject_name(&self.signer_name)
            .map_err(|_| AttestError::Name(self.signer_name.to_str().into_owned()))?;
        signed.verify_signature(&leaf)?;
        let document: Document = serde_json::from_slice(&signed.content).map_err(|err| {
            AttestError::Malformed(format!("the signed content is not the document ({err})"))
        })?;
        if document.nonce != nonce {
            return Err(AttestError::Nonce);
        }
        let created = azure_time(&document.time_stamp.created_on)?;
        let expires = azure_time(&document.time_stamp.expires_on)?;
        let now = now_s as i64;
        if now + CLOCK_SKEW_S < created || now > expires {
            return Err(AttestError::Window(format!(
                "created {}, expires {}",
                document.time_stamp.created_on, document.time_stamp.expires_on
            )));
        }
        if !self.subscriptions.is_empty()
            && !self
                .subscriptions
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&document.subscription_id))
        {
            return Err(AttestError::Subscription);
        }
        if document.vm_id.is_empty() || document.vm_id.len() > 64 {
            return Err(AttestError::Malformed("no usable vmId".into()));
        }
        Ok(Attested {
            vm_id: document.vm_id.to_ascii_lowercase(),
            subscription_id: document.subscription_id,
        })
    }
}

/// The signed JSON, as Azure writes it (fields this controller does not read are ignored).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    nonce: String,
    vm_id: String,
    #[serde(default)]
    subscription_id: String,
    time_stamp: TimeStamp,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeStamp {
    created_on: String,
    expires_on: String,
}

/// Azure's `MM/DD/YY HH:MM:SS -0000` (UTC), as Unix seconds.
fn azure_time(text: &str) -> Result<i64, AttestError> {
    let bad = || AttestError::Malformed(format!("`{text}` is not a time stamp"));
    let mut parts = text.split_whitespace();
    let (date, clock, offset) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().unwrap_or("-0000"),
    );
    let numbers = |s: &str, sep: char| -> Result<Vec<u32>, AttestError> {
        s.split(sep)
            .map(|n| n.parse::<u32>().map_err(|_| bad()))
            .collect()
    };
    let (date, clock) = (numbers(date, '/')?, numbers(clock, ':')?);
    let ([month, day, year], [hour, minute, second]) = (
        <[u32; 3]>::try_from(date).map_err(|_| bad())?,
        <[u32; 3]>::try_from(clock).map_err(|_| bad())?,
    );
    if !matches!(offset, "-0000" | "+0000" | "Z") {
        return Err(bad());
    }
    let year = if year < 100 { 2000 + year } else { year };
    let month =
        time::Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let small = |n: u32| u8::try_from(n).map_err(|_| bad());
    let date =
        time::Date::from_calendar_date(year as i32, month, small(day)?).map_err(|_| bad())?;
    let at = date
        .with_hms(small(hour)?, small(minute)?, small(second)?)
        .map_err(|_| bad())?;
    Ok(at.assume_utc().unix_timestamp())
}

/// The parts of the signed data a verification needs.
struct Signed {
    content: Vec<u8>,
    /// The signer's certificate.
    signer: CertificateDer<'static>,
    digest: Oid,
    signature_algorithm: Oid,
    /// The DER of the signed attributes as a SET (what is signed when there are any), and the
    /// message digest and content type they state.
    signed_attributes: Option<(Vec<u8>, Vec<u8>, Oid)>,
    signature: Vec<u8>,
}

impl Signed {
    fn parse(der: &[u8]) -> Result<Signed, AttestError> {
        let malformed =
            |what: &str, err: der::Error| AttestError::Malformed(format!("{what}: {err}"));
        let info = ContentInfo::from_der(der).map_err(|e| malformed("content info", e))?;
        if info.content_type != ID_SIGNED_DATA {
            return Err(AttestError::Malformed("not signed data".into()));
        }
        let data: SignedData = info
            .content
            .decode_as()
            .map_err(|e| malformed("signed data", e))?;
        if data.encap_content_info.econtent_type != ID_DATA {
            return Err(AttestError::Malformed("the content is not data".into()));
        }
        let content = data
            .encap_content_info
            .econtent
            .as_ref()
            .ok_or_else(|| AttestError::Malformed("the content is detached".into()))?
            .decode_as::<der::asn1::OctetString>()
            .map_err(|e| malformed("the content", e))?
            .into_bytes();
        let signers: Vec<_> = data.signer_infos.0.iter().collect();
        let [signer] = signers.as_slice() else {
            return Err(AttestError::Malformed(format!(
                "{} signers, not one",
                signers.len()
            )));
        };
        let cms::signed_data::SignerIdentifier::IssuerAndSerialNumber(id) = &signer.sid else {
            return Err(AttestError::Malformed(
                "the signer is not named by issuer and serial number".into(),
            ));
        };
        let mut signer_cert = None;
        for choice in data.certificates.iter().flat_map(|set| set.0.iter()) {
            let cms::cert::CertificateChoices::Certificate(cert) = choice else {
                continue;
            };
            if cert.tbs_certificate.serial_number == id.serial_number
                && cert.tbs_certificate.issuer == id.issuer
            {
                signer_cert = Some(CertificateDer::from(
                    cert.to_der().map_err(|e| malformed("a certificate", e))?,
                ));
            }
        }
        let signer_cert = signer_cert.ok_or_else(|| {
            AttestError::Malformed("the signer's certificate is not in the document".into())
        })?;
        let signed_attributes = match &signer.signed_attrs {
            None => None,
            Some(attributes) => {
                let mut digest = None;
                let mut content_type = None;
                for attribute in attributes.iter() {
                    let [value] = attribute.values.as_slice() else {
                        return Err(AttestError::Malformed(
                            "a signed attribute without exactly one value".into(),
                        ));
                    };
                    if attribute.oid == ATTR_MESSAGE_DIGEST {
                        digest = Some(
                            value
                                .decode_as::<der::asn1::OctetString>()
                                .map_err(|e| malformed("the message digest", e))?
                                .into_bytes(),
                        );
                    } else if attribute.oid == ATTR_CONTENT_TYPE {
                        content_type = Some(
                            value
                                .decode_as::<Oid>()
                                .map_err(|e| malformed("the content type", e))?,
                        );
                    }
                }
                let (Some(digest), Some(content_type)) = (digest, content_type) else {
                    return Err(AttestError::Malformed(
                        "signed attributes without a message digest and content type".into(),
                    ));
                };
                let der = attributes
                    .to_der()
                    .map_err(|e| malformed("the signed attributes", e))?;
                Some((der, digest, content_type))
            }
        };
        Ok(Signed {
            content,
            signer: signer_cert,
            digest: signer.digest_alg.oid,
            signature_algorithm: signer.signature_algorithm.oid,
            signed_attributes,
            signature: signer.signature.as_bytes().to_vec(),
        })
    }

    /// The signer's key signed the content (through the signed attributes, if any).
    fn verify_signature(&self, leaf: &EndEntityCert<'_>) -> Result<(), AttestError> {
        let bad = |message: String| AttestError::Signature(message);
        let message = match &self.signed_attributes {
            None => self.content.clone(),
            Some((der, digest, content_type)) => {
                if *content_type != ID_DATA {
                    return Err(bad("the signed content type is not data".into()));
                }
                let actual = match self.digest {
                    SHA256 => sha2::Sha256::digest(&self.content).to_vec(),
                    SHA384 => sha2::Sha384::digest(&self.content).to_vec(),
                    SHA512 => sha2::Sha512::digest(&self.content).to_vec(),
                    other => return Err(bad(format!("digest algorithm {other} is not accepted"))),
                };
                if actual != *digest {
                    return Err(bad("the content's digest is not the signed one".into()));
                }
                der.clone()
            }
        };
        let candidates: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] =
            match (self.signature_algorithm, self.digest) {
                (RSA, SHA256) | (RSA_SHA256, _) => &[algs::RSA_PKCS1_2048_8192_SHA256],
                (RSA, SHA384) | (RSA_SHA384, _) => &[algs::RSA_PKCS1_2048_8192_SHA384],
                (RSA, SHA512) | (RSA_SHA512, _) => &[algs::RSA_PKCS1_2048_8192_SHA512],
                (ECDSA_SHA256, _) | (EC_PUBLIC_KEY, SHA256) => {
                    &[algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256]
                }
                (ECDSA_SHA384, _) | (EC_PUBLIC_KEY, SHA384) => {
                    &[algs::ECDSA_P256_SHA384, algs::ECDSA_P384_SHA384]
                }
                (algorithm, digest) => {
                    return Err(bad(format!(
                        "signature algorithm {algorithm} with digest {digest} is not accepted"
                    )));
                }
            };
        let mut last = None;
        for algorithm in candidates {
            match leaf.verify_signature(*algorithm, &message, &self.signature) {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
        }
        Err(bad(format!("{last:?}")))
    }
}

fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let text = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TrustError::Invalid {
            path: path.display().to_string(),
            message: format!("not PEM certificates ({err})"),
        })?;
    if certs.is_empty() {
        return Err(TrustError::Invalid {
            path: path.display().to_string(),
            message: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A nonce: ten random digits.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the system's random source");
    format!("{:010}", u64::from_le_bytes(bytes) % 10_000_000_000)
}

/// A node credential: 32 random bytes, hex.
pub fn new_credential() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    crate::auth::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_time_stamps() {
        assert_eq!(
            azure_time("11/28/18 00:16:17 -0000").unwrap(),
            1_543_364_177
        );
        assert_eq!(
            azure_time("12/01/26 06:00:00 -0000").unwrap(),
            1_796_104_800
        );
        assert!(azure_time("13/01/26 06:00:00 -0000").is_err());
        assert!(azure_time("12/01/26 06:00:00 +0100").is_err());
        assert!(azure_time("yesterday").is_err());
        assert!(
            azure_time("12/257/26 06:00:00 -0000").is_err(),
            "no wrapping"
        );
    }

    #[test]
    fn nonces_are_ten_digits_and_credentials_64_hex() {
        let nonce = new_nonce();
        assert_eq!(nonce.len(), 10);
        assert!(nonce.bytes().all(|b| b.is_ascii_digit()));
        let credential = new_credential();
        assert_eq!(credential.len(), 64);
        assert_ne!(credential, new_credential());
    }
}
