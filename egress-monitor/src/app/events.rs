//! `events`: the daemon's events file, filtered, for people or scripts; `--follow` tails it.

use std::{
    io::{self, BufRead as _, Write as _},
    process::ExitCode,
    time::Duration,
};

use super::{exit::ExitStatus, fail};
use crate::{
    cli::EventsArgs,
    events::{
        read::{EventFilter, LoggedEvent, human},
        tail::Tail,
    },
};

/// How often a followed file is read for new lines.
const POLL: Duration = Duration::from_millis(200);
/// How far back `--follow` looks for the latest events to show first.
const LOOK_BACK: u64 = 4 << 20;

pub fn show(args: &EventsArgs) -> ExitCode {
    let filter = EventFilter {
        action: args.action,
        dst: args.dst,
        process: args.process.clone(),
        kind: args.kind.clone(),
    };
    let mut out = Printer {
        json: args.json,
        filter,
        stdout: io::stdout().lock(),
        unreadable: 0,
    };
    let result = if args.follow {
        follow(args, &mut out)
    } else {
        whole(args, &mut out)
    };
    match result {
        Ok(()) => {
            if out.unreadable > 0 {
                eprintln!("{} lines were not events and were skipped", out.unreadable);
            }
            ExitCode::SUCCESS
        }
        // The reader went away (`| head`): nothing more to say.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail(
            &EventsFileError {
                path: args.file.display().to_string(),
                source: err,
            },
            ExitStatus::InvalidInput,
        ),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the events file {path}")]
struct EventsFileError {
    path: String,
    #[source]
    source: io::Error,
}

struct Printer<'a> {
    json: bool,
    filter: EventFilter,
    stdout: io::StdoutLock<'a>,
    unreadable: u64,
}

impl Printer<'_> {
    /// The line's text to print, when it is an event the filter keeps.
    fn render(&mut self, line: &str) -> Option<String> {
        if line.trim().is_empty() {
            return None;
        }
        let Some(event) = LoggedEvent::parse(line) else {
            self.unreadable += 1;
            return None;
        };
        if !self.filter.matches(&event) {
            return None;
        }
        Some(if self.json {
            line.to_owned()
        } else {
            human(&event)
        })
    }

    fn print(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.stdout, "{text}")
    }
}

fn whole(args: &EventsArgs, out: &mut Printer) -> io::Result<()> {
    let file = std::fs::File::open(&args.file)?;
    for line in io::BufReader::new(file).lines() {
        if let Some(text) = out.render(&line?) {
            out.print(&text)?;
        }
    }
    out.stdout.flush()
}

fn follow(args: &EventsArgs, out: &mut Printer) -> io::Result<()> {
    let mut tail = Tail::open(&args.file, LOOK_BACK)?;
    // The latest matching events first, then the new ones as they come.
    let recent: Vec<String> = tail
        .poll()?
        .iter()
        .filter_map(|line| out.render(line))
        .collect();
    for text in &recent[recent.len().saturating_sub(args.last)..] {
        out.print(text)?;
    }
    out.stdout.flush()?;
    loop {
        for line in tail.poll()? {
            if let Some(text) = out.render(&line) {
                out.print(&text)?;
            }
        }
        out.stdout.flush()?;
        std::thread::sleep(POLL);
    }
}
