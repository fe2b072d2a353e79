//! HTTP to the controller (ureq, blocking; the reporter calls it from tokio's blocking pool).

use std::{path::Path, time::Duration};

use egress_monitor_api::wire::{
    API, AttestationReply, AttestationRequest, AttestedDocument, ErrorBody, FleetPolicy,
    NonceReply, NonceRequest, ReportReply,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--controller must be an http:// or https:// URL, not `{0}`")]
    Url(String),
    #[error("cannot read the token file {path}")]
    TokenRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no token in the file (one line, at least 16 characters)")]
    Token(String),
    #[error("cannot read the CA certificates {path}")]
    CaRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in the file")]
    Ca(String),
}

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The controller could not be reached or did not answer: try again later.
    #[error("the controller did not answer: {0}")]
    Transport(String),
    /// It answered with an error; `retry_after` is its `Retry-After` (a quota: wait that long,
    /// keep the report).
    #[error("the controller refused ({status}): {message}")]
    Refused {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
}

impl SendError {
    /// How long the controller asked this node to wait before sending again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Refused { retry_after, .. } => *retry_after,
            SendError::Transport(_) => None,
        }
    }

    /// The controller refuses this node as it is (a token or credential that may not report
    /// for this node id, an id bound to another machine): only an operator can change that.
    pub fn is_refusal_of_the_node(&self) -> bool {
        matches!(
            self,
            SendError::Refused {
                status: 401 | 403 | 409,
                ..
            }
        )
    }

    /// The request itself is wrong (sending it again cannot help).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            SendError::Refused {
                status: 400 | 413 | 415 | 422,
                ..
            }
        )
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The token file's: reports with it, or only asks for a credential (`--attest`).
    authorization: String,
    /// The node's own credential from an attestation, once it has one: reports go with it.
    credential: std::sync::RwLock<Option<String>>,
}

/// A request gets this long, connecting included.
const TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    pub fn new(
        url: &str,
        token_file: &Path,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 10 {
            return Err(ClientError::Url(url.to_owned()));
        }
        let text =
            std::fs::read_to_string(token_file).map_err(|source| ClientError::TokenRead {
                path: token_file.display().to_string(),
                source,
            })?;
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|t| t.len() >= 16 && t.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| ClientError::Token(token_file.display().to_string()))?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|source| ClientError::CaRead {
                path: ca.display().to_string(),
                source,
            })?;
            let certs = pem_certificates(&pem);
            if certs.is_empty() {
                return Err(ClientError::Ca(ca.display().to_string()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Client {
            agent,
            base: base.to_owned(),
            authorization: format!("Bearer {token}"),
            credential: std::sync::RwLock::new(None),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the node holds a credential of its own (from an attestation).
    pub fn has_credential(&self) -> bool {
        self.credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Forgets the node's credential (the controller no longer knows it: attest again).
    pub fn drop_credential(&self) {
        *self.credential.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// What reports and policy requests are sent with: the node's credential, else the token.
    fn reporting_authorization(&self) -> String {
        match &*self.credential.read().unwrap_or_else(|p| p.into_inner()) {
            Some(credential) => format!("Bearer {credential}"),
            None => self.authorization.clone(),
        }
    }

    /// Proves the node's identity: a nonce from the controller, the attested document for it
    /// from the instance metadata service at `imds_url`, the document to the controller for
    /// a credential, which later reports carry. Returns the VM id the node is bound to.
    pub fn attest(&self, node_id: &str, imds_url: &str) -> Result<String, SendError> {
        let nonce: NonceReply = self.post_json(
            "attestation/nonce",
            &NonceRequest {
                node_id: node_id.to_owned(),
            },
        )?;
        let document: AttestedDocument =
            crate::azure::imds::attested_document(imds_url, &nonce.nonce).map_err(|err| {
                SendError::Transport(format!(
                    "no attested document from the instance metadata service: {}",
                    crate::system::error::chain(&err)
                ))
            })?;
        let reply: AttestationReply = self.post_json(
            "attestation",
            &AttestationRequest {
                node_id: node_id.to_owned(),
                nonce: nonce.nonce,
                document,
            },
        )?;
        *self.credential.write().unwrap_or_else(|p| p.into_inner()) = Some(reply.credential);
        Ok(reply.vm_id)
    }

    fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, SendError> {
        let response = self
            .agent
            .post(format!("{}{API}/{path}", self.base))
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(body).expect("plain structs serialise"))
            .map_err(|err| SendError::Transport(err.to_string()))?;
        answer(response)
    }

    /// Sends one spooled report (already JSON).
    pub fn post_report(&self, body: &[u8]) -> Result<ReportReply, SendError> {
        let response = self
            .agent
            .post(format!("{}{API}/reports", self.base))
            .header("Authorization", &self.reporting_authorization())
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|err| SendError::Transport(err.to_string()))?;
        answer(response)
    }

    /// What the fleet wants `node_id` to run (during a staged rollout, it depends on the node).
    pub fn policy(&self, node_id: &str) -> Result<FleetPolicy, SendError> {
        let response = self
            .agent
            .get(format!("{}{API}/policy?node={node_id}", self.base))
            .header("Authorization", &self.reporting_authorization())
            .call()
            .map_err(|err| SendError::Transport(err.to_string()))?;
        answer(response)
    }
}

/// The certificates in a PEM file (other items, such as keys, are passed over).
pub fn pem_certificates(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
            _ => None,
        })
        .collect()
}

fn answer<T: serde::de::DeserializeOwned>(
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<T, SendError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after);
    let text = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|err| SendError::Transport(err.to_string()))?;
    if (200..300).contains(&status) {
        serde_json::from_str(&text).map_err(|err| {
            SendError::Transport(format!("an answer that is not the expected JSON ({err})"))
        })
    } else {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|body| body.error)
            .unwrap_or(text);
        Err(SendError::Refused {
            status,
            message,
            retry_after,
        })
    }
}

/// A `Retry-After` of delay seconds (the form the controller sends), at most a day.
fn retry_after(value: &str) -> Option<Duration> {
    let seconds = value.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds.min(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_capped_at_a_day() {
        assert_eq!(retry_after("10"), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("999999999"), Some(Duration::from_secs(86_400)));
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert!(
            SendError::Refused {
                status: 429,
                message: String::new(),
                retry_after: Some(Duration::from_secs(3))
            }
            .retry_after()
                == Some(Duration::from_secs(3))
        );
    }
}
