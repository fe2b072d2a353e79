//! Waiting until every BPF program running now has finished: the kernel does so
//! (`synchronize_rcu`) when a map-in-map slot is updated, so that userspace knows no program
//! still holds the old value. Between zeroing the tables and changing the tries this makes sure
//! no walk that read an entry before the zeroing (a cgroup program can be preempted mid-walk)
//! is still going when the tries change and blocks are reused for other regions.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` as BPF_MAP_CREATE reads it, up to the map's name (the rest is zero).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` as BPF_MAP_UPDATE_ELEM reads it.
#[repr(C)]
#[derive(Default)]
struct UpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn create(attr: &mut CreateAttr) -> io::Result<OwnedFd> {
    // SAFETY: BPF_MAP_CREATE's attribute, pointing at nothing.
    let fd = unsafe { crate::datapath::syscall::bpf(BPF_MAP_CREATE, attr)? };
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("a descriptor out of range"))?;
    // SAFETY: the kernel just made this descriptor for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Returns once every BPF program that was running when it was called has finished.
pub(in crate::datapath) fn wait_for_running_programs() -> io::Result<()> {
    let inner = create(&mut CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..CreateAttr::default()
    })?;
    let outer = create(&mut CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd: inner.as_raw_fd() as u32,
        ..CreateAttr::default()
    })?;
    let key = 0u32;
    let value = inner.as_raw_fd() as u32;
    let mut update = UpdateAttr {
        map_fd: outer.as_raw_fd() as u32,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        ..UpdateAttr::default()
    };
    // SAFETY: BPF_MAP_UPDATE_ELEM's attribute; `key` and `value` outlive the call.
    unsafe { crate::datapath::syscall::bpf(BPF_MAP_UPDATE_ELEM, &mut update)? };
    Ok(())
}
