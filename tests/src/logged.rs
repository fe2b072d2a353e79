//! A child process whose standard error is read line by line as it runs (the daemon, the
//! controller): tests wait for a line, and see the whole log when something goes wrong.
//! Killed on drop, so a failing test leaves nothing running.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub struct Logged {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line it wrote to standard error so far.
    pub log: Vec<String>,
}

impl Logged {
    /// Starts `command` with no standard input or output, its standard error read.
    pub fn spawn(command: &mut Command, what: &str) -> Logged {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {what}: {err}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Logged {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `needle` and returns it; panics with the log if
    /// it never comes or the process exits first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            } else if let Ok(Some(status)) = self.child.try_wait() {
                self.drain(Duration::from_millis(200));
                panic!(
                    "exited ({status}) before logging `{needle}`: {:#?}",
                    self.log
                );
            }
        }
        panic!("never logged `{needle}`; the log: {:#?}", self.log);
    }

    /// Collects what is left to read, waiting at most `quiet` for each line.
    pub fn drain(&mut self, quiet: Duration) {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.log.push(line);
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then waits (bounded) for the exit and the rest of the log.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop on SIGTERM: {:#?}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.drain(Duration::from_millis(500));
        status
    }

    /// Waits (bounded) for the process to exit by itself and returns its status with the rest
    /// of its log read; `None` if it still runs after `limit` (it is killed on drop).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.drain(Duration::from_millis(500));
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.kill();
    }
}
