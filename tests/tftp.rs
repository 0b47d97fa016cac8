//! The TFTP service against the real clients tftp-hpa (`tftp`) and atftp, plus a hand-written UDP client
//! for what the clients do not show (the OACK's values, the port each packet comes from, hostile
//! datagrams, dropped packets). The server runs in-process on 127.0.0.1, port 0. Tests fail (do not
//! skip) when a client is missing.
//!
//! Most tests run in both transfer-port modes (`mod ephemeral` and `mod single_port` at the end): a
//! port per transfer (RFC 1350 §4) and single-port mode, where every packet comes from the listening
//! port and replies are told apart by the client's address and port.

#[path = "support/tftp_counters.rs"]
mod tftp_counters;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use callguard::services::tftp::packet::to_netascii;
use callguard::services::tftp::{
    CounterSnapshot, Counters, ErrorCode, FailureKind, MemoryFiles, Mode, Packet, Request, ServerConfig, TftpServer, TransferOptions,
    TransferPort,
};
use tokio::runtime::Runtime;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------------------
// Harness

/// The sizes the brief asks for: empty, one byte, around one 512-byte block, and many blocks.
const SIZES: [usize; 7] = [0, 1, 511, 512, 513, 100_000, 1_000_000];

/// Bytes that are not a repeating block and include CR and LF, so netascii and block order both matter.
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

fn sized_name(len: usize) -> String {
    format!("file-{len}.bin")
}

fn standard_files() -> BTreeMap<String, Arc<[u8]>> {
    let mut files: BTreeMap<String, Arc<[u8]>> = SIZES.iter().map(|&len| (sized_name(len), Arc::from(content(len, 1)))).collect();
    files.insert("SEP001122334455.cnf.xml".into(), Arc::from(&b"<device>\n<loadInformation>x</loadInformation>\r\n</device>\n"[..]));
    files
}

struct Harness {
    runtime: Runtime,
    address: SocketAddr,
    mode: TransferPort,
    counters: Arc<Counters>,
    files: Arc<MemoryFiles>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    fn start(config: ServerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let files = Arc::new(MemoryFiles::new(standard_files()));
        let config = ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..config };
        let mode = config.transfer_port;
        let server = runtime.block_on(TftpServer::bind(config, files.clone())).expect("bind 127.0.0.1:0");
        let address = server.local_addr().expect("bound address");
        assert_ne!(address.port(), 0, "the bound port is read back");
        let counters = server.counters();
        let (shutdown, receiver) = watch::channel(false);
        let task = Some(runtime.spawn(server.run(receiver)));
        Self { runtime, address, mode, counters, files, shutdown, task }
    }

    fn in_mode(mode: TransferPort) -> Self {
        Self::start(ServerConfig { transfer_port: mode, ..ServerConfig::default() })
    }

    fn port(&self) -> String {
        self.address.port().to_string()
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            self.runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
                .expect("server stops")
                .expect("joins");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Fails (does not skip) when a client is missing.
fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is missing: install the Debian package {package} (apt-get install {package}); scripts/test does this");
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn tftp_hpa_get(harness: &Harness, mode: &str, name: &str, out: &Path) -> Output {
    require("tftp", "tftp-hpa");
    run(Command::new("tftp").args(["-m", mode, "127.0.0.1", &harness.port(), "-c", "get", name]).arg(out))
}

fn atftp_get(harness: &Harness, options: &[&str], name: &str, out: &Path) -> Output {
    require("atftp", "atftp");
    let mut command = Command::new("atftp");
    // --trace prints every packet, so tests can see what was negotiated.
    command.arg("--trace");
    for option in options {
        command.args(["--option", option]);
    }
    run(command.args(["-g", "-r", name, "-l"]).arg(out).args(["127.0.0.1", &harness.port()]))
}

// ---------------------------------------------------------------------------------------------------------
// A hand-written client, to see what real clients hide

const REPLY_WAIT: Duration = Duration::from_secs(5);

fn client_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    socket.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    socket
}

fn receive(socket: &UdpSocket) -> Option<(Packet, SocketAddr)> {
    let mut buffer = vec![0u8; 70_000];
    let (len, from) = socket.recv_from(&mut buffer).ok()?;
    Some((Packet::parse(&buffer[..len]).expect("the server sends well-formed packets"), from))
}

fn read_request(name: &str, options: TransferOptions) -> Vec<u8> {
    Packet::ReadRequest(Request { filename: name.into(), mode: Mode::Octet, options }).encode()
}

/// What the hand-written client saw.
#[derive(Debug, Default)]
struct Fetched {
    option_ack: Option<TransferOptions>,
    bytes: Vec<u8>,
    data_sizes: Vec<usize>,
    /// The DATA and OACK packets received, duplicates and dropped ones included.
    packets: usize,
    /// The ports they came from.
    sources: BTreeSet<SocketAddr>,
}

