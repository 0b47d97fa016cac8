//! The reconcile benchmark still works: run on a small namespace, it ends with every phone Ready.
//! The figures of so small a run mean nothing; `cargo bench --bench reconcile` measures.

#[path = "support/peers.rs"]
mod peers;

#[path = "../operator/benches/reconcile.rs"]
#[allow(dead_code)] // the benchmark's own `main`, which `cargo bench` runs
mod reconcile;

/// The number after the name that opens a line of a benchmark's output (its rate).
fn first_figure(stdout: &str, name: &str) -> f64 {
    let line = stdout.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{name} in {stdout}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a figure for {name}: {line}"))
}

/// The figures of the `ratio:` lines, in order.
fn ratios(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("ratio:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_benchmark_brings_every_phone_of_a_small_namespace_to_ready() {
    if let Err(e) = reconcile::run(300).await {
        panic!("bench reconcile on 300 phones: {e}");
    }
}

/// `callguard bench capf` runs: five phones enrol over TLS, and it prints its figures (certificates
/// per second, the server's capacity, openssl's signatures per second, the two ratios), each a
/// positive number, the capacity ratio being capacity over openssl's rate. Nothing is asserted of the
/// figures' size: the machine is shared.
#[test]
fn the_capf_benchmark_enrols_five_phones_and_prints_its_figures() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["bench", "capf", "--phones", "5"])
        .output()
        .expect("the callguard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let figure = |label: &str| -> f64 {
        let line = stdout.lines().find_map(|l| l.trim_start().strip_prefix(label)).unwrap_or_else(|| panic!("{label} in {stdout}"));
        line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a number after {label}: {line}"))
    };
    assert_eq!(figure("enrolled:"), 5.0, "{stdout}");
    assert!(stdout.contains("(0 failed; the server reports 5 LSCs issued)"), "{stdout}");
    for label in ["certificates per second:", "server capacity:", "openssl speed rsa2048:", "ratio, capacity:", "ratio, wall clock:"] {
        assert!(figure(label) > 0.0, "{label} in {stdout}");
    }
    // The printed figures are rounded: capacity to a unit, the ratio to a hundredth.
    let ratio = figure("server capacity:") / figure("openssl speed rsa2048:");
    assert!((ratio - figure("ratio, capacity:")).abs() <= 0.006, "{ratio} in {stdout}");
}

