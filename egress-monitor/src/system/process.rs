//! The sending process's executable, for events: read from `/proc/PID/exe` while the process
//! lives, and remembered briefly so that a flood from one process costs one `readlink` per
//! [`ExeCache::TTL`] rather than one per event.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
pub struct ExeCache {
    known: HashMap<u32, (Option<String>, Instant)>,
}

impl ExeCache {
    /// How long a pid's executable is trusted. Short: a pid can be reused, and a process can
    /// exec another program.
    pub const TTL: Duration = Duration::from_secs(1);
    const CAPACITY: usize = 4096;

    pub fn new() -> ExeCache {
        ExeCache::default()
    }

    /// The executable of `pid`, or `None` when the process is gone (or a kernel thread).
    pub fn exe(&mut self, pid: u32) -> Option<String> {
        let now = Instant::now();
        if let Some((exe, read_at)) = self.known.get(&pid)
            && now.duration_since(*read_at) < Self::TTL
        {
            return exe.clone();
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|path| path.display().to_string());
        if self.known.len() >= Self::CAPACITY {
            self.known
                .retain(|_, (_, read_at)| now.duration_since(*read_at) < Self::TTL);
            if self.known.len() >= Self::CAPACITY {
                self.known.clear();
            }
        }
        self.known.insert(pid, (exe.clone(), now));
        exe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_has_its_executable_and_a_gone_one_none() {
        let mut cache = ExeCache::new();
        let me = std::env::current_exe().unwrap().display().to_string();
        assert_eq!(cache.exe(std::process::id()), Some(me.clone()));
        assert_eq!(cache.exe(std::process::id()), Some(me), "remembered");
        assert_eq!(cache.exe(u32::MAX), None);
    }
}
