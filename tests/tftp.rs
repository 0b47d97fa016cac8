//! The TFTP service against the real clients tftp-hpa (`tftp`) and atftp, plus a hand-written UDP client
//! for what the clients do not show (the OACK's values, hostile datagrams, dropped packets). The server
//! runs in-process on 127.0.0.1, port 0. Tests fail (do not skip) when a client is missing.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callguard::tftp::packet::to_netascii;
use callguard::tftp::{Counters, ErrorCode, FailureKind, MemoryFiles, Mode, Packet, Request, ServerConfig, TftpServer, TransferOptions};
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
        let server = runtime.block_on(TftpServer::bind(config, files.clone())).expect("bind 127.0.0.1:0");
        let address = server.local_addr().expect("bound address");
        assert_ne!(address.port(), 0, "the bound port is read back");
        let counters = server.counters();
        let (shutdown, receiver) = watch::channel(false);
        let task = Some(runtime.spawn(server.run(receiver)));
        Self { runtime, address, counters, files, shutdown, task }
    }

    fn default() -> Self {
        Self::start(ServerConfig::default())
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
}

/// A windowed RFC 7440 receiver: ACKs each full window and the last block. `drop_first_data` ignores the
/// first DATA packet, as if the network lost it.
fn fetch(
    server: SocketAddr,
    request: &[u8],
    window: usize,
    block_size: usize,
    drop_first_data: bool,
) -> Result<Fetched, (ErrorCode, String)> {
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
        assert_ne!(from, server, "transfers run on their own socket, not the request port (RFC 1350 §4)");
        assert!(transfer_id.is_none_or(|tid| tid == from), "one transfer, one server TID");
        transfer_id = Some(from);
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
    fetch(harness.address, &read_request(name, TransferOptions::default()), 1, 512, false)
}

/// The reply to one datagram from a fresh socket, if any arrives within `wait`.
fn reply_to(server: SocketAddr, datagram: &[u8], wait: Duration) -> Option<Packet> {
    let socket = client_socket();
    socket.set_read_timeout(Some(wait)).expect("read timeout");
    socket.send_to(datagram, server).expect("send");
    receive(&socket).map(|(packet, _)| packet)
}

fn assert_still_serves(harness: &Harness, after: &str) {
    let fetched = fetch_plain(harness, &sized_name(513)).unwrap_or_else(|error| panic!("after {after}: {error:?}"));
    assert_eq!(fetched.bytes, content(513, 1), "after {after}");
}

// ---------------------------------------------------------------------------------------------------------
// Real clients

#[test]
fn tftp_hpa_fetches_every_size_byte_for_byte() {
    let harness = Harness::default();
    let dir = tempfile::tempdir().expect("tempdir");
    for len in SIZES {
        let out = dir.path().join(format!("hpa-{len}"));
        let output = tftp_hpa_get(&harness, "binary", &sized_name(len), &out);
        let received = std::fs::read(&out).unwrap_or_else(|error| panic!("size {len}: no output file ({error}): {}", text(&output)));
        assert!(received == content(len, 1), "size {len}: got {} bytes, want {len}: {}", received.len(), text(&output));
    }
    let served = harness.counters.snapshot();
    assert_eq!(served.files_served, SIZES.len() as u64);
    let expected_bytes: usize = SIZES.iter().sum();
    assert!(served.bytes_sent >= expected_bytes as u64);
}

#[test]
fn atftp_fetches_every_size_byte_for_byte() {
    let harness = Harness::default();
    let dir = tempfile::tempdir().expect("tempdir");
    for len in SIZES {
        let out = dir.path().join(format!("atftp-{len}"));
        let output = atftp_get(&harness, &[], &sized_name(len), &out);
        assert!(output.status.success(), "size {len}: {}", text(&output));
        let received = std::fs::read(&out).expect("output file");
        assert!(received == content(len, 1), "size {len}: got {} bytes, want {len}", received.len());
    }
}

#[test]
fn netascii_is_sent_with_cr_lf_and_cr_nul_and_decoded_back_by_tftp_hpa() {
    let harness = Harness::default();
    let original = b"line one\nbare\rcr\r\nend\n".to_vec();
    harness.files.insert("text.txt", original.clone());
    // On the wire (RFC 1350 §1): LF -> CR LF, CR -> CR NUL.
    let request = Packet::ReadRequest(Request { filename: "text.txt".into(), mode: Mode::Netascii, options: TransferOptions::default() });
    let wire = fetch(harness.address, &request.encode(), 1, 512, false).expect("netascii fetch");
    assert_eq!(wire.bytes, b"line one\r\nbare\r\0cr\r\0\r\nend\r\n".to_vec());
    assert_eq!(wire.bytes, to_netascii(&original));
    // tftp-hpa decodes netascii back to the local convention (LF), restoring the original.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("text.txt");
    let output = tftp_hpa_get(&harness, "netascii", "text.txt", &out);
    assert_eq!(std::fs::read(&out).expect("output file"), original, "{}", text(&output));
}

