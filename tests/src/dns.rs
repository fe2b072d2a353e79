//! A small authoritative DNS server for the tests, on UDP and TCP port 53 of a peer address:
//! it answers A and AAAA questions from a zone the test sets (and changes, for rotation), and
//! records every question it receives, so a test can tell whether a query reached it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE,
    rdata::{A, AAAA, RData},
};

use crate::netns::Netns;

pub const DNS_PORT: u16 = 53;

/// One address record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub address: IpAddr,
    pub ttl: u32,
}

impl Record {
    pub fn new(name: &str, address: impl Into<IpAddr>, ttl: u32) -> Record {
        Record {
            name: name.to_ascii_lowercase(),
            address: address.into(),
            ttl,
        }
    }
}

/// What the server knows and what it was asked.
#[derive(Default)]
struct State {
    zone: Vec<Record>,
    questions: Vec<String>,
}

/// The running server; stops (bounded) on drop.
pub struct DnsServer {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `address`:53 (UDP and TCP) inside `netns` and serves `zone`.
    pub fn start(netns: &Netns, address: IpAddr, zone: Vec<Record>) -> anyhow::Result<DnsServer> {
        let at = SocketAddr::new(address, DNS_PORT);
        let (udp, tcp) = netns.run(|| -> anyhow::Result<(UdpSocket, TcpListener)> {
            let udp = UdpSocket::bind(at).with_context(|| format!("binding UDP {at}"))?;
            let tcp = TcpListener::bind(at).with_context(|| format!("binding TCP {at}"))?;
            Ok((udp, tcp))
        })??;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        tcp.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            zone,
            questions: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = udp.recv_from(&mut buffer) else {
                        continue;
                    };
                    if let Some(reply) = answer(&state, &buffer[..len]) {
                        let _ = udp.send_to(&reply, from);
                    }
                }
            }));
        }
        {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut length = [0u8; 2];
                    if stream.read_exact(&mut length).is_err() {
                        continue;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                    if stream.read_exact(&mut query).is_err() {
                        continue;
                    }
                    if let Some(reply) = answer(&state, &query) {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = stream.write_all(&framed);
                    }
                }
            }));
        }
        Ok(DnsServer {
            state,
            stop,
            threads,
        })
    }

    /// Replaces the zone (rotation).
    pub fn set_zone(&self, zone: Vec<Record>) {
        self.state.lock().expect("dns state").zone = zone;
    }

    /// The question names received so far (lowercase, no trailing dot).
    pub fn questions(&self) -> Vec<String> {
        self.state.lock().expect("dns state").questions.clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The reply to a query: every record of the zone with the question's name and type
/// (NXDOMAIN when the name has none), names compressed as real servers do.
fn answer(state: &Mutex<State>, query: &[u8]) -> Option<Vec<u8>> {
    let query = Packet::parse(query).ok()?;
    let question = query.questions.first()?.clone();
    let name = question.qname.to_string().to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_owned();
    let mut state = state.lock().ok()?;
    state.questions.push(name.clone());
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    reply.questions.push(question.clone());
    let records: Vec<Record> = state
        .zone
        .iter()
        .filter(|r| r.name == name)
        .cloned()
        .collect();
    if records.is_empty() {
        *reply.rcode_mut() = RCODE::NameError;
    }
    let owner = Name::new_unchecked(&name);
    for record in &records {
        let data = match (record.address, question.qtype) {
            (IpAddr::V4(v4), QTYPE::TYPE(TYPE::A)) => RData::A(A::from(v4)),
            (IpAddr::V6(v6), QTYPE::TYPE(TYPE::AAAA)) => RData::AAAA(AAAA::from(v6)),
            _ => continue,
        };
        reply.answers.push(ResourceRecord::new(
            owner.clone(),
            CLASS::IN,
            record.ttl,
            data,
        ));
    }
    reply.build_bytes_vec_compressed().ok()
}