/// A windowed RFC 7440 receiver: ACKs each full window and the last block. `drop_first_data` ignores the
/// first DATA packet, as if the network lost it. Every DATA and OACK must come from the transfer's one
/// port: a port of its own (not the request port) or, in single-port mode, the request port.
fn fetch(
    harness: &Harness,
    request: &[u8],
    window: usize,
    block_size: usize,
    drop_first_data: bool,
) -> Result<Fetched, (ErrorCode, String)> {
    let server = harness.address;
    let socket = client_socket();
    socket.send_to(request, server).expect("send RRQ");
    let mut fetched = Fetched::default();
    let mut expected: u16 = 1;
    let mut in_window = 0;
    let mut dropped = !drop_first_data;
    let mut transfer_id: Option<SocketAddr> = None;
    loop {
        let (packet, from) = receive(&socket).expect("the server answers within 5 s");
        if let Packet::Error { code, message } = packet {
            // Refusals come from the request port; errors during a transfer from its socket.
            return Err((code, message));
        }
        match harness.mode {
            TransferPort::Ephemeral => assert_ne!(from, server, "transfers run on their own socket, not the request port (RFC 1350 §4)"),
            TransferPort::Listening => assert_eq!(from, server, "in single-port mode every packet comes from the listening port"),
        }
        assert!(transfer_id.is_none_or(|tid| tid == from), "one transfer, one server TID");
        transfer_id = Some(from);
        fetched.packets += 1;
        fetched.sources.insert(from);
        match packet {
            Packet::OptionAck(options) => {
                fetched.option_ack = Some(options);
                socket.send_to(&Packet::Ack { block: 0 }.encode(), from).expect("ACK 0");
            }
            Packet::Data { block, payload } => {
                if !dropped {
                    dropped = true;
                    continue;
                }
                if block != expected {
                    // RFC 7440: acknowledge the last block received in order, the sender restarts from there.
                    socket.send_to(&Packet::Ack { block: expected.wrapping_sub(1) }.encode(), from).expect("ACK");
                    in_window = 0;
                    continue;
                }
                let last = payload.len() < block_size;
                fetched.data_sizes.push(payload.len());
                fetched.bytes.extend_from_slice(&payload);
                in_window += 1;
                if last || in_window == window {
                    socket.send_to(&Packet::Ack { block }.encode(), from).expect("ACK");
                    in_window = 0;
                }
                if last {
                    return Ok(fetched);
                }
                expected = expected.wrapping_add(1);
            }
            other => panic!("unexpected packet from the server: {other:?}"),
        }
    }
}

fn fetch_plain(harness: &Harness, name: &str) -> Result<Fetched, (ErrorCode, String)> {
    fetch(harness, &read_request(name, TransferOptions::default()), 1, 512, false)
}

/// The reply to one datagram from a fresh socket, if any arrives within `wait`.
fn reply_to(server: SocketAddr, datagram: &[u8], wait: Duration) -> Option<Packet> {
    let socket = client_socket();
    socket.set_read_timeout(Some(wait)).expect("read timeout");
    socket.send_to(datagram, server).expect("send");
    receive(&socket).map(|(packet, _)| packet)
}

/// `datagram` gets no answer, shown without waiting for a silence: the server takes one socket's
/// datagrams in order, so after `datagram` the same socket sends a probe of an unknown opcode, and
/// the first answer must be the probe's ERROR 4 ("malformed packet"), which `datagram`'s own answer
/// (if it had one) would have come before.
fn assert_unanswered(server: SocketAddr, datagram: &[u8], what: &str) {
    let socket = client_socket();
    socket.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    socket.send_to(datagram, server).expect("send");
    socket.send_to(b"\x00\x63probe", server).expect("send the probe");
    let first = receive(&socket).map(|(packet, _)| packet);
    assert!(
        matches!(&first, Some(Packet::Error { code: ErrorCode::IllegalOperation, message }) if message.starts_with("malformed packet")),
        "{what}: the first answer must be the probe's: {first:?}"
    );
}

fn assert_still_serves(harness: &Harness, after: &str) {
    let fetched = fetch_plain(harness, &sized_name(513)).unwrap_or_else(|error| panic!("after {after}: {error:?}"));
    assert_eq!(fetched.bytes, content(513, 1), "after {after}");
}

// ---------------------------------------------------------------------------------------------------------
// Real clients

/// The server's counters once it has counted `files` files served, waited for up to [`REPLY_WAIT`].
fn once_served(harness: &Harness, files: u64) -> CounterSnapshot {
    tftp_counters::counters_when(&harness.counters, REPLY_WAIT, &format!("{files} files served"), |c| c.files_served >= files)
}

fn tftp_hpa_fetches_every_size_byte_for_byte(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    for len in SIZES {
        let out = dir.path().join(format!("hpa-{len}"));
        let output = tftp_hpa_get(&harness, "binary", &sized_name(len), &out);
        let received = std::fs::read(&out).unwrap_or_else(|error| panic!("size {len}: no output file ({error}): {}", text(&output)));
        assert!(received == content(len, 1), "size {len}: got {} bytes, want {len}: {}", received.len(), text(&output));
    }
    // The server counts a file served at its last ACK, which tftp sends as it exits.
    let served = once_served(&harness, SIZES.len() as u64);
    assert_eq!(served.files_served, SIZES.len() as u64);
    let expected_bytes: usize = SIZES.iter().sum();
    assert!(served.bytes_sent >= expected_bytes as u64);
}

fn atftp_fetches_every_size_byte_for_byte(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    for len in SIZES {
        let out = dir.path().join(format!("atftp-{len}"));
        let output = atftp_get(&harness, &[], &sized_name(len), &out);
        assert!(output.status.success(), "size {len}: {}", text(&output));
        let received = std::fs::read(&out).expect("output file");
        assert!(received == content(len, 1), "size {len}: got {} bytes, want {len}", received.len());
    }
}

fn netascii_is_sent_with_cr_lf_and_cr_nul_and_decoded_back_by_tftp_hpa(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let original = b"line one\nbare\rcr\r\nend\n".to_vec();
    harness.files.insert("text.txt", original.clone());
    // On the wire (RFC 1350 §1): LF -> CR LF, CR -> CR NUL.
    let request = Packet::ReadRequest(Request { filename: "text.txt".into(), mode: Mode::Netascii, options: TransferOptions::default() });
    let wire = fetch(&harness, &request.encode(), 1, 512, false).expect("netascii fetch");
    assert_eq!(wire.bytes, b"line one\r\nbare\r\0cr\r\0\r\nend\r\n".to_vec());
    assert_eq!(wire.bytes, to_netascii(&original));
    // tftp-hpa decodes netascii back to the local convention (LF), restoring the original.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("text.txt");
    let output = tftp_hpa_get(&harness, "netascii", "text.txt", &out);
    assert_eq!(std::fs::read(&out).expect("output file"), original, "{}", text(&output));
}

