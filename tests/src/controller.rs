//! The controller under test: a real `egress-monitor-controller` process on a loopback port,
//! its tokens, a scratch PostgreSQL database when asked, an HTTP client, and the page as a
//! real browser (Debian's chromium, headless) renders it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::logged::Logged;

pub const ADMIN_TOKEN: &str = "admin-token-7f3a9c1e5b2d4f60";
/// A read-only operator token, named `auditor` in the admin token file.
pub const READONLY_TOKEN: &str = "auditor-token-3b6d8f1a4c7e9d20";
pub const FLEET_TOKEN: &str = "fleet-token-2c8e4a6b1d9f3e57";
/// Bound to node `bound-node` only.
pub const BOUND_TOKEN: &str = "bound-token-5e1a7c3b9d2f4a68";
pub const BOUND_NODE: &str = "bound-node";

/// A valid report as a node sends it: `node` on `machine`, `seq` of its stream, with `events`.
pub fn report(node: &str, machine: &str, seq: u64, interval_s: u32, events: Vec<Value>) -> Value {
    json!({
        "node_id": node, "stream": "00112233aabbccdd", "seq": seq,
        "created_ms": egress_monitor_api::time::now_ms(),
        "interval_s": interval_s,
        "identity": {"hostname": format!("host-{node}"), "machine_id": machine, "vm_id": null},
        "mode": "observe",
        "policy": {"version": "00000000deadbeef", "fleet_version": null, "error": null},
        "counters": {"allowed_packets": 10, "denied_observed_packets": 3, "denied_dropped_packets": 0,
                     "denied_bytes": 180, "malformed": 0},
        "health": {"attachments": 1, "events_lost": 0, "uptime_s": 5, "spool_dropped_reports": 0,
                   "spool_dropped_events": 0, "spool_pending": 0},
        "events": events
    })
}

/// The role `cargo xtask test` makes, in `EGRESS_MONITOR_TEST_POSTGRES`.
pub fn postgres_url() -> String {
    std::env::var("EGRESS_MONITOR_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "EGRESS_MONITOR_TEST_POSTGRES is not set: run the tests with `cargo xtask test`, which starts PostgreSQL and sets it"
        )
    })
}

/// The CA of the test cluster's TLS certificate, in `EGRESS_MONITOR_TEST_POSTGRES_CA` (made
/// by `cargo xtask test`).
pub fn postgres_ca() -> PathBuf {
    std::env::var_os("EGRESS_MONITOR_TEST_POSTGRES_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "EGRESS_MONITOR_TEST_POSTGRES_CA is not set: run the tests with `cargo xtask test`, which gives the test cluster its TLS certificate"
            )
        })
}

/// A database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    pub name: String,
    admin_url: String,
}

