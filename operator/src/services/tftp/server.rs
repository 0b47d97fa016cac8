//! The TFTP server: one UDP socket receives requests; transfers run with RFC 7440 windows and bounded
//! retransmission, from one of two ports (`ServerConfig::transfer_port`). The server is read-only:
//! write requests are refused.
//!
//! # Transfer ports
//!
//! - **Ephemeral** (the default, RFC 1350 §4): each transfer on its own socket, a new port that is
//!   the server's transfer ID; the client's replies go to that port. `callguard local` serves so.
//! - **Listening** (single-port mode, dnsmasq's `--tftp-single-port`): every packet of every
//!   transfer from the listening socket, and the clients' ACKs and ERRORs back to it; the receive
//!   loop hands each to the transfer of the client address and port it came from, through a queue
//!   it never waits on (`REPLY_QUEUE`; a reply that finds it full is dropped and counted as
//!   `reply_dropped`, and the client resends). A Service VIP, a load balancer or NAT translates the
//!   flow to the listening port, and only that one: the TFTP pods (`callguard serve tftp`) serve so.
//!   A client address runs one transfer at a time: a new request from it ends the one it runs
//!   (`superseded`, see `TftpServer`). An ACK or ERROR for no transfer is dropped unanswered.
//!
//! # Bounds
//!
//! Phones fetch over an untrusted network, where anyone can send requests and forge their source
//! address. What a request can make the server hold, and send, is bounded, in both modes (defaults
//! in parentheses):
//!
//! - **Transfers at once**: `max_transfers_per_address` per client IP and port (8; one in
//!   single-port mode, where the address names the transfer), `max_transfers_per_ip` per client IP,
//!   all ports together (1,024), and `max_transfers` in all (8,192, sized for a 30,000-phone boot
//!   storm); one more is refused with ERROR 0 from the request port, counted as `ClientLimit` or
//!   `ServerLimit`. Behind source NAT a branch office is one IP and each phone its own port: its
//!   boot storm fits the per-IP cap, while one address (one socket) runs at most 8 transfers and
//!   one IP an eighth of the server. In ephemeral mode each transfer holds a UDP socket, so `bind`
//!   raises the soft RLIMIT_NOFILE toward the hard limit to fit the cap and `FD_HEADROOM`, and
//!   lowers the cap when the limit cannot: a flood meets "server busy", not a server out of
//!   descriptors. In single-port mode transfers hold no descriptor.
//! - **Until the client proves its address** by acknowledging the first packet (ACK 0 of the OACK, or
//!   ACK 1 of DATA 1), only that packet goes out, at most `MAX_UNCONFIRMED_SENDS` (3) times, never a
//!   window. A forged request reflects at most 3 datagrams of at most 516 bytes toward its victim (6
//!   went before) and holds its slot for 3 timeouts. In single-port mode a forged request that
//!   supersedes a transfer starts the count again, still at most 3 datagrams per request.
//! - **A client that stops acknowledging**: a window is resent `max_retries` (5) times, then the
//!   transfer ends. The `timeout` option is granted up to `max_client_timeout` (5 s) and declined
//!   above (left out of the OACK, RFC 2349), so a silent client is dropped within (5 + 1) × 5 s = 30 s
//!   at worst, 6 s at the default timeout, instead of 255 s × 6 (25 minutes).
//! - **A client that acknowledges just often enough**: every transfer ends at its deadline,
//!   `transfer_deadline_base` (30 s) plus its size at `min_transfer_rate` (2 KiB/s), counted as
//!   `Deadline`. Without it, an ACK just before each timeout would hold a transfer for hours.
//! - Duplicate ACKs are ignored without a resend (RFC 1123 §4.2.3.1) and do not extend a wait; an
//!   ERROR is never answered. In ephemeral mode datagrams to a transfer from any other address or
//!   port get one ERROR 5 each (an ERROR none); in single-port mode they reach no transfer and get
//!   no answer.
//!
//! What is left: a steady flood of forged requests can keep the cap full (it takes `max_transfers` /
//! (3 × timeout), some 2,700 requests/s, with the defaults), and then phones are refused until it
//! stops; `callguard_tftp_errors_total{kind="server_limit"}` shows it. A refused or malformed request
//! still gets one ERROR datagram, short and never resent. In single-port mode the client's port is
//! the transfer's only ID, so whoever can forge the client's address and port can also end its
//! transfer with an ERROR or a new request (in ephemeral mode they must also guess the server's port).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::packet::{
    DEFAULT_BLOCK_SIZE, ErrorCode, MAX_BLOCK_SIZE, MAX_PACKET_LEN, Mode, Opcode, Packet, Reply, Request, TransferOptions, encode_data,
    to_netascii,
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

