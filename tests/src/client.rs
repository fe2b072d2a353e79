//! Drives `em-testclient`: a process that joins a cgroup and a network namespace, then sends
//! exactly what it is told and reports what happened as one `key=value` line.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};

/// What the client reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Sends (or connects) that the kernel accepted.
    pub ok: u64,
    /// Sends refused with EPERM (a cgroup_skb drop).
    pub eperm: u64,
    /// Other failures (timeouts, resets).
    pub failed: u64,
    /// Replies received (ICMP echo replies; TCP: connections established).
    pub replies: u64,
    /// The local port used (UDP, TCP).
    pub src_port: u16,
    /// The client's process id (what events should name as the sender).
    pub pid: u32,
}

/// Where the client runs.
#[derive(Clone, Debug)]
pub struct Client {
    pub binary: PathBuf,
    pub netns: String,
    pub cgroup: Option<PathBuf>,
    pub uid: Option<u32>,
    /// Run as nobody with CAP_NET_RAW alone (what container runtimes grant), after joining
    /// the cgroup and the namespace.
    pub net_raw_only: bool,
    /// A pause between sends, for clients that must keep going for a while.
    pub interval: Option<std::time::Duration>,
    /// `SO_MARK` on `udp`'s socket.
    pub mark: Option<u32>,
}

impl Client {
    /// Sends `count` UDP datagrams of `payload` bytes to `dst:port`. `dstopts` adds an IPv6
    /// Destination Options extension header to each.
    pub fn udp(
        &self,
        dst: IpAddr,
        port: u16,
        count: u32,
        payload: usize,
        dstopts: bool,
    ) -> anyhow::Result<Outcome> {
        let mut args = vec![
            "udp".to_owned(),
            dst.to_string(),
            port.to_string(),
            count.to_string(),
            payload.to_string(),
        ];
        if dstopts {
            args.push("dstopts".to_owned());
        }
        self.call(&args)
    }

    /// One TCP connection (timeout in milliseconds) that sends a few bytes when established.
    pub fn tcp(&self, dst: IpAddr, port: u16, timeout_ms: u32) -> anyhow::Result<Outcome> {
        self.call(&[
            "tcp".into(),
            dst.to_string(),
            port.to_string(),
            timeout_ms.to_string(),
        ])
    }

    /// `count` UDP datagrams from one socket, each to another (address, port) in `dst`'s /24:
    /// as many flows as datagrams (up to 254 × 64,512). Keep `dst` in a documentation range.
    pub fn udp_spray(&self, dst: Ipv4Addr, count: u32, payload: usize) -> anyhow::Result<Outcome> {
        self.call(&[
            "spray".into(),
            dst.to_string(),
            count.to_string(),
            payload.to_string(),
        ])
    }

    /// One DNS question (`kind`: `a` or `aaaa`) to `server`:53, over TCP when `tcp`; `ok` says
    /// whether an answer came back, `replies` how many addresses it held.
    pub fn resolve(
        &self,
        server: IpAddr,
        name: &str,
        kind: &str,
        tcp: bool,
    ) -> anyhow::Result<Outcome> {
        let mut args = vec![
            "resolve".to_owned(),
            server.to_string(),
            name.to_owned(),
            kind.to_owned(),
        ];
        if tcp {
            args.push("tcp".to_owned());
        }
        self.call(&args)
    }

