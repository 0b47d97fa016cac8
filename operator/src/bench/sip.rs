//! `callguard bench sip`: REGISTER with digest over UDP, the same sipp scenario against Callguard's
//! registrar (in this process) and against Kamailio (Debian's, started here with auth_db over
//! db_text), with the same users and the same realm; registrations per second of each and their
//! ratio. sipp, the load generator, shares the cores with the server it drives, in both runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{DeviceSecurityMode, SipTransport};
use crate::core::phone_config::DigestAuth;
use crate::services::sip::directory::{SipDirectory, SipPhone};
use crate::services::sip::server::{Listeners, SipService};

const SCENARIO: &str = include_str!("sip/register.xml");
const KAMAILIO_CONFIG: &str = include_str!("sip/kamailio.cfg");
const KAMAILIO_MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/// Registers `registrations` times, cycling through `users` phones, `concurrency` at a time.
pub fn run(registrations: usize, users: usize, concurrency: usize) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for program in ["sipp", "kamailio"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("{program} is missing: install the Debian packages sip-tester and kamailio"));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let scenario = dir.path().join("register.xml");
    std::fs::write(&scenario, SCENARIO).map_err(|e| e.to_string())?;
    let injection = dir.path().join("users.csv");
    let mut csv = String::from("SEQUENTIAL\n");
    for i in 0..users {
        let _ = writeln!(csv, "{};[authentication username=user{i} password=secret{i}]", line(i));
    }
    std::fs::write(&injection, csv).map_err(|e| e.to_string())?;

    // Callguard, on its own runtime with as many worker threads as cores, its CPU time accounted.
    let (runtime, callguard_cpu) = crate::bench::cpu_accounted_runtime("callguard-sip", cores)?;
    let socket = runtime.block_on(crate::services::udp_listener::bind(([127, 0, 0, 1], 0).into())).map_err(|e| e.to_string())?;
    let callguard = socket.local_addr().map_err(|e| e.to_string())?;
    let service = SipService::new(directory(users), None);
    let cancel = tokio_util::sync::CancellationToken::new();
    let listeners = Listeners { udp: Some(socket), tcp: None, tls: None, trunks: Vec::new() };
    runtime.spawn(service.clone().serve(listeners, cancel.clone()));

    // Kamailio, with as many UDP workers as cores.
    let kamailio_port = free_udp_port()?;
    let mut kamailio = start_kamailio(dir.path(), kamailio_port, users, cores)?;
    let kamailio_address = SocketAddr::from(([127, 0, 0, 1], kamailio_port));

    // Each server's CPU time is read before and after its run: Kamailio's processes from /proc,
    // Callguard's runtime threads from their clocks; sipp's from this process's waited children.
    let kamailio_pid = kamailio.id();
    let server_cpu = |name: &str| -> Result<Duration, String> {
        if name == "Kamailio" { crate::bench::process_tree_cpu(kamailio_pid) } else { Ok(callguard_cpu.spent()) }
    };
    let mut results = Vec::new();
    for (name, address) in [("Kamailio", kamailio_address), ("Callguard", callguard)] {
        let (server_before, sipp_before) = (server_cpu(name)?, crate::bench::waited_children_cpu());
        let elapsed = sipp(&scenario, &injection, address, registrations, concurrency).map_err(|e| format!("{name}: {e}"))?;
        let server = server_cpu(name)?.saturating_sub(server_before);
        let sipp = crate::bench::waited_children_cpu().saturating_sub(sipp_before);
        results.push(Run { name, rate: registrations as f64 / elapsed.as_secs_f64(), elapsed, server, sipp });
    }
    let _ = kamailio.kill();
    let _ = kamailio.wait();
    cancel.cancel();
    let registered = service.counters.registrations.load(std::sync::atomic::Ordering::Relaxed);

    println!(
        "bench sip: {registrations} REGISTERs with digest over UDP (401, answer, 200), {users} users, {concurrency} at once, the same sipp scenario; {cores} core(s)"
    );
    for run in &results {
        let per_registration = run.server.as_secs_f64() / registrations as f64 * 1e6;
        println!(
            "  {:<10} {:>9.0} registrations/s  ({:.2?}); server CPU {:.2?}, {per_registration:.0} µs per registration, \
             {:>7.0} registrations per server CPU-second; sipp CPU {:.2?} ({:.0}% of the run)",
            run.name,
            run.rate,
            run.elapsed,
            run.server,
            registrations as f64 / run.server.as_secs_f64().max(1e-9),
            run.sipp,
            run.sipp.as_secs_f64() / run.elapsed.as_secs_f64() * 100.0
        );
    }
    println!("  Callguard counted {registered} registrations");
    let capacity = |run: &Run| registrations as f64 / run.server.as_secs_f64().max(1e-9);
    println!("  ratio:     {:>9.2}  (registrations/s, Callguard over Kamailio; target 1.5)", results[1].rate / results[0].rate);
    println!(
        "  ratio:     {:>9.2}  (registrations per server CPU-second, Callguard over Kamailio)",
        capacity(&results[1]) / capacity(&results[0])
    );
    if results.iter().any(|run| run.server < Duration::from_millis(200)) {
        println!(
            "  note: a server used under 0.2 s of CPU, and /proc counts Kamailio's in 10 ms ticks: run more registrations for a CPU ratio worth reading"
        );
    }
    Ok(())
}

