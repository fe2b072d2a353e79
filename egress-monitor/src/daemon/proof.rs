//! Continuous proof: the node's self-check (`egress-monitor check`) on a schedule and after
//! every change, and an alarm the moment a pinned link is removed or detached or its program
//! replaced — also when that happened while no daemon ran (found at start, from the record the
//! last daemon left beside the pins). Alarms are event lines (`"kind":"alarm"`) and, with a
//! controller, part of the proof every report carries; an alarm or a failed check is reported
//! at once.

use std::{sync::Arc, time::Duration};

use egress_monitor_api::{
    time::now_ms,
    wire::{Alarm, MAX_PROOF_LINES, Proof},
};
use serde::Serialize;

use crate::{
    datapath::{
        Datapath,
        pins::PinLayout,
        watch::{Expected, Tampering, link_states},
    },
    events::Clock,
    fleet::reporter::Exchange,
    inspect::check,
};

/// How often the links are compared with what was attached.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// An alarm as an event line.
#[derive(Serialize)]
struct AlarmRecord<'a> {
    ts: String,
    /// Always `alarm`.
    kind: &'static str,
    /// What happened: `link_removed`, `link_detached`, `program_replaced`, `link_unreadable`,
    /// `check_failed`, `check_passed` (the end of a failure).
    alarm: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
}

pub(super) struct Prover {
    layout: PinLayout,
    interval: Duration,
    expected: Expected,
    /// Alarms raised since the daemon started, newest last.
    alarms: Vec<Alarm>,
    /// The tamperings seen at the last watch (each alarms once while it lasts).
    open: Vec<Tampering>,
    /// Whether the last check passed (`None` before the first).
    passed: Option<bool>,
    exchange: Option<Arc<Exchange>>,
}

impl Prover {
    /// What was done to the links while no daemon ran, compared with what the last daemon
    /// recorded: read before anything is attached again.
    pub(super) fn tampered_while_down(layout: &PinLayout) -> Vec<Tampering> {
        match Expected::load(layout) {
            Some(expected) => expected.differences(&link_states(layout)),
            None => Vec::new(),
        }
    }

    /// Starts watching the links attached now; `while_down` (from
    /// [`Prover::tampered_while_down`]) are raised as alarms at once.
    pub(super) fn start(
        layout: &PinLayout,
        interval: Duration,
        while_down: Vec<Tampering>,
        exchange: Option<Arc<Exchange>>,
        out: &mut super::output::Output,
    ) -> Prover {
        let expected = Expected::now(layout);
        if let Err(err) = expected.save(layout) {
            log::warn!("cannot record the attached links: {err}");
        }
        let mut prover = Prover {
            layout: layout.clone(),
            interval,
            expected,
            alarms: Vec::new(),
            open: Vec::new(),
            passed: None,
            exchange,
        };
        for tampering in while_down {
            let message = format!("{} (while no daemon ran)", tampering.message);
            prover.raise(
                tampering.what.as_str(),
                &message,
                Some(&tampering.link),
                out,
            );
        }
        prover
    }

    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    /// The links are as attached again (the daemon attached or replaced them): the record
    /// follows.
    pub(super) fn attached(&mut self) {
        self.expected = Expected::now(&self.layout);
        self.open.clear();
        if let Err(err) = self.expected.save(&self.layout) {
            log::warn!("cannot record the attached links: {err}");
        }
    }

    /// Compares the links with the record; new tampering raises alarms and a check at once.
    pub(super) fn watch(&mut self, datapath: &Datapath, out: &mut super::output::Output) {
        let found = self.expected.differences(&link_states(&self.layout));
        let new: Vec<Tampering> = found
            .iter()
            .filter(|tampering| !self.open.contains(tampering))
            .cloned()
            .collect();
        self.open = found;
        if new.is_empty() {
            return;
        }
        for tampering in &new {
            self.raise(
                tampering.what.as_str(),
                &tampering.message,
                Some(&tampering.link),
                out,
            );
        }
        // The record on disk is what a next daemon compares with: what is there now, so that
        // it reports only what happens after (this was reported here).
        if let Err(err) = Expected::now(&self.layout).save(&self.layout) {
            log::warn!("cannot record the attached links: {err}");
        }
        self.check(datapath, out);
    }

    /// Runs the self-check and publishes its result (an event line when it starts or stops
    /// failing).
    pub(super) fn check(&mut self, datapath: &Datapath, out: &mut super::output::Output) {
        // Read once: the mode the check requires and the build it compares with.
        let live = datapath.config().ok();
        let options = check::Options {
            // The node is proven as configured: an observing node is checked as observing.
            required_mode: live.map(|config| config.mode),
            // 32-bit system calls are the kernel's build, not a change to this node: `check`
            // shows them; the scheduled proof does not fail every stock kernel for them.
            accept_compat_syscalls: true,
        };
        let (mut problems, same_build, mode_source) = match check::check(&self.layout, options) {
            Ok(report) => {
                let state = crate::datapath::state::StateFile::load(&self.layout.state_file())
                    .ok()
                    .flatten();
                (
                    report.problems,
                    live.is_some_and(|config| config.build_id == crate::datapath::build_id()),
                    state.map(|state| state.mode_source).unwrap_or_default(),
                )
            }
            Err(err) => (
                vec![format!(
                    "the check could not run: {}",
                    crate::system::error::chain(&err)
                )],
                false,
                String::new(),
            ),
        };
        if !same_build {
            problems.push("the pinned programs are not this daemon's build".to_owned());
        }
        problems.extend(self.open.iter().map(|tampering| tampering.message.clone()));
        problems.truncate(MAX_PROOF_LINES);
        let passed = problems.is_empty();
        match (self.passed, passed) {
            (Some(true) | None, false) => {
                let message = problems.join("; ");
                self.raise("check_failed", &message, None, out);
            }
            (Some(false), true) => {
                self.event("check_passed", "the self-check passes again", None, out);
            }
            _ => {}
        }
        let urgent = self.passed != Some(passed);
        self.passed = Some(passed);
        if let Some(exchange) = &self.exchange {
            exchange.set_proof(
                Proof {
                    checked_ms: now_ms(),
                    passed,
                    problems,
                    interval_s: self.interval.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
                    same_build,
                    mode_source: if mode_source.is_empty() {
                        "unknown".to_owned()
                    } else {
                        mode_source
                    },
                    alarms: self.alarms.clone(),
                },
                urgent,
            );
        }
    }

    /// An alarm: logged, an event line, kept for the proof.
    fn raise(
        &mut self,
        kind: &str,
        message: &str,
        link: Option<&str>,
        out: &mut super::output::Output,
    ) {
        log::warn!("alarm ({kind}): {message}");
        self.event(kind, message, link, out);
        self.alarms.push(Alarm {
            ts_ms: now_ms(),
            kind: kind.to_owned(),
            message: message.chars().take(1000).collect(),
        });
        if self.alarms.len() > MAX_PROOF_LINES {
            self.alarms.remove(0);
        }
    }

    fn event(
        &self,
        kind: &str,
        message: &str,
        link: Option<&str>,
        out: &mut super::output::Output,
    ) {
        let clock = Clock::now();
        out.writer.write(&AlarmRecord {
            ts: clock.rfc3339(crate::system::clock::boot_time_ns()),
            kind: "alarm",
            alarm: kind,
            message,
            link,
        });
        out.flush();
    }
}