fn blksize_1428_and_windowsize_8_are_granted_in_the_oack_and_honoured(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let name = sized_name(100_000);
    let requested = TransferOptions { block_size: Some(1428), timeout_secs: Some(2), transfer_size: Some(0), window_size: Some(8) };
    let fetched = fetch(&harness, &read_request(&name, requested), 8, 1428, false).expect("fetch with options");
    // RFC 2348/2349/7440: the server grants what it accepts and reports the real size for tsize 0.
    assert_eq!(
        fetched.option_ack,
        Some(TransferOptions { block_size: Some(1428), timeout_secs: Some(2), transfer_size: Some(100_000), window_size: Some(8) })
    );
    assert_eq!(fetched.bytes, content(100_000, 1));
    // 100 000 = 70 × 1428 + 40: seventy full blocks, then the short one.
    assert_eq!(fetched.data_sizes.len(), 71);
    assert!(fetched.data_sizes[..70].iter().all(|size| *size == 1428));
    assert_eq!(fetched.data_sizes[70], 40);

    // atftp with the same options receives the same bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    for len in [0, 1428 * 8, 100_000, 1_000_000] {
        let out = dir.path().join(format!("opt-{len}"));
        let name = if len == 1428 * 8 { "exact-window".to_owned() } else { sized_name(len) };
        harness.files.insert("exact-window", content(1428 * 8, 3));
        let output = atftp_get(&harness, &["blksize 1428", "windowsize 8", "tsize 0"], &name, &out);
        let trace = text(&output);
        let oack = trace.lines().find(|line| line.starts_with("received OACK")).unwrap_or_else(|| panic!("no OACK seen by atftp: {trace}"));
        assert!(oack.contains("windowsize: 8") && oack.contains("blksize: 1428"), "{oack}");
        assert!(oack.contains(&format!("tsize: {len}")), "{oack}");
        assert!(output.status.success(), "size {len}: {}", text(&output));
        let want = if len == 1428 * 8 { content(len, 3) } else { content(len, 1) };
        assert!(std::fs::read(&out).expect("output file") == want, "size {len} with options");
        if len == 1428 * 8 {
            // One window of eight blocks, acknowledged once, then the empty final block.
            assert!(trace.contains("sent ACK <block: 8>") && !trace.contains("sent ACK <block: 4>"), "{trace}");
        }
    }
}

fn an_exact_multiple_of_the_block_size_ends_with_an_empty_block(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let fetched = fetch_plain(&harness, &sized_name(512)).expect("fetch");
    assert_eq!(fetched.data_sizes, vec![512, 0]);
    let fetched = fetch_plain(&harness, &sized_name(0)).expect("fetch");
    assert_eq!(fetched.data_sizes, vec![0]);
}

// ---------------------------------------------------------------------------------------------------------
// Errors

fn unknown_file_is_error_1_for_every_client(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let answer = fetch_plain(&harness, "SEPFFFFFFFFFFFF.cnf.xml.enc.sgn").map(|fetched| fetched.bytes);
    assert_eq!(answer, Err((ErrorCode::FileNotFound, "file not found".to_owned())), "ERROR 1, File not found (RFC 1350 §5)");

    let dir = tempfile::tempdir().expect("tempdir");
    let output = tftp_hpa_get(&harness, "binary", "missing.bin", &dir.path().join("a"));
    assert!(text(&output).contains("Error code 1: file not found"), "tftp-hpa output: {}", text(&output));
    // atftp prints the server's message, not the code; the server's counter below tells that this
    // third refusal was a File not found too.
    let output = atftp_get(&harness, &[], "missing.bin", &dir.path().join("b"));
    assert!(!output.status.success());
    assert!(text(&output).contains("error received from server <file not found>"), "atftp output: {}", text(&output));
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::FileNotFound), 3);
}

fn write_requests_are_error_2(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let wrq = Packet::WriteRequest(Request { filename: "upload.bin".into(), mode: Mode::Octet, options: TransferOptions::default() });
    let Some(Packet::Error { code, .. }) = reply_to(harness.address, &wrq.encode(), REPLY_WAIT) else { panic!("WRQ must be refused") };
    assert_eq!(code, ErrorCode::AccessViolation);

    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("upload.bin");
    std::fs::write(&local, b"payload").expect("write local file");
    let output = run(Command::new("tftp").args(["-m", "binary", "127.0.0.1", &harness.port(), "-c", "put"]).arg(&local).arg("upload.bin"));
    assert!(text(&output).contains("Error code 2"), "tftp-hpa output: {}", text(&output));
    assert!(!harness.files.snapshot().contains_key("upload.bin"), "nothing was stored");
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::WriteRefused), 2);
}