/// In single-port mode, the ACKs and ERRORs the receive loop may queue for one transfer that has not
/// yet taken them; more are dropped (counted as `ReplyDropped`) rather than wait. A client sends one
/// ACK per window, so a full queue means a transfer task that is far behind; the client resends.
pub const REPLY_QUEUE: usize = 32;

/// Which port a transfer's packets leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransferPort {
    /// Each transfer on its own socket, an ephemeral port on the listening address: the server's
    /// transfer ID of RFC 1350 §4, as tftpd-hpa and atftpd answer. Replies to that port must reach
    /// the server, which a Service VIP, a load balancer or NAT in between does not allow: they
    /// translate only the flow to the listening port.
    #[default]
    Ephemeral,
    /// Every packet of every transfer from the listening socket, and the clients' ACKs and ERRORs
    /// to it, told apart by the client's address and port (dnsmasq's `--tftp-single-port`): the one
    /// flow a VIP or NAT translates carries the whole transfer. The client's port is then the only
    /// transfer ID, so a stranger who knows it (but not a server port it must guess, as in ephemeral
    /// mode) can end the transfer with a forged ERROR, as on any single-port UDP service.
    Listening,
}

/// Tunables of a `TftpServer`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where requests arrive (port 69 in production; tests use port 0 and read `local_addr`).
    pub bind: SocketAddr,
    /// Transfers the server runs at once, all clients together; one more is refused with ERROR 0.
    /// In ephemeral mode each holds a UDP socket, so `bind` raises the soft open-file limit to fit
    /// them and lowers this cap to what the limit allows (see `TftpServer::max_transfers`).
    pub max_transfers: usize,
    /// Where transfers send from (`Ephemeral`, the RFC's per-transfer port, by default; the TFTP pods
    /// run `Listening`, single-port mode).
    pub transfer_port: TransferPort,
    /// Transfers one client address, IP and port, may run at once; one more is refused with ERROR 0.
    /// In single-port mode a transfer is known by its client's address, so each address runs one at
    /// a time whatever this says: a new request from it ends the one it runs (see `TftpServer`).
    pub max_transfers_per_address: usize,
    /// Transfers one client IP may run at once, all its ports together; one more is refused with
    /// ERROR 0. Higher than the per-address cap because behind source NAT a whole site is one IP.
    pub max_transfers_per_ip: usize,
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
            transfer_port: TransferPort::Ephemeral,
            // A client socket has no reason to run more than one transfer at a time; 8 leaves room
            // for clients that overlap a retry with a transfer still ending on the server.
            max_transfers_per_address: 8,
            // Behind source NAT a branch office is one IP, each phone on its own source port. 1,024
            // in flight holds a thousand phones of one site booting at the same instant (a storm that
            // arrives over seconds needs far fewer: in flight = arrivals × transfer time), while one
            // IP takes at most an eighth of `max_transfers`: filling the server takes eight.
            max_transfers_per_ip: 1024,
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
    /// The client's address already ran `max_transfers_per_address` transfers, or its IP
    /// `max_transfers_per_ip` (ERROR 0).
    ClientLimit,
    /// The server already ran `max_transfers` transfers (ERROR 0).
    ServerLimit,
    /// The client stopped acknowledging and the retries ran out.
    TimedOut,
    /// The transfer ran past its deadline (`transfer_deadline_base` plus its size at `min_transfer_rate`).
    Deadline,
    /// The client ended the transfer with an ERROR packet.
    ClientAborted,
    /// A datagram for a transfer that is not the sender's: in ephemeral mode on a transfer socket,
    /// from someone other than its client (answered with ERROR 5, RFC 1350 §4); in single-port mode
    /// an ACK on the listening port from an address that runs no transfer (not answered).
    UnknownTransferId,
    /// Single-port mode: the transfer's client sent a new request from the same address and port,
    /// which ends it (RFC 1350 §4: a new request is a new transfer).
    Superseded,
    /// Single-port mode: an ACK or ERROR dropped because its transfer's queue (`REPLY_QUEUE`) was
    /// full; the receive loop never waits for a transfer.
    ReplyDropped,
    /// A socket operation failed.
    Io,
}

