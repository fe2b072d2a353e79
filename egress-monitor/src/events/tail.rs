//! Following an events file as the daemon writes it: new complete lines as they come, across
//! rotation (the path names a new file: the old one is read to its end first) and truncation
//! (`copytruncate`: read again from the start).

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

pub struct Tail {
    path: PathBuf,
    reader: BufReader<File>,
    identity: (u64, u64),
    /// Bytes of the current file consumed so far.
    position: u64,
    /// The start of a line whose end is not written yet.
    partial: String,
}

impl Tail {
    /// Opens `path`, positioned `back` bytes before its end (at a line start), so that the
    /// last lines can be shown before the new ones.
    pub fn open(path: &Path, back: u64) -> io::Result<Tail> {
        let (mut reader, identity) = open(path)?;
        let len = reader.get_ref().metadata()?.len();
        let mut position = len.saturating_sub(back);
        reader.seek(SeekFrom::Start(position))?;
        if position > 0 {
            // Skip the rest of the line cut in the middle.
            let mut cut = Vec::new();
            position += reader.read_until(b'\n', &mut cut)? as u64;
        }
        Ok(Tail {
            path: path.to_owned(),
            reader,
            identity,
            position,
            partial: String::new(),
        })
    }

    /// The complete lines written since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = self.read_available()?;
        match identity_of(&self.path) {
            Ok(identity) if identity != self.identity => {
                // Rotated: the old file was read to its end above; the new one from its start.
                let (reader, identity) = open(&self.path)?;
                self.reader = reader;
                self.identity = identity;
                self.position = 0;
                self.partial.clear();
                lines.extend(self.read_available()?);
            }
            Ok(_) => {
                let len = self.reader.get_ref().metadata()?.len();
                if len < self.position {
                    // Truncated in place: what is there now is new.
                    self.reader.seek(SeekFrom::Start(0))?;
                    self.position = 0;
                    self.partial.clear();
                    lines.extend(self.read_available()?);
                }
            }
            // Moved away and not yet replaced: keep reading the old file.
            Err(_) => {}
        }
        Ok(lines)
    }

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

fn open(path: &Path) -> io::Result<(BufReader<File>, (u64, u64))> {
    use std::os::unix::fs::MetadataExt as _;
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    Ok((BufReader::new(file), (metadata.dev(), metadata.ino())))
}

fn identity_of(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
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
        // Six bytes back: the cut line is skipped, the last whole one shown.
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
        // Truncated in place, then written again.
        std::fs::write(&path, "").unwrap();
        assert!(tail.poll().unwrap().is_empty());
        append(&path, "after truncation\n");
        assert_eq!(tail.poll().unwrap(), ["after truncation"]);
        assert!(tail.poll().unwrap().is_empty());
    }
}
