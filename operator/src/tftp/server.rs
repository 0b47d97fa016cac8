//! The TFTP server: one UDP socket receives requests; each transfer runs on its own ephemeral socket
//! (the server's transfer identifier, RFC 1350 §4) with RFC 7440 windows and bounded retransmission.
//! The server is read-only: write requests are refused.
//!
//! # Bounds
//!
//! Phones fetch over an untrusted network, where anyone can send requests and forge their source
//! address. What a request can make the server hold, and send, is bounded (defaults in parentheses):
//!
//! - **Transfers at once**: `max_transfers_per_client` per client IP (8) and `max_transfers` in all
//!   (8,192, sized for a 30,000-phone boot storm); one more is refused with ERROR 0 from the request
//!   port, counted as `ClientLimit` or `ServerLimit`. Each transfer holds a UDP socket, so `bind` raises
//!   the soft RLIMIT_NOFILE toward the hard limit to fit the cap and `FD_HEADROOM`, and lowers the cap
//!   when the limit cannot: a flood meets "server busy", not a server out of descriptors.
//! - **Until the client proves its address** by acknowledging the first packet (ACK 0 of the OACK, or
//!   ACK 1 of DATA 1), only that packet goes out, at most `MAX_UNCONFIRMED_SENDS` (3) times, never a
//!   window. A forged request reflects at most 3 datagrams of at most 516 bytes toward its victim (6
//!   went before) and holds its slot for 3 timeouts.
//! - **A client that stops acknowledging**: a window is resent `max_retries` (5) times, then the
//!   transfer ends. The `timeout` option is granted up to `max_client_timeout` (5 s) and declined
//!   above (left out of the OACK, RFC 2349), so a silent client is dropped within (5 + 1) × 5 s = 30 s
//!   at worst, 6 s at the default timeout, instead of 255 s × 6 (25 minutes).
//! - **A client that acknowledges just often enough**: every transfer ends at its deadline,
//!   `transfer_deadline_base` (30 s) plus its size at `min_transfer_rate` (2 KiB/s), counted as
//!   `Deadline`. Without it, an ACK just before each timeout would hold a transfer for hours.
//! - Duplicate ACKs are ignored without a resend (RFC 1123 §4.2.3.1) and do not extend a wait;
//!   datagrams to a transfer from any other address or port get one ERROR 5 each; an ERROR is never
//!   answered.
//!
//! What is left: a steady flood of forged requests can keep the cap full (it takes `max_transfers` /
//! (3 × timeout), some 2,700 requests/s, with the defaults), and then phones are refused until it
//! stops; `callguard_tftp_errors_total{kind="server_limit"}` shows it. A refused or malformed request
//! still gets one ERROR datagram, short and never resent.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::packet::{
    DEFAULT_BLOCK_SIZE, ErrorCode, MAX_BLOCK_SIZE, MAX_PACKET_LEN, Mode, Opcode, Packet, Request, TransferOptions, encode_data, to_netascii,
};
use super::source::FileSource;

/// The longest file name the server accepts, in bytes.
pub const MAX_FILENAME_LEN: usize = 255;

/// How many times, at most, a transfer sends its first packet (the OACK, or DATA 1 when no option is
/// granted) before the client acknowledges it. The request's source address may be forged, and until
/// the acknowledgement every packet goes to whoever it names: 3 sends of at most 516 bytes (the
/// first 512-byte block) answer a 20-byte request, where 6 went before. Not fewer: the first exchange
/// is where a booting phone meets a server busy with the rest of the storm, and 3 sends ride out two
/// lost packets (either way) before the phone has to send its request again.
pub const MAX_UNCONFIRMED_SENDS: u32 = 3;