/// Runs `sql` with psql; its output, unaligned and without headers.
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let admin_url = postgres_url();
        let name = format!("em_test_{}", crate::unique_id().replace('-', "_"));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        PgDatabase { name, admin_url }
    }

    /// Runs `sql` on the server as the test role (from the server's default database).
    pub fn query(&self, sql: &str) -> String {
        psql(&self.admin_url, sql)
    }

    /// Runs `sql` in this database, as the test role.
    pub fn query_in(&self, sql: &str) -> String {
        psql(&self.url(), sql)
    }

    /// The URL controllers use.
    pub fn url(&self) -> String {
        let base = self
            .admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("a database URL");
        format!("{base}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Writes a file only its owner may read (as token files must be).
pub fn secret_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Token files and whatever else a controller keeps on disk.
pub struct ControllerFiles {
    pub dir: PathBuf,
}

impl ControllerFiles {
    pub fn new(dir: &Path) -> ControllerFiles {
        std::fs::create_dir_all(dir).unwrap();
        secret_file(
            &dir.join("admin.token"),
            &format!("{ADMIN_TOKEN}\nauditor read-only {READONLY_TOKEN}\n"),
        );
        secret_file(
            &dir.join("nodes.token"),
            &format!("# the fleet\n{FLEET_TOKEN}\n{BOUND_NODE} {BOUND_TOKEN}\n"),
        );
        secret_file(&dir.join("fleet.token"), &format!("{FLEET_TOKEN}\n"));
        ControllerFiles {
            dir: dir.to_owned(),
        }
    }

    pub fn sqlite(&self) -> String {
        format!("sqlite:{}", self.dir.join("controller.db").display())
    }

    /// A test CA and a certificate it signed for 127.0.0.1 (openssl): (CA certificate,
    /// controller certificate, controller key).
    pub fn certificate(&self) -> (PathBuf, PathBuf, PathBuf) {
        let path = |name: &str| self.dir.join(name);
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .stderr(Stdio::null())
                .status()
                .expect("run openssl");
            assert!(status.success(), "openssl {args:?} failed");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=egress-monitor test CA"],
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-subj", "/CN=egress-monitor test controller"],
                &["-keyout", "controller.key", "-out", "controller.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            path("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "controller.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "controller.crt",
        ]);
        (
            path("ca.crt"),
            path("controller.crt"),
            path("controller.key"),
        )
    }
}

/// A running controller; killed on drop.
pub struct Controller {
    process: Logged,
    pub url: String,
    pub port: u16,
}

impl Controller {
    /// Starts one on `port` (0: any free one) and waits until it serves.
    pub fn start(files: &ControllerFiles, db: &str, port: u16, extra: &[&str]) -> Controller {
        let port = if port == 0 { crate::free_port() } else { port };
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(crate::controller_binary());
        command
            .args(["--listen", &listen, "--db", db])
            .arg("--admin-token-file")
            .arg(files.dir.join("admin.token"))
            .arg("--node-token-file")
            .arg(files.dir.join("nodes.token"))
            .args(extra)
            .env("RUST_LOG", "info");
        let mut process = Logged::spawn(&mut command, "the controller");
        let line = process.wait_for("controller at ", Duration::from_secs(20));
        let url = line
            .split("controller at ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the controller logs its URL")
            .to_owned();
        Controller { process, url, port }
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        self.process.wait_for(needle, limit)
    }

    /// SIGKILL, as in a crash.
    pub fn kill(mut self) {
        self.process.kill();
    }
}

/// An HTTP client for the API: every call returns the status and the JSON body (or the text
/// as a JSON string when the body is not JSON).
pub struct Api {
    agent: ureq::Agent,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api::with_agent(base, ureq::Agent::config_builder())
    }

    /// Trusting only this CA certificate (PEM).
    pub fn with_ca(base: &str, ca: &Path) -> Api {
        let pem = std::fs::read(ca).unwrap();
        let certs = egress_monitor::fleet::reporter::client::pem_certificates(&pem);
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        Api::with_agent(base, ureq::Agent::config_builder().tls_config(tls))
    }

    fn with_agent(
        base: &str,
        builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    ) -> Api {
        Api {
            agent: builder
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(20)))
                .build()
                .into(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn finish(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), ureq::Error> {
        let mut response = result?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// `GET path` with `Authorization: Bearer token` (none when `token` is empty).
    pub fn try_get(&self, path: &str, token: &str) -> Result<(u16, Value), ureq::Error> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if !token.is_empty() {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        Self::finish(request.call())
    }

    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.try_get(path, token).expect("the controller answers")
    }

    /// `GET path` with the token: status, body and the `Link` header's next page URL (the part
    /// between `<` and `>`), if any.
    pub fn get_page(&self, path: &str, token: &str) -> (u16, Value, Option<String>) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .expect("the controller answers");
        let next = response
            .headers()
            .get("link")
            .and_then(|value| value.to_str().ok())
            .and_then(|link| Some(link.split_once('<')?.1.split_once('>')?.0.to_owned()));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            next,
        )
    }

    /// `PATCH path` with the token and no body (a method no route takes).
    pub fn patch(&self, path: &str, token: &str) -> (u16, Value) {
        let request = self
            .agent
            .patch(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"));
        Self::finish(request.send_empty()).expect("the controller answers")
    }

    /// `DELETE path` with the token.
    pub fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        let request = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"));
        Self::finish(request.call()).expect("the controller answers")
    }

    /// A body with a content type.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        self.send_with(method, path, token, content_type, body, &[])
    }

    /// [`Api::send`] with more request headers.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let builder = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            other => panic!("no method {other}"),
        };
        let mut builder = builder.header("Content-Type", content_type);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let builder = if token.is_empty() {
            builder
        } else {
            builder.header("Authorization", format!("Bearer {token}"))
        };
        Self::finish(builder.send(body)).expect("the controller answers")
    }

    pub fn post_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(
            "POST",
            path,
            token,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    pub fn put_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(
            "PUT",
            path,
            token,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// The `ETag` of `GET path`.
    pub fn etag(&self, path: &str, token: &str) -> Option<String> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .ok()?;
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn put_policy(&self, text: &str) -> (u16, Value) {
        self.send(
            "PUT",
            "/api/v1/policy",
            ADMIN_TOKEN,
            "application/toml",
            text.as_bytes(),
        )
    }

    /// Polls `GET path` (admin) until `done` holds for the body; panics after `limit`.
    pub fn wait(&self, path: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get(path, ADMIN_TOKEN);
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never got there; last answer ({status}): {body:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The page as headless chromium renders it (its DOM after load), authenticated with the admin
/// token as the HTTP basic password in the URL.
/// Headless Chromium's arguments for loading a page to its DOM dump (scripts run), quietly:
/// the tests' [`browse`] and the benchmark's console loads.
pub const CHROMIUM_DUMP_DOM: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--dump-dom",
];

pub fn browse(url: &str, token: &str, scratch: &Path) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let with_credentials = format!("{scheme}://operator:{token}@{rest}");
    let profile = scratch.join("chromium-profile");
    let output = Command::new("chromium")
        .args(CHROMIUM_DUMP_DOM)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&with_credentials)
        .output()
        .expect("run chromium (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
