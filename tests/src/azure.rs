//! A stand-in for Azure's attested documents: a test root CA, an issuing CA under it and a
//! signing certificate for `metadata.azure.com`, as Microsoft's chain is shaped, made and used
//! with `openssl` (an implementation independent of the controller's). Documents are PKCS #7
//! signed data carrying only the signing certificate, as the instance metadata service's do.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

/// A signing chain in its own directory.
pub struct TestAzure {
    dir: PathBuf,
}

/// What a document says (the fields the controller reads).
pub struct Claims<'a> {
    pub vm_id: &'a str,
    pub subscription_id: &'a str,
    pub nonce: &'a str,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
}

impl<'a> Claims<'a> {
    /// A document made now, valid six hours (as Azure's are).
    pub fn now(vm_id: &'a str, subscription_id: &'a str, nonce: &'a str) -> Claims<'a> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Claims {
            vm_id,
            subscription_id,
            nonce,
            created: now - 60,
            expires: now + 6 * 3600,
        }
    }
}

impl TestAzure {
    /// Makes the chain in `dir` (created); `signer_name` is the signing certificate's name.
    pub fn new(dir: &Path, signer_name: &str) -> TestAzure {
        std::fs::create_dir_all(dir).unwrap();
        let azure = TestAzure {
            dir: dir.to_owned(),
        };
        let rsa = ["-newkey", "rsa:2048", "-nodes"];
        azure.openssl(
            &[
                &["req", "-x509"][..],
                &rsa,
                &["-days", "2", "-subj", "/CN=egress-monitor test Azure root"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                &["-keyout", "root.key", "-out", "root.crt"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("signer.ext"),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{signer_name}\n"
            ),
        )
        .unwrap();
        azure.issue(
            "issuing",
            "egress-monitor test Azure issuing CA",
            "root",
            "ca.ext",
        );
        azure.issue("signer", signer_name, "issuing", "signer.ext");
        azure
    }

    /// The root CA's certificate (`--attestation-roots`).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// The issuing CA's certificate (`--attestation-intermediates`).
    pub fn issuing(&self) -> PathBuf {
        self.dir.join("issuing.crt")
    }

    /// A document as IMDS answers `/metadata/attested/document`: `{"encoding", "signature"}`.
    pub fn document(&self, claims: &Claims) -> Value {
        let content = json!({
            "licenseType": "",
            "nonce": claims.nonce,
            "plan": {"name": "", "product": "", "publisher": ""},
            "timeStamp": {
                "createdOn": azure_time(claims.created),
                "expiresOn": azure_time(claims.expires),
            },
            "vmId": claims.vm_id,
            "subscriptionId": claims.subscription_id,
            "sku": "22_04-lts-gen2",
        });
        self.sign(content.to_string().as_bytes())
    }

    /// `content` signed as a document is, whatever it says.
    pub fn sign(&self, content: &[u8]) -> Value {
        use base64::Engine as _;
        let name = format!("doc-{}", std::process::id() ^ fastish_counter());
        let (input, output) = (format!("{name}.json"), format!("{name}.p7"));
        std::fs::write(self.dir.join(&input), content).unwrap();
        self.openssl(&[
            "smime",
            "-sign",
            "-binary",
            "-nodetach",
            "-md",
            "sha256",
            "-in",
            &input,
            "-signer",
            "signer.crt",
            "-inkey",
            "signer.key",
            "-outform",
            "DER",
            "-out",
            &output,
        ]);
        let der = std::fs::read(self.dir.join(&output)).unwrap();
        let _ = std::fs::remove_file(self.dir.join(&input));
        let _ = std::fs::remove_file(self.dir.join(&output));
        json!({
            "encoding": "pkcs7",
            "signature": base64::engine::general_purpose::STANDARD.encode(der),
        })
    }

    /// Issues `name`.crt (and its key) signed by `issuer`.
    fn issue(&self, name: &str, common_name: &str, issuer: &str, extensions: &str) {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        let serial = format!("0x{:x}{:08x}", std::process::id(), fastish_counter());
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{issuer}.crt"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            extensions,
            "-out",
            &crt,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A number that differs from call to call (file names, serial numbers).
fn fastish_counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
}

/// Azure's `MM/DD/YY HH:MM:SS -0000`.
fn azure_time(unix_s: u64) -> String {
    let output = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{unix_s}"),
            "+%m/%d/%y %H:%M:%S -0000",
        ])
        .output()
        .expect("run date");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// An instance metadata service on 127.0.0.1 that answers `/metadata/attested/document` with
/// a document for `vm_id` and the query's nonce, signed by `azure`'s chain (400 without
/// `Metadata: true`, as IMDS does). It stops when dropped, or on its own after two minutes.
pub struct AttestingImds {
    pub url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AttestingImds {
    pub fn start(azure: TestAzure, vm_id: &str, subscription_id: &str) -> AttestingImds {
        use std::io::{BufRead as _, BufReader, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "http://{}/metadata/instance?api-version=2021-02-01",
            listener.local_addr().unwrap()
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let (vm_id, subscription_id) = (vm_id.to_owned(), subscription_id.to_owned());
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stopping.load(Ordering::Relaxed)
                && started.elapsed() < std::time::Duration::from_secs(120)
            {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut request, mut metadata) = (String::new(), false);
                for line in (&mut reader).lines().map_while(Result::ok) {
                    if request.is_empty() {
                        request = line.clone();
                    }
                    metadata |= line.eq_ignore_ascii_case("metadata: true");
                    if line.is_empty() {
                        break;
                    }
                }
                let nonce = request
                    .split_once("nonce=")
                    .map(|(_, rest)| rest.split([' ', '&']).next().unwrap_or("").to_owned());
                let (status, body) = match (metadata, nonce) {
                    (true, Some(nonce)) if request.contains("/metadata/attested/document") => (
                        "200 OK",
                        azure
                            .document(&Claims::now(&vm_id, &subscription_id, &nonce))
                            .to_string(),
                    ),
                    _ => ("400 Bad Request", "{}".to_owned()),
                };
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        AttestingImds {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for AttestingImds {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