/// Tunables of a `TftpServer`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where requests arrive (port 69 in production; tests use port 0 and read `local_addr`).
    pub bind: SocketAddr,
    /// Transfers the server runs at once, all clients together; one more is refused with ERROR 0.
    /// Each holds a UDP socket, so `bind` raises the soft open-file limit to fit them and lowers this
    /// cap to what the limit allows (see `TftpServer::max_transfers`).
    pub max_transfers: usize,
    /// Transfers one client IP may run at once; one more is refused with ERROR 0.
    pub max_transfers_per_client: usize,
    /// Wait for an ACK before resending, unless the client negotiated `timeout` (RFC 2349).
    pub retransmit_timeout: Duration,
    /// The longest `timeout` option granted (RFC 2349). A larger value is declined: left out of the
    /// OACK, the transfer keeps `retransmit_timeout`. RFC 2349 allows only accepting the client's value
    /// or omitting it, so there is no "answer with the maximum" as for blksize.
    pub max_client_timeout: Duration,
    /// Resends of the same window before the transfer is abandoned, once the client has acknowledged
    /// the first packet; before that, the first packet goes out at most `MAX_UNCONFIRMED_SENDS` times.
    pub max_retries: u32,
    /// A transfer's overall deadline is this plus its size at `min_transfer_rate`. Past it the transfer
    /// is cut (with ERROR 0 to a client that has acknowledged), however steadily the client acknowledges.
    pub transfer_deadline_base: Duration,
    /// In bytes per second: see `transfer_deadline_base`. Zero is read as one.
    pub min_transfer_rate: u64,
    /// The largest blksize granted (RFC 2348); larger requests are answered with this value.
    pub max_block_size: u16,
    /// The largest windowsize granted (RFC 7440); larger requests are answered with this value.
    pub max_window_size: u16,
    /// After shutdown is signalled, how long running transfers may take to finish before they are cut.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 69)),
            // The normal load is a boot storm of 30,000 phones, 3 files each. In flight = arrivals ×
            // duration: phones coming up over a minute make 1,500 transfers/s, about 40 in flight at
            // the 28 ms p99 `bench tftp` measured, and 8,192 still holds them if each took 5 s (lost
            // packets, a server busy signing): 7,500. Above the cap, a flood of half-open requests
            // (spoofed ones included) meets an ERROR instead of taking every descriptor and port:
            // 8,192 sockets are under a third of Linux's default ephemeral port range (32768-60999)
            // and fit the hard open-file limit of containers (1,048,576) and systemd services (524,288).
            max_transfers: 8192,
            max_transfers_per_client: 8,
            retransmit_timeout: Duration::from_secs(1),
            // 5 s is far beyond any round trip a phone network has, and as much as clients that send the
            // option ask for (U-Boot asks for 5); the 255 s the option allows would let one silent client
            // hold a transfer for 255 s × (retries + 1), about 25 minutes.
            max_client_timeout: Duration::from_secs(5),
            max_retries: 5,
            // The whole retry budget at the longest granted timeout, (5 + 1) × 5 s: a transfer whose
            // first packets were lost is not cut before its retries could have been used.
            transfer_deadline_base: Duration::from_secs(30),
            // Lock-step 512-byte blocks over a 250 ms round trip (a congested link to a branch office):
            // a 4 KB trust list gets 32 s, a 1 MB file 8.5 minutes. A client that acknowledges each
            // block just before the timeout (one block per second or per 5 s) is cut well before the
            // hours it could otherwise hold the transfer.
            min_transfer_rate: 2048,
            max_block_size: MAX_BLOCK_SIZE,
            max_window_size: 64,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a file name is refused (answered with ERROR 2, access violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRejection {
    Empty,
    TooLong(usize),
    Absolute,
    Backslash,
    ParentSegment,
    ControlCharacter,
}

impl fmt::Display for NameRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "file name is empty"),
            Self::TooLong(len) => write!(f, "file name of {len} bytes exceeds {MAX_FILENAME_LEN}"),
            Self::Absolute => write!(f, "absolute file names are refused"),
            Self::Backslash => write!(f, "backslashes in file names are refused"),
            Self::ParentSegment => write!(f, "'..' segments in file names are refused"),
            Self::ControlCharacter => write!(f, "control characters in file names are refused"),
        }
    }
}

impl std::error::Error for NameRejection {}

/// Checks a requested name: relative, no `..` segment, no backslash or control character, at most
/// `MAX_FILENAME_LEN` bytes. Sources look names up verbatim; this is defence in depth for sources
/// that map names onto a file system.
pub fn check_filename(name: &str) -> Result<(), NameRejection> {
    if name.is_empty() {
        return Err(NameRejection::Empty);
    }
    if name.len() > MAX_FILENAME_LEN {
        return Err(NameRejection::TooLong(name.len()));
    }
    if name.starts_with('/') {
        return Err(NameRejection::Absolute);
    }
    if name.contains('\\') {
        return Err(NameRejection::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameRejection::ControlCharacter);
    }
    if name.split('/').any(|segment| segment == "..") {
        return Err(NameRejection::ParentSegment);
    }
    Ok(())
}

