//! A pinned flat table, mapped into this process (the arrays are created `BPF_F_MMAPABLE`): the
//! daemon reads and writes entries as memory, one atomic 64-bit store each, which the programs
//! see at once; a table of 589,824 entries is compared and written without a syscall per entry.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use aya::maps::MapData;
use egress_monitor_common::maps as names;

use super::TABLE_ENTRIES;
use crate::datapath::{DatapathError, pins::PinLayout};

/// `BPF_F_MMAPABLE`: the array may be mapped into a process.
pub(in crate::datapath) const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One family's pinned table, mapped for reading and writing.
pub(in crate::datapath) struct LiveTable {
    entries: NonNull<AtomicU64>,
    mapped_len: usize,
}

impl LiveTable {
    /// Maps the table `name` pinned at `layout` (after checking it is the array the programs
    /// read: `u32` values, [`TABLE_ENTRIES`] of them, mappable).
    pub(in crate::datapath) fn open(
        layout: &PinLayout,
        name: &'static str,
    ) -> Result<LiveTable, DatapathError> {
        debug_assert!(name == names::FLAT_V4 || name == names::FLAT_V6);
        let map = MapData::from_pin(layout.map(name)).map_err(DatapathError::map(name, "open"))?;
        let info = map
            .info()
            .map_err(DatapathError::map(name, "read its info"))?;
        if info.value_size() != 8
            || info.max_entries() as usize != TABLE_ENTRIES
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            return Err(DatapathError::FlatTable {
                name,
                what: format!(
                    "pinned with {} entries of {} bytes, flags {:#x}; this build reads {TABLE_ENTRIES} mappable entries of 8",
                    info.max_entries(),
                    info.value_size(),
                    info.map_flags()
                ),
                source: io::Error::from(io::ErrorKind::InvalidData),
            });
        }
        let mapped_len = TABLE_ENTRIES * 8;
        // SAFETY: maps the array's own memory, shared with the kernel; the length is the
        // array's (the kernel rounds it up to whole pages). The mapping outlives the
        // descriptor, which may be closed once mapped.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(DatapathError::FlatTable {
                name,
                what: "map into memory".into(),
                source: io::Error::last_os_error(),
            });
        }
        let entries =
            NonNull::new(address.cast::<AtomicU64>()).ok_or_else(|| DatapathError::FlatTable {
                name,
                what: "map into memory".into(),
                source: io::Error::other("mmap returned a null address"),
            })?;
        Ok(LiveTable {
            entries,
            mapped_len,
        })
    }

    /// The entries, as the programs read them.
    pub(in crate::datapath) fn entries(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds TABLE_ENTRIES aligned u64s for as long as `self` lives;
        // every access goes through atomics, as the kernel's are single aligned loads.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr(), TABLE_ENTRIES) }
    }
}

impl Drop for LiveTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `open` mapped; no reference outlives `self`.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.mapped_len);
        }
    }
}
