//! Network interfaces as the calling thread's network namespace sees them.
//!
//! Everything here asks the kernel through sockets and `if_nameindex` (netlink), never through
//! `/sys/class/net`, which shows the namespace sysfs was mounted in rather than the caller's.

use std::{
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `ARPHRD_ETHER`: an Ethernet-framed device (physical NICs, veth, bridges, VLANs, hv_netvsc).
pub const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// The ARPHRD_* link type.
    pub link_type: u16,
    pub up: bool,
}

impl Interface {
    pub fn is_loopback(&self) -> bool {
        self.link_type == ARPHRD_LOOPBACK
    }

    pub fn is_ethernet(&self) -> bool {
        self.link_type == ARPHRD_ETHER
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("no network interface named `{0}`")]
    NotFound(String),
    #[error("`{0}` is not a valid interface name")]
    BadName(String),
    #[error("cannot query network interface `{name}`")]
    Query {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot list network interfaces")]
    List(#[source] io::Error),
}

/// Looks one interface up by name.
pub fn lookup(name: &str) -> Result<Interface, InterfaceError> {
    let c_name = CString::new(name).map_err(|_| InterfaceError::BadName(name.to_owned()))?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(InterfaceError::BadName(name.to_owned()));
    }
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(InterfaceError::NotFound(name.to_owned()));
    }
    let query = |source| InterfaceError::Query {
        name: name.to_owned(),
        source,
    };
    let socket = control_socket().map_err(query)?;
    let mut request = ifreq(&c_name);
    ioctl(&socket, libc::SIOCGIFHWADDR, &mut request).map_err(query)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let link_type = unsafe { request.ifr_ifru.ifru_hwaddr.sa_family };
    let mut request = ifreq(&c_name);
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut request).map_err(query)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    Ok(Interface {
        name: name.to_owned(),
        index,
        link_type,
        up: flags & libc::IFF_UP as libc::c_short != 0,
    })
}

/// Every interface of the namespace.
pub fn all() -> Result<Vec<Interface>, InterfaceError> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(InterfaceError::List(io::Error::last_os_error()));
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            names.push(
                CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names.iter().map(|name| lookup(name)).collect()
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &CStr) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    request
}

fn ioctl(socket: &OwnedFd, op: libc::Ioctl, request: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the request is a valid ifreq for these read-only interface queries.
    if unsafe { libc::ioctl(socket.as_raw_fd(), op, request as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_is_loopback() {
        let lo = lookup("lo").unwrap();
        assert!(lo.is_loopback());
        assert!(!lo.is_ethernet());
        assert_eq!(lo.index, 1);
        assert!(all().unwrap().iter().any(|i| i.name == "lo"));
    }

    #[test]
    fn unknown_and_invalid_names_are_errors() {
        assert!(matches!(
            lookup("em-no-such-if0"),
            Err(InterfaceError::NotFound(_))
        ));
        assert!(matches!(
            lookup("a-name-far-too-long-for-linux"),
            Err(InterfaceError::BadName(_))
        ));
        assert!(matches!(
            lookup("bad\0name"),
            Err(InterfaceError::BadName(_))
        ));
    }
}
