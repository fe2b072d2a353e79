//! The reporter's bounded on-disk queue. Every report is written here (and synced) before it
//! is sent, and removed only when the controller acknowledged it, so reports survive the
//! controller being down and the daemon being restarted. When the spool outgrows its bound,
//! the oldest reports go first and are counted; later reports carry the count.
//!
//! Layout: `state.json` (the stream id, the next sequence number, what was dropped) and one
//! `<seq>-<events>.json` file per report, named so that order and size need no parsing.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the spool state {path} is unreadable")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot make a random stream id")]
    Random(#[source] getrandom::Error),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolState {
    /// 16 hex digits, made when the spool is created.
    pub stream: String,
    pub next_seq: u64,
    pub dropped_reports: u64,
    pub dropped_events: u64,
}

/// A spooled report's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub events: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

pub struct Spool {
    dir: PathBuf,
    state: SpoolState,
    max_bytes: u64,
    /// Oldest first.
    entries: Vec<Entry>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, keeping at most `max_bytes` of reports.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let state_path = dir.join("state.json");
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SpoolError::State {
                path: state_path.clone(),
                source,
            })?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut random = [0u8; 8];
                getrandom::fill(&mut random).map_err(SpoolError::Random)?;
                SpoolState {
                    stream: random.iter().map(|b| format!("{b:02x}")).collect(),
                    next_seq: 1,
                    dropped_reports: 0,
                    dropped_events: 0,
                }
            }
            Err(err) => return Err(io_error(&state_path)(err)),
        };
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error(dir))? {
            let item = item.map_err(io_error(dir))?;
            let name = item.file_name();
            let Some((seq, events)) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
            else {
                continue;
            };
            let bytes = item.metadata().map_err(io_error(&item.path()))?.len();
            entries.push(Entry {
                seq,
                events,
                bytes,
                path: item.path(),
            });
        }
        entries.sort_by_key(|e| e.seq);
        let mut spool = Spool {
            dir: dir.to_owned(),
            state,
            max_bytes,
            entries,
        };
        // A report written after the state was saved (a crash in between) still counts.
        if let Some(last) = spool.entries.last() {
            spool.state.next_seq = spool.state.next_seq.max(last.seq + 1);
        }
        spool.save_state()?;
        Ok(spool)
    }

    pub fn state(&self) -> &SpoolState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reports waiting, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// The next report's sequence number; it is taken (and saved) by [`Spool::push`].
    pub fn next_seq(&self) -> u64 {
        self.state.next_seq
    }

    /// Writes a report made with [`Spool::next_seq`], durably, then drops the oldest reports
    /// while the spool is over its bound (never the one just written).
    pub fn push(&mut self, seq: u64, events: u64, body: &[u8]) -> Result<(), SpoolError> {
        debug_assert_eq!(seq, self.state.next_seq);
        self.state.next_seq = seq + 1;
        self.save_state()?;
        let path = self.dir.join(format!("{seq:020}-{events}.json"));
        write_durably(&path, body)?;
        self.entries.push(Entry {
            seq,
            events,
            bytes: body.len() as u64,
            path,
        });
        let mut dropped = false;
        while self.bytes() > self.max_bytes && self.entries.len() > 1 {
            let oldest = self.entries.remove(0);
            fs::remove_file(&oldest.path).map_err(io_error(&oldest.path))?;
            self.state.dropped_reports += 1;
            self.state.dropped_events += oldest.events;
            dropped = true;
            log::warn!(
                "the spool is full ({} bytes at most): dropped report #{} ({} events); {} reports dropped so far",
                self.max_bytes,
                oldest.seq,
                oldest.events,
                self.state.dropped_reports
            );
        }
        if dropped {
            self.save_state()?;
        }
        Ok(())
    }

    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, SpoolError> {
        fs::read(&entry.path).map_err(io_error(&entry.path))
    }

    /// Forgets a report the controller acknowledged.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some(i) = self.entries.iter().position(|e| e.seq == seq) {
            let entry = self.entries.remove(i);
            fs::remove_file(&entry.path).map_err(io_error(&entry.path))?;
        }
        Ok(())
    }

    /// Moves a report the controller refused as invalid aside (`rejected/`), for inspection.
    pub fn reject(&mut self, seq: u64) -> Result<PathBuf, SpoolError> {
        let rejected = self.dir.join("rejected");
        fs::create_dir_all(&rejected).map_err(io_error(&rejected))?;
        let i = self
            .entries
            .iter()
            .position(|e| e.seq == seq)
            .expect("rejecting a spooled report");
        let entry = self.entries.remove(i);
        let target = rejected.join(entry.path.file_name().expect("spool files have names"));
        fs::rename(&entry.path, &target).map_err(io_error(&target))?;
        Ok(target)
    }

    fn save_state(&self) -> Result<(), SpoolError> {
        let body = serde_json::to_vec(&self.state).expect("plain struct");
        write_durably(&self.dir.join("state.json"), &body)
    }
}

/// Writes a file so that it is either absent or whole after a crash: a temporary file,
/// synced, renamed over, and the directory synced.
pub fn write_durably(path: &Path, body: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(body).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let stream = spool.state().stream.clone();
        assert_eq!(stream.len(), 16);
        for body in [b"one".as_slice(), b"two", b"three"] {
            let seq = spool.next_seq();
            spool.push(seq, 1, body).unwrap();
        }
        spool.remove(1).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.state().stream, stream);
        assert_eq!(spool.next_seq(), 4);
        let seqs: Vec<u64> = spool.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(spool.read(&spool.entries()[0]).unwrap(), b"two");
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 250).unwrap();
        for events in 0..5u64 {
            let seq = spool.next_seq();
            spool.push(seq, events, &[b'x'; 100]).unwrap();
        }
        // 100 bytes each, 250 at most: the newest two stay.
        let seqs: Vec<u64> = spool.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(spool.state().dropped_reports, 3);
        assert_eq!(spool.state().dropped_events, 3); // 0 + 1 + 2
        let reopened = Spool::open(dir.path(), 250).unwrap();
        assert_eq!(reopened.state().dropped_reports, 3);
        // One report larger than the bound is still kept: it is the newest.
        let mut spool = reopened;
        let seq = spool.next_seq();
        spool.push(seq, 9, &[b'y'; 400]).unwrap();
        assert_eq!(spool.entries().len(), 1);
        assert_eq!(spool.state().dropped_events, 3 + 3 + 4);
    }

    #[test]
    fn rejected_reports_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(1, 0, b"{}").unwrap();
        let moved = spool.reject(1).unwrap();
        assert!(moved.starts_with(dir.path().join("rejected")));
        assert!(spool.entries().is_empty());
        assert!(
            Spool::open(dir.path(), 1 << 20)
                .unwrap()
                .entries()
                .is_empty()
        );
    }
}
