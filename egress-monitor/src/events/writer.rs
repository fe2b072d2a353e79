//! Where events go: standard output or an append-only file, reopened after rotation; a
//! failed write is counted and warned about, never stops enforcement.

// The events module's types and imports.
use super::*;

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTarget {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for EventsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsTarget::Stdout => f.write_str("standard output"),
            EventsTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl EventsTarget {
    /// `-` is standard output; anything else a file path.
    pub fn parse(text: &str) -> EventsTarget {
        if text == "-" {
            EventsTarget::Stdout
        } else {
            EventsTarget::File(PathBuf::from(text))
        }
    }
}

/// A JSON-lines writer. Lines are buffered within a batch and flushed at the end of each, so a
/// reader sees every event within the batch interval.
///
/// A write that fails (a full disk, a closed pipe) never stops the daemon — stopping would
/// detach the firewall — it is counted in [`EventWriter::unwritten`] and warned about at most
/// every [`WARN_INTERVAL`], and writing resumes when the output accepts data again.
pub struct EventWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    written: u64,
    unwritten: u64,
    last_warning: Option<Instant>,
}

pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl EventWriter {
    pub fn open(target: &EventsTarget) -> io::Result<EventWriter> {
        let out: Box<dyn Write + Send> = match target {
            EventsTarget::Stdout => Box::new(io::stdout()),
            EventsTarget::File(path) => Box::new(open_append(path)?),
        };
        Ok(Self::new(out))
    }

    pub fn new(out: Box<dyn Write + Send>) -> EventWriter {
        EventWriter {
            out: BufWriter::with_capacity(64 * 1024, out),
            written: 0,
            unwritten: 0,
            last_warning: None,
        }
    }

    pub fn write(&mut self, record: &impl Serialize) {
        let result = serde_json::to_writer(&mut self.out, record)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => self.written += 1,
            Err(err) => {
                self.unwritten += 1;
                self.warn(&err);
            }
        }
    }

    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            self.warn(&err);
        }
    }

    fn warn(&mut self, err: &io::Error) {
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_INTERVAL)
        {
            self.last_warning = Some(Instant::now());
            log::error!(
                "cannot write events ({err}); {} unwritten so far, enforcement continues",
                self.unwritten
            );
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Events that could not be written to the output.
    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}
