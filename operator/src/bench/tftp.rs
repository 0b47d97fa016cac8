//! `callguard bench tftp`: a boot storm. N phones each fetch `CTLFile.tlv`, their `ITLSEP<MAC>.tlv` and
//! their `SEP<MAC>.cnf.xml.sgn`, at most C at a time, first from Callguard's TFTP server (with
//! `--single-port`, in both of its transfer-port modes, one after the other), then from tftpd-hpa
//! serving the same exported files. Every fetched byte is compared with the exported file.
//!
//! The load generator is a plain RFC 1350 client (octet mode, no options, so blksize 512), written here
//! by hand because no crate in the tree is a TFTP client. Each phone sends from its own loopback
//! address (127.1.x.y), as phones on a LAN would, so per-client limits apply per phone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::services::tftp::packet::DEFAULT_BLOCK_SIZE;
use crate::services::tftp::{ErrorCode, Mode, Packet, Request, ServerConfig, TftpServer, TransferOptions, TransferPort};

/// How long the client waits for the next DATA before resending its last packet.
pub const RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Resends of the same packet before the transfer is given up.
pub const MAX_RETRIES: u32 = 5;
/// tftpd-hpa's server, installed by scripts/test.
pub const TFTPD_HPA: &str = "/usr/sbin/in.tftpd";

/// Why one file could not be fetched.
#[derive(Debug)]
pub enum FetchError {
    Io(std::io::Error),
    /// No answer after [`MAX_RETRIES`] resends.
    Timeout {
        block: u16,
    },
    /// The server answered ERROR.
    Server {
        code: ErrorCode,
        message: String,
    },
    /// A datagram that is not a TFTP packet, or a packet a read transfer does not expect.
    Protocol(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Io(e) => write!(f, "socket: {e}"),
            FetchError::Timeout { block } => write!(f, "no DATA block {block} after {MAX_RETRIES} resends (RFC 1350 §2)"),
            FetchError::Server { code, message } => write!(f, "server ERROR {code:?}: {message}"),
            FetchError::Protocol(m) => write!(f, "{m} (RFC 1350 §5)"),
        }
    }
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        FetchError::Io(e)
    }
}

/// Phone `index`'s source address: 127.1.x.y, distinct for the first 65 536 × 254 phones.
pub fn phone_source(index: usize) -> IpAddr {
    let [_, high, mid, low] = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 1u8.saturating_add(high), mid, low))
}

/// What a booting phone fetches, in order: the CTL, its ITL, its signed configuration.
pub fn boot_files(device_name: &str) -> Vec<String> {
    vec!["CTLFile.tlv".into(), format!("ITL{device_name}.tlv"), format!("{device_name}.cnf.xml.sgn")]
}

/// Reads `name` from `server` in octet mode with the default 512-byte blocks, from a socket bound to
/// `source` (RFC 1350: RRQ, then DATA n / ACK n until a DATA shorter than 512 bytes).
pub async fn fetch(source: IpAddr, server: SocketAddr, name: &str) -> Result<Vec<u8>, FetchError> {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
    let request = Request { filename: name.to_string(), mode: Mode::Octet, options: TransferOptions::default() };
    let mut last_sent = Packet::ReadRequest(request).encode();
    socket.send_to(&last_sent, server).await?;
    // The server answers from its transfer ID (a new port, or in single-port mode the one asked);
    // later datagrams from elsewhere are ignored.
    let mut peer: Option<SocketAddr> = None;
    let mut expected: u16 = 1;
    let mut retries = 0;
    let mut content = Vec::new();
    let mut buffer = vec![0u8; 2048];
    loop {
        let (len, from) = match tokio::time::timeout(RETRANSMIT_TIMEOUT, socket.recv_from(&mut buffer)).await {
            Ok(received) => received?,
            Err(_) => {
                retries += 1;
                if retries > MAX_RETRIES {
                    return Err(FetchError::Timeout { block: expected });
                }
                socket.send_to(&last_sent, peer.unwrap_or(server)).await?;
                continue;
            }
        };
        if peer.is_some_and(|p| p != from) {
            continue;
        }
        match Packet::parse(buffer.get(..len).unwrap_or_default()) {
            Ok(Packet::Data { block, payload }) => {
                peer = Some(from);
                if block == expected {
                    content.extend_from_slice(&payload);
                    last_sent = Packet::Ack { block }.encode();
                    socket.send_to(&last_sent, from).await?;
                    retries = 0;
                    if payload.len() < usize::from(DEFAULT_BLOCK_SIZE) {
                        return Ok(content);
                    }
                    expected = expected.wrapping_add(1);
                } else if block == expected.wrapping_sub(1) {
                    // Our ACK was lost: acknowledge the duplicate again.
                    socket.send_to(&last_sent, from).await?;
                }
            }
            Ok(Packet::Error { code, message }) => return Err(FetchError::Server { code, message }),
            Ok(other) => return Err(FetchError::Protocol(format!("unexpected {other:?} in a read transfer"))),
            Err(e) => return Err(FetchError::Protocol(e.to_string())),
        }
    }
}