fn hostile_datagrams_are_refused_and_the_server_keeps_serving(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    // Traversal and odd names: ERROR 2 (access violation), never a file.
    for name in ["../etc/passwd", "/etc/passwd", "a/../../b", "..", "dir\\..\\x", &"n".repeat(256)] {
        let reply = reply_to(harness.address, &read_request(name, TransferOptions::default()), REPLY_WAIT);
        assert!(matches!(reply, Some(Packet::Error { code: ErrorCode::AccessViolation, .. })), "name {name:?} got {reply:?}");
        assert_still_serves(&harness, name);
    }
    // Malformed datagrams: ERROR 4 or silence, never a crash.
    let mut enormous_options = b"\x00\x01file-1.bin\x00octet\x00".to_vec();
    while enormous_options.len() < 60_000 {
        enormous_options.extend_from_slice(b"x-unknown-option\x00value\x00");
    }
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", vec![]),
        ("one byte", vec![0]),
        ("truncated RRQ", b"\x00\x01file-1.b".to_vec()),
        ("RRQ without any NUL", b"\x00\x01file-1.binoctet".to_vec()),
        ("RRQ without mode terminator", b"\x00\x01file-1.bin\x00octet".to_vec()),
        ("name with NUL inside", b"\x00\x01file\x00-1.bin\x00octet\x00".to_vec()),
        ("unknown mode", b"\x00\x01file-1.bin\x00mail\x00".to_vec()),
        ("unknown opcode", b"\x00\x63garbage".to_vec()),
        ("stray DATA", b"\x00\x03\x00\x01data".to_vec()),
        ("stray ACK", b"\x00\x04\x00\x01".to_vec()),
        ("garbage", content(1000, 9)),
        ("invalid UTF-8 name", b"\x00\x01\xff\xfe\x00octet\x00".to_vec()),
    ];
    for (what, datagram) in &hostile {
        // In single-port mode an ACK on the listening port from an address that runs no transfer is
        // dropped (see the stranger test); everything else is answered ERROR 4.
        if mode == TransferPort::Listening && *what == "stray ACK" {
            assert_unanswered(harness.address, datagram, what);
        } else {
            let reply = reply_to(harness.address, datagram, REPLY_WAIT);
            assert!(matches!(reply, Some(Packet::Error { code: ErrorCode::IllegalOperation, .. })), "{what}: got {reply:?}");
        }
        assert_still_serves(&harness, what);
    }
    // A peer's ERROR is never answered, so two servers cannot ping-pong.
    assert_unanswered(harness.address, b"\x00\x05\x00\x00oops\x00", "a peer's ERROR");
    // Unknown options are ignored (RFC 2347), however many: the file is served without an OACK.
    let fetched = fetch(&harness, &enormous_options, 1, 512, false).expect("enormous option list");
    assert_eq!((fetched.option_ack, fetched.bytes), (None, content(1, 1)));
    assert_still_serves(&harness, "the enormous option list");

    let counters = harness.counters.snapshot();
    assert_eq!(counters.failures_of(FailureKind::AccessViolation), 6);
    assert!(counters.failures_of(FailureKind::Malformed) >= 10, "{counters:?}");
}

/// A stranger's ACK to the port a transfer comes from: in ephemeral mode that is the transfer's own
/// socket, which answers ERROR 5 (RFC 1350 §4); in single-port mode the listening port, where an ACK
/// from an address that runs no transfer gets no answer at all. Either way the transfer goes on.
fn datagrams_from_a_stranger_do_not_disturb_a_transfer(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let client = client_socket();
    client.send_to(&read_request(&sized_name(513), TransferOptions::default()), harness.address).expect("RRQ");
    let (Packet::Data { block: 1, .. }, transfer) = receive(&client).expect("DATA 1") else { panic!("DATA 1 expected") };
    let stranger = client_socket();
    stranger.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("stray ACK");
    stranger.send_to(&Packet::Error { code: ErrorCode::NotDefined, message: "stray".into() }.encode(), transfer).expect("stray ERROR");
    // A witness's datagram to the same port, sent after the stranger's: the server takes that port's
    // datagrams in order and sends on loopback at once, so when the witness has its answer, every
    // answer to the stranger is already in the stranger's socket. No wait for a silence.
    let witness = client_socket();
    witness.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    let (probe, witness_answer): (Vec<u8>, fn(&Packet) -> bool) = match mode {
        TransferPort::Ephemeral => {
            (Packet::Ack { block: 1 }.encode(), |p| matches!(p, Packet::Error { code: ErrorCode::UnknownTransferId, .. }))
        }
        TransferPort::Listening => (b"\x00\x63probe".to_vec(), |p| matches!(p, Packet::Error { code: ErrorCode::IllegalOperation, .. })),
    };
    witness.send_to(&probe, transfer).expect("the witness's datagram");
    let answer = receive(&witness).map(|(packet, _)| packet);
    assert!(answer.as_ref().is_some_and(witness_answer), "the witness's answer: {answer:?}");
    stranger.set_nonblocking(true).expect("nonblocking");
    let replies: Vec<Packet> = std::iter::from_fn(|| receive(&stranger)).map(|(packet, _)| packet).collect();
    match mode {
        // One ERROR 5, to the ACK: an ERROR is never answered, so two servers cannot ping-pong.
        TransferPort::Ephemeral => {
            assert!(matches!(&replies[..], [Packet::Error { code: ErrorCode::UnknownTransferId, .. }]), "exactly one ERROR 5: {replies:?}")
        }
        // An ACK or ERROR for no transfer is never answered on the listening port.
        TransferPort::Listening => assert!(replies.is_empty(), "no answer: {replies:?}"),
    }
    // The real client's transfer is unaffected: it still gets block 2 after its ACK (DATA 1 may have
    // been resent meanwhile).
    client.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
    let packet =
        std::iter::from_fn(|| receive(&client)).map(|(packet, _)| packet).find(|packet| !matches!(packet, Packet::Data { block: 1, .. }));
    assert!(matches!(packet, Some(Packet::Data { block: 2, .. })), "{packet:?}");
    client.send_to(&Packet::Ack { block: 2 }.encode(), transfer).expect("ACK 2");
    let counters = harness.counters.snapshot();
    // Counted: in ephemeral mode both datagrams to the transfer socket, in single-port mode the ACK
    // (an ERROR for no transfer on the request port is ignored, as in either mode).
    // (and the witness's ACK in ephemeral mode; its probe in single-port mode is a malformed request)
    let strays = if mode == TransferPort::Ephemeral { 3 } else { 1 };
    assert_eq!((counters.failures_of(FailureKind::UnknownTransferId), counters.failures_of(FailureKind::ClientAborted)), (strays, 0));
}

// ---------------------------------------------------------------------------------------------------------
// Limits, NAT, superseded transfers, retransmission, file replacement and shutdown

