//! What the tests that run `callguard local` or `callguard serve` share: free ports, a copy of the
//! quickstart to edit, and a running process whose output lines are collected as they come.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn free_udp_port() -> u16 {
    not_given_before(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// A free TCP port, so that tests running at once do not all ask for 3804, 2445 or 8443.
pub fn free_tcp_port() -> u16 {
    not_given_before(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// A port from `pick` that this test process has not handed out yet: the kernel may give the port
/// just released again, and two services of one command line would then ask for the same one.
fn not_given_before(pick: impl Fn() -> u16) -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = pick();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A copy of `examples/quickstart` under `dir`, for a test to edit.
pub fn copy_quickstart(dir: &Path) -> PathBuf {
    let manifests = dir.join("quickstart");
    fs::create_dir(&manifests).unwrap();
    for entry in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), manifests.join(entry.file_name())).unwrap();
    }
    manifests
}

/// A port free for UDP and TCP both: SIP's, and sipp's for `-t t1`.
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let port = free_udp_port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `callguard enroll` against the EST server of a `local` on `est_port` whose CA is `ca`, with
/// `args` (`--device D --secret-file F`, or `--reenroll --cert C`); the key and LSC land in `key`
/// and `out`.
pub fn enroll(est_port: u16, ca: &Path, args: &[&str], key: &Path, out: &Path) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .arg("enroll")
        .args(["--server", &format!("https://127.0.0.1:{est_port}"), "--ca-file", ca.to_str().unwrap()])
        .args(args)
        .args(["--key", key.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "callguard enroll {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Replaces the `nth` (from 0) occurrence of `from` in `file` of the manifests.
pub fn edit_manifest(manifests: &Path, file: &str, from: &str, to: &str, nth: usize) {
    let path = manifests.join(file);
    let text = fs::read_to_string(&path).unwrap();
    let at = text.match_indices(from).nth(nth).unwrap_or_else(|| panic!("{file} has no occurrence {nth} of {from:?}")).0;
    fs::write(&path, format!("{}{to}{}", &text[..at], &text[at + from.len()..])).unwrap();
}

/// A phone certificate (LSC) for `device` issued by the cluster CA of a state directory that `local`
/// or `build` wrote for namespace `default`, with its key.
pub fn lsc_from_state(state: &Path, device: &str) -> (rsa::RsaPrivateKey, Vec<u8>) {
    use rsa::pkcs8::EncodePublicKey;
    let ca = callguard::core::pki::ca::ClusterCa::from_pem(
        &fs::read_to_string(state.join("namespaces/default/ca/ca.crt")).unwrap(),
        &fs::read_to_string(state.join("namespaces/default/ca/ca.key")).unwrap(),
    )
    .unwrap();
    let key = callguard::core::pki::keys::generate_rsa(2048);
    let spki = rsa::RsaPublicKey::from(&key).to_public_key_der().unwrap();
    let request = callguard::core::pki::issue::LscRequest {
        device_name: device,
        key: callguard::core::pki::issue::LscKeySource::PublicKey(spki.as_bytes()),
        validity_days: 365,
        serial: callguard::core::pki::serial::Serial::random(&mut rand::thread_rng()),
        now: time::OffsetDateTime::now_utc(),
    };
    let lsc = callguard::core::pki::issue::issue_lsc(&ca, &request).unwrap().certificate_der;
    (key, lsc)
}

/// A process whose stdout and stderr lines are collected as they come; killed when dropped.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("callguard runs");
        let (sender, lines) = mpsc::channel();
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = sender.send(line);
                }
            });
        }
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits up to 60 s for an output line containing `needle`; runs of spaces match any run, so that
    /// a table row is found whatever its column widths.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let squash = |text: &str| text.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
        let needle = squash(needle);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.seen.iter().find(|l| squash(l).contains(&needle)) {
                return line.clone();
            }
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {needle:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every line so far.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// SIGTERM, then the exit, which must be 0 within 20 s; returns every line it printed.
    pub fn stop(&mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the process exits 0 on SIGTERM: {status}");
                // Its last lines may still be on their way through the reader threads.
                std::thread::sleep(Duration::from_millis(200));
                return self.output();
            }
            assert!(Instant::now() < deadline, "the process did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what its processes said: the cause is often there, not in the assertion.
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(100));
            let output = self.output();
            let tail: Vec<&str> = output.lines().rev().take(300).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- {:?}, last {} lines of its output ---\n{}", self.child.id(), tail.len(), tail.join("\n"));
        }
    }
}

/// `Deref` and `DerefMut` from a test's wrapper of a running `callguard local` (its field
/// `process`) to the [`Running`] inside, so that `local.wait_for(...)` reads as it should.
#[macro_export]
macro_rules! deref_to_running {
    ($wrapper:ty) => {
        impl std::ops::Deref for $wrapper {
            type Target = process::Running;
            fn deref(&self) -> &process::Running {
                &self.process
            }
        }

        impl std::ops::DerefMut for $wrapper {
            fn deref_mut(&mut self) -> &mut process::Running {
                &mut self.process
            }
        }
    };
}
