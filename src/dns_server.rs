//! A DNS server on loopback for the tests, the benches and the demo: it
//! answers A and AAAA questions over UDP from a table the caller changes
//! while it runs, with the TTL the caller sets, and counts the questions
//! it was asked. The wire format is hickory-proto's (the resolver's own
//! crate), so what the mesh reads is what a real server sends.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A running DNS server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    records: Mutex<HashMap<String, Vec<IpAddr>>>,
    ttl: AtomicU32,
    questions: AtomicU64,
    failing: AtomicBool,
}

impl DnsServer {
    /// Starts a server on a free loopback port, answering with `ttl`
    /// seconds.
    pub async fn start(ttl: u32) -> std::io::Result<Self> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let state = Arc::new(State::default());
        state.ttl.store(ttl, Ordering::Relaxed);
        let task = tokio::spawn(serve(socket, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the addresses of `name` (no trailing dot); an empty list
    /// removes it (then the server answers NXDOMAIN).
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        let mut records = self
            .state
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if addresses.is_empty() {
            records.remove(&key(name));
        } else {
            records.insert(key(name), addresses.to_vec());
        }
    }

    /// Sets the TTL of later answers, in seconds.
    pub fn set_ttl(&self, ttl: u32) {
        self.state.ttl.store(ttl, Ordering::Relaxed);
    }

    /// While set, every question gets SERVFAIL.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::Relaxed);
    }

    /// Questions asked so far.
    pub fn questions(&self) -> u64 {
        self.state.questions.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: tokio::net::UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(reply) = answer(&buf[..n], &state) else {
            continue;
        };
        let _ = socket.send_to(&reply, from).await;
    }
}

/// The reply to one query, if it parses.
fn answer(query: &[u8], state: &State) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    state.questions.fetch_add(1, Ordering::Relaxed);
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    reply.add_queries(query.queries().to_vec());
    if state.failing.load(Ordering::Relaxed) {
        reply.set_response_code(ResponseCode::ServFail);
        return reply.to_vec().ok();
    }
    let ttl = state.ttl.load(Ordering::Relaxed);
    let records = state.records.lock().unwrap_or_else(PoisonError::into_inner);
    let mut known = false;
    for q in query.queries() {
        let name: &Name = q.name();
        let Some(addresses) = records.get(&key(&name.to_ascii())) else {
            continue;
        };
        known = true;
        for ip in addresses {
            let rdata = match (q.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(rdata::A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(rdata::AAAA(*v6)),
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(name.clone(), ttl, rdata));
        }
    }
    if !known {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    reply.to_vec().ok()
}