/// `callguard bench sip` runs: 200 REGISTERs with digest through sipp against Kamailio and against
/// Callguard, every one answered 200 (sipp fails the run otherwise), and Callguard counts 200; the
/// figures are positive, the first ratio is Callguard's rate over Kamailio's and the second its
/// registrations per server CPU-second over Kamailio's. Nothing is asserted of their size. A missing
/// sipp or kamailio fails the test.
/// `bench media` sets up calls in rtpengine over its ng protocol and in Callguard's relay, carries
/// RTP through both and straight over loopback, and prints each path's highest rate without loss
/// with what stopped its rise and how busy the generator (and the relay) were at that rate, and the
/// two ratios, which must be those rates' quotients, then the CPU time per packet of the
/// generator on each path and of each relay. Nothing is asserted of their size beyond that each path
/// carried the first rate and that every CPU figure is positive. A missing rtpengine fails the test.
#[test]
fn the_media_benchmark_relays_through_rtpengine_and_callguard_and_prints_its_figures() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["bench", "media", "--streams", "4", "--seconds", "0.2"])
        .output()
        .expect("the callguard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let rate = |name: &str| first_figure(&stdout, name);
    let (loopback, rtpengine, callguard) = (rate("loopback"), rate("rtpengine"), rate("Callguard"));
    assert!(loopback >= 20_000.0 && rtpengine >= 20_000.0 && callguard >= 20_000.0, "each carried the first rate: {stdout}");
    // What stopped each rise, and how busy each side was at that rate: the relay's share where
    // there is one.
    for (path, relayed) in [("loopback", false), ("rtpengine", true), ("Callguard", true)] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(path)).unwrap_or_default();
        let busy = line.split("busy: the generator ").nth(1).unwrap_or_else(|| panic!("the busy shares of {path}: {line}"));
        assert_eq!(busy.contains(", the relay "), relayed, "{line}");
    }
    let ratios = ratios(&stdout);
    assert_eq!(ratios.len(), 2, "{stdout}");
    assert!((ratios[0] - callguard / rtpengine).abs() <= 0.006, "{stdout}");
    assert!((ratios[1] - callguard / loopback).abs() <= 0.006, "{stdout}");
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.trim_start().starts_with("CPU per packet")).skip(1).collect();
    for (row, path) in ["loopback", "rtpengine", "Callguard"].into_iter().enumerate() {
        let line = table.get(row).unwrap_or_else(|| panic!("the CPU row of {path}: {stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.first(), Some(&path), "{stdout}");
        let generator: f64 = cells.get(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        assert!(generator > 0.0, "the generator's CPU per packet on {path}: {line}");
        let relay = cells.get(3).and_then(|n| n.parse::<f64>().ok());
        match path {
            "loopback" => assert_eq!(cells.get(3), Some(&"-"), "no relay on loopback: {line}"),
            _ => assert!(relay.is_some_and(|micros| micros > 0.0), "the CPU per packet of {path}: {line}"),
        }
    }
}

#[test]
fn the_sip_benchmark_registers_through_both_servers_and_prints_its_figures() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["bench", "sip", "--registrations", "200", "--users", "20", "--concurrency", "20"])
        .output()
        .expect("the callguard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let rate = |name: &str| first_figure(&stdout, name);
    let (kamailio, callguard) = (rate("Kamailio"), rate("Callguard"));
    assert!(kamailio > 0.0 && callguard > 0.0, "{stdout}");
    assert!(stdout.contains("Callguard counted 200 registrations"), "{stdout}");
    let ratios = ratios(&stdout);
    assert_eq!(ratios.len(), 2, "{stdout}");
    assert!((ratios[0] - callguard / kamailio).abs() <= 0.006, "{} vs {} in {stdout}", ratios[0], callguard / kamailio);
    let capacity = |name: &str| -> f64 {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(name)).unwrap();
        let before = line.split("registrations per server CPU-second").next().unwrap();
        before.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a capacity for {name}: {line}"))
    };
    let (kamailio_capacity, callguard_capacity) = (capacity("Kamailio"), capacity("Callguard"));
    assert!(kamailio_capacity > 0.0 && callguard_capacity > 0.0, "{stdout}");
    let expected = callguard_capacity / kamailio_capacity;
    assert!((ratios[1] - expected).abs() <= 0.01 * expected + 0.006, "{} vs {expected} in {stdout}", ratios[1]);
}

/// `callguard bench sip-tls` runs: 100 mutual-TLS handshakes with openssl s_server and with
/// Callguard's SIP-TLS listener, none failed, both negotiating the same; each server's rates are
/// positive and the ratios are Callguard's over openssl's. Nothing is asserted of their size. A
/// missing openssl fails the test.
#[test]
fn the_sip_tls_benchmark_handshakes_with_both_servers_and_prints_its_figures() {
    peers::require("openssl", "openssl");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["bench", "sip-tls", "--handshakes", "100", "--concurrency", "8"])
        .output()
        .expect("the callguard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("WARNING"), "both servers negotiate the same: {stdout}");
    // peer, handshakes, failed, seconds, handshakes/s, server CPU s, per CPU-second, client CPU s
    let row = |name: &str| -> Vec<f64> {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {stdout}"));
        line.split_whitespace().skip(1).map(|n| n.parse().unwrap_or_else(|_| panic!("numbers for {name}: {line}"))).collect()
    };
    let (openssl, callguard) = (row("openssl"), row("Callguard"));
    for figures in [&openssl, &callguard] {
        assert_eq!(figures.len(), 7, "{stdout}");
        assert_eq!((figures[0], figures[1]), (100.0, 0.0), "100 handshakes, none failed: {stdout}");
        assert!(figures[2..].iter().all(|&f| f > 0.0), "positive figures: {stdout}");
    }
    let ratio = |label: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{label} in {stdout}"))
    };
    // The printed figures are rounded (rates to a unit), hence the tolerance.
    let (capacity, wall) = (callguard[5] / openssl[5], callguard[3] / openssl[3]);
    assert!((ratio("ratio, capacity:") - capacity).abs() <= 0.02 * capacity + 0.006, "{capacity} in {stdout}");
    assert!((ratio("ratio, wall clock:") - wall).abs() <= 0.02 * wall + 0.006, "{wall} in {stdout}");
    assert!(stdout.contains("Callguard refused 0 handshake(s)"), "{stdout}");
}