impl FailureKind {
    pub const ALL: [FailureKind; 13] = [
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
        Self::Superseded,
        Self::ReplyDropped,
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

/// Transfers in flight, in all, per client IP and per client address, released by `Slot::drop`.
#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_address: HashMap<SocketAddr, usize>,
}

type SlotTable = Arc<Mutex<Running>>;

/// Why a transfer is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client's address runs `max_transfers_per_address` already.
    Address,
    /// The client's IP runs `max_transfers_per_ip` already.
    Ip,
    /// The server runs `max_transfers` already.
    Server,
}

/// The caps a `Slot` is taken under.
#[derive(Debug, Clone, Copy)]
struct Caps {
    per_address: usize,
    per_ip: usize,
    total: usize,
}

/// One running transfer's place in the `SlotTable`.
#[derive(Debug)]
struct Slot {
    table: SlotTable,
    client: SocketAddr,
}

impl Slot {
    fn acquire(table: &SlotTable, client: SocketAddr, caps: Caps) -> Result<Self, Refusal> {
        let mut running = table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if running.per_address.get(&client).copied().unwrap_or(0) >= caps.per_address {
            return Err(Refusal::Address);
        }
        if running.per_ip.get(&client.ip()).copied().unwrap_or(0) >= caps.per_ip {
            return Err(Refusal::Ip);
        }
        if running.total >= caps.total {
            return Err(Refusal::Server);
        }
        running.total += 1;
        *running.per_ip.entry(client.ip()).or_insert(0) += 1;
        *running.per_address.entry(client).or_insert(0) += 1;
        Ok(Self { table: Arc::clone(table), client })
    }
}

/// Takes one from a count, and the entry away when it reaches zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        running.total = running.total.saturating_sub(1);
        release(&mut running.per_ip, &self.client.ip());
        release(&mut running.per_address, &self.client);
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

/// In single-port mode the listening socket takes every client's ACKs, which each transfer's own
/// socket took in ephemeral mode: the receive buffer asked for it, so that a burst of ACKs from a
/// storm's phones in flight waits instead of being dropped (and resent a timeout later). Linux's
/// default of 208 KiB holds some 200 small datagrams; the kernel caps what is asked at
/// `net.core.rmem_max`.
const LISTENING_RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for a receive buffer of `bytes` on `socket`, as far as the kernel allows.
#[cfg(unix)]
fn ask_receive_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: setsockopt reads one c_int through a pointer to a live local, of the length given, on
    // the descriptor of a socket borrowed for the call.
    let done = unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const size).cast(), len) };
    if done != 0 {
        tracing::warn!("cannot enlarge the TFTP socket's receive buffer: {}", io::Error::last_os_error());
    }
}

#[cfg(not(unix))]
fn ask_receive_buffer(_socket: &UdpSocket, _bytes: usize) {}

/// A bound TFTP server; `run` serves until shutdown.
///
/// In single-port mode (`TransferPort::Listening`) the receive loop also hands each ACK and ERROR
/// to the transfer of the address and port it came from, through that transfer's queue of
/// `REPLY_QUEUE`, which it never waits on. A read or write request from an address that runs a
/// transfer ends that transfer and is then handled as any request, a read taking over the ended
/// transfer's slot. RFC 1350 §4 makes a new request a new transfer, and dnsmasq does the same: a
/// client that asks again from the same port has given up on the old transfer, or repeats a request
/// whose answer it never saw. Carrying on would send it blocks of a transfer it no longer follows
/// (perhaps of another file); refusing would answer a client's retransmitted request with an ERROR
/// that ends its fetch. The old transfer finds its queue closed: it still takes the replies queued
/// before the request (a client that reuses its port for the next file sends its last ACK just
/// before), then ends without sending another packet, counted as `Superseded` unless that last ACK
/// completed it.
pub struct TftpServer {
    /// Shared with transfer tasks, which answer a missing file from the port the request came to,
    /// and in single-port mode send every packet from it.
    socket: Arc<UdpSocket>,
    config: ServerConfig,
    source: Arc<dyn FileSource>,
    counters: Arc<Counters>,
    slots: SlotTable,
    /// `config.max_transfers`, lowered to what the open-file limit allows in ephemeral mode.
    max_transfers: usize,
}