/// What went wrong, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A datagram on the request socket that is not a valid request (answered with ERROR 4).
    Malformed,
    /// A refused file name (ERROR 2).
    AccessViolation,
    /// A write request (ERROR 2).
    WriteRefused,
    /// A file the source does not have (ERROR 1).
    FileNotFound,
    /// The client already ran `max_transfers_per_client` transfers (ERROR 0).
    ClientLimit,
    /// The server already ran `max_transfers` transfers (ERROR 0).
    ServerLimit,
    /// The client stopped acknowledging and the retries ran out.
    TimedOut,
    /// The transfer ran past its deadline (`transfer_deadline_base` plus its size at `min_transfer_rate`).
    Deadline,
    /// The client ended the transfer with an ERROR packet.
    ClientAborted,
    /// A datagram on a transfer socket from someone other than its client (ERROR 5, RFC 1350 §4).
    UnknownTransferId,
    /// A socket operation failed.
    Io,
}

impl FailureKind {
    pub const ALL: [FailureKind; 11] = [
        Self::Malformed,
        Self::AccessViolation,
        Self::WriteRefused,
        Self::FileNotFound,
        Self::ClientLimit,
        Self::ServerLimit,
        Self::TimedOut,
        Self::Deadline,
        Self::ClientAborted,
        Self::UnknownTransferId,
        Self::Io,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Live counters, updated by the server and its transfers.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    files_served: AtomicU64,
    bytes_sent: AtomicU64,
    retransmissions: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    /// Read and write requests received (well-formed ones).
    pub requests: u64,
    /// Transfers whose last block the client acknowledged.
    pub files_served: u64,
    /// DATA payload bytes put on the wire, retransmissions included.
    pub bytes_sent: u64,
    /// DATA and OACK packets sent again after a timeout.
    pub retransmissions: u64,
    /// Failures by kind; every kind is present, zero or not.
    pub failures: BTreeMap<FailureKind, u64>,
}

impl CounterSnapshot {
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(&kind).copied().unwrap_or(0)
    }
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            files_served: self.files_served.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            retransmissions: self.retransmissions.load(Ordering::Relaxed),
            failures: FailureKind::ALL.iter().map(|kind| (*kind, self.failures[kind.index()].load(Ordering::Relaxed))).collect(),
        }
    }

    fn fail(&self, kind: FailureKind) {
        self.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum TftpServerError {
    Bind { address: SocketAddr, source: io::Error },
}

impl fmt::Display for TftpServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { address, source } => write!(f, "cannot bind the TFTP socket to {address}: {source}"),
        }
    }
}

impl std::error::Error for TftpServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
        }
    }
}

/// Transfers in flight, in all and per client IP, released by `Slot::drop`.
#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

type SlotTable = Arc<Mutex<Running>>;

/// Why a transfer is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client runs `max_transfers_per_client` already.
    Client,
    /// The server runs `max_transfers` already.
    Server,
}

/// One running transfer's place in the `SlotTable`.
struct Slot {
    table: SlotTable,
    client: IpAddr,
}

impl Slot {
    fn acquire(table: &SlotTable, client: IpAddr, per_client: usize, total: usize) -> Result<Self, Refusal> {
        let mut running = table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if running.per_client.get(&client).copied().unwrap_or(0) >= per_client {
            return Err(Refusal::Client);
        }
        if running.total >= total {
            return Err(Refusal::Server);
        }
        running.total += 1;
        *running.per_client.entry(client).or_insert(0) += 1;
        Ok(Self { table: Arc::clone(table), client })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        running.total = running.total.saturating_sub(1);
        if let Some(count) = running.per_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.per_client.remove(&self.client);
            }
        }
    }
}

/// A count of open files, as `getrlimit` reports them.
#[cfg(unix)]
type FileCount = libc::rlim_t;
#[cfg(not(unix))]
type FileCount = u64;

/// Descriptors the transfer cap leaves to the rest of the process (the request socket, the runtime,
/// the metrics and API-server connections, files being signed), or half the limit when it is lower.
const FD_HEADROOM: FileCount = 256;

/// Raises the soft RLIMIT_NOFILE, up to the hard limit, to `wanted` if it is lower, and returns the
/// soft limit then in effect (`None` when it cannot be read; `RLIM_INFINITY` is the type's maximum).
#[cfg(unix)]
fn raise_open_file_limit(wanted: FileCount) -> Option<FileCount> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur >= wanted {
        return Some(limit.rlim_cur);
    }
    let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads one `rlimit` through a pointer to a live local; a soft limit up to the
    // hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 { Some(raised.rlim_cur) } else { Some(limit.rlim_cur) }
}

#[cfg(not(unix))]
fn raise_open_file_limit(_wanted: FileCount) -> Option<FileCount> {
    None
}