/// What a storm measured.
#[derive(Debug, Default)]
pub struct StormReport {
    /// Files fetched whose bytes equal the expected file.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per fetched file (matching or not), from RRQ to the last ACK; sorted.
    pub latencies: Vec<Duration>,
    /// Files fetched whose bytes differ from the expected file (or that were not expected at all).
    pub mismatches: Vec<String>,
    /// Files that could not be fetched, with why.
    pub failures: Vec<String>,
}

impl StormReport {
    /// The `percent` percentile of per-file latency (nearest rank), zero when nothing was fetched.
    pub fn percentile(&self, percent: usize) -> Duration {
        let Some(last) = self.latencies.len().checked_sub(1) else { return Duration::ZERO };
        self.latencies.get(last * percent.min(100) / 100).copied().unwrap_or_default()
    }

    pub fn files_per_second(&self) -> f64 {
        self.files as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn merge(&mut self, other: StormReport) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.latencies.extend(other.latencies);
        self.mismatches.extend(other.mismatches);
        self.failures.extend(other.failures);
    }
}

/// Boots `phones` (each a list of file names, fetched in order) against `server`, at most `concurrency`
/// phones at a time, and compares every fetched file with `expected`.
pub async fn storm(
    server: SocketAddr,
    phones: Arc<Vec<Vec<String>>>,
    expected: Arc<BTreeMap<String, Vec<u8>>>,
    concurrency: usize,
) -> StormReport {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, phones.len().max(1)) {
        let (next, phones, expected) = (Arc::clone(&next), Arc::clone(&phones), Arc::clone(&expected));
        workers.spawn(async move {
            let mut report = StormReport::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(files) = phones.get(index) else { break };
                for name in files {
                    let t = Instant::now();
                    match fetch(phone_source(index), server, name).await {
                        Ok(bytes) => {
                            report.latencies.push(t.elapsed());
                            if expected.get(name).is_some_and(|e| *e == bytes) {
                                report.files += 1;
                                report.bytes += bytes.len() as u64;
                            } else {
                                report.mismatches.push(name.clone());
                            }
                        }
                        Err(e) => report.failures.push(format!("{name}: {e}")),
                    }
                }
            }
            report
        });
    }
    let mut report = StormReport::default();
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok(partial) => report.merge(partial),
            Err(e) => report.failures.push(format!("a load generator task failed: {e}")),
        }
    }
    report.elapsed = started.elapsed();
    report.latencies.sort_unstable();
    report
}

