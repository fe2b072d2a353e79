//! Project tasks, run as `cargo xtask <task>`.
//!
//! - `setup`: install what building and testing need (toolchains, bpf-linker, Debian tools);
//!   idempotent, so every other task runs it first.
//! - `run`: build and start the daemon on this host (observe mode, cgroup hook on the root
//!   cgroup unless told otherwise).
//! - `test`: import cycles, format check, clippy, and the whole test suite, kernel tests
//!   included.
//! - `cycles`: the import graph between each crate's top-level modules, and its cycles.

mod bench;
mod cycles;
mod package;
mod postgres;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "egress-monitor project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned toolchains, bpf-linker and the Debian tools the tests use.
    Setup,
    /// Build, then run `egress-monitor run ARGS…` as root (default: observe mode on this host).
    #[command(
        after_help = "Examples:\n  cargo xtask run\n  cargo xtask run -- --mode enforce --hook both"
    )]
    Run {
        /// Arguments for `egress-monitor run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure speed and memory side by side with no filter, nftables and iptables + ipset;
    /// writes bench/results/latest.{md,json} (needs root; about 20 minutes).
    #[command(after_help = "Examples:\n  cargo xtask bench\n  cargo xtask bench -- --quick")]
    Bench {
        /// Arguments for em-bench (`--quick`, `--out DIR`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (target/debian/*.deb) and check it in a scratch root.
    Package,
    /// Check formatting and lints, then run every test (kernel tests need root).
    Test {
        /// Extra arguments for the test binaries, e.g. a name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print which top-level modules of each crate import which, and every import cycle
    /// between them (fails when there is one).
    #[command(
        after_help = "Examples:\n  cargo xtask cycles\n  cargo xtask cycles egress-monitor/src"
    )]
    Cycles {
        /// Crate source directories (default: the ones `cargo xtask test` checks).
        srcs: Vec<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Run { args } => setup::setup().and_then(|()| run::run(&args)),
        Task::Test { args } => setup::setup().and_then(|()| test::test(&args)),
        Task::Bench { args } => setup::setup().and_then(|()| bench::bench(&args)),
        Task::Cycles { srcs } => cycles::show(&srcs),
        Task::Package => setup::setup()
            .and_then(|()| package::packages())
            .and_then(|debs| {
                package::verify_all(&debs)?;
                println!("{}\n{}", debs.node.display(), debs.controller.display());
                Ok(())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
