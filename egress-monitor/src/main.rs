use std::process::ExitCode;

use egress_monitor::cli::{self, Command};

/// The log target of the kernel programs' aya-log records (their entry module).
const KERNEL_LOG_TARGET: &str = "egress_monitor::entry";

fn main() -> ExitCode {
    let cli = cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.target(env_logger::Target::Stderr);
    if matches!(&cli.command, Command::Run(args) if args.kernel_log) {
        logger.filter_module(KERNEL_LOG_TARGET, log::LevelFilter::Debug);
    }
    logger.init();
    egress_monitor::app::main(cli)
}
