//! The boot-storm load generator of `callguard bench tftp`, against the in-process TFTP server: 20 phones
//! fetch their three files, and every byte is compared with what the server holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use callguard::bench::tftp::{StormReport, boot_files, phone_source, storm};
use callguard::services::tftp::{CounterSnapshot, ErrorCode, FailureKind, MemoryFiles, ServerConfig, TftpServer, TransferPort};
use tokio::sync::watch;

const PHONES: usize = 20;
/// Phones booting at once.
const CONCURRENCY: usize = 8;

/// Bytes that differ from file to file and from block to block.
fn content(len: usize, seed: usize) -> Vec<u8> {
    let mut state = (seed as u32).wrapping_mul(2_654_435_761).wrapping_add(7);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

fn device(index: usize) -> String {
    format!("SEP{index:012X}")
}

/// The phones' files, with sizes on and around 512-byte block boundaries (RFC 1350: a file whose size
/// is a multiple of 512 ends with an empty DATA).
fn served_files() -> BTreeMap<String, Vec<u8>> {
    const SIZES: [usize; 7] = [0, 1, 511, 512, 513, 4096, 70_001];
    let mut files = BTreeMap::from([("CTLFile.tlv".to_string(), content(4096, 999))]);
    for i in 0..PHONES {
        let names = boot_files(&device(i));
        files.insert(names[1].clone(), content(SIZES[i % SIZES.len()], i));
        files.insert(names[2].clone(), content(SIZES[(i + 3) % SIZES.len()] + 1024, 1000 + i));
    }
    files
}

/// Serves `served` and runs the storm with `expected` as the bytes to compare against.
fn run_storm(served: &BTreeMap<String, Vec<u8>>, expected: BTreeMap<String, Vec<u8>>) -> StormReport {
    run_storm_in(TransferPort::Ephemeral, served, expected).0
}

/// The storm's report, and the server's counters once it has stopped.
fn run_storm_in(
    transfer_port: TransferPort,
    served: &BTreeMap<String, Vec<u8>>,
    expected: BTreeMap<String, Vec<u8>>,
) -> (StormReport, CounterSnapshot) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let files = served.iter().map(|(name, bytes)| (name.clone(), Arc::from(bytes.as_slice()))).collect();
        let config = ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), transfer_port, ..ServerConfig::default() };
        let server = TftpServer::bind(config, Arc::new(MemoryFiles::new(files))).await.expect("bind 127.0.0.1:0");
        let address = server.local_addr().expect("bound address");
        let counters = server.counters();
        let (shutdown, receiver) = watch::channel(false);
        let task = tokio::spawn(server.run(receiver));
        let plan: Vec<Vec<String>> = (0..PHONES).map(|i| boot_files(&device(i))).collect();
        let report = storm(address, Arc::new(plan), Arc::new(expected), CONCURRENCY).await;
        let _ = shutdown.send(true);
        let _ = task.await;
        (report, counters.snapshot())
    })
}

#[test]
fn twenty_phones_fetch_every_byte_of_their_three_files() {
    twenty_phones_fetch_every_byte_in(TransferPort::Ephemeral);
}

#[test]
fn twenty_phones_fetch_every_byte_of_their_three_files_in_single_port_mode() {
    twenty_phones_fetch_every_byte_in(TransferPort::Listening);
}

fn twenty_phones_fetch_every_byte_in(transfer_port: TransferPort) {
    let files = served_files();
    let (report, server) = run_storm_in(transfer_port, &files, files.clone());
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.files, PHONES * 3);
    let expected_bytes: usize = (0..PHONES).flat_map(|i| boot_files(&device(i))).map(|name| files[&name].len()).sum();
    assert_eq!(report.bytes, expected_bytes as u64, "every byte of every file, the CTL once per phone");

    // The server's own ledger agrees: each of the 60 fetches is one transfer it completed (the client
    // ignores any other, so a late duplicate request cannot complete), and it refused nothing.
    assert_eq!(server.files_served, (PHONES * 3) as u64, "{server:?}");
    assert!(server.bytes_sent >= report.bytes, "{server:?}");
    for refusal in [
        FailureKind::Malformed,
        FailureKind::AccessViolation,
        FailureKind::FileNotFound,
        FailureKind::ClientLimit,
        FailureKind::ServerLimit,
        FailureKind::Io,
    ] {
        assert_eq!(server.failures_of(refusal), 0, "{refusal:?}: {server:?}");
    }

    // One latency per fetched file, each measured from its own request: within the run, and since a
    // phone fetches its files one after another and at most CONCURRENCY phones run at once, together
    // they fill at most CONCURRENCY times the run. A latency taken from the start of the storm, or
    // one fetch counted twice, breaks this bound.
    assert_eq!(report.latencies.len(), PHONES * 3);
    assert!(report.latencies.windows(2).all(|pair| pair[0] <= pair[1]), "the report sorts its latencies");
    assert!(report.latencies.iter().all(|latency| *latency <= report.elapsed), "{:?} in {:?}", report.latencies, report.elapsed);
    let total: std::time::Duration = report.latencies.iter().sum();
    assert!(
        total <= report.elapsed * CONCURRENCY as u32,
        "{total:?} of fetching in {:?} with {CONCURRENCY} phones at once",
        report.elapsed
    );
    // The printed percentiles are nearest-rank over the 60 latencies.
    let last = report.latencies.len() - 1;
    for percent in [0, 50, 99, 100] {
        assert_eq!(report.percentile(percent), report.latencies[last * percent / 100], "p{percent}");
    }
    assert_eq!(report.percentile(100), *report.latencies.iter().max().unwrap());
}

#[test]
fn a_file_with_other_bytes_is_counted_as_a_mismatch() {
    let served = served_files();
    let mut expected = served.clone();
    let tampered = boot_files(&device(3))[2].clone();
    if let Some(bytes) = expected.get_mut(&tampered) {
        bytes[700] ^= 1;
    }
    let report = run_storm(&served, expected);
    assert_eq!(report.mismatches, [tampered]);
    assert_eq!(report.files, PHONES * 3 - 1);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[test]
fn a_missing_file_is_a_failure_and_the_phone_goes_on() {
    let mut served = served_files();
    let expected = served.clone();
    let missing = boot_files(&device(5))[1].clone();
    served.remove(&missing);
    let report = run_storm(&served, expected);
    // The server's ERROR 1, File not found (RFC 1350 §5), not a timeout or any other failure.
    assert_eq!(report.failures, [format!("{missing}: server ERROR {:?}: file not found", ErrorCode::FileNotFound)]);
    assert_eq!(report.files, PHONES * 3 - 1, "the phone still fetches its configuration after the missing ITL");
}

#[test]
fn phones_send_from_distinct_loopback_addresses() {
    let sources: std::collections::BTreeSet<_> = (0..1000).map(phone_source).collect();
    assert_eq!(sources.len(), 1000);
    assert!(sources.iter().all(|s| s.is_loopback()));
}
