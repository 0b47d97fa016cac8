//! SIP-TLS inside `callguard local`, driven by pjsua2 (PJSIP's Python binding, tests/pjsua2/phone.py)
//! as real phones: the quickstart plus tests/fixtures/pjsua2-lab, whose Encrypted phones 3001 and
//! 3002 get their LSCs over EST with their authentication strings (`callguard enroll`, Table 6-2)
//! and register over mutual TLS with digest (Table 5-2, P.8-5). The SIP directory follows each LSC
//! EST issues: the new one registers, the one it replaced is refused. A REGISTER is refused 403
//! without a client certificate, with another phone's LSC and with a wrong password; a digest
//! answer that arrives after its nonce expired is answered 401 `stale=true`, and pjsua registers on
//! the new nonce. A call between the two Encrypted phones keeps its SRTP keys (`a=crypto`) and is
//! logged Encrypted; a call from one to the quickstart's Non Secure 1005 over UDP loses them and is
//! logged NonSecure (P.1-6). pjsua2 lives in the venv scripts/test makes (target/pjsua2-venv, or
//! $CALLGUARD_PJSUA2_VENV): when it is missing the test fails, it does not skip.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use process::{Running, free_tcp_port, free_udp_and_tcp_port, free_udp_port};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A phone of tests/fixtures/pjsua2-lab.
struct Softphone {
    subject: &'static str,
    device: &'static str,
    line: &'static str,
    user: &'static str,
    password: &'static str,
    /// Its authentication string, the one-time EST secret.
    secret: &'static str,
}

const FRANK: Softphone = Softphone {
    subject: "Phone/softphone-frank",
    device: "SEP0000000F3001",
    line: "3001",
    user: "frank",
    password: "FakeFrank123",
    secret: "13572468",
};

const GRACE: Softphone = Softphone {
    subject: "Phone/softphone-grace",
    device: "SEP0000000A3002",
    line: "3002",
    user: "grace",
    password: "FakeGrace123",
    secret: "24681357",
};

/// A certificate and its key, PEM files.
#[derive(Clone)]
struct Credentials {
    cert: PathBuf,
    key: PathBuf,
}

/// A running `callguard local` on free ports, logging the SIP service's events (registrations,
/// refusals and their reasons, answered calls and their security).
struct Local {
    process: Running,
    sip_port: u16,
    tls_port: u16,
    est_port: u16,
    dir: tempfile::TempDir,
}

crate::deref_to_running!(Local);

