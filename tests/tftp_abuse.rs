//! The TFTP server under the attacks of the security review: half-open transfers from many addresses,
//! a client asking for `timeout=255`, and read requests from a (spoofed) address that never
//! acknowledges. Each test reproduces the attack against the in-process server on loopback and checks
//! the bound the server keeps (see the module docs of `callguard::services::tftp::server`).
//!
//! The tests run one at a time (`serial`): one of them changes the process's open-file limit, and the
//! others would otherwise count against it; and their timings do not depend on one another. Each runs
//! in both transfer-port modes (`mod ephemeral` and `mod single_port` at the end): the bounds hold
//! whether transfers run on ports of their own or all on the listening port.

#[path = "support/tftp_counters.rs"]
mod tftp_counters;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use callguard::services::tftp::{
    CounterSnapshot, Counters, ErrorCode, FailureKind, MemoryFiles, Mode, Packet, Request, ServerConfig, TftpServer, TransferOptions,
    TransferPort,
};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// A file of many 512-byte blocks, so that every DATA the server sends before an ACK is a full one.
const FILE: &str = "SEP001122334455.cnf.xml.sgn";
const FILE_LEN: usize = 100_000;
/// The largest DATA datagram with the default block size: opcode, block number, 512 bytes.
const FULL_DATA_LEN: usize = 4 + 512;
/// How long a test waits for an event it expects (a counter, a datagram) before it fails: a guard
/// against a hang, far above what any event takes, never a measure of speed.
const EVENT_GUARD: Duration = Duration::from_secs(60);

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
    /// The cap the server runs with (`ServerConfig::max_transfers`, lowered to the open-file limit).
    max_transfers: usize,
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
        let max_transfers = server.max_transfers();
        let (shutdown, receiver) = watch::channel(false);
        runtime.spawn(server.run(receiver));
        Self { _runtime: runtime, address, counters, max_transfers, shutdown }
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

/// The server's counters once `done` holds of them, waited for up to `EVENT_GUARD`.
fn counters_when(harness: &Harness, what: &str, done: impl Fn(&CounterSnapshot) -> bool) -> CounterSnapshot {
    tftp_counters::counters_when(&harness.counters, EVENT_GUARD, what, done)
}

/// Exactly `count` datagrams from `socket`, each waited for (up to `EVENT_GUARD`): (packet, its
/// length, its source). The count is what the server says it sent, so nothing is read from silence.
fn receive_exactly(socket: &UdpSocket, count: usize) -> Vec<(Packet, usize, SocketAddr)> {
    socket.set_nonblocking(false).expect("blocking");
    socket.set_read_timeout(Some(EVENT_GUARD)).expect("read timeout");
    let mut buffer = vec![0u8; 70_000];
    (0..count)
        .map(|i| {
            let (len, from) = socket.recv_from(&mut buffer).unwrap_or_else(|e| panic!("datagram {} of the {count} sent: {e}", i + 1));
            (Packet::parse(&buffer[..len]).expect("the server sends well-formed packets"), len, from)
        })
        .collect()
}

/// The datagrams a transfer sent: its first packet and each one it sent again.
fn sends(counters: &CounterSnapshot) -> usize {
    usize::try_from(1 + counters.retransmissions).expect("a count")
}

/// What is waiting on `socket` now, without waiting for more.
fn drain(socket: &UdpSocket) -> Vec<Packet> {
    socket.set_nonblocking(true).expect("non-blocking");
    let mut buffer = vec![0u8; 70_000];
    let mut received = Vec::new();
    while let Ok((len, _)) = socket.recv_from(&mut buffer) {
        received.push(Packet::parse(&buffer[..len]).expect("the server sends well-formed packets"));
    }
    received
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is missing: install the Debian package {package} (apt-get install {package}); scripts/test does this");
}

/// The process's RLIMIT_NOFILE soft limit, lowered for one test and put back when dropped.
struct LoweredOpenFileLimit {
    original: libc::rlimit,
}