/// The transfers a server may run: `configured`, or fewer when the soft open-file limit `soft`
/// cannot hold one socket each after `FD_HEADROOM`.
fn transfer_cap(configured: usize, soft: Option<FileCount>) -> usize {
    let Some(soft) = soft else { return configured };
    let headroom = FD_HEADROOM.min(soft / 2);
    configured.min(usize::try_from(soft - headroom).unwrap_or(usize::MAX))
}

/// A bound TFTP server; `run` serves until shutdown.
pub struct TftpServer {
    /// Shared with transfer tasks, which answer a missing file from the port the request came to.
    socket: Arc<UdpSocket>,
    config: ServerConfig,
    source: Arc<dyn FileSource>,
    counters: Arc<Counters>,
    slots: SlotTable,
    /// `config.max_transfers`, lowered to what the open-file limit allows.
    max_transfers: usize,
}

impl TftpServer {
    pub async fn bind(config: ServerConfig, source: Arc<dyn FileSource>) -> Result<Self, TftpServerError> {
        let socket = UdpSocket::bind(config.bind).await.map_err(|source| TftpServerError::Bind { address: config.bind, source })?;
        // One descriptor per transfer: without this, a flood of transfers ran the process out of them
        // and every request met "no transfer socket available".
        let wanted = FileCount::try_from(config.max_transfers).unwrap_or(FileCount::MAX).saturating_add(FD_HEADROOM);
        let soft_limit = raise_open_file_limit(wanted);
        let max_transfers = transfer_cap(config.max_transfers, soft_limit);
        if max_transfers < config.max_transfers {
            tracing::warn!(
                configured = config.max_transfers,
                open_file_limit = soft_limit,
                "TFTP transfers capped at {max_transfers}: the open-file limit holds no more (raise the hard limit)"
            );
        }
        Ok(Self { socket: Arc::new(socket), config, source, counters: Arc::default(), slots: Arc::default(), max_transfers })
    }

    /// The transfers this server runs at once: `ServerConfig::max_transfers`, or fewer when the
    /// process's open-file limit (raised toward its hard limit by `bind`) cannot hold them.
    pub fn max_transfers(&self) -> usize {
        self.max_transfers
    }

