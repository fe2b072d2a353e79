//! Where events go: standard output or an append-only file, reopened after rotation; a
//! failed write is counted and warned about, never stops enforcement.

// The events module's types and imports.
use super::*;
use crate::system::fs::FileId;

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

/// The version of the event lines' schema (docs/events.md), in every line as `schema`. Raised
/// when a field changes meaning or goes away; new fields do not raise it.
pub const SCHEMA: u32 = 1;

/// A JSON-lines writer. Lines are buffered within a batch and flushed at the end of each, so a
/// reader sees every event within the batch interval. Every line carries the node's name
/// (`node`), the schema version (`schema`) and an id no other line has (`id`: this writer's
/// random prefix and its line number), so shippers can deduplicate what they read twice.
///
/// A file target is reopened by path when it was moved or removed (checked at every flush) and
/// at [`EventWriter::reopen`] (SIGHUP): `mv events.jsonl events.jsonl.1` is all a log rotation
/// needs.
///
/// A write that fails (a full disk, a closed pipe) never stops the daemon — stopping would
/// detach the firewall — it is counted in [`EventWriter::unwritten`] and warned about at most
/// every [`WARN_INTERVAL`], and writing resumes when the output accepts data again.
pub struct EventWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file written and the identity (device, inode) of what was opened; `None` for
    /// standard output and other streams.
    file: Option<(PathBuf, FileId)>,
    node: String,
    id_prefix: String,
    written: u64,
    unwritten: u64,
    last_warning: Option<Instant>,
}

pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One line: the record's fields, then the envelope's.
#[derive(Serialize)]
struct Line<'a, T> {
    #[serde(flatten)]
    record: &'a T,
    node: &'a str,
    schema: u32,
    id: &'a str,
}

impl EventWriter {
    pub fn open(target: &EventsTarget, node: &str) -> io::Result<EventWriter> {
        match target {
            EventsTarget::Stdout => Ok(Self::new(Box::new(io::stdout()), node)),
            EventsTarget::File(path) => {
                let (file, identity) = open_append(path)?;
                let mut writer = Self::new(Box::new(file), node);
                writer.file = Some((path.clone(), identity));
                Ok(writer)
            }
        }
    }

    pub fn new(out: Box<dyn Write + Send>, node: &str) -> EventWriter {
        // 64 random bits per writer: lines of two daemon runs never share an id.
        let prefix = getrandom::u64().unwrap_or_else(|_| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        });
        EventWriter {
            out: BufWriter::with_capacity(64 * 1024, out),
            file: None,
            node: node.to_owned(),
            id_prefix: format!("{prefix:016x}"),
            written: 0,
            unwritten: 0,
            last_warning: None,
        }
    }

    pub fn write(&mut self, record: &impl Serialize) {
        let id = format!("{}-{}", self.id_prefix, self.written + self.unwritten);
        let line = Line {
            record,
            node: &self.node,
            schema: SCHEMA,
            id: &id,
        };
        let result = serde_json::to_writer(&mut self.out, &line)
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

    /// Writes out what is buffered; then, for a file, reopens it by path if it was moved away.
    pub fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            self.warn(&err);
        }
        let moved = self
            .file
            .as_ref()
            .is_some_and(|(path, identity)| FileId::of_path(path).ok().as_ref() != Some(identity));
        if moved {
            self.reopen();
        }
    }

    /// Reopens the file by its path (SIGHUP, or it was moved): what is buffered goes to the
    /// old file first. Standard output is left as it is. A file that cannot be opened keeps
    /// the old one in use, with a warning.
    pub fn reopen(&mut self) {
        let Some((path, _)) = self.file.clone() else {
            return;
        };
        if let Err(err) = self.out.flush() {
            self.warn(&err);
        }
        match open_append(&path) {
            Ok((file, identity)) => {
                *self.out.get_mut() = Box::new(file);
                self.file = Some((path.clone(), identity));
                log::info!("events to {} (reopened)", path.display());
            }
            Err(err) => log::error!(
                "cannot reopen {} ({err}); events still go to the file opened before",
                path.display()
            ),
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

/// The file opened for appending, and its identity.
fn open_append(path: &Path) -> io::Result<(File, FileId)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let identity = FileId::of_file(&file)?;
    Ok((file, identity))
}