    /// `count` identical A questions from one UDP socket (`interval` apart, when set).
    pub fn resolve_repeat(
        &self,
        server: IpAddr,
        name: &str,
        count: u32,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "resolve-repeat".into(),
            server.to_string(),
            name.to_owned(),
            count.to_string(),
        ])
    }

    /// Two questions in one TCP segment, `second` right behind `first`; `ok` counts answers.
    pub fn resolve_pipelined(
        &self,
        server: IpAddr,
        first: &str,
        second: &str,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "resolve-pipelined".into(),
            server.to_string(),
            first.to_owned(),
            second.to_owned(),
        ])
    }

    /// Asks `server` for `name`, then delivers to the asking socket a forged answer naming
    /// `forged` from a local socket bound to port 53; `ok` counts the answers received.
    pub fn forge_answer(
        &self,
        server: IpAddr,
        name: &str,
        forged: Ipv4Addr,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "forge-answer".into(),
            server.to_string(),
            name.to_owned(),
            forged.to_string(),
        ])
    }

    /// `count` ICMP/ICMPv6 echo requests, waiting up to 500 ms for each reply.
    pub fn ping(&self, dst: IpAddr, count: u32) -> anyhow::Result<Outcome> {
        self.call(&["ping".into(), dst.to_string(), count.to_string()])
    }

    /// `count` raw broadcast Ethernet frames on `iface` with `ethertype` behind `vlan_tags`
    /// 802.1Q tags (for 0x0800, a UDP datagram to 203.0.113.1).
    pub fn frame(
        &self,
        iface: &str,
        ethertype: u16,
        count: u32,
        vlan_tags: u8,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "frame".into(),
            iface.to_owned(),
            format!("{ethertype:04x}"),
            count.to_string(),
            vlan_tags.to_string(),
        ])
    }

    /// `count` UDP datagrams to `dst:port` in Ethernet frames to `dst_mac` on `iface`, sent
    /// through an AF_PACKET socket the way `mode` says: `plain`, `bypass`
    /// (`PACKET_QDISC_BYPASS`), `mmsg` (bypass and `sendmmsg`), `txring` (bypass and
    /// `PACKET_TX_RING`). A refused bypass counts in `eperm`; the frames go out anyway.
    pub fn l2(
        &self,
        iface: &str,
        dst_mac: &str,
        dst: IpAddr,
        port: u16,
        mode: &str,
        count: u32,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "l2".into(),
            iface.to_owned(),
            dst_mac.to_owned(),
            dst.to_string(),
            port.to_string(),
            mode.to_owned(),
            count.to_string(),
        ])
    }

    /// Asks an AF_XDP socket for a TX ring: `ok` when granted, `eperm` when refused.
    pub fn xdp_tx_ring(&self) -> anyhow::Result<Outcome> {
        self.call(&["xdp-tx-ring".into()])
    }

    /// One datagram to `dst:port` whose IP destination is `hop`: an IPv4 loose source route or
    /// an IPv6 segment routing header names `dst` as the route's end.
    pub fn source_route(&self, dst: IpAddr, hop: IpAddr, port: u16) -> anyhow::Result<Outcome> {
        self.call(&[
            "source-route".into(),
            dst.to_string(),
            hop.to_string(),
            port.to_string(),
        ])
    }

    /// In a user and network namespace of its own, resolves `name` from its own server on
    /// `server` (loopback), which answers `forged` with the longest TTL.
    pub fn own_resolver(
        &self,
        server: Ipv4Addr,
        name: &str,
        forged: Ipv4Addr,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "own-resolver".into(),
            server.to_string(),
            name.to_owned(),
            forged.to_string(),
        ])
    }

    /// Asks `resolver` for `name`, then answers itself in the resolver's name over loopback
    /// (`mode`: `raw`, a raw IP socket; `packet`, a frame on `lo`), naming `forged`. `ok`: the
    /// forgery was sent, `eperm`: refused; `replies`: answers the asking socket received.
    pub fn forge_as_resolver(
        &self,
        mode: &str,
        resolver: Ipv4Addr,
        name: &str,
        forged: Ipv4Addr,
    ) -> anyhow::Result<Outcome> {
        self.call(&[
            "forge-as-resolver".into(),
            mode.to_owned(),
            resolver.to_string(),
            name.to_owned(),
            forged.to_string(),
        ])
    }

    /// `count` datagrams from one connected UDP socket (`interval` apart).
    pub fn udp_connected(&self, dst: IpAddr, port: u16, count: u32) -> anyhow::Result<Outcome> {
        self.call(&[
            "udp-connected".into(),
            dst.to_string(),
            port.to_string(),
            count.to_string(),
        ])
    }

    /// A command that runs `program` with `args` where this client would run: joined to the
    /// cgroup and the namespace (and dropped to the uid or CAP_NET_RAW, when set) before the
    /// exec, so every socket it makes is judged as the client's would be.
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut command = self.command();
        command.arg("exec").arg(program).args(args);
        command
    }

    fn call(&self, args: &[String]) -> anyhow::Result<Outcome> {
        let mut command = self.command();
        command.args(args);
        let output = command.output().context("running em-testclient")?;
        if !output.status.success() {
            bail!(
                "em-testclient {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// `em-testclient` with this client's flags.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--netns").arg(&self.netns);
        if let Some(cgroup) = &self.cgroup {
            command.arg("--cgroup").arg(cgroup);
        }
        if let Some(uid) = self.uid {
            command.arg("--uid").arg(uid.to_string());
        }
        if self.net_raw_only {
            command.arg("--caps").arg("net_raw");
        }
        if let Some(mark) = self.mark {
            command.arg("--mark").arg(mark.to_string());
        }
        if let Some(interval) = self.interval {
            command
                .arg("--interval-us")
                .arg(interval.as_micros().to_string());
        }
        command
    }
}

/// `ok=N eperm=N failed=N replies=N src_port=N`
fn parse(line: &str) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome {
        ok: 0,
        eperm: 0,
        failed: 0,
        replies: 0,
        src_port: 0,
        pid: 0,
    };
    for field in line.split_whitespace() {
        let (key, value) = field.split_once('=').context("field without =")?;
        let value: u64 = value
            .parse()
            .with_context(|| format!("bad number in {field}"))?;
        match key {
            "ok" => outcome.ok = value,
            "eperm" => outcome.eperm = value,
            "failed" => outcome.failed = value,
            "replies" => outcome.replies = value,
            "src_port" => outcome.src_port = u16::try_from(value)?,
            "pid" => outcome.pid = u32::try_from(value)?,
            _ => bail!("unknown field {key}"),
        }
    }
    Ok(outcome)
}