#[test]
fn blksize_1428_and_windowsize_8_are_granted_in_the_oack_and_honoured() {
    let harness = Harness::default();
    let name = sized_name(100_000);
    let requested = TransferOptions { block_size: Some(1428), timeout_secs: Some(2), transfer_size: Some(0), window_size: Some(8) };
    let fetched = fetch(harness.address, &read_request(&name, requested), 8, 1428, false).expect("fetch with options");
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

#[test]
fn an_exact_multiple_of_the_block_size_ends_with_an_empty_block() {
    let harness = Harness::default();
    let fetched = fetch_plain(&harness, &sized_name(512)).expect("fetch");
    assert_eq!(fetched.data_sizes, vec![512, 0]);
    let fetched = fetch_plain(&harness, &sized_name(0)).expect("fetch");
    assert_eq!(fetched.data_sizes, vec![0]);
}

// ---------------------------------------------------------------------------------------------------------
// Errors

#[test]
fn unknown_file_is_error_1_for_every_client() {
    let harness = Harness::default();
    let Err((code, _)) = fetch_plain(&harness, "SEPFFFFFFFFFFFF.cnf.xml.enc.sgn") else { panic!("unknown file must fail") };
    assert_eq!(code, ErrorCode::FileNotFound);

    let dir = tempfile::tempdir().expect("tempdir");
    let output = tftp_hpa_get(&harness, "binary", "missing.bin", &dir.path().join("a"));
    assert!(text(&output).contains("Error code 1"), "tftp-hpa output: {}", text(&output));
    // atftp prints the message, not the code.
    let output = atftp_get(&harness, &[], "missing.bin", &dir.path().join("b"));
    assert!(!output.status.success());
    assert!(text(&output).contains("file not found"), "atftp output: {}", text(&output));
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::FileNotFound), 3);
}

#[test]
fn write_requests_are_error_2() {
    let harness = Harness::default();
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

#[test]
fn hostile_datagrams_are_refused_and_the_server_keeps_serving() {
    let harness = Harness::default();
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
        let reply = reply_to(harness.address, datagram, Duration::from_millis(300));
        assert!(matches!(reply, None | Some(Packet::Error { code: ErrorCode::IllegalOperation, .. })), "{what}: got {reply:?}");
        assert_still_serves(&harness, what);
    }
    // A peer's ERROR is never answered, so two servers cannot ping-pong.
    assert_eq!(reply_to(harness.address, b"\x00\x05\x00\x00oops\x00", Duration::from_millis(300)), None);
    // Unknown options are ignored (RFC 2347), however many: the file is served without an OACK.
    let fetched = fetch(harness.address, &enormous_options, 1, 512, false).expect("enormous option list");
    assert_eq!((fetched.option_ack, fetched.bytes), (None, content(1, 1)));
    assert_still_serves(&harness, "the enormous option list");

    let counters = harness.counters.snapshot();
    assert_eq!(counters.failures_of(FailureKind::AccessViolation), 6);
    assert!(counters.failures_of(FailureKind::Malformed) >= 10, "{counters:?}");
}

