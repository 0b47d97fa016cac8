//! The TFTP server under the attacks of the security review: half-open transfers from many addresses,
//! a client asking for `timeout=255`, and read requests from a (spoofed) address that never
//! acknowledges. Each test reproduces the attack against the in-process server on loopback and checks
//! the bound the server keeps (see the module docs of `callguard::tftp::server`).
//!
//! The tests run one at a time (`serial`), so that their timings do not depend on one another.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use callguard::tftp::{Counters, FailureKind, MemoryFiles, Mode, Packet, Request, ServerConfig, TftpServer, TransferOptions};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// A file of many 512-byte blocks, so that every DATA the server sends before an ACK is a full one.
const FILE: &str = "SEP001122334455.cnf.xml.sgn";
const FILE_LEN: usize = 100_000;
/// The largest DATA datagram with the default block size: opcode, block number, 512 bytes.
const FULL_DATA_LEN: usize = 4 + 512;

fn content(len: usize) -> Vec<u8> {
    let mut state: u32 = 12_345;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Harness {
    /// Runs the server; dropped (cutting what still runs) after `Drop` has signalled shutdown.
    _runtime: Runtime,
    address: SocketAddr,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
}

impl Harness {
    fn start(config: ServerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let files = Arc::new(MemoryFiles::new([(FILE.to_owned(), Arc::from(content(FILE_LEN)))].into_iter().collect()));
        let config = ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..config };
        let server = runtime.block_on(TftpServer::bind(config, files)).expect("bind 127.0.0.1:0");
        let address = server.local_addr().expect("bound address");
        let counters = server.counters();
        let (shutdown, receiver) = watch::channel(false);
        runtime.spawn(server.run(receiver));
        Self { _runtime: runtime, address, counters, shutdown }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn read_request(options: TransferOptions) -> Vec<u8> {
    Packet::ReadRequest(Request { filename: FILE.into(), mode: Mode::Octet, options }).encode()
}

fn socket_on(host: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((host, 0))).unwrap_or_else(|error| panic!("bind {host}: {error}"))
}

/// Every datagram that arrives on `socket` until `silence` passes without one: (packet, its length).
fn read_until_silent(socket: &UdpSocket, silence: Duration) -> Vec<(Packet, usize)> {
    socket.set_read_timeout(Some(silence)).expect("read timeout");
    let mut buffer = vec![0u8; 70_000];
    let mut received = Vec::new();
    while let Ok((len, _)) = socket.recv_from(&mut buffer) {
        received.push((Packet::parse(&buffer[..len]).expect("the server sends well-formed packets"), len));
    }
    received
}

// ---------------------------------------------------------------------------------------------------------
// (b) timeout=255

/// RFC 2349: the server accepts the client's timeout or leaves it out of the OACK. 255 s is declined;
/// the transfer keeps the default timeout, so a client that goes silent after ACK 0 is dropped after
/// the retries, within seconds (not the 25 minutes 255 s × 6 would hold it).
#[test]
fn a_timeout_of_255_seconds_is_declined_and_a_silent_client_is_dropped_within_seconds() {
    let _serial = serial();
    let harness = Harness::start(ServerConfig::default());
    let socket = socket_on(Ipv4Addr::LOCALHOST);
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let asked = TransferOptions { block_size: Some(1428), timeout_secs: Some(255), ..TransferOptions::default() };
    socket.send_to(&read_request(asked), harness.address).expect("RRQ");
    let mut buffer = vec![0u8; 70_000];
    let (len, transfer) = socket.recv_from(&mut buffer).expect("an answer to the RRQ");
    assert_eq!(
        Packet::parse(&buffer[..len]),
        Ok(Packet::OptionAck(TransferOptions { block_size: Some(1428), ..TransferOptions::default() })),
        "blksize granted, timeout=255 left out of the OACK"
    );
    socket.send_to(&Packet::Ack { block: 0 }.encode(), transfer).expect("ACK 0");
    let silent_since = Instant::now();

    // The client now goes silent: DATA 1 is resent at the default 1 s, then the transfer ends.
    let defaults = ServerConfig::default();
    let bound = defaults.retransmit_timeout * (defaults.max_retries + 1);
    while harness.counters.snapshot().failures_of(FailureKind::TimedOut) == 0 {
        assert!(silent_since.elapsed() < bound + Duration::from_secs(3), "the transfer still runs after {:?}", silent_since.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended = silent_since.elapsed();
    let received = read_until_silent(&socket, Duration::from_millis(1500));
    assert!(received.iter().all(|(packet, _)| matches!(packet, Packet::Data { block: 1, .. })), "{received:?}");
    assert_eq!(received.len() as u32, defaults.max_retries + 1, "DATA 1 and its retries at the default timeout");
    assert!(ended < bound + Duration::from_secs(1), "ended after {ended:?}");

    // Asked alone, the declined timeout leaves nothing to acknowledge: no OACK, DATA 1 at once (RFC 2347).
    let alone = socket_on(Ipv4Addr::LOCALHOST);
    alone.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    alone.send_to(&read_request(TransferOptions { timeout_secs: Some(255), ..TransferOptions::default() }), harness.address).expect("RRQ");
    let (len, _) = alone.recv_from(&mut buffer).expect("an answer to the RRQ");
    assert!(matches!(Packet::parse(&buffer[..len]), Ok(Packet::Data { block: 1, .. })), "{:?}", Packet::parse(&buffer[..len]));
}

// ---------------------------------------------------------------------------------------------------------
// (c) Reflection

/// At most this many datagrams answer a request whose client never acknowledges
/// (`callguard::tftp::server::MAX_UNCONFIRMED_SENDS`).
const UNCONFIRMED_SENDS: usize = 3;

/// A read request from an address that never acknowledges (a spoofed victim's) draws at most
/// three datagrams of at most 516 bytes: the first DATA, never a window and never six copies.
#[test]
fn an_unacknowledged_request_without_options_draws_at_most_three_datagrams() {
    let _serial = serial();
    // A short timeout with the default retries: the bound is on packets, not on time.
    let harness = Harness::start(ServerConfig { retransmit_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let victim = socket_on(Ipv4Addr::LOCALHOST);
    let request = read_request(TransferOptions::default());
    victim.send_to(&request, harness.address).expect("RRQ");
    let received = read_until_silent(&victim, Duration::from_secs(3));
    let bytes: usize = received.iter().map(|(_, len)| len).sum();
    assert!(received.iter().all(|(packet, _)| matches!(packet, Packet::Data { block: 1, .. })), "{received:?}");
    assert!((1..=UNCONFIRMED_SENDS).contains(&received.len()), "{} datagrams for one {}-byte request", received.len(), request.len());
    assert!(bytes <= UNCONFIRMED_SENDS * FULL_DATA_LEN, "{bytes} bytes for one {}-byte request", request.len());
    let counters = harness.counters.snapshot();
    assert!(counters.bytes_sent <= (UNCONFIRMED_SENDS * 512) as u64, "{counters:?}");
    assert_eq!(counters.failures_of(FailureKind::TimedOut), 1, "{counters:?}");
}

/// With options (a window of 8 included), the unacknowledged answer is the OACK alone, at most three
/// times: no DATA goes out before ACK 0.
#[test]
fn an_unacknowledged_request_with_options_draws_only_the_oack_at_most_three_times() {
    let _serial = serial();
    let harness = Harness::start(ServerConfig { retransmit_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let victim = socket_on(Ipv4Addr::LOCALHOST);
    let options = TransferOptions { block_size: Some(1428), window_size: Some(8), transfer_size: Some(0), ..TransferOptions::default() };
    victim.send_to(&read_request(options), harness.address).expect("RRQ");
    let received = read_until_silent(&victim, Duration::from_secs(3));
    let bytes: usize = received.iter().map(|(_, len)| len).sum();
    assert!(received.iter().all(|(packet, _)| matches!(packet, Packet::OptionAck(_))), "only OACKs before ACK 0: {received:?}");
    assert!((1..=UNCONFIRMED_SENDS).contains(&received.len()), "{} OACKs", received.len());
    assert!(bytes <= UNCONFIRMED_SENDS * FULL_DATA_LEN, "{bytes} bytes");
    assert_eq!(harness.counters.snapshot().bytes_sent, 0, "no DATA payload before ACK 0");
}

// ---------------------------------------------------------------------------------------------------------
// (e) A client that acknowledges just often enough

/// A client that acknowledges each block just before the timeout makes progress, so retries never
/// run out; at one 512-byte block per 300 ms this 100 KB file would take a minute. The transfer's
/// deadline (here 1 s plus the size at 100 KB/s: 2 s) cuts it, and the client is told so.
#[test]
fn a_client_that_acknowledges_just_before_each_timeout_is_cut_at_the_deadline() {
    let _serial = serial();
    let config = ServerConfig {
        retransmit_timeout: Duration::from_millis(400),
        transfer_deadline_base: Duration::from_secs(1),
        min_transfer_rate: 100_000,
        ..ServerConfig::default()
    };
    let harness = Harness::start(config);
    let socket = socket_on(Ipv4Addr::LOCALHOST);
    socket.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    let started = Instant::now();
    socket.send_to(&read_request(TransferOptions::default()), harness.address).expect("RRQ");
    let mut buffer = vec![0u8; 70_000];
    let mut blocks = 0;
    let ending = loop {
        let Ok((len, transfer)) = socket.recv_from(&mut buffer) else { panic!("the transfer ended without a word after {blocks} blocks") };
        match Packet::parse(&buffer[..len]).expect("well-formed") {
            Packet::Data { block, .. } => {
                blocks += 1;
                assert!(started.elapsed() < Duration::from_secs(5), "still sending after {:?} ({blocks} blocks)", started.elapsed());
                std::thread::sleep(Duration::from_millis(300));
                socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
            }
            other => break other,
        }
    };
    let elapsed = started.elapsed();
    assert!(matches!(&ending, Packet::Error { message, .. } if message.contains("deadline")), "{ending:?}");
    assert!(elapsed < Duration::from_millis(2600), "cut after {elapsed:?}");
    assert!((5..20).contains(&blocks), "{blocks} of 196 blocks before the deadline");
    let counters = harness.counters.snapshot();
    assert_eq!((counters.failures_of(FailureKind::Deadline), counters.files_served), (1, 0), "{counters:?}");
}