    /// The bound address (with the real port when `bind` asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The live counters; keep the `Arc` to read them while and after the server runs.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves until `shutdown` holds `true` (or its sender is dropped). Then stops taking requests,
    /// lets running transfers finish for up to `drain_timeout`, and cuts the rest.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut transfers = JoinSet::new();
        // One byte more than the largest datagram, so that an oversized one is seen as such.
        let mut buffer = vec![0u8; MAX_PACKET_LEN + 1];
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((len, peer)) => self.handle_datagram(buffer.get(..len).unwrap_or_default(), peer, &mut transfers).await,
                    Err(_) => {
                        self.counters.fail(FailureKind::Io);
                        // Do not spin on a socket that keeps failing.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = transfers.join_next(), if !transfers.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(self.config.drain_timeout, async { while transfers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            transfers.shutdown().await;
        }
    }

    async fn handle_datagram(&self, datagram: &[u8], peer: SocketAddr, transfers: &mut JoinSet<()>) {
        let packet = match Packet::parse(datagram) {
            Ok(packet) => packet,
            Err(error) => {
                // Never answer an ERROR, even a malformed one, so two servers cannot ping-pong.
                if datagram.get(..2) != Some(&(Opcode::Error as u16).to_be_bytes()[..]) {
                    tracing::debug!(client = %peer, result = ?FailureKind::Malformed, %error, "TFTP request refused");
                    self.counters.fail(FailureKind::Malformed);
                    self.reply_error(peer, ErrorCode::IllegalOperation, &format!("malformed packet: {error}")).await;
                }
                return;
            }
        };
        match packet {
            Packet::ReadRequest(request) => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.start_read(request, peer, transfers).await;
            }
            Packet::WriteRequest(request) => {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::WriteRefused, "TFTP request refused");
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.counters.fail(FailureKind::WriteRefused);
                self.reply_error(peer, ErrorCode::AccessViolation, "write requests are refused: this server is read-only").await;
            }
            Packet::Error { .. } => {}
            Packet::Data { .. } | Packet::Ack { .. } | Packet::OptionAck(_) => {
                tracing::debug!(client = %peer, result = ?FailureKind::Malformed, "TFTP request refused: not a request");
                self.counters.fail(FailureKind::Malformed);
                self.reply_error(peer, ErrorCode::IllegalOperation, "this port takes only read requests").await;
            }
        }
    }

    async fn start_read(&self, request: Request, peer: SocketAddr, transfers: &mut JoinSet<()>) {
        if let Err(rejection) = check_filename(&request.filename) {
            tracing::debug!(client = %peer, file = ?request.filename, result = ?FailureKind::AccessViolation, %rejection, "TFTP request refused");
            self.counters.fail(FailureKind::AccessViolation);
            self.reply_error(peer, ErrorCode::AccessViolation, &rejection.to_string()).await;
            return;
        }
        let slot = match Slot::acquire(&self.slots, peer.ip(), self.config.max_transfers_per_client, self.max_transfers) {
            Ok(slot) => slot,
            Err(Refusal::Client) => {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::ClientLimit, "TFTP request refused");
                self.counters.fail(FailureKind::ClientLimit);
                let message = format!("too many transfers from {}: at most {} at once", peer.ip(), self.config.max_transfers_per_client);
                self.reply_error(peer, ErrorCode::NotDefined, &message).await;
                return;
            }
            Err(Refusal::Server) => {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::ServerLimit, "TFTP request refused");
                self.counters.fail(FailureKind::ServerLimit);
                let message = format!("server busy: {} transfers at once, try again", self.max_transfers);
                self.reply_error(peer, ErrorCode::NotDefined, &message).await;
                return;
            }
        };
        let (source, listener, counters, config) =
            (Arc::clone(&self.source), Arc::clone(&self.socket), Arc::clone(&self.counters), self.config.clone());
        transfers.spawn(async move {
            let _slot = slot;
            let name = request.filename.clone();
            // A phone file may be signed on first request (milliseconds of RSA): keep that off the
            // task that receives requests, and off the async workers.
            let found = tokio::task::spawn_blocking(move || source.get(&name)).await.ok().flatten();
            let Some(bytes) = found else {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::FileNotFound, "TFTP request refused");
                counters.fail(FailureKind::FileNotFound);
                send_error(&listener, &counters, peer, ErrorCode::FileNotFound, "file not found").await;
                return;
            };
            let bytes = match request.mode {
                Mode::Octet => bytes,
                Mode::Netascii => Arc::from(to_netascii(&bytes)),
            };
            // The transfer's own socket, on the listener's address, is the server's TID (RFC 1350 §4).
            let Ok(socket) = UdpSocket::bind(SocketAddr::new(config.bind.ip(), 0)).await else {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::Io, "TFTP request refused: no transfer socket");
                counters.fail(FailureKind::Io);
                send_error(&listener, &counters, peer, ErrorCode::NotDefined, "no transfer socket available").await;
                return;
            };
            let plan = TransferPlan::negotiate(&request.options, bytes.len(), &config);
            let deadline = Instant::now() + plan.deadline;
            let size = bytes.len();
            let transfer = Transfer { socket, peer, bytes, plan, deadline, max_retries: config.max_retries, counters };
            let result = match transfer.run().await {
                Ok(()) => "sent".to_owned(),
                Err(kind) => format!("{kind:?}"),
            };
            tracing::debug!(client = %peer, file = %request.filename, %result, bytes = size, "TFTP transfer ended");
        });
    }

    async fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        send_error(&self.socket, &self.counters, peer, code, message).await;
    }
}

async fn send_error(socket: &UdpSocket, counters: &Counters, peer: SocketAddr, code: ErrorCode, message: &str) {
    let packet = Packet::Error { code, message: message.to_owned() }.encode();
    if socket.send_to(&packet, peer).await.is_err() {
        counters.fail(FailureKind::Io);
    }
}

/// The negotiated parameters of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TransferPlan {
    block_size: usize,
    window_size: u64,
    timeout: Duration,
    /// The OACK to send first, when the client asked for any option the server grants.
    option_ack: Option<TransferOptions>,
    /// How long the whole transfer may take, from its first packet.
    deadline: Duration,
}

impl TransferPlan {
    fn negotiate(requested: &TransferOptions, file_len: usize, config: &ServerConfig) -> Self {
        let granted = TransferOptions {
            block_size: requested.block_size.map(|size| size.min(config.max_block_size.max(super::packet::MIN_BLOCK_SIZE))),
            timeout_secs: requested.timeout_secs.filter(|secs| Duration::from_secs(u64::from(*secs)) <= config.max_client_timeout),
            // RFC 2349: on a read request the server answers with the size it will send.
            transfer_size: requested.transfer_size.map(|_| file_len as u64),
            window_size: requested.window_size.map(|size| size.min(config.max_window_size.max(1))),
        };
        Self {
            block_size: usize::from(granted.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)),
            window_size: u64::from(granted.window_size.unwrap_or(1)),
            timeout: granted.timeout_secs.map_or(config.retransmit_timeout, |secs| Duration::from_secs(u64::from(secs))),
            option_ack: (!granted.is_empty()).then_some(granted),
            deadline: config
                .transfer_deadline_base
                .saturating_add(Duration::from_millis((file_len as u64).saturating_mul(1000) / config.min_transfer_rate.max(1))),
        }
    }
}

