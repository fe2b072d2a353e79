//! The PostgreSQL server the controller's tests and benchmark use: Debian's cluster, started
//! if it is down, with a role of our own that may create (and drop) scratch databases.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{output_of, step};

/// Given to `cargo test` and the benchmark: where the test role connects.
pub const URL_VARIABLE: &str = "EGRESS_MONITOR_TEST_POSTGRES";
const ROLE: &str = "egress_monitor_test";

/// Starts the local cluster if needed, makes sure our role exists, and returns its URL.
pub fn ensure_server() -> anyhow::Result<String> {
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
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", "psql", "-q", "-p", port])
        .args(["-v", "ON_ERROR_STOP=1", "-c", &create_role])
        .status()
        .context("running psql as postgres")?
        .success();
    if !ok {
        bail!("cannot create the PostgreSQL role {ROLE}");
    }
    Ok(format!(
        "postgres://{ROLE}:{ROLE}@127.0.0.1:{port}/postgres"
    ))
}
