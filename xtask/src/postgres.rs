//! The PostgreSQL server the controller's tests and benchmark use: Debian's cluster, started
//! if it is down, with a role of our own that may create (and drop) scratch databases, serving
//! TLS with a certificate from a CA of our own, so that tests can verify it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::util::{output_of, step};

/// Given to `cargo test` and the benchmark: where the test role connects.
pub const URL_VARIABLE: &str = "EGRESS_MONITOR_TEST_POSTGRES";
const ROLE: &str = "egress_monitor_test";
/// Given to `cargo test`: the CA the test cluster's TLS certificate chains to.
pub const CA_VARIABLE: &str = "EGRESS_MONITOR_TEST_POSTGRES_CA";
/// The test cluster's TLS certificate, key and CA (owned by postgres, which reads the key).
const TLS_DIR: &str = "/var/lib/postgresql/egress-monitor-test-tls";

/// Where the test role connects, and the CA of the cluster's TLS certificate.
pub struct TestServer {
    pub url: String,
    pub ca: PathBuf,
}

/// Starts the local cluster if needed, makes sure our role exists and that it serves TLS with
/// our certificate.
pub fn ensure_server() -> anyhow::Result<TestServer> {
    let clusters = output_of("pg_lsclusters", &["-h"])
        .context("pg_lsclusters failed: is PostgreSQL installed (`cargo xtask setup`)?")?;
    let cluster = match clusters.lines().next() {
        Some(line) => line
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
        None => {
            let version = output_of("sh", &["-c", "ls /usr/lib/postgresql | sort -n | tail -1"])
                .filter(|v| !v.is_empty())
                .context("no PostgreSQL server under /usr/lib/postgresql")?;
            step(
                "pg_createcluster",
                Command::new("pg_createcluster").args([&version, "main"]),
            )?;
            let line = output_of("pg_lsclusters", &["-h"]).context("pg_lsclusters")?;
            line.lines()
                .next()
                .context("pg_createcluster made no cluster")?
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        }
    };
    let [version, name, port, status, ..] = cluster.as_slice() else {
        bail!("unexpected pg_lsclusters line: {cluster:?}");
    };
    if status != "online" {
        step(
            &format!("start PostgreSQL {version}/{name}"),
            Command::new("pg_ctlcluster").args([version, name, "start"]),
        )?;
    }
    let create_role = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN \
         CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{ROLE}'; END IF; END $$;"
    );
    as_postgres(port, &[&create_role]).context(format!("cannot create the role {ROLE}"))?;
    let ca = ensure_tls(port)?;
    Ok(TestServer {
        url: format!("postgres://{ROLE}:{ROLE}@127.0.0.1:{port}/postgres"),
        ca,
    })
}

/// Runs each statement with psql as the postgres superuser (each on its own: `ALTER SYSTEM`
/// refuses to run in a transaction).
fn as_postgres(port: &str, statements: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--", "psql", "-q", "-p", port])
        .args(["-v", "ON_ERROR_STOP=1"]);
    for statement in statements {
        command.args(["-c", statement]);
    }
    let ok = command
        .stdout(Stdio::null())
        .status()
        .context("running psql as postgres")?
        .success();
    if !ok {
        bail!("psql failed: {statements:?}");
    }
    Ok(())
}

/// The cluster serves TLS with a certificate for localhost and 127.0.0.1 from a CA of our own,
/// made once and renewed when it has less than a day left; set with `ALTER SYSTEM` and a
/// reload (no restart). Returns the CA's path.
fn ensure_tls(port: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(TLS_DIR);
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    let valid = |cert: &Path| {
        Command::new("openssl")
            .args(["x509", "-checkend", "86400", "-noout", "-in"])
            .arg(cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(key.exists() && valid(&ca) && valid(&cert)) {
        eprintln!("==> make the test cluster's TLS certificate");
        make_certificate(dir).context("cannot make the test cluster's TLS certificate")?;
    }
    let set = |name: &str, value: &str| format!("ALTER SYSTEM SET {name} = '{value}'");
    as_postgres(
        port,
        &[
            &set("ssl", "on"),
            &set("ssl_cert_file", &cert.display().to_string()),
            &set("ssl_key_file", &key.display().to_string()),
            "SELECT pg_reload_conf()",
        ],
    )
    .context("cannot point the cluster at its TLS certificate")?;
    // The reload is a signal: wait until new sessions get the certificate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cert_path = cert.display().to_string();
    loop {
        let served = output_of(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                "psql",
                "-qAt",
                "-p",
                port,
                "-c",
                "SHOW ssl_cert_file",
            ],
        );
        if served.as_deref() == Some(cert_path.as_str()) {
            return Ok(ca);
        }
        if std::time::Instant::now() > deadline {
            bail!("PostgreSQL did not take its TLS certificate {cert_path} (it serves {served:?})");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn make_certificate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    for command in [
        format!(
            "openssl req -x509 {ec} -days 3650 -subj '/CN=egress-monitor test PostgreSQL CA' \
             -keyout ca.key -out ca.crt"
        ),
        format!("openssl req {ec} -subj '/CN=localhost' -keyout server.key -out server.csr"),
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
         -extfile server.ext -out server.crt"
            .to_owned(),
        "chmod 600 ca.key server.key && chown -R postgres:postgres .".to_owned(),
    ] {
        let output = Command::new("sh")
            .args(["-c", &command])
            .current_dir(dir)
            .output()
            .context("running sh")?;
        if !output.status.success() {
            bail!(
                "`{command}` failed in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}