/// `callguard bench tftp --phones N --concurrency C [--single-port]`.
pub fn run(phones: usize, concurrency: usize, single_port: bool) -> Result<(), String> {
    use crate::core::build::build_namespace;
    let t = Instant::now();
    let namespace = super::BenchNamespace::generate(&super::namespace_yaml(phones))?;
    let now = time::OffsetDateTime::now_utc();
    let output = build_namespace(namespace.snapshot.clone(), &namespace.state, now, &Default::default()).map_err(|e| e.to_string())?;
    let exported = output.served.render_all();
    let plan: Vec<Vec<String>> = namespace.snapshot.phones.values().map(|p| boot_files(&p.spec.device_name())).collect();
    let export = tempfile::tempdir().map_err(|e| e.to_string())?;
    export_files(export.path(), &exported)?;
    // What both servers serve, read back from the export.
    let expected = read_export(export.path())?;
    if let Some(missing) = plan.iter().flatten().find(|name| !expected.contains_key(*name)) {
        return Err(format!("the build did not produce {missing}, which a booting phone fetches"));
    }
    let total_files = plan.len() * 3;
    println!(
        "bench tftp: {phones} phones x 3 files (CTLFile.tlv, ITLSEP<MAC>.tlv, SEP<MAC>.cnf.xml.sgn) = {total_files} RRQs, \
         {concurrency} phones in flight, octet, blksize 512; {} files built and exported in {:.2?}",
        exported.len(),
        t.elapsed()
    );
    let (plan, expected) = (Arc::new(plan), Arc::new(expected));
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;

    // Cold: a fresh build whose phone files are signed as the storm asks for them (signatures are
    // deterministic, so the bytes equal the export's). Warm: the same server again, every file cached.
    let callguard = |transfer_port: TransferPort| -> Result<(StormReport, StormReport), String> {
        let served = Arc::new(
            build_namespace(namespace.snapshot.clone(), &namespace.state, now, &Default::default()).map_err(|e| e.to_string())?.served,
        );
        let (cold, warm) = runtime.block_on(async {
            let config = ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), transfer_port, ..ServerConfig::default() };
            let server = TftpServer::bind(config, served.clone()).await.map_err(|e| e.to_string())?;
            let address = server.local_addr().map_err(|e| e.to_string())?;
            let counters = server.counters();
            let (shutdown, receiver) = watch::channel(false);
            let task = tokio::spawn(server.run(receiver));
            let cold = storm(address, Arc::clone(&plan), Arc::clone(&expected), concurrency).await;
            let after_cold = counters.snapshot().retransmissions;
            let warm = storm(address, Arc::clone(&plan), Arc::clone(&expected), concurrency).await;
            let _ = shutdown.send(true);
            let _ = task.await;
            Ok::<_, String>(((cold, after_cold), (warm, counters.snapshot().retransmissions - after_cold)))
        })?;
        let ((cold, cold_resent), (warm, warm_resent)) = (cold, warm);
        let mode = match transfer_port {
            TransferPort::Ephemeral => "a port per transfer",
            TransferPort::Listening => "single-port",
        };
        let cache = served.phones.cache().counters();
        print_report(&format!("Callguard TftpServer (in-process, {mode}), cold: configurations signed on demand"), &cold);
        println!("    resent:     {cold_resent:>10}  packets the server sent again after a timeout");
        print_report(&format!("Callguard TftpServer (in-process, {mode}), warm: configurations from the cache"), &warm);
        println!("    resent:     {warm_resent:>10}");
        println!("  render cache: {} phones signed, {} answers from the cache", cache.renders, cache.hits);
        Ok((cold, warm))
    };
    let mut runs = vec![("a port per transfer", callguard(TransferPort::Ephemeral)?)];
    if single_port {
        runs.push(("single-port", callguard(TransferPort::Listening)?));
    }

    let hpa = {
        let mut tftpd = TftpdHpa::start(export.path())?;
        let report = runtime.block_on(async {
            tftpd.wait_ready(&expected).await?;
            Ok::<_, String>(storm(tftpd.address, Arc::clone(&plan), Arc::clone(&expected), concurrency).await)
        });
        tftpd.stop();
        report?
    };
    print_report("tftpd-hpa (in.tftpd -L -s)", &hpa);
    for (mode, (cold, warm)) in &runs {
        let ratio = |report: &StormReport| report.files_per_second() / hpa.files_per_second();
        println!("  ratio Callguard ({mode}) files/s over tftpd-hpa files/s, warm: {:.2}", ratio(warm));
        println!("  ratio Callguard ({mode}) files/s over tftpd-hpa files/s, cold: {:.2}", ratio(cold));
    }
    if let [(_, (ephemeral_cold, ephemeral_warm)), (_, (single_cold, single_warm))] = runs.as_slice() {
        let ratio = |single: &StormReport, ephemeral: &StormReport| single.files_per_second() / ephemeral.files_per_second();
        println!("  ratio single-port files/s over a port per transfer, warm: {:.2}", ratio(single_warm, ephemeral_warm));
        println!("  ratio single-port files/s over a port per transfer, cold: {:.2}", ratio(single_cold, ephemeral_cold));
    }
    let mismatches =
        hpa.mismatches.len() + runs.iter().map(|(_, (cold, warm))| cold.mismatches.len() + warm.mismatches.len()).sum::<usize>();
    if mismatches > 0 {
        return Err(format!("{mismatches} fetched file(s) differ from the exported bytes"));
    }
    Ok(())
}

