//! A private bpf filesystem per test: the test's pins live there, and unmounting it on drop
//! removes every pin, which detaches whatever the test left attached.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use egress_monitor::datapath::pins::PinLayout;

use crate::{is_stale, unique_id};

const KIND: &str = "em-bpf";

pub struct BpfFs {
    pub mount: PathBuf,
}

impl BpfFs {
    pub fn new() -> anyhow::Result<BpfFs> {
        let mount = std::env::temp_dir().join(format!("{KIND}-{}", unique_id()));
        std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
        let target = CString::new(mount.as_os_str().as_bytes())?;
        let kind = CString::new("bpf").expect("no NUL");
        // SAFETY: mount(2) with valid C strings and no data.
        if unsafe {
            libc::mount(
                kind.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        } != 0
        {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&mount);
            bail!("mounting a bpf filesystem on {}: {err}", mount.display());
        }
        Ok(BpfFs { mount })
    }

    /// The pin path tests pass as `--pin-path`.
    pub fn pin_path(&self) -> PathBuf {
        self.mount.join("egress-monitor")
    }

    pub fn layout(&self) -> PinLayout {
        PinLayout::new(self.pin_path())
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        remove(&self.mount, &self.layout());
    }
}

fn remove(mount: &Path, layout: &PinLayout) {
    let _ = std::fs::remove_dir_all(layout.run_dir());
    let Ok(target) = CString::new(mount.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) on a valid C string; MNT_DETACH so an fd still open elsewhere cannot
    // keep the test's state alive.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        eprintln!(
            "cleanup: umount {}: {}",
            mount.display(),
            std::io::Error::last_os_error()
        );
    }
    let _ = std::fs::remove_dir(mount);
}

pub(crate) fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy(), KIND) {
            let mount = entry.path();
            remove(&mount, &PinLayout::new(mount.join("egress-monitor")));
        }
    }
}