/// A transfer that never acknowledges, from `socket`: returns the port its DATA 1 came from.
fn stall(harness: &Harness, socket: &UdpSocket, name: &str) -> SocketAddr {
    socket.send_to(&read_request(name, TransferOptions::default()), harness.address).expect("RRQ");
    let (packet, transfer) = receive(socket).expect("DATA 1");
    assert!(matches!(packet, Packet::Data { block: 1, .. }), "{packet:?}");
    transfer
}

/// The per-IP cap counts every port of an IP: with a cap of 2, two transfers from two ports of
/// 127.0.0.1 leave none for a third port, while 127.0.0.2 is served; an ERROR frees a slot.
fn each_client_ip_runs_at_most_the_configured_number_of_transfers(mode: TransferPort) {
    let harness = Harness::start(ServerConfig { transfer_port: mode, max_transfers_per_ip: 2, ..ServerConfig::default() });
    let name = sized_name(100_000);
    let stalled: Vec<(UdpSocket, SocketAddr)> = (0..2)
        .map(|_| {
            let socket = client_socket();
            let transfer = stall(&harness, &socket, &name);
            (socket, transfer)
        })
        .collect();
    let Err((code, message)) = fetch_plain(&harness, &name) else { panic!("the third transfer must be refused") };
    assert_eq!(code, ErrorCode::NotDefined);
    assert!(message.contains("too many transfers from 127.0.0.1: at most 2"), "{message}");
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::ClientLimit), 1);
    let elsewhere = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    elsewhere.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    stall(&harness, &elsewhere, &name);

    // A client that aborts with ERROR frees its slot.
    let (socket, transfer) = &stalled[0];
    socket.send_to(&Packet::Error { code: ErrorCode::NotDefined, message: "cancelled".into() }.encode(), transfer).expect("ERROR");
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        match fetch_plain(&harness, &name) {
            Ok(fetched) => {
                assert_eq!(fetched.bytes, content(100_000, 1));
                break;
            }
            Err((ErrorCode::NotDefined, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("the freed slot is not reused: {error:?}"),
        }
    }
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::ClientAborted), 1);
}

/// Behind source NAT a branch office is one IP, each phone on a port of its own: 300 phones on
/// 127.0.0.1 each hold a transfer at the same moment (every one has its DATA 1 or OACK before any
/// acknowledges), then all complete, byte for byte.
///
/// Each phone behaves as RFC 1350 asks of a client: it sends its request again when nothing answers
/// (300 requests at once can overflow the server's receive buffer where `net.core.rmem_max` is
/// small), answers a packet from any other transfer ID with ERROR 5 (an answer to a request it
/// sent twice; a second transfer ID for a request sent once fails the test), and dallies after its
/// last ACK, in case that ACK is lost. Every phone reaches the barrier, even one whose requests all
/// went unanswered, so that a failure ends the test instead of leaving the others waiting for ever.
fn many_transfers_from_one_ip_on_different_ports_all_complete(mode: TransferPort) {
    const PHONES: usize = 300;
    const REQUEST_SENDS: u32 = 4;
    const REQUEST_WAIT: Duration = Duration::from_secs(2);
    // Long enough that no transfer gives up on its first packet (3 sends, 15 s) while 300 threads
    // start and some of them send their request again (at most 4 × 2 s).
    let retransmit_timeout = Duration::from_secs(5);
    let harness = Harness::start(ServerConfig { transfer_port: mode, retransmit_timeout, ..ServerConfig::default() });
    let name = sized_name(100_000);
    let all_started = Barrier::new(PHONES);
    let fetched: Vec<Fetched> = std::thread::scope(|scope| {
        let phones: Vec<_> = (0..PHONES)
            .map(|phone| {
                let (harness, name, all_started) = (&harness, &name, &all_started);
                scope.spawn(move || {
                    // Half of them windowed, to mix the two paths through a transfer.
                    let options = if phone % 2 == 0 {
                        TransferOptions::default()
                    } else {
                        TransferOptions { block_size: Some(1428), window_size: Some(4), ..TransferOptions::default() }
                    };
                    let socket = client_socket();
                    socket.set_read_timeout(Some(REQUEST_WAIT)).expect("read timeout");
                    let request = read_request(name, options);
                    let mut requests_sent = 0;
                    let first = (0..REQUEST_SENDS).find_map(|_| {
                        socket.send_to(&request, harness.address).expect("RRQ");
                        requests_sent += 1;
                        receive(&socket)
                    });
                    all_started.wait();
                    let (first, transfer) =
                        first.unwrap_or_else(|| panic!("phone {phone}: no answer to {REQUEST_SENDS} requests, {REQUEST_WAIT:?} apart"));
                    // A lost packet is sent again after the server's timeout: wait for more than that.
                    socket.set_read_timeout(Some(retransmit_timeout + REPLY_WAIT)).expect("read timeout");
                    let mut fetched = Fetched::default();
                    fetched.sources.insert(transfer);
                    let (block_size, window) = match first {
                        Packet::Data { block: 1, payload } => {
                            fetched.bytes.extend_from_slice(&payload);
                            socket.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
                            (512, 1)
                        }
                        Packet::OptionAck(_) => {
                            socket.send_to(&Packet::Ack { block: 0 }.encode(), transfer).expect("ACK 0");
                            (1428, 4)
                        }
                        other => panic!("phone {phone}: {other:?}"),
                    };
                    let mut in_window = 0;
                    let mut expected = if fetched.bytes.is_empty() { 1u16 } else { 2 };
                    loop {
                        let (packet, from) = receive(&socket).unwrap_or_else(|| panic!("phone {phone}: no DATA {expected}"));
                        if mode == TransferPort::Ephemeral && from != transfer {
                            assert!(requests_sent > 1, "phone {phone}: a second transfer ID {from} for one request");
                            // The transfer of a request sent twice: end it (RFC 1350 §4).
                            let unknown = Packet::Error { code: ErrorCode::UnknownTransferId, message: "unknown transfer ID".into() };
                            socket.send_to(&unknown.encode(), from).expect("ERROR 5");
                            continue;
                        }
                        fetched.sources.insert(from);
                        let (block, payload) = match packet {
                            Packet::Data { block, payload } if block == expected => (block, payload),
                            // A packet resent after a timeout: acknowledge again what was received in
                            // order, in case that ACK was lost (RFC 7440).
                            Packet::Data { .. } | Packet::OptionAck(_) => {
                                socket.send_to(&Packet::Ack { block: expected.wrapping_sub(1) }.encode(), transfer).expect("ACK");
                                in_window = 0;
                                continue;
                            }
                            other => panic!("phone {phone}: {other:?}"),
                        };
                        fetched.bytes.extend_from_slice(&payload);
                        in_window += 1;
                        let last = payload.len() < block_size;
                        if last || in_window == window {
                            socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
                            in_window = 0;
                        }
                        if last {
                            // Dally (RFC 1350 §6): a lost last ACK shows only as the last DATA sent
                            // again, which is acknowledged again until the server stops sending it.
                            socket.set_read_timeout(Some(retransmit_timeout + Duration::from_secs(1))).expect("read timeout");
                            while let Some((packet, from)) = receive(&socket) {
                                if from == transfer && matches!(packet, Packet::Data { block: resent, .. } if resent == block) {
                                    socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
                                }
                            }
                            return fetched;
                        }
                        expected = expected.wrapping_add(1);
                    }
                })
            })
            .collect();
        phones.into_iter().map(|phone| phone.join().expect("phone thread")).collect()
    });
    for (phone, fetched) in fetched.iter().enumerate() {
        assert!(fetched.bytes == content(100_000, 1), "phone {phone}: {} bytes", fetched.bytes.len());
        assert_eq!(fetched.sources.len(), 1, "phone {phone}: one transfer ID");
        if mode == TransferPort::Listening {
            assert!(fetched.sources.contains(&harness.address), "phone {phone}: {:?}", fetched.sources);
        }
    }
    let counters = harness.counters.snapshot();
    assert_eq!(counters.files_served, PHONES as u64);
    assert_eq!((counters.failures_of(FailureKind::ClientLimit), counters.failures_of(FailureKind::ServerLimit)), (0, 0), "{counters:?}");
}