/// What `run` holds: the transfer tasks and, in single-port mode, the way to each one.
#[derive(Default)]
struct Transfers {
    /// Each task returns its client's address.
    tasks: JoinSet<SocketAddr>,
    /// Single-port mode: the running transfers by client address (IP and port).
    by_client: HashMap<SocketAddr, Inbox>,
}

/// A single-port transfer, as the receive loop reaches it.
struct Inbox {
    task: tokio::task::Id,
    /// Dropped, it closes the transfer's queue, which ends the transfer.
    replies: mpsc::Sender<Reply>,
    /// Held here rather than by the task, so that a request that supersedes the transfer takes the
    /// slot over at once, while the old task winds down.
    slot: Slot,
}

impl Transfers {
    /// Forgets a finished task's inbox, freeing its slot, unless a newer transfer of the same
    /// client has taken its place.
    fn finished(&mut self, done: Result<(tokio::task::Id, SocketAddr), JoinError>) {
        match done {
            Ok((id, client)) => {
                if self.by_client.get(&client).is_some_and(|inbox| inbox.task == id) {
                    self.by_client.remove(&client);
                }
            }
            // Tasks are aborted only when the drain timeout cuts them all.
            Err(error) if error.is_cancelled() => {}
            Err(error) => self.by_client.retain(|_, inbox| inbox.task != error.id()),
        }
    }

    /// Ends the single-port transfer of `client`, if it runs one, by closing its queue, and hands
    /// back its slot.
    fn supersede(&mut self, client: SocketAddr) -> Option<Slot> {
        self.by_client.remove(&client).map(|inbox| inbox.slot)
    }
}

impl TftpServer {
    pub async fn bind(config: ServerConfig, source: Arc<dyn FileSource>) -> Result<Self, TftpServerError> {
        let socket = UdpSocket::bind(config.bind).await.map_err(|source| TftpServerError::Bind { address: config.bind, source })?;
        let max_transfers = match config.transfer_port {
            // Transfers hold no descriptor of their own; all their replies come to this socket.
            TransferPort::Listening => {
                ask_receive_buffer(&socket, LISTENING_RECEIVE_BUFFER);
                config.max_transfers
            }
            TransferPort::Ephemeral => {
                // One descriptor per transfer: without this, a flood of transfers ran the process out
                // of them and every request met "no transfer socket available".
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
                max_transfers
            }
        };
        Ok(Self { socket: Arc::new(socket), config, source, counters: Arc::default(), slots: Arc::default(), max_transfers })
    }