/// One server's run: its rate, and the CPU time it and sipp used.
struct Run {
    name: &'static str,
    rate: f64,
    elapsed: Duration,
    server: Duration,
    sipp: Duration,
}

fn line(i: usize) -> String {
    format!("3{i:05}")
}

/// `users` Non Secure UDP phones with digest, one line each.
fn directory(users: usize) -> SipDirectory {
    let phones = (0..users).map(|i| SipPhone {
        subject: format!("Phone/bench-{i}"),
        device: format!("SEP{:012X}", 0xB000_0000_0000u64 + i as u64),
        lines: vec![line(i)],
        mode: DeviceSecurityMode::NonSecure,
        transport: SipTransport::Udp,
        digest: Some(DigestAuth { name: format!("user{i}"), password: format!("secret{i}") }),
        nonce_validity_seconds: 600,
        mic_accepted: false,
        current_lsc_sha256: None,
    });
    SipDirectory::new("ccmsipline".into(), Vec::new(), Vec::new(), phones)
}

fn free_udp_port() -> Result<u16, String> {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// Kamailio in the foreground on `port`, its subscriber table holding the same users; returns once
/// it answers.
fn start_kamailio(dir: &Path, port: u16, users: usize, children: usize) -> Result<Child, String> {
    let db = dir.join("db");
    std::fs::create_dir(&db).map_err(|e| e.to_string())?;
    std::fs::write(db.join("version"), "table_name(string) table_version(int)\nsubscriber:7\nlocation:9\n").map_err(|e| e.to_string())?;
    let mut subscribers = String::from("id(int,auto) username(string) domain(string) password(string)\n");
    for i in 0..users {
        let _ = writeln!(subscribers, "{}:user{i}:ccmsipline:secret{i}", i + 1);
    }
    std::fs::write(db.join("subscriber"), subscribers).map_err(|e| e.to_string())?;
    let config = KAMAILIO_CONFIG
        .replace("{PORT}", &port.to_string())
        .replace("{DB}", &db.display().to_string())
        .replace("{CHILDREN}", &children.to_string())
        .replace("/usr/lib/x86_64-linux-gnu/kamailio/modules/", &format!("{KAMAILIO_MODULES}/"));
    let config_path = dir.join("kamailio.cfg");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let child = Command::new("kamailio")
        .args(["-f", config_path.to_str().unwrap_or_default(), "-DD", "-E", "-n", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start kamailio: {e}"))?;
    // Ready when it answers an OPTIONS (501 by its script).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    probe.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let local = probe.local_addr().map_err(|e| e.to_string())?;
    let options = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=p\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: probe@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline {
        let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
        if probe.recv(&mut buffer).is_ok() {
            return Ok(child);
        }
    }
    Err("kamailio did not answer within 10 s".into())
}

/// Runs the scenario `registrations` times against `address`; the time it took. Every registration
/// must succeed (sipp exits 0).
fn sipp(scenario: &Path, injection: &Path, address: SocketAddr, registrations: usize, concurrency: usize) -> Result<Duration, String> {
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = Command::new("sipp")
        .current_dir(logs.path())
        .args(["-sf", scenario.to_str().unwrap_or_default(), "-inf", injection.to_str().unwrap_or_default()])
        .args(["-m", &registrations.to_string(), "-l", &concurrency.to_string(), "-r", "100000", "-t", "u1"])
        .args(["-i", "127.0.0.1", "-p", &free_udp_port()?.to_string(), "-nostdin", "-timeout", "120", "-trace_err"])
        .args(["-buff_size", &crate::services::udp_listener::RECEIVE_BUFFER.to_string()])
        .arg(address.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run sipp: {e}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        let errors: Vec<String> =
            std::fs::read_dir(logs.path()).into_iter().flatten().filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect();
        let first: String = errors.join("\n").lines().take(12).collect::<Vec<_>>().join("\n");
        return Err(format!("sipp exited with {status}: {first}"));
    }
    Ok(elapsed)
}