/// Ephemeral mode: one client socket may run `max_transfers_per_address` transfers, each on a port
/// of the server's; one more is refused.
fn one_client_address_runs_at_most_the_configured_number_of_transfers(mode: TransferPort) {
    let harness = Harness::start(ServerConfig { transfer_port: mode, max_transfers_per_address: 2, ..ServerConfig::default() });
    let socket = client_socket();
    let name = sized_name(100_000);
    let first = stall(&harness, &socket, &name);
    let second = stall(&harness, &socket, &name);
    assert_ne!(first, second, "two transfers, two server ports");
    socket.send_to(&read_request(&name, TransferOptions::default()), harness.address).expect("RRQ");
    // DATA 1 of the first two may be resent meanwhile: the refusal is the ERROR among them.
    let refusal = std::iter::from_fn(|| receive(&socket)).find(|(packet, _)| matches!(packet, Packet::Error { .. }));
    let Some((Packet::Error { code: ErrorCode::NotDefined, message }, from)) = refusal else { panic!("{refusal:?}") };
    assert_eq!(from, harness.address);
    let address = socket.local_addr().expect("client address");
    assert!(message.contains(&format!("too many transfers from {address}: at most 2")), "{message}");
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::ClientLimit), 1);
}

/// Single-port mode: a transfer is known by its client's address and port, so a new request from it
/// ends the transfer it runs and starts the new one in its place (RFC 1350 §4: a new request is a
/// new transfer; dnsmasq does the same): a client that gave up on one file and asks for another from
/// the same port gets the new file, never blocks of the old one.
fn a_new_request_from_the_same_address_supersedes_its_transfer(mode: TransferPort) {
    let harness = Harness::start(ServerConfig { transfer_port: mode, max_transfers_per_ip: 1, ..ServerConfig::default() });
    let socket = client_socket();
    // File one: DATA 1 arrives and is never acknowledged.
    stall(&harness, &socket, &sized_name(100_000));
    // File two from the same port: served whole, though the client's IP may run only one transfer.
    socket.send_to(&read_request(&sized_name(1_000_000), TransferOptions::default()), harness.address).expect("RRQ");
    let mut received = Vec::new();
    let mut expected = 1u16;
    loop {
        let (packet, from) = receive(&socket).expect("DATA of the new file");
        assert_eq!(from, harness.address);
        let Packet::Data { block, payload } = packet else { panic!("{packet:?}") };
        if block != expected {
            // Only a resend of the old file's DATA 1 already on its way may come in between.
            assert!(block == 1 && expected == 2 && payload == content(100_000, 1)[..512], "block {block}, expected {expected}");
            continue;
        }
        received.extend_from_slice(&payload);
        socket.send_to(&Packet::Ack { block }.encode(), harness.address).expect("ACK");
        if payload.len() < 512 {
            break;
        }
        expected = expected.wrapping_add(1);
    }
    assert!(received == content(1_000_000, 1), "the new file, byte for byte");
    // A repeated request (a client that saw no answer in time) restarts the transfer from DATA 1.
    stall(&harness, &socket, &sized_name(513));
    socket.send_to(&read_request(&sized_name(513), TransferOptions::default()), harness.address).expect("the same RRQ again");
    let (packet, _) = receive(&socket).expect("DATA 1 again");
    assert!(matches!(packet, Packet::Data { block: 1, .. }), "{packet:?}");
    socket.send_to(&Packet::Ack { block: 1 }.encode(), harness.address).expect("ACK 1");
    let (packet, _) = receive(&socket).expect("DATA 2");
    assert!(matches!(&packet, Packet::Data { block: 2, payload } if payload.len() == 1), "{packet:?}");
    socket.send_to(&Packet::Ack { block: 2 }.encode(), harness.address).expect("ACK 2");
    let counters = once_served(&harness, 2);
    assert_eq!((counters.failures_of(FailureKind::Superseded), counters.failures_of(FailureKind::ClientLimit)), (2, 0), "{counters:?}");
}