fn print_report(server: &str, report: &StormReport) {
    println!("  {server}:");
    println!("    files:      {:>10}", report.files);
    println!("    bytes:      {:>10}", report.bytes);
    println!("    seconds:    {:>10.3}", report.elapsed.as_secs_f64());
    println!("    files/s:    {:>10.0}", report.files_per_second());
    println!("    p50 / p99:  {:>10.2?} / {:.2?} per file", report.percentile(50), report.percentile(99));
    println!("    failures:   {:>10}{}", report.failures.len(), report.failures.first().map(|f| format!("  e.g. {f}")).unwrap_or_default());
    println!(
        "    mismatches: {:>10}{}",
        report.mismatches.len(),
        report.mismatches.first().map(|f| format!("  e.g. {f}")).unwrap_or_default()
    );
}

/// Writes the TFTP root flat into `dir`, world-readable: tftpd-hpa drops to `nobody` and serves only
/// publicly readable files.
fn export_files(dir: &Path, files: &BTreeMap<String, Arc<[u8]>>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, &bytes[..]).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn read_export(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    entries
        .map(|entry| {
            let path: PathBuf = entry.map_err(|e| e.to_string())?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            std::fs::read(&path).map(|bytes| (name, bytes)).map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}

/// `in.tftpd -L -s DIR -a 127.0.0.1:PORT`, killed on drop.
struct TftpdHpa {
    child: Option<Child>,
    address: SocketAddr,
}

impl TftpdHpa {
    fn start(root: &Path) -> Result<Self, String> {
        // scripts/test may be reinstalling tftpd-hpa right now: give it a minute to appear.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Path::new(TFTPD_HPA).exists() {
            if Instant::now() > deadline {
                return Err(format!("{TFTPD_HPA} is missing (scripts/test installs tftpd-hpa)"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // A free port: bind one, read it, release it for in.tftpd.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(TFTPD_HPA)
            .args(["-L", "-s"])
            .arg(root)
            .args(["-a", &address.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {TFTPD_HPA}: {e}"))?;
        Ok(Self { child: Some(child), address })
    }

    /// Waits until the server answers one RRQ with the right bytes.
    async fn wait_ready(&mut self, expected: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        let (name, bytes) = expected.iter().next().ok_or("nothing was exported")?;
        let mut last = String::new();
        for _ in 0..20 {
            match fetch(IpAddr::V4(Ipv4Addr::LOCALHOST), self.address, name).await {
                Ok(fetched) if fetched == *bytes => return Ok(()),
                Ok(_) => return Err(format!("tftpd-hpa served {name} with other bytes than exported")),
                Err(e) => last = e.to_string(),
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("in.tftpd exited with {status}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("in.tftpd does not answer on {}: {last}", self.address))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TftpdHpa {
    fn drop(&mut self) {
        self.stop();
    }
}
