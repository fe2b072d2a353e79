//! `egress-monitor run` as a process, for the kernel tests and the benchmark.

use std::{process::Command, time::Duration};

use crate::{daemon_binary, logged::Logged};

/// A running daemon (its log read as it runs); killed on drop if a test fails before
/// stopping it.
pub struct Daemon(Logged);

impl std::ops::Deref for Daemon {
    type Target = Logged;
    fn deref(&self) -> &Logged {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Logged {
        &mut self.0
    }
}

impl Daemon {
    /// Starts `egress-monitor run ARGS`, optionally inside a network namespace, and waits
    /// (bounded) until it says it is attached.
    pub fn start(netns: Option<&str>, args: &[&str]) -> Daemon {
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(daemon_binary());
                command
            }
            None => Command::new(daemon_binary()),
        };
        command.arg("run").args(args);
        let mut daemon = Daemon(Logged::spawn(&mut command, "egress-monitor"));
        daemon.wait_for("rules loaded", Duration::from_secs(20));
        daemon
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(mut self) {
        self.0.kill();
    }

    /// SIGTERM, then the exit status and the whole log.
    pub fn stop(mut self) -> (i32, Vec<String>) {
        let status = self.0.terminate(Duration::from_secs(20));
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            self.log.push(format!("(killed by signal {signal})"));
        }
        (status.code().unwrap_or(-1), std::mem::take(&mut self.log))
    }

    pub fn pid(&self) -> u32 {
        self.0.child.id()
    }
}