/// The test the issue names: through single-port mode, every DATA and OACK of every transfer, of
/// every size, with and without options, comes from the listening port.
fn fetches_through_single_port_mode_and_sees_every_data_packet_come_from_the_listening_port(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let with_options =
        TransferOptions { block_size: Some(1428), window_size: Some(8), transfer_size: Some(0), ..TransferOptions::default() };
    let mut packets = 0;
    for len in SIZES {
        for (options, window, block_size) in [(TransferOptions::default(), 1, 512), (with_options, 8, 1428)] {
            let fetched = fetch(&harness, &read_request(&sized_name(len), options), window, block_size, false).expect("fetch");
            assert!(fetched.bytes == content(len, 1), "size {len}, {options:?}");
            assert_eq!(fetched.sources, BTreeSet::from([harness.address]), "size {len}, {options:?}");
            assert_eq!(fetched.packets, len / block_size + 1 + usize::from(!options.is_empty()), "size {len}, {options:?}");
            packets += fetched.packets;
        }
    }
    assert!(packets > 1_500, "{packets} packets checked");
}

/// Shutdown lets a running transfer finish within the drain timeout: in single-port mode the
/// server keeps handing it its client's ACKs, while new requests get no answer.
fn a_running_transfer_finishes_after_shutdown(mode: TransferPort) {
    let mut harness = Harness::in_mode(mode);
    let socket = client_socket();
    let transfer = stall(&harness, &socket, &sized_name(100_000));
    let _ = harness.shutdown.send(true);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(reply_to(harness.address, &read_request(&sized_name(1), TransferOptions::default()), Duration::from_millis(300)), None);
    let mut received = content(100_000, 1)[..512].to_vec();
    socket.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
    loop {
        let (Packet::Data { block, payload }, _) = receive(&socket).expect("DATA while draining") else { panic!("DATA expected") };
        received.extend_from_slice(&payload);
        socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
        if payload.len() < 512 {
            break;
        }
    }
    assert!(received == content(100_000, 1));
    harness.stop();
    assert_eq!(harness.counters.snapshot().files_served, 1);
}

fn a_lost_data_packet_is_retransmitted_after_the_timeout(mode: TransferPort) {
    let harness =
        Harness::start(ServerConfig { transfer_port: mode, retransmit_timeout: Duration::from_millis(200), ..ServerConfig::default() });
    let name = sized_name(1_000_000);
    let fetched = fetch(&harness, &read_request(&name, TransferOptions::default()), 1, 512, true).expect("fetch after a loss");
    assert_eq!(fetched.bytes, content(1_000_000, 1));
    // Windowed, the whole window is resent from the lost block.
    let windowed = TransferOptions { window_size: Some(4), ..TransferOptions::default() };
    let fetched = fetch(&harness, &read_request(&name, windowed), 4, 512, true).expect("windowed fetch after a loss");
    assert_eq!(fetched.bytes, content(1_000_000, 1));
    let counters = harness.counters.snapshot();
    assert!(counters.retransmissions >= 2, "{counters:?}");
    assert_eq!(counters.files_served, 2);
}

fn a_silent_client_is_abandoned_after_the_retries(mode: TransferPort) {
    let harness = Harness::start(ServerConfig {
        transfer_port: mode,
        retransmit_timeout: Duration::from_millis(50),
        max_retries: 3,
        ..ServerConfig::default()
    });
    let socket = client_socket();
    socket.send_to(&read_request(&sized_name(513), TransferOptions::default()), harness.address).expect("RRQ");
    // The client acknowledges DATA 1, proving it receives, then goes silent: DATA 2 plus three
    // retransmissions, then nothing. (Before that ACK, tests/tftp_abuse.rs: at most three sends.)
    let (packet, transfer) = receive(&socket).expect("DATA 1");
    assert!(matches!(packet, Packet::Data { block: 1, .. }), "{packet:?}");
    socket.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
    // The transfer's end, counted by the server, says that nothing more comes; then the copies it
    // sent are all waiting (or on their way) and are read by count, not until a silence.
    let ended = Instant::now() + Duration::from_secs(60);
    while harness.counters.snapshot().failures_of(FailureKind::TimedOut) == 0 {
        assert!(Instant::now() < ended, "{:?}", harness.counters.snapshot());
        std::thread::sleep(Duration::from_millis(10));
    }
    let counters = harness.counters.snapshot();
    assert_eq!((counters.retransmissions, counters.failures_of(FailureKind::TimedOut)), (3, 1), "{counters:?}");
    for copy in 1..=4 {
        let (packet, _) = receive(&socket).unwrap_or_else(|| panic!("copy {copy} of DATA 2"));
        assert!(matches!(packet, Packet::Data { block: 2, .. }), "{packet:?}");
    }
    socket.set_nonblocking(true).expect("non-blocking");
    assert_eq!(receive(&socket), None, "DATA 2 and its three retransmissions, nothing more");
}

