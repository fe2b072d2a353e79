//! Whose DNS answers teach: the node's own resolvers and the network namespaces the daemon
//! trusts, as the kernel's `DNS_RESOLVERS_*` and `DNS_NETNS` maps hold them.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use egress_monitor_policy::DnsTrust;

/// Azure's wireserver: the DNS every VNet gets unless it names custom servers.
pub const AZURE_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16));
/// systemd-resolved's stub listener (and its `127.0.0.54` proxy).
pub const RESOLVED_STUBS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54)),
];
/// Where the node's resolvers are written: the resolver configuration processes use, and the
/// one systemd-resolved writes with its upstream servers.
pub const RESOLV_CONF_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The `nameserver` addresses of a resolv.conf (scope ids dropped: the kernel sees addresses).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let address = words.next()?;
            address.split('%').next()?.parse().ok()
        })
        .collect()
}

/// The node's own resolvers: those of [`RESOLV_CONF_FILES`] that exist, Azure's and
/// systemd-resolved's stubs. Sorted, without duplicates.
pub fn node_resolvers() -> Vec<IpAddr> {
    let mut resolvers: Vec<IpAddr> = RESOLV_CONF_FILES
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| parse_resolv_conf(&text))
        .chain([AZURE_DNS])
        .chain(RESOLVED_STUBS)
        .collect();
    resolvers.sort();
    resolvers.dedup();
    resolvers
}

/// The resolvers a policy trusts: its own list, else the node's.
pub fn trusted_resolvers(trust: &DnsTrust) -> Vec<IpAddr> {
    match &trust.resolvers {
        Some(resolvers) => {
            let mut resolvers = resolvers.clone();
            resolvers.sort();
            resolvers.dedup();
            resolvers
        }
        None => node_resolvers(),
    }
}

/// The addresses of this network namespace's interfaces (`getifaddrs`); empty if they cannot
/// be read (every non-loopback resolver then counts as remote, the stricter reading).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it returns; freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its address may be null.
        let address = unsafe { (*entry).ifa_addr };
        if !address.is_null() {
            // SAFETY: the family says which sockaddr it is.
            match i32::from(unsafe { (*address).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let v4 = unsafe { *address.cast::<libc::sockaddr_in>() };
                    addresses.push(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let v6 = unsafe { *address.cast::<libc::sockaddr_in6>() };
                    addresses.push(IpAddr::from(v6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        // SAFETY: as above.
        entry = unsafe { (*entry).ifa_next };
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// Whether a resolver is on this node (its answers arrive over loopback): a loopback address
/// or one of `local`.
pub fn is_local(resolver: &IpAddr, local: &[IpAddr]) -> bool {
    resolver.is_loopback() || local.contains(resolver)
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}: cannot open it", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {}: cannot read its cookie", path.display())]
    Cookie {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where a `[dns] network_namespaces` entry lives: a name under /run/netns, or a path.
pub fn netns_path(entry: &str) -> PathBuf {
    if entry.starts_with('/') {
        PathBuf::from(entry)
    } else {
        Path::new("/run/netns").join(entry)
    }
}

/// The network namespace cookies answers may teach: this process's namespace (the daemon's)
/// and the policy's `network_namespaces`.
pub fn trusted_netns_cookies(trust: &DnsTrust) -> Result<Vec<u64>, NetnsError> {
    let own = Path::new("/proc/thread-self/ns/net");
    let mut cookies = vec![socket_netns_cookie().map_err(|source| NetnsError::Cookie {
        path: own.to_owned(),
        source,
    })?];
    for entry in &trust.network_namespaces {
        cookies.push(netns_cookie(&netns_path(entry))?);
    }
    cookies.sort_unstable();
    cookies.dedup();
    Ok(cookies)
}

/// The cookie of the network namespace at `path`: a thread enters it, makes a socket there
/// and asks for the socket's namespace cookie (`SO_NETNS_COOKIE`), leaving this thread where
/// it is.
pub fn netns_cookie(path: &Path) -> Result<u64, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let entered = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this short-lived thread only, with a namespace file we own.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                socket_netns_cookie()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    });
    entered.map_err(|source| NetnsError::Cookie {
        path: path.to_owned(),
        source,
    })
}

/// The cookie of the calling thread's network namespace, through a socket made in it.
fn socket_netns_cookie() -> io::Result<u64> {
    /// `SO_NETNS_COOKIE` (Linux 5.14), not in every libc crate's list.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_and_the_rest_ignored() {
        let text = "# comment\nsearch example.internal\nnameserver 10.0.0.4\n\
                    nameserver fe80::1%eth0\noptions edns0\nnameserver not-an-address\n\
                    nameserver   168.63.129.16  \n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.0.0.4".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "168.63.129.16".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_policys_own_resolvers_replace_the_nodes() {
        let trust = DnsTrust {
            resolvers: Some(vec![
                "10.0.0.4".parse().unwrap(),
                "10.0.0.4".parse().unwrap(),
            ]),
            ..DnsTrust::default()
        };
        assert_eq!(
            trusted_resolvers(&trust),
            ["10.0.0.4".parse::<IpAddr>().unwrap()]
        );
        let defaults = trusted_resolvers(&DnsTrust::default());
        assert!(defaults.contains(&AZURE_DNS), "{defaults:?}");
        assert!(defaults.contains(&RESOLVED_STUBS[0]), "{defaults:?}");
    }

    #[test]
    fn loopback_and_own_addresses_are_local_resolvers() {
        let local: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        assert!(is_local(&"127.0.0.53".parse().unwrap(), &local));
        assert!(is_local(&"::1".parse().unwrap(), &local));
        assert!(is_local(&"10.0.0.5".parse().unwrap(), &local));
        assert!(!is_local(&AZURE_DNS, &local));
        assert!(local_addresses().iter().any(IpAddr::is_loopback));
    }

    #[test]
    fn namespace_entries_are_names_or_paths() {
        assert_eq!(netns_path("dns"), Path::new("/run/netns/dns"));
        assert_eq!(netns_path("/proc/1/ns/net"), Path::new("/proc/1/ns/net"));
    }
}
