//! `egress-monitor-controller`: parses the command line, serves until SIGINT or SIGTERM, and
//! maps errors to exit codes (0 ok, 1 failure, 2 invalid input, 3 environment).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use egress_monitor_controller::{Controller, ControllerConfig, ControllerError, redact};

#[derive(Debug, Parser)]
#[command(
    name = "egress-monitor-controller",
    version,
    about = "The egress-monitor fleet controller: nodes report to it (`egress-monitor run \
             --controller`); operators see every node's isolation state, the violations and \
             the silent nodes, and set one policy and one mode for the fleet, over an \
             authenticated JSON API and a web page at `/`.",
    after_help = "Examples:
  # Tokens: one for operators, one for the fleet (or `NODE_ID TOKEN` lines, one per node):
  openssl rand -hex 32 > admin.token; openssl rand -hex 32 > nodes.token
  egress-monitor-controller --listen 0.0.0.0:8443 \\
      --db sqlite:/var/lib/egress-monitor/controller.db \\
      --admin-token-file admin.token --node-token-file nodes.token \\
      --tls-cert controller.crt --tls-key controller.key --metrics 127.0.0.1:9465
  # Replicas sharing PostgreSQL (over TLS, the server's certificate verified):
  egress-monitor-controller --db 'postgres://egress:PASSWORD@db.internal/egress?sslmode=require' \\
      --db-ca db-ca.pem ...
  # Nodes:
  egress-monitor run --controller https://controller:8443 --token-file nodes.token
  # Every violation to an OpenTelemetry collector too (OTLP/HTTP, protobuf):
  egress-monitor-controller ... --otlp-endpoint http://otel-collector:4318
  # Azure VMs proving who they are (attested documents; see docs/fleet.md):
  egress-monitor-controller ... --attestation-intermediates azure-issuing-cas.pem \
      --attestation-subscription 00000000-0000-0000-0000-000000000000
  egress-monitor run --controller https://controller:8443 --token-file nodes.token --attest
  # Operators:
  curl -H \"Authorization: Bearer $(cat admin.token)\" https://controller:8443/api/v1/nodes
  curl -X PUT --data-binary @policy.toml -H \"Authorization: Bearer $(cat admin.token)\" \\
      https://controller:8443/api/v1/policy
  curl -X PUT -d '{\"mode\":\"enforce\"}' -H 'Content-Type: application/json' \\
      -H \"Authorization: Bearer $(cat admin.token)\" https://controller:8443/api/v1/mode

The page at / asks for the admin token as the password (any user name). Load balancers and
probes use GET /healthz (no token): 200 while the database answers, 503 when it does not.
SIGHUP reads the token files and the TLS certificate and key again (invalid ones change nothing).

Exit codes: 0 stopped by SIGINT/SIGTERM; 1 failure; 2 invalid input (arguments, tokens, TLS
files); 3 environment (the database, the listening address, signals).",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to serve the API and the page on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The database: an SQLite file (created if missing) or a PostgreSQL server that several
    /// controller replicas may share.
    #[arg(
        long,
        value_name = "sqlite:PATH|postgres://USER:PASSWORD@HOST/DB",
        default_value = "sqlite:/var/lib/egress-monitor/controller.db"
    )]
    db: String,
    /// PEM CA certificate(s) the PostgreSQL server's certificate must chain to. The controller
    /// speaks TLS to PostgreSQL when --db says `sslmode=require`, and always verifies the
    /// server's certificate: against this file, else the public roots (Azure Database for
    /// PostgreSQL needs no file).
    #[arg(long, value_name = "FILE")]
    db_ca: Option<PathBuf>,
    /// The operators' tokens, one per line: `NAME ROLE TOKEN` (ROLE `operator` or `read-only`;
    /// the name goes into the fleet's history) or `TOKEN` (an operator). Mode 600.
    #[arg(long, value_name = "FILE", required = true)]
    admin_token_file: Option<PathBuf>,
    /// The nodes' tokens, one per line: `TOKEN` (any node) or `NODE_ID TOKEN` (that node only).
    /// Mode 600.
    #[arg(long, value_name = "FILE", required = true)]
    node_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Days violations are kept.
    #[arg(long, value_name = "DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    retention_days: u32,
    /// Seconds without a report after which a node is stale, whatever interval it reports
    /// (a node is stale after three of its intervals in any case).
    #[arg(long, value_name = "SECONDS", default_value_t = egress_monitor_controller::view::DEFAULT_STALE_AFTER_S,
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    stale_after: u64,
    /// Reports a node may send per minute (a burst of as many, then paced); more get 429 with
    /// Retry-After, which the node obeys.
    #[arg(long, value_name = "N", default_value_t = egress_monitor_controller::quota::DEFAULT_REPORTS_PER_MINUTE,
          value_parser = clap::value_parser!(u32).range(1..=60_000))]
    quota_reports_per_minute: u32,
    /// MiB of reports a node may send per UTC day; more get 429 until midnight UTC.
    #[arg(long, value_name = "MIB", default_value_t = egress_monitor_controller::quota::DEFAULT_MIB_PER_DAY,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    quota_mib_per_day: u64,
    /// Serve the controller's own Prometheus metrics at http://ADDR/metrics (no token: bind
    /// it where only the scraper reaches, e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// PEM trust roots for Azure attested documents (`egress-monitor run --attest`); default:
    /// the public web roots, Microsoft's among them.
    #[arg(long, value_name = "FILE")]
    attestation_roots: Option<PathBuf>,
    /// PEM issuing CAs the attested documents' certificates chain through (Microsoft's Azure
    /// TLS issuing CAs: the documents carry only the signing certificate).
    #[arg(long, value_name = "FILE")]
    attestation_intermediates: Option<PathBuf>,
    /// The name the documents' signing certificate is issued to.
    #[arg(long, value_name = "NAME", default_value = egress_monitor_controller::attest::AZURE_SIGNER_NAME)]
    attestation_signer: String,
    /// Accept attested documents only from VMs of this subscription (repeat for several;
    /// default: any).
    #[arg(long = "attestation-subscription", value_name = "ID")]
    attestation_subscriptions: Vec<String>,
    /// Export every violation (flows and DNS) as OpenTelemetry logs over OTLP/HTTP (protobuf)
    /// to this receiver: `http(s)://HOST:4318` (`/v1/logs` is added) or the full logs URL.
    /// At least once, in the order stored, resumed after a restart from where it stopped.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// A header for every OTLP request, e.g. `api-key=…` (repeat for several).
    #[arg(long = "otlp-header", value_name = "NAME=VALUE", requires = "otlp_endpoint",
          value_parser = header)]
    otlp_headers: Vec<(String, String)>,
    /// PEM CA certificates for an https:// OTLP receiver (default: the public roots).
    #[arg(long, value_name = "FILE", requires = "otlp_endpoint")]
    otlp_ca: Option<PathBuf>,
}