fn replacing_the_files_does_not_disturb_a_running_transfer(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    let name = sized_name(100_000);
    let socket = client_socket();
    socket.send_to(&read_request(&name, TransferOptions::default()), harness.address).expect("RRQ");
    let mut received = Vec::new();
    let mut block = 1u16;
    loop {
        let (Packet::Data { block: number, payload }, transfer) = receive(&socket).expect("DATA") else { panic!("DATA expected") };
        assert_eq!(number, block);
        if block == 1 {
            // Mid-transfer, every file changes.
            harness.files.replace(BTreeMap::from([(name.clone(), Arc::from(content(100_000, 2)))]));
        }
        received.extend_from_slice(&payload);
        socket.send_to(&Packet::Ack { block }.encode(), transfer).expect("ACK");
        if payload.len() < 512 {
            break;
        }
        block += 1;
    }
    assert_eq!(received, content(100_000, 1), "the running transfer keeps the bytes it started with");
    assert_eq!(fetch_plain(&harness, &name).expect("new fetch").bytes, content(100_000, 2), "new requests see the new files");
    let gone = fetch_plain(&harness, &sized_name(1)).map(|fetched| fetched.bytes);
    assert_eq!(gone, Err((ErrorCode::FileNotFound, "file not found".to_owned())), "a file that went is not found");
}

fn shutdown_stops_taking_requests(mode: TransferPort) {
    let mut harness = Harness::in_mode(mode);
    assert_still_serves(&harness, "start");
    harness.stop();
    assert_eq!(reply_to(harness.address, &read_request(&sized_name(1), TransferOptions::default()), Duration::from_millis(300)), None);
    assert_eq!(harness.counters.snapshot().requests, 1);
}

fn block_numbers_roll_over_past_65535(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    // 70 000 blocks of 8 bytes: past the 16-bit block counter, which wraps to 0.
    let bytes = content(8 * 70_000 + 3, 4);
    harness.files.insert("many-blocks.bin", bytes.clone());
    let options = TransferOptions { block_size: Some(8), window_size: Some(32), ..TransferOptions::default() };
    let fetched = fetch(&harness, &read_request("many-blocks.bin", options), 32, 8, false).expect("long transfer");
    assert_eq!(fetched.data_sizes.len(), 70_001);
    assert!(fetched.bytes == bytes, "content differs after the block counter wrapped");
}

/// The same rollover with the real clients and the default 512-byte blocks (RFC 1350: no options): a file of more
/// than 65 535 blocks, over 32 MiB, whose block numbers run 65 535, 0, 1, …, the rollover to 0 that tftp-hpa
/// and atftp expect. Each client must receive exactly the bytes served.
fn tftp_hpa_and_atftp_fetch_past_65535_blocks_of_512_bytes(mode: TransferPort) {
    let harness = Harness::in_mode(mode);
    // 70 000 full blocks and a partial one: 4 465 blocks past the wrap.
    let bytes = content(512 * 70_000 + 123, 5);
    assert!(bytes.len() / 512 > 65_535);
    harness.files.insert("rollover.bin", bytes.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tftp-hpa.bin");
    let output = tftp_hpa_get(&harness, "binary", "rollover.bin", &out);
    let received = std::fs::read(&out).unwrap_or_else(|error| panic!("tftp-hpa wrote nothing ({error}): {}", text(&output)));
    assert_eq!(received.len(), bytes.len(), "tftp-hpa: {}", text(&output));
    assert!(received == bytes, "tftp-hpa received other bytes than served");
    let out = dir.path().join("atftp.bin");
    let output = atftp_get(&harness, &[], "rollover.bin", &out);
    let received = std::fs::read(&out).unwrap_or_else(|error| panic!("atftp wrote nothing ({error}): {}", text(&output)));
    // atftp's trace: a request without options, so 512-byte blocks, and the blocks after 65 535 counted on
    // (it shows the wire's 0 as 65 536) to the last, partial one.
    let trace = text(&output);
    assert!(trace.contains("sent RRQ <file: rollover.bin, mode: octet <>>") && !trace.contains("OACK"), "atftp asked for options");
    for block in ["DATA <block: 65536, size 512>", "DATA <block: 70001, size 123>"] {
        assert!(trace.contains(block), "atftp's trace shows no {block}");
    }
    assert_eq!(received.len(), bytes.len(), "atftp");
    assert!(received == bytes, "atftp received other bytes than served");
}

// ---------------------------------------------------------------------------------------------------------
// Each test above, in the modes it applies to

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

/// Both modes.
macro_rules! tests {
    ($($test:ident),* $(,)?) => {
        mod ephemeral {
            in_mode!(Ephemeral: $($test),*, one_client_address_runs_at_most_the_configured_number_of_transfers);
        }
        mod single_port {
            in_mode!(
                Listening: $($test),*,
                a_new_request_from_the_same_address_supersedes_its_transfer,
                fetches_through_single_port_mode_and_sees_every_data_packet_come_from_the_listening_port,
            );
        }
    };
}

tests!(
    tftp_hpa_fetches_every_size_byte_for_byte,
    atftp_fetches_every_size_byte_for_byte,
    netascii_is_sent_with_cr_lf_and_cr_nul_and_decoded_back_by_tftp_hpa,
    blksize_1428_and_windowsize_8_are_granted_in_the_oack_and_honoured,
    an_exact_multiple_of_the_block_size_ends_with_an_empty_block,
    unknown_file_is_error_1_for_every_client,
    write_requests_are_error_2,
    hostile_datagrams_are_refused_and_the_server_keeps_serving,
    datagrams_from_a_stranger_do_not_disturb_a_transfer,
    each_client_ip_runs_at_most_the_configured_number_of_transfers,
    many_transfers_from_one_ip_on_different_ports_all_complete,
    a_running_transfer_finishes_after_shutdown,
    a_lost_data_packet_is_retransmitted_after_the_timeout,
    a_silent_client_is_abandoned_after_the_retries,
    replacing_the_files_does_not_disturb_a_running_transfer,
    shutdown_stops_taking_requests,
    block_numbers_roll_over_past_65535,
    tftp_hpa_and_atftp_fetch_past_65535_blocks_of_512_bytes,
);