    /// The transfers this server runs at once: `ServerConfig::max_transfers`, or in ephemeral mode
    /// fewer when the process's open-file limit (raised toward its hard limit by `bind`) cannot hold
    /// a socket for each.
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
    /// lets running transfers finish for up to `drain_timeout` (in single-port mode still handing
    /// them their clients' replies), and cuts the rest.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut transfers = Transfers::default();
        let single_port = self.config.transfer_port == TransferPort::Listening;
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
                    Ok((len, peer)) => {
                        let datagram = buffer.get(..len).unwrap_or_default();
                        if !(single_port && self.dispatch(datagram, peer, &mut transfers)) {
                            self.handle_datagram(datagram, peer, &mut transfers).await;
                        }
                    }
                    Err(_) => {
                        self.counters.fail(FailureKind::Io);
                        // Do not spin on a socket that keeps failing.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(done) = transfers.tasks.join_next_with_id(), if !transfers.tasks.is_empty() => transfers.finished(done),
            }
        }
        let drain = async {
            while !transfers.tasks.is_empty() {
                tokio::select! {
                    received = self.socket.recv_from(&mut buffer), if single_port => match received {
                        // Requests are not taken any more: they go unanswered, as when nothing listens.
                        Ok((len, peer)) => {
                            self.dispatch(buffer.get(..len).unwrap_or_default(), peer, &mut transfers);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(done) = transfers.tasks.join_next_with_id() => transfers.finished(done),
                    else => break,
                }
            }
        };
        if tokio::time::timeout(self.config.drain_timeout, drain).await.is_err() {
            transfers.tasks.shutdown().await;
        }
    }

    /// Single-port mode: hands an ACK or ERROR to the transfer of the address and port it came from,
    /// without waiting and without allocating, and says whether the datagram is dealt with. An ACK
    /// or ERROR for no transfer is dropped unanswered (an answer to a forged one would be reflected,
    /// and two servers could ping-pong); any other datagram from a client in a transfer is ignored,
    /// as a transfer socket ignores it. Requests, and datagrams from others, are left to
    /// `handle_datagram`.
    fn dispatch(&self, datagram: &[u8], peer: SocketAddr, transfers: &mut Transfers) -> bool {
        let opcode = match datagram {
            [high, low, ..] => Opcode::from_u16(u16::from_be_bytes([*high, *low])),
            _ => None,
        };
        match opcode {
            Some(Opcode::ReadRequest | Opcode::WriteRequest) => false,
            Some(Opcode::Ack | Opcode::Error) => {
                match (transfers.by_client.get(&peer), Reply::parse(datagram)) {
                    (Some(inbox), Some(reply)) => {
                        // Closed: the transfer has just ended, and its task's address is not yet collected.
                        if let Err(mpsc::error::TrySendError::Full(_)) = inbox.replies.try_send(reply) {
                            self.counters.fail(FailureKind::ReplyDropped);
                        }
                    }
                    (None, Some(Reply::Ack(_))) => self.counters.fail(FailureKind::UnknownTransferId),
                    _ => {}
                }
                true
            }
            _ => transfers.by_client.contains_key(&peer),
        }
    }

    async fn handle_datagram(&self, datagram: &[u8], peer: SocketAddr, transfers: &mut Transfers) {
        // Single-port mode: a request from a client ends the transfer it runs (see `TftpServer`).
        let held = match datagram.get(..2) {
            Some([0, 1 | 2]) => transfers.supersede(peer),
            _ => None,
        };
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
                self.start_read(request, peer, transfers, held).await;
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

    /// Starts a read transfer in a slot of its own, or in `held`, the slot of the transfer this
    /// request superseded.
    async fn start_read(&self, request: Request, peer: SocketAddr, transfers: &mut Transfers, held: Option<Slot>) {
        if let Err(rejection) = check_filename(&request.filename) {
            tracing::debug!(client = %peer, file = ?request.filename, result = ?FailureKind::AccessViolation, %rejection, "TFTP request refused");
            self.counters.fail(FailureKind::AccessViolation);
            self.reply_error(peer, ErrorCode::AccessViolation, &rejection.to_string()).await;
            return;
        }
        let caps = Caps {
            per_address: self.config.max_transfers_per_address,
            per_ip: self.config.max_transfers_per_ip,
            total: self.max_transfers,
        };
        let slot = match held.map_or_else(|| Slot::acquire(&self.slots, peer, caps), Ok) {
            Ok(slot) => slot,
            Err(refusal @ (Refusal::Address | Refusal::Ip)) => {
                tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::ClientLimit, "TFTP request refused");
                self.counters.fail(FailureKind::ClientLimit);
                let message = match refusal {
                    Refusal::Address => format!("too many transfers from {peer}: at most {} at once", caps.per_address),
                    _ => format!("too many transfers from {}: at most {} at once", peer.ip(), caps.per_ip),
                };
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
        let job = ReadJob {
            request,
            peer,
            source: Arc::clone(&self.source),
            listener: Arc::clone(&self.socket),
            counters: Arc::clone(&self.counters),
            config: self.config.clone(),
        };
        match self.config.transfer_port {
            TransferPort::Ephemeral => {
                transfers.tasks.spawn(async move {
                    let _slot = slot;
                    job.run(None).await;
                    peer
                });
            }
            TransferPort::Listening => {
                let (replies, inbox) = mpsc::channel(REPLY_QUEUE);
                let task = transfers.tasks.spawn(async move {
                    job.run(Some(inbox)).await;
                    peer
                });
                transfers.by_client.insert(peer, Inbox { task: task.id(), replies, slot });
            }
        }
    }

    async fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        send_error(&self.socket, &self.counters, peer, code, message).await;
    }
}

/// A read request with what its transfer task needs.
struct ReadJob {
    request: Request,
    peer: SocketAddr,
    source: Arc<dyn FileSource>,
    listener: Arc<UdpSocket>,
    counters: Arc<Counters>,
    config: ServerConfig,
}

impl ReadJob {
    /// Finds the file and runs the transfer: on a socket of its own, or in single-port mode on the
    /// listener with the client's replies from `replies`.
    async fn run(self, replies: Option<mpsc::Receiver<Reply>>) {
        let Self { request, peer, source, listener, counters, config } = self;
        let name = request.filename.clone();
        // A phone file may be signed on first request (milliseconds of RSA): keep that off the
        // task that receives requests, and off the async workers.
        let found = tokio::task::spawn_blocking(move || source.get(&name)).await.ok().flatten();
        if replies.as_ref().is_some_and(mpsc::Receiver::is_closed) {
            // Superseded while the file was looked up: the client waits for another answer now.
            counters.fail(FailureKind::Superseded);
            return;
        }
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
        let link = match replies {
            Some(replies) => Link::Listening { socket: listener, replies },
            // The transfer's own socket, on the listener's address, is the server's TID (RFC 1350 §4).
            None => match UdpSocket::bind(SocketAddr::new(config.bind.ip(), 0)).await {
                Ok(socket) => Link::Own(socket),
                Err(_) => {
                    tracing::debug!(client = %peer, file = %request.filename, result = ?FailureKind::Io, "TFTP request refused: no transfer socket");
                    counters.fail(FailureKind::Io);
                    send_error(&listener, &counters, peer, ErrorCode::NotDefined, "no transfer socket available").await;
                    return;
                }
            },
        };
        let plan = TransferPlan::negotiate(&request.options, bytes.len(), &config);
        let deadline = Instant::now() + plan.deadline;
        let size = bytes.len();
        let transfer = Transfer { link, peer, bytes, plan, deadline, max_retries: config.max_retries, counters };
        let result = match transfer.run().await {
            Ok(()) => "sent".to_owned(),
            Err(kind) => format!("{kind:?}"),
        };
        tracing::debug!(client = %peer, file = %request.filename, %result, bytes = size, "TFTP transfer ended");
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

/// Where a transfer's packets leave from and its client's replies come in.
enum Link {
    /// A socket of its own on an ephemeral port: the server's transfer ID (RFC 1350 §4).
    Own(UdpSocket),
    /// Single-port mode: the listening socket, with the replies the receive loop hands over from
    /// the client's address and port.
    Listening { socket: Arc<UdpSocket>, replies: mpsc::Receiver<Reply> },
}

/// One read transfer.
struct Transfer {
    link: Link,
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
    async fn run(mut self) -> Result<(), FailureKind> {
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

    async fn send_all(&mut self) -> Result<(), FailureKind> {
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

    /// Sends one datagram to the client; in single-port mode nothing more once a new request from
    /// the client has superseded the transfer (the queue is closed), even in the middle of a window.
    async fn send(&self, datagram: &[u8]) -> Result<(), FailureKind> {
        let socket = match &self.link {
            Link::Own(socket) => socket,
            Link::Listening { replies, .. } if replies.is_closed() => return Err(FailureKind::Superseded),
            Link::Listening { socket, .. } => socket,
        };
        socket.send_to(datagram, self.peer).await.map(|_| ()).map_err(|_| FailureKind::Io)
    }

    /// Waits up to the timeout for an ACK of a block indexed `first..=last`. Duplicate and old ACKs are
    /// ignored without resending (which would start the Sorcerer's Apprentice syndrome, RFC 1123
    /// §4.2.3.1) and do not extend the wait. Fails with `Deadline` when the transfer's deadline comes
    /// first.
    async fn await_ack(&mut self, buffer: &mut [u8], first: u64, last: u64) -> Result<Awaited, FailureKind> {
        let until = (Instant::now() + self.plan.timeout).min(self.deadline);
        loop {
            let reply = match tokio::time::timeout_at(until, self.next_reply(buffer)).await {
                Err(_) if until == self.deadline => return Err(FailureKind::Deadline),
                Err(_) => return Ok(Awaited::TimedOut),
                Ok(reply) => reply?,
            };
            match reply {
                Reply::Ack(block) => {
                    // Block numbers wrap at 16 bits; map the number into the window being acknowledged.
                    let index = first + u64::from(block.wrapping_sub(wire_block(first)));
                    if index <= last {
                        return Ok(Awaited::Progress(index));
                    }
                }
                Reply::Error => return Ok(Awaited::Aborted),
            }
        }
    }

    /// The client's next ACK or ERROR. On the transfer's own socket other packets are skipped and
    /// datagrams from any other address or port get ERROR 5 (RFC 1350 §4), unless they are ERRORs;
    /// in single-port mode the receive loop hands over only the client's ACKs and ERRORs.
    async fn next_reply(&mut self, buffer: &mut [u8]) -> Result<Reply, FailureKind> {
        match &mut self.link {
            Link::Own(socket) => loop {
                let (len, from) = socket.recv_from(buffer).await.map_err(|_| FailureKind::Io)?;
                if from != self.peer {
                    self.counters.fail(FailureKind::UnknownTransferId);
                    // Never answer an ERROR: two transfer sockets would answer each other for ever.
                    if buffer.get(..2) != Some(&(Opcode::Error as u16).to_be_bytes()[..]) {
                        let error = Packet::Error { code: ErrorCode::UnknownTransferId, message: "unknown transfer ID".into() }.encode();
                        let _ = socket.send_to(&error, from).await;
                    }
                    continue;
                }
                if let Some(reply) = Reply::parse(buffer.get(..len).unwrap_or_default()) {
                    return Ok(reply);
                }
            },
            // The queue closes when a new request from the client supersedes the transfer (or when
            // the server is gone); the replies queued before come first.
            Link::Listening { replies, .. } => replies.recv().await.ok_or(FailureKind::Superseded),
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
    fn slots_are_capped_per_address_and_per_ip_and_released() {
        let table = SlotTable::default();
        let caps = Caps { per_address: 2, per_ip: 3, total: 100 };
        let client = SocketAddr::from(([192, 0, 2, 1], 1000));
        let first = Slot::acquire(&table, client, caps).expect("first slot");
        let _second = Slot::acquire(&table, client, caps).expect("second slot");
        assert_eq!(Slot::acquire(&table, client, caps).err(), Some(Refusal::Address));
        // The same IP from another port (another phone behind the same NAT) has its own address cap...
        let _third = Slot::acquire(&table, SocketAddr::from(([192, 0, 2, 1], 1001)), caps).expect("another port");
        // ...under the IP's cap, which counts every port.
        assert_eq!(Slot::acquire(&table, SocketAddr::from(([192, 0, 2, 1], 1002)), caps).err(), Some(Refusal::Ip));
        assert!(Slot::acquire(&table, SocketAddr::from(([192, 0, 2, 2], 1000)), caps).is_ok());
        drop(first);
        assert!(Slot::acquire(&table, SocketAddr::from(([192, 0, 2, 1], 1002)), caps).is_ok());
    }

    #[test]
    fn the_server_cap_counts_every_client_and_is_released() {
        let table = SlotTable::default();
        let caps = Caps { per_address: 8, per_ip: 8, total: 3 };
        let held: Vec<Slot> =
            (1..=3).map(|host| Slot::acquire(&table, SocketAddr::from(([192, 0, 2, host], 69)), caps).expect("slot")).collect();
        assert_eq!(Slot::acquire(&table, SocketAddr::from(([192, 0, 2, 9], 69)), caps).err(), Some(Refusal::Server));
        drop(held);
        let running = table.lock().expect("lock");
        assert_eq!((running.total, running.per_ip.len(), running.per_address.len()), (0, 0, 0));
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

    #[tokio::test]
    async fn single_port_dispatch_queues_a_clients_replies_drops_them_when_full_and_ignores_strangers() {
        use super::super::source::MemoryFiles;
        let config =
            ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), transfer_port: TransferPort::Listening, ..ServerConfig::default() };
        let server = TftpServer::bind(config, Arc::new(MemoryFiles::new(BTreeMap::new()))).await.expect("bind");
        let mut transfers = Transfers::default();
        let client = SocketAddr::from(([192, 0, 2, 1], 1000));
        let (replies, mut queue) = mpsc::channel(REPLY_QUEUE);
        let task = transfers.tasks.spawn(std::future::pending::<SocketAddr>());
        let slot = Slot::acquire(&server.slots, client, Caps { per_address: 1, per_ip: 1, total: 1 }).expect("slot");
        transfers.by_client.insert(client, Inbox { task: task.id(), replies, slot });
        let counted = |kind| server.counters.snapshot().failures_of(kind);

        // The client's ACKs are queued; one more than the queue holds is dropped and counted.
        let ack = Packet::Ack { block: 7 }.encode();
        for _ in 0..=REPLY_QUEUE {
            assert!(server.dispatch(&ack, client, &mut transfers));
        }
        assert_eq!((queue.len(), counted(FailureKind::ReplyDropped)), (REPLY_QUEUE, 1));
        assert_eq!(queue.try_recv(), Ok(Reply::Ack(7)));
        let error = Packet::Error { code: ErrorCode::NotDefined, message: "stop".into() }.encode();
        assert!(server.dispatch(&error, client, &mut transfers));
        // Anything else from the client is ignored, as its transfer socket would; requests go on.
        let data = Packet::Data { block: 1, payload: vec![1] }.encode();
        assert!(server.dispatch(&data, client, &mut transfers));
        assert!(server.dispatch(b"\x00\x04", client, &mut transfers), "a truncated ACK");
        let request = Packet::ReadRequest(Request { filename: "f".into(), mode: Mode::Octet, options: TransferOptions::default() });
        assert!(!server.dispatch(&request.encode(), client, &mut transfers));

        // A stranger's ACK and ERROR reach no transfer and are dropped unanswered (the ACK counted);
        // its other datagrams are handled as on the request port.
        let stranger = SocketAddr::from(([192, 0, 2, 1], 1001));
        assert!(server.dispatch(&ack, stranger, &mut transfers));
        assert!(server.dispatch(&error, stranger, &mut transfers));
        assert_eq!(counted(FailureKind::UnknownTransferId), 1);
        assert!(!server.dispatch(&data, stranger, &mut transfers));
        assert!(!server.dispatch(b"\x00", stranger, &mut transfers));

        // A new request supersedes the transfer: its slot comes back, its queue closes after what it holds.
        let slot = transfers.supersede(client).expect("the transfer's slot");
        assert_eq!(slot.client, client);
        assert!(transfers.by_client.is_empty() && queue.is_closed());
        let mut queued = Vec::new();
        while let Ok(reply) = queue.try_recv() {
            queued.push(reply);
        }
        assert_eq!(queued.len(), REPLY_QUEUE);
        assert_eq!(queued.last(), Some(&Reply::Error));
        assert_eq!(queue.recv().await, None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_single_port_socket_asks_for_a_larger_receive_buffer() {
        use super::super::source::MemoryFiles;
        use std::os::fd::AsRawFd;
        let receive_buffer = |transfer_port| async move {
            let config = ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), transfer_port, ..ServerConfig::default() };
            let server = TftpServer::bind(config, Arc::new(MemoryFiles::new(BTreeMap::new()))).await.expect("bind");
            let mut size: libc::c_int = 0;
            let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("length");
            // SAFETY: getsockopt writes at most `len` bytes into a live local c_int.
            let done = unsafe {
                libc::getsockopt(server.socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw mut size).cast(), &raw mut len)
            };
            assert_eq!(done, 0, "getsockopt");
            size
        };
        // Linux doubles what is asked, after capping it at net.core.rmem_max, which is at least the default.
        assert!(receive_buffer(TransferPort::Listening).await > receive_buffer(TransferPort::Ephemeral).await);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        assert_eq!(wire_block(1), 1);
        assert_eq!(wire_block(65_535), 65_535);
        assert_eq!(wire_block(65_536), 0);
        assert_eq!(wire_block(65_537), 1);
    }
}