fn header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Makes a CA and the controller's TLS certificate signed by it, for a fleet without a
    /// PKI: DIR/ca.crt for the nodes (`--controller-ca`), DIR/controller.crt and
    /// DIR/controller.key (mode 600) for `--tls-cert` and `--tls-key`. Never overwrites a file;
    /// the CA's key is not kept.
    #[command(after_help = "Example:
  egress-monitor-controller certificates --name controller.internal --name 10.0.0.4 \\
      --out /etc/egress-monitor/tls")]
    Certificates {
        /// A DNS name or IP address the nodes reach the controller by (repeat for several).
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// The directory to write the three files to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificates are valid.
        #[arg(long, value_name = "DAYS", default_value_t = 825,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

const FAILURE: u8 = 1;
const INVALID_INPUT: u8 = 2;
const ENVIRONMENT: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(Command::Certificates { names, out, days }) = &args.command {
        return match egress_monitor_controller::certificates::make(names, out, *days) {
            Ok(made) => {
                println!(
                    "{}: the nodes' --controller-ca\n{}: the controller's --tls-cert\n{}: the controller's --tls-key",
                    made.ca.display(),
                    made.cert.display(),
                    made.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err, INVALID_INPUT),
        };
    }
    let config = ControllerConfig {
        listen: args.listen,
        db: args.db,
        db_ca: args.db_ca,
        admin_token_file: args.admin_token_file.unwrap_or_default(),
        node_token_file: args.node_token_file.unwrap_or_default(),
        tls: args.tls_cert.zip(args.tls_key),
        retention: Duration::from_secs(u64::from(args.retention_days) * 86_400),
        stale_after: Duration::from_secs(args.stale_after),
        quotas: egress_monitor_controller::quota::Quotas {
            reports_per_minute: args.quota_reports_per_minute,
            bytes_per_day: args.quota_mib_per_day << 20,
        },
        metrics: args.metrics,
        attestation: egress_monitor_controller::attest::Settings {
            roots: args.attestation_roots,
            intermediates: args.attestation_intermediates,
            signer_name: args.attestation_signer,
            subscriptions: args.attestation_subscriptions,
        },
        otlp: args
            .otlp_endpoint
            .map(|endpoint| egress_monitor_controller::otlp::OtlpConfig {
                endpoint,
                headers: args.otlp_headers,
                ca: args.otlp_ca,
            }),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err, FAILURE),
    };
    runtime.block_on(async {
        // Installed before anything else: a signal while the controller starts stops it
        // cleanly instead of killing it half-way.
        let stop = match stop_signal() {
            Ok(stop) => stop,
            Err(err) => return fail(&err, ENVIRONMENT),
        };
        let controller = match Controller::bind(&config).await {
            Ok(controller) => controller,
            Err(err) => {
                let status = match err {
                    ControllerError::Listen { .. }
                    | ControllerError::Store { .. }
                    | ControllerError::Signal(_) => ENVIRONMENT,
                    _ => INVALID_INPUT,
                };
                return fail(&err, status);
            }
        };
        log::info!(
            "controller at {} (database {})",
            controller.url(),
            redact(&config.db)
        );
        match controller.serve(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, FAILURE),
        }
    })
}

/// Completes on SIGINT or SIGTERM; both are caught from the moment this returns.
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => log::info!("SIGINT received"),
            _ = terminate.recv() => log::info!("SIGTERM received"),
        }
    })
}

fn fail(err: &(dyn std::error::Error + 'static), status: u8) -> ExitCode {
    eprintln!(
        "egress-monitor-controller: {}",
        egress_monitor_api::error_line(err)
    );
    ExitCode::from(status)
}
