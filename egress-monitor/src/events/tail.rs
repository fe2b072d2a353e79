//! Following an events file as the daemon writes it: new complete lines as they come, across
//! rotation (the path names a new file: the old one is read to its end first) and truncation
//! (`copytruncate`: read again from the start).

use crate::system::fs::FileId;

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

pub struct Tail {
    path: PathBuf,
    current: Reader,
    /// The file the path named before a rotation, still read for [`DRAIN_AFTER_ROTATION`]: the
    /// writer may finish lines in it until it notices the move.
    previous: Option<(Reader, std::time::Instant)>,
}

/// How long a rotated file is still read.
const DRAIN_AFTER_ROTATION: std::time::Duration = std::time::Duration::from_secs(2);

/// One open file and how far it was read.
struct Reader {
    reader: BufReader<File>,
    identity: FileId,
    /// Bytes consumed so far.
    position: u64,
    /// The start of a line whose end is not written yet.
    partial: String,
}

impl Reader {
    fn open(path: &Path) -> io::Result<Reader> {
        let (reader, identity) = open(path)?;
        Ok(Reader {
            reader,
            identity,
            position: 0,
            partial: String::new(),
        })
    }

    /// The complete lines written since the last call.
    fn read_available(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(lines);
            }
            self.position += n as u64;
            self.partial.push_str(&String::from_utf8_lossy(&buf));
            if self.partial.ends_with('\n') {
                let line = std::mem::take(&mut self.partial);
                lines.push(line.trim_end_matches('\n').to_owned());
            }
        }
    }
}

impl Tail {
    /// Opens `path`, positioned `back` bytes before its end (at a line start), so that the
    /// last lines can be shown before the new ones.
    pub fn open(path: &Path, back: u64) -> io::Result<Tail> {
        let mut current = Reader::open(path)?;
        let len = current.reader.get_ref().metadata()?.len();
        let start = len.saturating_sub(back);
        if start > 0 {
            // Start at a line: after the newline at or before `start`.
            current.reader.seek(SeekFrom::Start(start - 1))?;
            let mut cut = Vec::new();
            let skipped = current.reader.read_until(b'\n', &mut cut)? as u64;
            current.position = start - 1 + skipped;
        }
        Ok(Tail {
            path: path.to_owned(),
            current,
            previous: None,
        })
    }

    /// The complete lines written since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        if let Some((previous, since)) = &mut self.previous {
            lines.extend(previous.read_available()?);
            if since.elapsed() > DRAIN_AFTER_ROTATION {
                self.previous = None;
            }
        }
        lines.extend(self.current.read_available()?);
        match FileId::of_path(&self.path) {
            Ok(identity) if identity != self.current.identity => {
                // Rotated: the new file from its start; the old one is still read a while.
                let new = Reader::open(&self.path)?;
                let old = std::mem::replace(&mut self.current, new);
                self.previous = Some((old, std::time::Instant::now()));
                lines.extend(self.current.read_available()?);
            }
            Ok(_) => {
                let len = self.current.reader.get_ref().metadata()?.len();
                if len < self.current.position {
                    // Truncated in place: what is there now is new.
                    self.current.reader.seek(SeekFrom::Start(0))?;
                    self.current.position = 0;
                    self.current.partial.clear();
                    lines.extend(self.current.read_available()?);
                }
            }
            // Moved away and not yet replaced: keep reading the old file.
            Err(_) => {}
        }
        Ok(lines)
    }
}

fn open(path: &Path) -> io::Result<(BufReader<File>, FileId)> {
    let file = File::open(path)?;
    let identity = FileId::of_file(&file)?;
    Ok((BufReader::new(file), identity))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_followed_across_a_rotation_and_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, "old 1\nold 2\nold 3\n");
        // Eight bytes back: the cut line is skipped, the last whole one shown; six bytes back
        // is a line's start, and that line is shown.
        assert_eq!(Tail::open(&path, 6).unwrap().poll().unwrap(), ["old 3"]);
        assert_eq!(
            Tail::open(&path, 12).unwrap().poll().unwrap(),
            ["old 2", "old 3"]
        );
        let mut tail = Tail::open(&path, 8).unwrap();
        assert_eq!(tail.poll().unwrap(), ["old 3"]);
        append(&path, "new 1\npart");
        assert_eq!(tail.poll().unwrap(), ["new 1"]);
        append(&path, "ial\n");
        assert_eq!(tail.poll().unwrap(), ["partial"]);
        // Rotated: the old file's last line, then the new file's.
        append(&path, "before the move\n");
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        assert_eq!(tail.poll().unwrap(), ["before the move"]);
        append(&path, "after the move\n");
        assert_eq!(tail.poll().unwrap(), ["after the move"]);
        // The writer finishes a line in the moved file after the follower switched: not lost.
        append(&dir.path().join("events.jsonl.1"), "late in the old file\n");
        assert_eq!(tail.poll().unwrap(), ["late in the old file"]);
        // Truncated in place, then written again.
        std::fs::write(&path, "").unwrap();
        assert!(tail.poll().unwrap().is_empty());
        append(&path, "after truncation\n");
        assert_eq!(tail.poll().unwrap(), ["after truncation"]);
        assert!(tail.poll().unwrap().is_empty());
    }
}