impl LoweredOpenFileLimit {
    fn get() -> libc::rlimit {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0, "getrlimit");
        limit
    }

    fn lower_soft_to(soft: libc::rlim_t) -> Self {
        let original = Self::get();
        let lowered = libc::rlimit { rlim_cur: soft.min(original.rlim_cur), rlim_max: original.rlim_max };
        // SAFETY: setrlimit reads one rlimit through a valid pointer; lowering the soft limit is always allowed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0, "setrlimit");
        Self { original }
    }
}

impl Drop for LoweredOpenFileLimit {
    fn drop(&mut self) {
        let current = Self::get();
        let restored = libc::rlimit { rlim_cur: self.original.rlim_cur.max(current.rlim_cur), rlim_max: current.rlim_max };
        // SAFETY: as above; the soft limit goes back up to at most the unchanged hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &restored) };
    }
}

/// A phone fetching `FILE` with tftp-hpa, retried (as phones retry) until it has the file or `within`
/// has passed. Returns each attempt's output.
fn phone_fetch(harness: &Harness, out: &Path, within: Duration) -> Vec<String> {
    require("tftp", "tftp-hpa");
    let started = Instant::now();
    let mut attempts: Vec<String> = Vec::new();
    loop {
        let output = Command::new("tftp")
            .args(["-m", "binary", "127.0.0.1", &harness.address.port().to_string(), "-c", "get", FILE])
            .arg(out)
            .output()
            .unwrap_or_else(|error| panic!("cannot run tftp ({error}): the server's transfers hold the process's descriptors"));
        attempts.push(text(&output));
        if std::fs::read(out).is_ok_and(|bytes| bytes == content(FILE_LEN)) {
            return attempts;
        }
        assert!(started.elapsed() < within, "the phone never got its file: {attempts:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------------------
// (a) Half-open transfers from many addresses

/// The review's flood: 40 loopback addresses (127.0.0.2 to 127.0.0.41) send 8 read requests each and
/// never acknowledge; half of them ask for `timeout=255`. A phone (tftp-hpa on 127.0.0.1) must then
/// still get its file, and no one may be told "no transfer socket available".
///
/// The 320 flood sockets live in this process and count against its open-file limit, as the server's
/// transfer sockets do; the test starts from a soft limit of 512, where the unhardened server ran out of
/// descriptors half-way through the flood (as the review's run did at its own limit). The server must
/// raise the soft limit at start and keep its transfer cap below it.
fn a_flood_of_half_open_requests_from_40_addresses_does_not_lock_out_a_phone(mode: TransferPort) {
    let _serial = serial();
    require("tftp", "tftp-hpa");
    let limit = LoweredOpenFileLimit::lower_soft_to(512);
    let harness = Harness::start(ServerConfig { transfer_port: mode, ..ServerConfig::default() });
    let soft = LoweredOpenFileLimit::get().rlim_cur;
    assert!(harness.max_transfers > 320, "the cap ({}) holds the 320 flood transfers and the phone's", harness.max_transfers);
    match mode {
        TransferPort::Ephemeral => {
            assert!(
                soft >= harness.max_transfers as libc::rlim_t + 128,
                "soft open-file limit {soft} for a cap of {}",
                harness.max_transfers
            )
        }
        // Transfers hold no descriptor: the cap stays whole, whatever the limit.
        TransferPort::Listening => assert_eq!(harness.max_transfers, ServerConfig::default().max_transfers),
    }

    let flood: Vec<UdpSocket> = (2..=41u8).flat_map(|host| (0..8).map(move |_| socket_on(Ipv4Addr::new(127, 0, 0, host)))).collect();
    for (i, socket) in flood.iter().enumerate() {
        let options =
            if i % 2 == 0 { TransferOptions::default() } else { TransferOptions { timeout_secs: Some(255), ..TransferOptions::default() } };
        socket.send_to(&read_request(options), harness.address).expect("flood RRQ");
        // Paced so that the request socket's receive buffer does not drop the flood on a loaded machine.
        std::thread::sleep(Duration::from_millis(1));
    }
    counters_when(&harness, "the server to take the 320 flood requests", |c| c.requests == flood.len() as u64);
    // Every flood request is answered: a first packet (or a refusal) reaches each socket.
    let mut replies: Vec<Vec<Packet>> =
        flood.iter().map(|socket| receive_exactly(socket, 1).into_iter().map(|(packet, _, _)| packet).collect()).collect();
    let out_of_sockets = |replies: &[Vec<Packet>]| {
        replies
            .iter()
            .flatten()
            .filter(|packet| matches!(packet, Packet::Error { message, .. } if message.contains("no transfer socket")))
            .count()
    };
    assert_eq!(out_of_sockets(&replies), 0, "flood requests answered \"no transfer socket available\"");

    // The phone: tftp-hpa, retried as a phone retries, within a bounded time.
    let dir = tempfile::tempdir().expect("tempdir");
    let attempts = phone_fetch(&harness, &dir.path().join(FILE), EVENT_GUARD);
    assert!(attempts.iter().all(|attempt| !attempt.contains("Error code")), "the phone is never refused: {attempts:#?}");

    for (socket, earlier) in flood.iter().zip(replies.iter_mut()) {
        earlier.extend(drain(socket));
    }
    assert_eq!(out_of_sockets(&replies), 0, "flood requests answered \"no transfer socket available\"");
    // The server counts the file served at the phone's last ACK, which tftp sends as it exits.
    let counters = counters_when(&harness, "the phone's last ACK", |c| c.files_served >= 1);
    let refused = [FailureKind::Io, FailureKind::ServerLimit, FailureKind::ClientLimit].map(|kind| counters.failures_of(kind));
    assert_eq!(refused, [0, 0, 0], "no request refused, the phone's included: {counters:?}");
    assert_eq!(counters.files_served, 1, "the phone's file, served whole once: {counters:?}");
    drop(harness);
    drop(limit);
}

// ---------------------------------------------------------------------------------------------------------
// (d) The global cap

/// With a cap of 4, four half-open transfers from four addresses (each under its per-client limit)
/// fill the server: the next request, from a fifth address, is refused at once with ERROR 0 from the
/// request port and counted. The slots come back when the half-open transfers end (three sends), and a
/// phone then gets its file.
fn past_the_global_cap_a_request_gets_an_error_and_is_counted(mode: TransferPort) {
    let _serial = serial();
    let harness = Harness::start(ServerConfig {
        transfer_port: mode,
        max_transfers: 4,
        retransmit_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    assert_eq!(harness.max_transfers, 4);
    let holders: Vec<UdpSocket> = (2..=5u8).map(|host| socket_on(Ipv4Addr::new(127, 0, 0, host))).collect();
    let mut buffer = vec![0u8; 70_000];
    for holder in &holders {
        holder.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        holder.send_to(&read_request(TransferOptions::default()), harness.address).expect("RRQ");
        let (len, _) = holder.recv_from(&mut buffer).expect("DATA 1");
        assert!(matches!(Packet::parse(&buffer[..len]), Ok(Packet::Data { block: 1, .. })), "{:?}", Packet::parse(&buffer[..len]));
    }
    let next = socket_on(Ipv4Addr::new(127, 0, 0, 6));
    next.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    next.send_to(&read_request(TransferOptions::default()), harness.address).expect("RRQ");
    let (len, from) = next.recv_from(&mut buffer).expect("an answer to the fifth request");
    let refusal = Packet::parse(&buffer[..len]).expect("well-formed");
    assert!(matches!(&refusal, Packet::Error { code: ErrorCode::NotDefined, message } if message.contains("busy")), "{refusal:?}");
    assert_eq!(from, harness.address, "refused from the request port, before any transfer socket");
    let counters = harness.counters.snapshot();
    assert_eq!((counters.failures_of(FailureKind::ServerLimit), counters.failures_of(FailureKind::ClientLimit)), (1, 0), "{counters:?}");

    // The four half-open transfers end after their three sends, and give their slots back: a phone
    // then gets its file at its first attempt.
    counters_when(&harness, "the four half-open transfers to end", |c| c.failures_of(FailureKind::TimedOut) == 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let attempts = phone_fetch(&harness, &dir.path().join(FILE), EVENT_GUARD);
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let counters = counters_when(&harness, "the phone's last ACK", |c| c.files_served >= 1);
    assert_eq!((counters.files_served, counters.failures_of(FailureKind::ServerLimit)), (1, 1), "{counters:?}");
}

// ---------------------------------------------------------------------------------------------------------
// (b) timeout=255

/// RFC 2349: the server accepts the client's timeout or leaves it out of the OACK. 255 s is declined;
/// the transfer keeps the default timeout, so a client that goes silent after ACK 0 is dropped after
/// the retries, within seconds (not the 25 minutes 255 s × 6 would hold it).
fn a_timeout_of_255_seconds_is_declined_and_a_silent_client_is_dropped_within_seconds(mode: TransferPort) {
    let _serial = serial();
    let harness = Harness::start(ServerConfig { transfer_port: mode, ..ServerConfig::default() });
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

    // The client now goes silent: DATA 1 is resent at the default 1 s, then the transfer ends: within
    // the guard of a minute, where a single wait of the 255 s asked would not fit.
    let defaults = ServerConfig::default();
    let counters = counters_when(&harness, "the silent client's transfer to end", |c| c.failures_of(FailureKind::TimedOut) == 1);
    let ended = silent_since.elapsed();
    // DATA 1 carries 1428 bytes: the payload count is the count of DATA sends, DATA 1 and its retries.
    let data_sends = u64::from(defaults.max_retries + 1);
    assert_eq!(counters.bytes_sent, data_sends * 1428, "DATA 1 sent max_retries + 1 times: {counters:?}");
    // What the server sent after the OACK already read: DATA 1 and every packet sent again (an OACK
    // resent on a slow machine included).
    let received = receive_exactly(&socket, sends(&counters));
    assert!(drain(&socket).is_empty(), "nothing beyond what the server counted");
    let data = received.iter().filter(|(packet, _, _)| matches!(packet, Packet::Data { block: 1, .. })).count();
    assert_eq!(data as u64, data_sends, "{received:?}");
    assert!(received.iter().all(|(packet, _, _)| matches!(packet, Packet::Data { block: 1, .. } | Packet::OptionAck(_))), "{received:?}");
    // Six waits of the default timeout, not fewer or shorter (timers do not fire early).
    assert!(ended >= defaults.retransmit_timeout * (defaults.max_retries + 1), "ended after {ended:?}");

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
/// (`callguard::services::tftp::server::MAX_UNCONFIRMED_SENDS`).
const UNCONFIRMED_SENDS: usize = 3;

/// A read request from an address that never acknowledges (a spoofed victim's) draws at most
/// three datagrams of at most 516 bytes: the first DATA, never a window and never six copies.
fn an_unacknowledged_request_without_options_draws_at_most_three_datagrams(mode: TransferPort) {
    let _serial = serial();
    // A short timeout with the default retries: the bound is on packets, not on time.
    let harness =
        Harness::start(ServerConfig { transfer_port: mode, retransmit_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let victim = socket_on(Ipv4Addr::LOCALHOST);
    let request = read_request(TransferOptions::default());
    victim.send_to(&request, harness.address).expect("RRQ");
    // The transfer's end is the server's word that nothing more goes out; what it sent is counted.
    let counters = counters_when(&harness, "the unacknowledged transfer to end", |c| c.failures_of(FailureKind::TimedOut) == 1);
    assert_eq!(sends(&counters), UNCONFIRMED_SENDS, "the first packet, at most three times, however many retries: {counters:?}");
    assert_eq!(counters.bytes_sent, (UNCONFIRMED_SENDS * 512) as u64, "DATA 1 alone, never a window: {counters:?}");
    let received = receive_exactly(&victim, sends(&counters));
    assert!(drain(&victim).is_empty(), "nothing beyond what the server counted");
    let bytes: usize = received.iter().map(|(_, len, _)| len).sum();
    assert!(received.iter().all(|(packet, _, _)| matches!(packet, Packet::Data { block: 1, .. })), "{received:?}");
    assert!(bytes <= UNCONFIRMED_SENDS * FULL_DATA_LEN, "{bytes} bytes for one {}-byte request", request.len());
}

/// With options (a window of 8 included), the unacknowledged answer is the OACK alone, at most three
/// times: no DATA goes out before ACK 0.
fn an_unacknowledged_request_with_options_draws_only_the_oack_at_most_three_times(mode: TransferPort) {
    let _serial = serial();
    let harness =
        Harness::start(ServerConfig { transfer_port: mode, retransmit_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let victim = socket_on(Ipv4Addr::LOCALHOST);
    let options = TransferOptions { block_size: Some(1428), window_size: Some(8), transfer_size: Some(0), ..TransferOptions::default() };
    victim.send_to(&read_request(options), harness.address).expect("RRQ");
    let counters = counters_when(&harness, "the unacknowledged transfer to end", |c| c.failures_of(FailureKind::TimedOut) == 1);
    assert_eq!(sends(&counters), UNCONFIRMED_SENDS, "{counters:?}");
    assert_eq!(counters.bytes_sent, 0, "no DATA payload before ACK 0");
    let received = receive_exactly(&victim, sends(&counters));
    assert!(drain(&victim).is_empty(), "nothing beyond what the server counted");
    let bytes: usize = received.iter().map(|(_, len, _)| len).sum();
    assert!(received.iter().all(|(packet, _, _)| matches!(packet, Packet::OptionAck(_))), "only OACKs before ACK 0: {received:?}");
    assert!(bytes <= UNCONFIRMED_SENDS * FULL_DATA_LEN, "{bytes} bytes");
}

/// The same forged request, five times from one address (a victim's port, which in single-port mode
/// names one transfer: each request supersedes the last and starts its count again): still at most
/// three datagrams per request, and none of them more than a first packet.
fn a_request_repeated_from_one_address_draws_at_most_three_datagrams_each(mode: TransferPort) {
    const REQUESTS: usize = 5;
    let _serial = serial();
    let harness =
        Harness::start(ServerConfig { transfer_port: mode, retransmit_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let victim = socket_on(Ipv4Addr::LOCALHOST);
    for _ in 0..REQUESTS {
        victim.send_to(&read_request(TransferOptions::default()), harness.address).expect("RRQ");
    }
    let ended = |c: &CounterSnapshot| c.failures_of(FailureKind::TimedOut) + c.failures_of(FailureKind::Superseded);
    let counters = counters_when(&harness, "every transfer to end", |c| ended(c) == REQUESTS as u64);
    match mode {
        TransferPort::Ephemeral => assert_eq!(counters.failures_of(FailureKind::TimedOut), REQUESTS as u64, "{counters:?}"),
        TransferPort::Listening => {
            // One transfer at a time: each request ended the one before, and the last timed out.
            let ended = (counters.failures_of(FailureKind::Superseded), counters.failures_of(FailureKind::TimedOut));
            assert_eq!(ended, (REQUESTS as u64 - 1, 1), "{counters:?}");
        }
    }
    // Every datagram is a 512-byte DATA 1: the server's payload count is its count of datagrams.
    assert_eq!(counters.bytes_sent % 512, 0, "{counters:?}");
    let sent = usize::try_from(counters.bytes_sent / 512).unwrap();
    assert!((1..=UNCONFIRMED_SENDS * REQUESTS).contains(&sent), "{sent} datagrams for {REQUESTS} requests: {counters:?}");
    let received = receive_exactly(&victim, sent);
    assert!(drain(&victim).is_empty(), "nothing beyond what the server counted");
    assert!(received.iter().all(|(packet, _, _)| matches!(packet, Packet::Data { block: 1, .. })), "{received:?}");
    if mode == TransferPort::Ephemeral {
        // Each transfer from a port of its own: at most three datagrams from each, and each request answered.
        let mut per_transfer: std::collections::BTreeMap<SocketAddr, usize> = std::collections::BTreeMap::new();
        for (_, _, from) in &received {
            *per_transfer.entry(*from).or_default() += 1;
        }
        assert_eq!(per_transfer.len(), REQUESTS, "{per_transfer:?}");
        assert!(per_transfer.values().all(|sent| *sent == UNCONFIRMED_SENDS), "{per_transfer:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// (e) A client that acknowledges just often enough

/// A client that acknowledges each block well within the timeout, but slowly, makes progress, so
/// retries never run out; at one 512-byte block per 300 ms this 100 KB file would take a minute. The
/// transfer's deadline (here 1 s plus the size at 100 KB/s: 2 s) cuts it, and the client is told so.
/// The 5 s timeout leaves the client's 300 ms far from a retransmission, however loaded the machine.
fn a_client_that_acknowledges_just_before_each_timeout_is_cut_at_the_deadline(mode: TransferPort) {
    let _serial = serial();
    let config = ServerConfig {
        transfer_port: mode,
        retransmit_timeout: Duration::from_secs(5),
        transfer_deadline_base: Duration::from_secs(1),
        min_transfer_rate: 100_000,
        ..ServerConfig::default()
    };
    let deadline = Duration::from_secs(2);
    let total_blocks = FILE_LEN / 512 + 1;
    let harness = Harness::start(config);
    let socket = socket_on(Ipv4Addr::LOCALHOST);
    socket.set_read_timeout(Some(EVENT_GUARD)).expect("read timeout");
    let started = Instant::now();
    socket.send_to(&read_request(TransferOptions::default()), harness.address).expect("RRQ");
    let mut buffer = vec![0u8; 70_000];
    let mut blocks = 0;
    let ending = loop {
        let Ok((len, transfer)) = socket.recv_from(&mut buffer) else { panic!("the transfer ended without a word after {blocks} blocks") };
        match Packet::parse(&buffer[..len]).expect("well-formed") {
            Packet::Data { block, .. } => {
                blocks += 1;
                assert!(blocks < total_blocks, "the whole file went out: no deadline cut it");
                std::thread::sleep(Duration::from_millis(300));
                socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
            }
            other => break other,
        }
    };
    let elapsed = started.elapsed();
    assert!(matches!(&ending, Packet::Error { message, .. } if message.contains("deadline")), "{ending:?}");
    assert!(elapsed >= deadline, "cut after {elapsed:?}, before the deadline");
    let counters = harness.counters.snapshot();
    assert_eq!((counters.failures_of(FailureKind::Deadline), counters.files_served), (1, 0), "{counters:?}");
    assert_eq!((counters.retransmissions, counters.failures_of(FailureKind::TimedOut)), (0, 0), "progress, never a timeout: {counters:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Each test above, in both transfer-port modes

macro_rules! in_mode {
    ($mode:ident: $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test(callguard::services::tftp::TransferPort::$mode);
            }
        )*
    };
}

macro_rules! tests {
    ($($test:ident),* $(,)?) => {
        mod ephemeral {
            in_mode!(Ephemeral: $($test),*);
        }
        mod single_port {
            in_mode!(Listening: $($test),*);
        }
    };
}

tests!(
    a_flood_of_half_open_requests_from_40_addresses_does_not_lock_out_a_phone,
    past_the_global_cap_a_request_gets_an_error_and_is_counted,
    a_timeout_of_255_seconds_is_declined_and_a_silent_client_is_dropped_within_seconds,
    an_unacknowledged_request_without_options_draws_at_most_three_datagrams,
    an_unacknowledged_request_with_options_draws_only_the_oack_at_most_three_times,
    a_request_repeated_from_one_address_draws_at_most_three_datagrams_each,
    a_client_that_acknowledges_just_before_each_timeout_is_cut_at_the_deadline,
);