/// One read transfer on its own socket.
struct Transfer {
    socket: UdpSocket,
    peer: SocketAddr,
    bytes: Arc<[u8]>,
    plan: TransferPlan,
    /// When the transfer is cut, however it is going.
    deadline: Instant,
    max_retries: u32,
    counters: Arc<Counters>,
}

/// What arrived while waiting for an acknowledgement.
enum Awaited {
    /// An ACK of a block (by index) the transfer has sent and not yet seen acknowledged.
    Progress(u64),
    TimedOut,
    Aborted,
}

impl Transfer {
    async fn run(self) -> Result<(), FailureKind> {
        let result = self.send_all().await;
        match result {
            Ok(()) => {
                self.counters.files_served.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => self.counters.fail(kind),
        }
        result
    }

    /// Blocks are indexed from 1; the last one is shorter than the block size, possibly empty (RFC 1350 §6).
    fn block_count(&self) -> u64 {
        (self.bytes.len() / self.plan.block_size) as u64 + 1
    }

    fn block(&self, index: u64) -> &[u8] {
        let start = usize::try_from(index.saturating_sub(1)).unwrap_or(usize::MAX).saturating_mul(self.plan.block_size);
        let end = start.saturating_add(self.plan.block_size).min(self.bytes.len());
        self.bytes.get(start..end).unwrap_or_default()
    }

    async fn send_all(&self) -> Result<(), FailureKind> {
        // Replies are ACKs and ERRORs; a longer datagram is truncated, which loses only an ERROR's message tail.
        let mut buffer = [0u8; 1024];
        // Until the client acknowledges the first packet it has not shown that it receives at the address
        // the request came from, which anyone can forge: send that one packet (the OACK, acknowledged
        // with ACK 0 (RFC 2347), or else DATA 1 alone), at most `MAX_UNCONFIRMED_SENDS` times, and
        // never a window.
        let (first, first_index, first_payload) = match &self.plan.option_ack {
            Some(options) => (Packet::OptionAck(*options).encode(), 0, 0),
            None => (encode_data(wire_block(1), self.block(1)), 1, self.block(1).len()),
        };
        let allowed = MAX_UNCONFIRMED_SENDS.min(self.max_retries.saturating_add(1));
        let mut sent = 0;
        loop {
            self.send(&first).await?;
            self.counters.bytes_sent.fetch_add(first_payload as u64, Ordering::Relaxed);
            if sent > 0 {
                self.counters.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
            match self.await_ack(&mut buffer, first_index, first_index).await? {
                Awaited::Progress(_) => break,
                Awaited::TimedOut if sent < allowed => {}
                Awaited::TimedOut => return Err(FailureKind::TimedOut),
                Awaited::Aborted => return Err(FailureKind::ClientAborted),
            }
        }
        // The client receives where it says it is: windows and retries as negotiated from here.
        let total = self.block_count();
        // Index of the highest block the client acknowledged (0: none yet).
        let mut acked: u64 = first_index;
        if acked == total {
            return Ok(());
        }
        let mut highest_sent: u64 = acked;
        let mut retries = 0;
        loop {
            // RFC 7440: send a window from the first unacknowledged block; a timeout resends it whole.
            let last = acked.saturating_add(self.plan.window_size).min(total);
            for index in acked + 1..=last {
                let payload = self.block(index);
                self.send(&encode_data(wire_block(index), payload)).await?;
                self.counters.bytes_sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
                if index <= highest_sent {
                    self.counters.retransmissions.fetch_add(1, Ordering::Relaxed);
                }
            }
            highest_sent = highest_sent.max(last);
            let awaited = match self.await_ack(&mut buffer, acked + 1, last).await {
                Err(FailureKind::Deadline) => {
                    // The client has shown it receives at its address: tell it why the transfer ends.
                    let error = Packet::Error { code: ErrorCode::NotDefined, message: "transfer deadline exceeded".into() };
                    let _ = self.send(&error.encode()).await;
                    return Err(FailureKind::Deadline);
                }
                other => other?,
            };
            match awaited {
                Awaited::Progress(index) => {
                    acked = index;
                    retries = 0;
                    if acked == total {
                        return Ok(());
                    }
                }
                Awaited::TimedOut if retries < self.max_retries => retries += 1,
                Awaited::TimedOut => return Err(FailureKind::TimedOut),
                Awaited::Aborted => return Err(FailureKind::ClientAborted),
            }
        }
    }

    async fn send(&self, datagram: &[u8]) -> Result<(), FailureKind> {
        self.socket.send_to(datagram, self.peer).await.map(|_| ()).map_err(|_| FailureKind::Io)
    }

    /// Waits up to the timeout for an ACK of a block indexed `first..=last`. Duplicate and old ACKs are
    /// ignored without resending (which would start the Sorcerer's Apprentice syndrome, RFC 1123
    /// §4.2.3.1) and do not extend the wait; datagrams from other ports get ERROR 5 (RFC 1350 §4).
    /// Fails with `Deadline` when the transfer's deadline comes first.
    async fn await_ack(&self, buffer: &mut [u8], first: u64, last: u64) -> Result<Awaited, FailureKind> {
        let until = (Instant::now() + self.plan.timeout).min(self.deadline);
        loop {
            let (len, from) = match tokio::time::timeout_at(until, self.socket.recv_from(buffer)).await {
                Err(_) if until == self.deadline => return Err(FailureKind::Deadline),
                Err(_) => return Ok(Awaited::TimedOut),
                Ok(Err(_)) => return Err(FailureKind::Io),
                Ok(Ok(received)) => received,
            };
            if from != self.peer {
                self.counters.fail(FailureKind::UnknownTransferId);
                let error = Packet::Error { code: ErrorCode::UnknownTransferId, message: "unknown transfer ID".into() }.encode();
                let _ = self.socket.send_to(&error, from).await;
                continue;
            }
            match Packet::parse(buffer.get(..len).unwrap_or_default()) {
                Ok(Packet::Ack { block }) => {
                    // Block numbers wrap at 16 bits; map the number into the window being acknowledged.
                    let index = first + u64::from(block.wrapping_sub(wire_block(first)));
                    if index <= last {
                        return Ok(Awaited::Progress(index));
                    }
                }
                Ok(Packet::Error { .. }) => return Ok(Awaited::Aborted),
                _ => {}
            }
        }
    }
}

/// The 16-bit block number of a block index; after 65 535 it rolls over to 0, as common clients expect.
fn wire_block(index: u64) -> u16 {
    (index & 0xFFFF) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filename_rules_refuse_traversal_and_odd_names() {
        assert_eq!(check_filename("SEP001122334455.cnf.xml"), Ok(()));
        assert_eq!(check_filename("dir/file..name"), Ok(()));
        assert_eq!(check_filename(""), Err(NameRejection::Empty));
        assert_eq!(check_filename("../etc/passwd"), Err(NameRejection::ParentSegment));
        assert_eq!(check_filename("a/../../b"), Err(NameRejection::ParentSegment));
        assert_eq!(check_filename("a/.."), Err(NameRejection::ParentSegment));
        assert_eq!(check_filename("/etc/passwd"), Err(NameRejection::Absolute));
        assert_eq!(check_filename("..\\windows"), Err(NameRejection::Backslash));
        assert_eq!(check_filename("a\0b"), Err(NameRejection::ControlCharacter));
        assert_eq!(check_filename(&"a".repeat(255)), Ok(()));
        assert_eq!(check_filename(&"a".repeat(256)), Err(NameRejection::TooLong(256)));
    }

    #[test]
    fn negotiation_caps_block_and_window_and_reports_the_size_sent() {
        let config = ServerConfig { max_block_size: 1428, max_window_size: 4, ..ServerConfig::default() };
        let requested = TransferOptions { block_size: Some(8192), timeout_secs: Some(3), transfer_size: Some(0), window_size: Some(16) };
        let plan = TransferPlan::negotiate(&requested, 1000, &config);
        assert_eq!(plan.block_size, 1428);
        assert_eq!(plan.window_size, 4);
        assert_eq!(plan.timeout, Duration::from_secs(3));
        assert_eq!(
            plan.option_ack,
            Some(TransferOptions { block_size: Some(1428), timeout_secs: Some(3), transfer_size: Some(1000), window_size: Some(4) })
        );
        let plain = TransferPlan::negotiate(&TransferOptions::default(), 1000, &config);
        assert_eq!((plain.block_size, plain.window_size, plain.option_ack), (512, 1, None));
    }

    #[test]
    fn a_timeout_above_the_maximum_is_declined_not_lowered() {
        let config = ServerConfig::default();
        assert_eq!(config.max_client_timeout, Duration::from_secs(5));
        let asking = |secs| TransferOptions { timeout_secs: Some(secs), window_size: Some(4), ..TransferOptions::default() };
        let granted = TransferPlan::negotiate(&asking(5), 1000, &config);
        assert_eq!(granted.timeout, Duration::from_secs(5));
        assert_eq!(granted.option_ack.and_then(|oack| oack.timeout_secs), Some(5));
        for secs in [6, 30, 255] {
            let declined = TransferPlan::negotiate(&asking(secs), 1000, &config);
            // RFC 2349: accept the value or leave the option out of the OACK; the default timeout applies.
            assert_eq!(declined.timeout, config.retransmit_timeout, "timeout {secs}");
            assert_eq!(declined.option_ack, Some(TransferOptions { window_size: Some(4), ..TransferOptions::default() }), "timeout {secs}");
        }
        // Declined and alone, nothing is left to acknowledge: no OACK, DATA 1 first (RFC 2347).
        let alone = TransferOptions { timeout_secs: Some(255), ..TransferOptions::default() };
        assert_eq!(TransferPlan::negotiate(&alone, 1000, &config).option_ack, None);
    }

    #[test]
    fn the_deadline_grows_with_the_size_at_the_minimum_rate() {
        let config = ServerConfig::default();
        assert_eq!(TransferPlan::negotiate(&TransferOptions::default(), 0, &config).deadline, Duration::from_secs(30));
        assert_eq!(TransferPlan::negotiate(&TransferOptions::default(), 4096, &config).deadline, Duration::from_secs(32));
        assert_eq!(TransferPlan::negotiate(&TransferOptions::default(), 1 << 20, &config).deadline, Duration::from_secs(30 + 512));
        // Whatever the client asks: the options change neither the base nor the rate.
        let asking = TransferOptions { block_size: Some(8), timeout_secs: Some(5), window_size: Some(1), transfer_size: Some(0) };
        assert_eq!(TransferPlan::negotiate(&asking, 4096, &config).deadline, Duration::from_secs(32));
        let stalled = ServerConfig { min_transfer_rate: 0, ..ServerConfig::default() };
        assert_eq!(TransferPlan::negotiate(&TransferOptions::default(), 1, &stalled).deadline, Duration::from_secs(31));
    }

    #[test]
    fn client_slots_are_capped_and_released() {
        let table = SlotTable::default();
        let client = IpAddr::from([192, 0, 2, 1]);
        let first = Slot::acquire(&table, client, 2, 100).expect("first slot");
        let _second = Slot::acquire(&table, client, 2, 100).expect("second slot");
        assert_eq!(Slot::acquire(&table, client, 2, 100).err(), Some(Refusal::Client));
        assert!(Slot::acquire(&table, IpAddr::from([192, 0, 2, 2]), 2, 100).is_ok());
        drop(first);
        assert!(Slot::acquire(&table, client, 2, 100).is_ok());
    }

    #[test]
    fn the_server_cap_counts_every_client_and_is_released() {
        let table = SlotTable::default();
        let held: Vec<Slot> = (1..=3).map(|host| Slot::acquire(&table, IpAddr::from([192, 0, 2, host]), 8, 3).expect("slot")).collect();
        assert_eq!(Slot::acquire(&table, IpAddr::from([192, 0, 2, 9]), 8, 3).err(), Some(Refusal::Server));
        drop(held);
        let running = table.lock().expect("lock");
        assert_eq!((running.total, running.per_client.len()), (0, 0));
    }

    #[test]
    fn the_transfer_cap_stays_under_the_open_file_limit() {
        assert_eq!(transfer_cap(8192, None), 8192);
        assert_eq!(transfer_cap(8192, Some(1_048_576)), 8192);
        assert_eq!(transfer_cap(8192, Some(8192 + 256)), 8192);
        // systemd's default soft limit, when the hard limit does not let it be raised.
        assert_eq!(transfer_cap(8192, Some(1024)), 768);
        assert_eq!(transfer_cap(8192, Some(300)), 150);
        assert_eq!(transfer_cap(8192, Some(FileCount::MAX)), 8192);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        assert_eq!(wire_block(1), 1);
        assert_eq!(wire_block(65_535), 65_535);
        assert_eq!(wire_block(65_536), 0);
        assert_eq!(wire_block(65_537), 1);
    }
}