#[test]
fn datagrams_from_a_stranger_to_a_transfer_socket_get_error_5() {
    let harness = Harness::default();
    let client = client_socket();
    client.send_to(&read_request(&sized_name(513), TransferOptions::default()), harness.address).expect("RRQ");
    let (Packet::Data { block: 1, .. }, transfer) = receive(&client).expect("DATA 1") else { panic!("DATA 1 expected") };
    let stranger = client_socket();
    stranger.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("stray ACK");
    let (reply, _) = receive(&stranger).expect("an answer to the stranger");
    assert!(matches!(reply, Packet::Error { code: ErrorCode::UnknownTransferId, .. }), "{reply:?}");
    // The real client's transfer is unaffected: it still gets block 2 after its ACK.
    client.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
    let (packet, _) = receive(&client).expect("DATA 2");
    assert!(matches!(packet, Packet::Data { block: 2, .. }), "{packet:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Limits, retransmission, file replacement and shutdown

#[test]
fn each_client_ip_runs_at_most_the_configured_number_of_transfers() {
    let harness = Harness::start(ServerConfig { max_transfers_per_client: 2, ..ServerConfig::default() });
    let name = sized_name(100_000);
    // Two transfers that never acknowledge occupy both slots.
    let stalled: Vec<(UdpSocket, SocketAddr)> = (0..2)
        .map(|_| {
            let socket = client_socket();
            socket.send_to(&read_request(&name, TransferOptions::default()), harness.address).expect("RRQ");
            let (packet, transfer) = receive(&socket).expect("DATA 1");
            assert!(matches!(packet, Packet::Data { block: 1, .. }), "{packet:?}");
            (socket, transfer)
        })
        .collect();
    let Err((code, message)) = fetch_plain(&harness, &name) else { panic!("the third transfer must be refused") };
    assert_eq!(code, ErrorCode::NotDefined);
    assert!(message.contains("at most 2"), "{message}");
    assert_eq!(harness.counters.snapshot().failures_of(FailureKind::ClientLimit), 1);

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

#[test]
fn a_lost_data_packet_is_retransmitted_after_the_timeout() {
    let harness = Harness::start(ServerConfig { retransmit_timeout: Duration::from_millis(200), ..ServerConfig::default() });
    let name = sized_name(1_000_000);
    let fetched = fetch(harness.address, &read_request(&name, TransferOptions::default()), 1, 512, true).expect("fetch after a loss");
    assert_eq!(fetched.bytes, content(1_000_000, 1));
    // Windowed, the whole window is resent from the lost block.
    let windowed = TransferOptions { window_size: Some(4), ..TransferOptions::default() };
    let fetched = fetch(harness.address, &read_request(&name, windowed), 4, 512, true).expect("windowed fetch after a loss");
    assert_eq!(fetched.bytes, content(1_000_000, 1));
    let counters = harness.counters.snapshot();
    assert!(counters.retransmissions >= 2, "{counters:?}");
    assert_eq!(counters.files_served, 2);
}

#[test]
fn a_silent_client_is_abandoned_after_the_retries() {
    let harness = Harness::start(ServerConfig { retransmit_timeout: Duration::from_millis(50), max_retries: 3, ..ServerConfig::default() });
    let socket = client_socket();
    socket.send_to(&read_request(&sized_name(513), TransferOptions::default()), harness.address).expect("RRQ");
    // The client acknowledges DATA 1, proving it receives, then goes silent: DATA 2 plus three
    // retransmissions, then nothing. (Before that ACK, tests/tftp_abuse.rs: at most three sends.)
    let (packet, transfer) = receive(&socket).expect("DATA 1");
    assert!(matches!(packet, Packet::Data { block: 1, .. }), "{packet:?}");
    socket.send_to(&Packet::Ack { block: 1 }.encode(), transfer).expect("ACK 1");
    let mut copies = 0;
    socket.set_read_timeout(Some(Duration::from_millis(600))).expect("read timeout");
    while let Some((packet, _)) = receive(&socket) {
        assert!(matches!(packet, Packet::Data { block: 2, .. }), "{packet:?}");
        copies += 1;
    }
    assert_eq!(copies, 4);
    let counters = harness.counters.snapshot();
    assert_eq!((counters.retransmissions, counters.failures_of(FailureKind::TimedOut)), (3, 1));
}

#[test]
fn replacing_the_files_does_not_disturb_a_running_transfer() {
    let harness = Harness::default();
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
    assert!(matches!(fetch_plain(&harness, &sized_name(1)), Err((ErrorCode::FileNotFound, _))));
}

#[test]
fn shutdown_stops_taking_requests() {
    let mut harness = Harness::default();
    assert_still_serves(&harness, "start");
    harness.stop();
    assert_eq!(reply_to(harness.address, &read_request(&sized_name(1), TransferOptions::default()), Duration::from_millis(300)), None);
    assert_eq!(harness.counters.snapshot().requests, 1);
}

#[test]
fn block_numbers_roll_over_past_65535() {
    let harness = Harness::default();
    // 70 000 blocks of 8 bytes: past the 16-bit block counter, which wraps to 0.
    let bytes = content(8 * 70_000 + 3, 4);
    harness.files.insert("many-blocks.bin", bytes.clone());
    let options = TransferOptions { block_size: Some(8), window_size: Some(32), ..TransferOptions::default() };
    let fetched = fetch(harness.address, &read_request("many-blocks.bin", options), 32, 8, false).expect("long transfer");
    assert_eq!(fetched.data_sizes.len(), 70_001);
    assert!(fetched.bytes == bytes, "content differs after the block counter wrapped");
}