impl Local {
    fn start() -> Local {
        // A missing pjsua2 fails the test before anything starts.
        python();
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (sip_port, tls_port, est_port) = (free_udp_and_tcp_port(), free_tcp_port(), free_tcp_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .arg("local")
            .args([root.join("examples/quickstart"), root.join("tests/fixtures/pjsua2-lab")])
            .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
            .args(["--tftp-port", &free_udp_port().to_string(), "--capf-port", &free_tcp_port().to_string()])
            .args(["--tvs-port", &free_tcp_port().to_string(), "--est-port", &est_port.to_string()])
            .args(["--sip-port", &sip_port.to_string(), "--sip-tls-port", &tls_port.to_string()])
            .args(["--log-level", "callguard::services::sip=info,callguard::services::media=info"]);
        let mut local = Local { process: Running::spawn(command), sip_port, tls_port, est_port, dir };
        let line = local.wait_for("serving SIP on");
        assert!(line.contains(&format!("127.0.0.1:{tls_port} (TLS)")), "{line}");
        local.wait_for("serving EST on");
        local.wait_for("serving TFTP on");
        local
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("state/namespaces/default/ca/ca.crt")
    }

    /// `callguard enroll` for `phone`: a new key, and an LSC by its authentication string.
    fn enroll(&self, phone: &Softphone) -> Credentials {
        let secret = self.dir.path().join(format!("{}.secret", phone.user));
        std::fs::write(&secret, format!("{}\n", phone.secret)).unwrap();
        let issued = Credentials {
            cert: self.dir.path().join(format!("{}.crt", phone.user)),
            key: self.dir.path().join(format!("{}.key", phone.user)),
        };
        self.enroll_with(&["--device", phone.device, "--secret-file", secret.to_str().unwrap()], &issued);
        issued
    }

    /// `callguard enroll --reenroll` with `current`: a new LSC for the same key.
    fn reenroll(&self, phone: &Softphone, current: &Credentials) -> Credentials {
        let renewed = Credentials { cert: self.dir.path().join(format!("{}-renewed.crt", phone.user)), key: current.key.clone() };
        self.enroll_with(&["--reenroll", "--cert", current.cert.to_str().unwrap()], &renewed);
        renewed
    }

    fn enroll_with(&self, args: &[&str], out: &Credentials) {
        process::enroll(self.est_port, &self.ca(), args, &out.key, &out.cert);
    }

    /// A pjsua2 phone registering `line` over TLS, with `credentials` as its client certificate
    /// and `digest` as its user and password.
    fn tls_phone(&self, line: &str, credentials: Option<&Credentials>, digest: Option<(&str, &str)>) -> Vec<String> {
        let mut args = vec!["--transport".to_owned(), "tls".into(), "--line".into(), line.into()];
        args.extend(["--registrar".into(), format!("127.0.0.1:{}", self.tls_port)]);
        // pjsua checks the server's certificate (the node's, for 127.0.0.1) against the cluster CA.
        args.extend(["--ca".into(), self.ca().to_str().unwrap().into()]);
        if let Some(credentials) = credentials {
            args.extend([
                "--cert".into(),
                credentials.cert.to_str().unwrap().into(),
                "--key".into(),
                credentials.key.to_str().unwrap().into(),
            ]);
        }
        if let Some((user, password)) = digest {
            args.extend(["--user".into(), user.into(), "--password".into(), password.into()]);
        }
        args
    }

    /// `phone` over TLS with its credentials and digest user.
    fn phone_args(&self, phone: &Softphone, credentials: &Credentials) -> Vec<String> {
        self.tls_phone(phone.line, Some(credentials), Some((phone.user, phone.password)))
    }

    /// Registers `phone` until it gets 200, for up to 20 s: `local` rebuilds its SIP directory once
    /// EST has written the LSC (state `devices/`), and only then knows it as the phone's current
    /// one. Every earlier answer must be the refusal of an LSC not yet current.
    fn register_when_known(&self, phone: &Softphone, credentials: &Credentials) -> Pjsua {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = Pjsua::run(&self.phone_args(phone, credentials));
            if run.has("registration 200 OK") {
                return run;
            }
            assert!(run.has("registration 403") && run.says("not its current one"), "{}: {run}", phone.line);
            assert!(Instant::now() < deadline, "the SIP directory never took {}'s new LSC: {run}", phone.device);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The Python of the venv that holds pjsua2; fails the test, saying how to make it, when there is
/// none.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("CALLGUARD_PJSUA2_VENV").map_or_else(|| root.join("target/pjsua2-venv"), PathBuf::from);
    let python = venv.join("bin/python");
    let how = "scripts/test makes it; or by hand: python3 -m venv target/pjsua2-venv && \
               target/pjsua2-venv/bin/pip install --require-hashes -r tests/pjsua2/requirements.txt";
    assert!(python.exists(), "pjsua2 is missing: no venv at {} ({how})", venv.display());
    let import = Command::new(&python).args(["-c", "import pjsua2"]).output().unwrap();
    assert!(import.status.success(), "pjsua2 is missing from {}: {} ({how})", venv.display(), String::from_utf8_lossy(&import.stderr));
    python
}

/// One run of tests/pjsua2/phone.py: what it said on stdout (its fact lines), and PJSIP's log.
struct Pjsua {
    lines: Vec<String>,
    log: String,
}

/// The words that open phone.py's fact lines; PJSIP prints a few lines of its own before its log
/// goes to the file.
const FACTS: [&str; 12] =
    ["registration", "warning", "challenge", "incoming", "call", "media", "rtp", "rtp-after", "injected", "ready", "done", "timeout"];

impl Pjsua {
    fn start(args: &[String]) -> (Running, tempfile::TempDir) {
        let logs = tempfile::tempdir().unwrap();
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pjsua2/phone.py");
        let mut command = Command::new(python());
        command.arg(driver).args(args).args(["--timeout", "25", "--log", logs.path().join("pjsip.log").to_str().unwrap()]);
        (Running::spawn(command), logs)
    }

    /// Waits for the end of a run (phone.py stops itself after 25 s; it is killed after 40).
    fn finish(mut process: Running, logs: tempfile::TempDir) -> Pjsua {
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Its last lines may still be on their way through the reader threads.
        std::thread::sleep(Duration::from_millis(100));
        let output = process.output();
        let lines = output.lines().filter(|l| FACTS.iter().any(|f| l.split(' ').next() == Some(f))).map(str::to_owned).collect();
        let run = Pjsua { lines, log: std::fs::read_to_string(logs.path().join("pjsip.log")).unwrap_or_default() };
        assert!(status.is_some_and(|s| s.success()) && run.has("done"), "phone.py did not run to its end ({status:?}):\n{output}\n{run}");
        run
    }

    fn run(args: &[String]) -> Pjsua {
        let (process, logs) = Pjsua::start(args);
        Pjsua::finish(process, logs)
    }

    /// Whether a fact line starts with `fact`.
    fn has(&self, fact: &str) -> bool {
        self.lines.iter().any(|l| l.starts_with(fact))
    }

    /// Whether a fact line contains `text`.
    fn says(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }

    /// The RTP packets its audio stream received and sent, a second into the call.
    fn rtp(&self) -> (u64, u64) {
        let line = self.lines.iter().find_map(|l| l.strip_prefix("rtp ")).unwrap_or_else(|| panic!("no RTP counts: {self}"));
        let count = |name: &str| line.split(' ').find_map(|w| w.strip_prefix(name)).and_then(|n| n.parse().ok()).unwrap_or(0);
        (count("rx="), count("tx="))
    }

    /// Where its audio stream sends RTP, as its SDP negotiation left it.
    fn remote_media(&self) -> std::net::SocketAddr {
        let line = self.lines.iter().find(|l| l.starts_with("media ")).unwrap_or_else(|| panic!("no media: {self}"));
        line.split(' ').find_map(|w| w.strip_prefix("remote=")).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    /// The final answers to its REGISTERs, in order.
    fn registrations(&self) -> Vec<&str> {
        self.lines.iter().filter_map(|l| l.strip_prefix("registration ")).collect()
    }
}

impl std::fmt::Display for Pjsua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every SIP message PJSIP sent and received (one summary line each), then the end of its log.
        let messages: Vec<&str> =
            self.log.lines().filter(|l| l.contains(" msg ") && (l.starts_with("TX ") || l.starts_with("RX "))).collect();
        let tail: Vec<&str> = self.log.lines().rev().take(40).collect();
        write!(
            f,
            "{}\n--- PJSIP's messages ---\n{}\n--- PJSIP log, last lines ---\n{}",
            self.lines.join("\n"),
            messages.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

#[test]
fn pjsua2_registers_over_mutual_tls_with_its_enrolled_lsc_and_digest_and_the_replaced_lsc_is_refused() {
    let mut local = Local::start();
    let first = local.enroll(&FRANK);
    let run = local.register_when_known(&FRANK, &first);
    // Challenged first, then 200 on the digest answer.
    assert!(run.has("challenge REGISTER 401 stale=false"), "{run}");
    assert_eq!(run.registrations(), ["200 OK"], "{run}");
    let line = local.wait_for("registered");
    assert!(line.contains(FRANK.subject) && line.contains("transport=TLS"), "{line}");

    // Re-enrolled by its current LSC: the new one registers, the one it replaced no longer does.
    let renewed = local.reenroll(&FRANK, &first);
    local.register_when_known(&FRANK, &renewed);
    let run = Pjsua::run(&local.phone_args(&FRANK, &first));
    assert_eq!(run.registrations(), ["403 Forbidden"], "{run}");
    assert!(run.has(&format!("warning 399 callguard \"{} presented an LSC that is not its current one", FRANK.device)), "{run}");
    let line = local.wait_for("reason=\"lsc_not_current\"");
    assert!(line.contains(&format!("line=\"{}\"", FRANK.line)), "{line}");
}

#[test]
fn pjsua2_is_refused_without_a_certificate_with_another_phones_and_with_a_wrong_password() {
    let mut local = Local::start();
    let frank = local.enroll(&FRANK);
    let grace = local.enroll(&GRACE);
    local.register_when_known(&FRANK, &frank);
    local.register_when_known(&GRACE, &grace);

    // No client certificate: 403 before any challenge.
    let run = Pjsua::run(&local.tls_phone(FRANK.line, None, Some((FRANK.user, FRANK.password))));
    assert_eq!(run.registrations(), ["403 Forbidden"], "{run}");
    assert!(!run.has("challenge"), "refused before digest: {run}");
    assert!(run.has("warning 399 callguard \"no client certificate"), "{run}");
    local.wait_for("reason=\"no_certificate\"");

    // Grace's current LSC for Frank's line, with Frank's digest user: 403.
    let run = Pjsua::run(&local.tls_phone(FRANK.line, Some(&grace), Some((FRANK.user, FRANK.password))));
    assert_eq!(run.registrations(), ["403 Forbidden"], "{run}");
    let names = format!("the certificate names {}, but the request is for {}", GRACE.device, FRANK.device);
    assert!(run.has(&format!("warning 399 callguard \"{names}\"")), "{run}");
    local.wait_for("reason=\"other_device\"");

    // Frank's LSC, a wrong password: challenged, then 403.
    let run = Pjsua::run(&local.tls_phone(FRANK.line, Some(&frank), Some((FRANK.user, "FakeFrank124"))));
    assert!(run.has("challenge REGISTER 401 stale=false"), "{run}");
    assert_eq!(run.registrations(), ["403 Forbidden"], "{run}");
    assert!(run.has("warning 399 callguard \"wrong digest response (password)\""), "{run}");
    let line = local.wait_for("REGISTER refused: wrong digest response");
    assert!(line.contains(FRANK.subject), "{line}");
}

#[test]
fn a_digest_answer_on_an_expired_nonce_gets_stale_true_and_pjsua2_registers_on_the_new_nonce() {
    let local = Local::start();
    let frank = local.enroll(&FRANK);
    local.register_when_known(&FRANK, &frank);
    // Registered, then again with the answer held 4 s on its way: the profile's nonce lives 3 s.
    let mut args = local.phone_args(&FRANK, &frank);
    args.extend(["--stale-after".into(), "4".into()]);
    let run = Pjsua::run(&args);
    assert_eq!(run.registrations(), ["200 OK", "200 OK"], "{run}");
    let challenges: Vec<&str> = run.lines.iter().filter(|l| l.starts_with("challenge REGISTER")).map(String::as_str).collect();
    // The first REGISTER's challenge, the second's, then stale=true for the answer held past its
    // nonce's life (the last one, if any, is that of the REGISTER that unregisters at the end).
    let expected = ["challenge REGISTER 401 stale=false", "challenge REGISTER 401 stale=false", "challenge REGISTER 401 stale=true"];
    assert_eq!(challenges.get(..3), Some(&expected[..]), "{run}");
    let stale = run.lines.iter().position(|l| l.ends_with("stale=true")).unwrap();
    assert_eq!(run.lines[stale + 1], "registration 200 OK", "the answer on the new nonce is taken: {run}");
    // Callguard says why, too.
    let mut local = local;
    let line = local.wait_for("challenged again with stale=true");
    assert!(line.contains("Phone/softphone-frank") && line.contains("REGISTER"), "{line}");
}

/// Each end sends its RTP to a port of the relay (the quickstart leaves `spec.media` at its
/// defaults, 16384 to 32766), and hears the other end: 50 frames a second each way, of which a
/// loaded machine may delay some past the count.
fn assert_media_through_the_relay(run: &Pjsua) {
    let remote = run.remote_media();
    assert!(remote.ip().is_loopback() && (16384..=32766).contains(&remote.port()), "not the relay's: {remote}\n{run}");
    let (received, sent) = run.rtp();
    assert!(received >= 10 && sent >= 10, "audio each way: rx={received} tx={sent}\n{run}");
}

/// Registers the callee with `callee_args` and has it answer; `caller_args` then calls `target`.
/// The caller's and the callee's runs.
fn call(callee_args: Vec<String>, caller_args: Vec<String>, target: &str) -> (Pjsua, Pjsua) {
    let mut callee_args = callee_args;
    callee_args.push("--answer".into());
    let (mut callee, callee_logs) = Pjsua::start(&callee_args);
    callee.wait_for("ready");
    let mut caller_args = caller_args;
    caller_args.extend(["--call".into(), target.into()]);
    let caller = Pjsua::run(&caller_args);
    // Shown only when the test fails (the harness captures it): the callee's end may need it.
    eprintln!("--- the caller's run ---\n{caller}");
    (caller, Pjsua::finish(callee, callee_logs))
}

/// Frank and Grace, Encrypted, enrolled and registered: the arguments of each (Grace the callee)
/// with SRTP mandatory, so that a call between them connects only if the keys pass.
fn encrypted_pair(local: &Local) -> (Vec<String>, Vec<String>) {
    let frank = local.enroll(&FRANK);
    let grace = local.enroll(&GRACE);
    local.register_when_known(&FRANK, &frank);
    local.register_when_known(&GRACE, &grace);
    let srtp = |mut args: Vec<String>| {
        args.extend(["--srtp".into(), "mandatory".into()]);
        args
    };
    (srtp(local.phone_args(&FRANK, &frank)), srtp(local.phone_args(&GRACE, &grace)))
}

#[test]
fn a_call_between_two_encrypted_pjsua2_phones_keeps_its_srtp_keys_and_is_reported_encrypted() {
    let mut local = Local::start();
    let (frank, grace) = encrypted_pair(&local);
    let (caller, callee) = call(grace, frank, GRACE.line);
    assert!(caller.has("challenge INVITE 401"), "the INVITE is challenged like the REGISTER: {caller}");
    assert!(callee.has("incoming crypto=yes"), "{callee}");
    for run in [&caller, &callee] {
        assert!(run.has("call CONFIRMED 200") && run.has("call DISCONNECTED"), "{run}");
        assert!(run.has("media proto=RTP/SAVP crypto=yes"), "{run}");
        assert_media_through_the_relay(run);
    }
    let line = local.wait_for("call answered");
    assert!(line.contains(&format!("from={} to={} security=Encrypted", FRANK.subject, GRACE.subject)), "{line}");
}

/// The callee of an encrypted call also sends plain RTP from its own media port: the relay drops
/// every such packet and counts them, and the caller's SRTP never sees one (PJSIP would log each
/// packet it failed to unprotect), while the call's SRTP flows both ways (P.1-20).
#[test]
fn plain_rtp_from_one_end_of_an_encrypted_call_is_not_bridged() {
    let mut local = Local::start();
    let (frank, mut grace) = encrypted_pair(&local);
    grace.extend(["--inject-plain-rtp".into(), "50".into()]);
    let (caller, callee) = call(grace, frank, GRACE.line);
    assert!(callee.has("injected 50"), "{callee}");
    for run in [&caller, &callee] {
        assert!(run.has("media proto=RTP/SAVP crypto=yes"), "{run}");
        assert_media_through_the_relay(run);
    }
    assert!(!caller.log.contains("Failed to unprotect"), "plain RTP reached the caller's SRTP: {caller}");
    let line = local.wait_for("media released");
    let dropped: u64 = line
        .split(" dropped as not SRTP")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(dropped >= 50, "every injected packet dropped: {line}");
}

/// A re-INVITE two seconds into an encrypted call: its offer and answer are pointed at the same
/// relay legs, the relay takes the new SDP (address, key), and SRTP flows on through it.
#[test]
fn a_reinvite_keeps_an_encrypted_call_on_the_relay() {
    let local = Local::start();
    let (mut frank, grace) = encrypted_pair(&local);
    frank.push("--reinvite".into());
    let (caller, callee) = call(grace, frank, GRACE.line);
    let again = caller.lines.iter().find(|l| l.starts_with("media again")).unwrap_or_else(|| panic!("no re-INVITE: {caller}"));
    let remote: std::net::SocketAddr = again.split("remote=").nth(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{again}"));
    assert_eq!(remote, caller.remote_media(), "the same leg after the re-INVITE: {caller}");
    // PJSIP makes the stream anew at the re-INVITE: its counts start again.
    let after =
        caller.lines.iter().find_map(|l| l.strip_prefix("rtp-after rx=")).and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok());
    let after = after.unwrap_or_else(|| panic!("no counts after the re-INVITE: {caller}"));
    assert!(after >= 25, "SRTP kept flowing through the relay after the re-INVITE: rx={after}\n{caller}");
    assert!(!caller.log.contains("Failed to unprotect") && !callee.log.contains("Failed to unprotect"), "{caller}\n{callee}");
    assert!(callee.has("call DISCONNECTED"), "{callee}");
}

#[test]
fn a_call_from_an_encrypted_phone_to_a_non_secure_one_loses_its_srtp_keys_and_is_reported_non_secure() {
    let mut local = Local::start();
    let frank = local.enroll(&FRANK);
    local.register_when_known(&FRANK, &frank);
    // The quickstart's conference phone: Non Secure, UDP, no digest.
    let callee = vec![
        "--transport".into(),
        "udp".into(),
        "--line".into(),
        "1005".into(),
        "--registrar".into(),
        format!("127.0.0.1:{}", local.sip_port),
    ];
    let mut caller = local.phone_args(&FRANK, &frank);
    // SRTP offered, not required: the callee's leg is not TLS, so the keys cannot pass.
    caller.extend(["--srtp".into(), "optional".into()]);
    let (caller, callee) = call(callee, caller, "1005");
    assert!(callee.has("registration 200 OK") && callee.has("incoming crypto=no"), "{callee}");
    for run in [&caller, &callee] {
        assert!(run.has("call CONFIRMED 200") && run.has("call DISCONNECTED"), "{run}");
        assert!(run.has("media proto=RTP/AVP crypto=no"), "{run}");
        assert_media_through_the_relay(run);
    }
    assert!(caller.log.contains("a=crypto:"), "the caller did offer keys: {caller}");
    local.wait_for("a=crypto removed from the offer");
    let line = local.wait_for("call answered");
    assert!(line.contains(&format!("from={} to=Phone/conference-7912 security=NonSecure", FRANK.subject)), "{line}");
}
