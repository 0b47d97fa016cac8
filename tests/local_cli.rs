//! `callguard local` on a copy of the quickstart, fetched with the real tftp-hpa and atftp clients:
//! trust files that verify, signed configurations, the stub of an encrypted phone, negotiated
//! options, a watched edit, an invalid edit that leaves the last good build served, a clean stop on
//! SIGTERM, and a restart that regenerates nothing; an ITL signer rotation asked for while it runs
//! takes both its steps without another edit, each ITL verifying against the one before.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use peers::{TftpGet, file_not_found, require, tftp_hpa_get};
use process::{Running, copy_quickstart, free_tcp_port, free_udp_port};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running `callguard local`, with its TFTP port.
struct Local {
    process: Running,
    port: u16,
}

crate::deref_to_running!(Local);

impl Local {
    fn start(manifests: &Path, state: &Path) -> Local {
        let port = free_udp_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command.args(["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--tftp-port", &port.to_string()]);
        command.args(["--capf-port", &free_tcp_port().to_string(), "--tvs-port", &free_tcp_port().to_string()]);
        Local::spawn(command, port)
    }

    /// Runs `command` (a `callguard local`) whose TFTP server will listen on `port`.
    fn spawn(command: Command, port: u16) -> Local {
        let mut local = Local { process: Running::spawn(command), port };
        local.wait_for("serving TFTP on");
        local
    }

    fn fetch_tftp_hpa(&self, name: &str, out: &Path) -> TftpGet {
        tftp_hpa_get(self.port, name, out)
    }

    fn fetch_atftp(&self, name: &str, out: &Path, options: &[&str]) -> bool {
        let mut command = Command::new("atftp");
        for option in options {
            command.args(["--option", option]);
        }
        command.args(["-g", "-r", name, "-l", out.to_str().unwrap(), "127.0.0.1", &self.port.to_string()]);
        command.output().unwrap().status.success()
    }
}

fn verify(args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_callguard")).arg("trust").arg("verify").args(args).status().unwrap().success()
}

/// Fetches `name` with tftp-hpa until `accept` holds, for up to 15 s.
fn fetch_until(local: &Local, name: &str, out: &Path, accept: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = fs::remove_file(out);
        if local.fetch_tftp_hpa(name, out) == TftpGet::Fetched {
            let bytes = fs::read(out).unwrap();
            if accept(&bytes) {
                return bytes;
            }
        }
        assert!(Instant::now() < deadline, "{name} never reached the expected content");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn local_serves_the_quickstart_over_tftp_and_follows_edits() {
    require("tftp", "tftp-hpa");
    require("atftp", "atftp");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let out = |name: &str| dir.path().join(name);
    let mut local = Local::start(&manifests, &state);
    local.wait_for("CallControlCluster  quickstart       True   Ready");

    // The CTL verifies; a phone's signed configuration verifies against the TFTP record in it.
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &out("ctl.tlv")), TftpGet::Fetched);
    assert!(verify(&[out("ctl.tlv").to_str().unwrap()]));
    assert!(local.fetch_atftp("SEP00AABBCCDD02.cnf.xml.sgn", &out("bob.sgn"), &[]));
    assert!(verify(&[out("bob.sgn").to_str().unwrap(), "--ctl", out("ctl.tlv").to_str().unwrap()]));
    assert!(local.fetch_atftp("ITLFile.tlv", &out("itl.tlv"), &[]));
    assert!(verify(&[out("itl.tlv").to_str().unwrap()]));

    // An encrypted phone's plain name gives the stub, never its configuration (docs/wire-formats.md §5.6).
    assert_eq!(local.fetch_tftp_hpa("SEP001122334455.cnf.xml", &out("lobby.xml")), TftpGet::Fetched);
    let stub = fs::read_to_string(out("lobby.xml")).unwrap();
    assert!(stub.contains("<fullConfig>false</fullConfig>") && !stub.contains("deviceSecurityMode"), "{stub}");
    assert_eq!(
        local.fetch_tftp_hpa("SEP001122334455.cnf.xml.enc.sgn", &out("none")),
        file_not_found(),
        "no certificate yet: no encrypted file"
    );
    // A secure phone's plain configuration is not served at all.
    assert_eq!(local.fetch_tftp_hpa("SEP00AABBCCDD02.cnf.xml", &out("bob.xml")), file_not_found());

    // blksize 1428 and windowsize 8 are honoured (the tftp tests check the OACK itself).
    assert!(local.fetch_atftp("CTLFile.tlv", &out("ctl-big.tlv"), &["blksize 1428", "windowsize 8"]));
    assert_eq!(fs::read(out("ctl-big.tlv")).unwrap(), fs::read(out("ctl.tlv")).unwrap());

    // An edit is applied.
    let phones = manifests.join("phones.yaml");
    let text = fs::read_to_string(&phones).unwrap();
    fs::write(&phones, text.replacen("directoryNumbers: [\"1002\"]", "directoryNumbers: [\"1777\"]", 1)).unwrap();
    let edited = fetch_until(&local, "SEP00AABBCCDD02.cnf.xml.sgn", &out("bob2.sgn"), |b| String::from_utf8_lossy(b).contains("1777"));

    // An invalid edit is reported and the last good build stays served.
    let cluster = manifests.join("cluster.yaml");
    let text = fs::read_to_string(&cluster).unwrap();
    fs::write(&cluster, text.replacen("securityMode: Mixed", "securityMode: Bogus", 1)).unwrap();
    local.wait_for("spec.securityMode: \"Bogus\" is not one of");
    local.wait_for("still serving the last good build");
    assert_eq!(local.fetch_tftp_hpa("SEP00AABBCCDD02.cnf.xml.sgn", &out("bob3.sgn")), TftpGet::Fetched);
    assert_eq!(fs::read(out("bob3.sgn")).unwrap(), edited);
    fs::write(&cluster, text).unwrap();
    local.stop();

    // A restart with the same state directory regenerates nothing: the CTL is byte-identical.
    let mut again = Local::start(&manifests, &state);
    assert!(!again.seen.iter().any(|l| l.contains("created the cluster CA") || l.contains("issued")), "{:?}", again.seen);
    again.wait_for("serving TFTP on");
    assert_eq!(again.fetch_tftp_hpa("CTLFile.tlv", &out("ctl-again.tlv")), TftpGet::Fetched);
    assert_eq!(fs::read(out("ctl-again.tlv")).unwrap(), fs::read(out("ctl.tlv")).unwrap());
    again.stop();
}

/// With no grace period, `local` rebuilds for the rotation's second step by itself: the ITL a
/// phone holds from step 1 (listing the current and the incoming signer) verifies the next one.
#[test]
fn an_itl_signer_rotation_takes_both_steps_while_local_runs() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let out = |name: &str| dir.path().join(name);
    let mut local = Local::start(&manifests, &dir.path().join("state"));
    local.wait_for("CallControlCluster  quickstart       True   Ready");
    assert_eq!(local.fetch_tftp_hpa("ITLFile.tlv", &out("itl-0.tlv")), TftpGet::Fetched);

    let cluster = manifests.join("cluster.yaml");
    let text = fs::read_to_string(&cluster).unwrap();
    let text = text.replacen("  name: quickstart\n", "  name: quickstart\n  annotations:\n    callguard.io/rotate-itl-signer: \"1\"\n", 1);
    fs::write(&cluster, text.replacen("  autoRegistration: false", "  autoRegistration: false\n  rotation:\n    gracePeriodMinutes: 0", 1))
        .unwrap();
    local.wait_for("ITL signer rotation, step 1 of 2");
    local.wait_for("ITL signer rotation, step 2 of 2");
    let before = fs::read(out("itl-0.tlv")).unwrap();
    let signer_of = |bytes: &[u8]| callguard::core::trust::TrustList::parse(bytes, callguard::core::trust::Mode::Strict).unwrap();
    // Step 2's ITL: step 1's (which may still be served when step 2 is logged) lists two signers.
    let last =
        fetch_until(&local, "ITLFile.tlv", &out("itl-2.tlv"), |b| b != before.as_slice() && signer_of(b).sast_records().count() == 1);
    // The last ITL does not verify against the first (its signer is new), so a phone needs step 1's.
    let (first, last) = (signer_of(&before), signer_of(&last));
    assert!(last.verify_against(&first).is_err(), "the signer changed");
    let state = fs::read_to_string(dir.path().join("state/namespaces/default/identity.yaml")).unwrap();
    assert!(state.contains("itlSignerRotationRequest: '1'") && !state.contains("incomingItlSigner"), "{state}");
    local.stop();
}

/// The README's main command, `callguard local examples/quickstart`, gives no port and the
/// quickstart's is 69: without root, 69 is refused and `local` says so and serves on 6969 instead.
#[test]
fn without_root_and_without_a_port_local_falls_back_to_6969() {
    use std::os::unix::fs::PermissionsExt;
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged user must reach the copy and write its state directory.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let binary = env!("CARGO_BIN_EXE_callguard");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        // CI runs as root: drop to nobody, as a user's shell would be.
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
        command
    } else {
        Command::new(binary)
    };
    command.args([
        "local",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--capf-port",
        &free_tcp_port().to_string(),
    ]);
    let mut local = Local::spawn(command, 6969);
    local.wait_for("port 69 (the cluster's spec.ports.tftpPort) needs root or CAP_NET_BIND_SERVICE; serving on 6969 instead");
    let out = dir.path().join("ctl.tlv");
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &out), TftpGet::Fetched, "the CTL is served on 6969");
    assert!(verify(&[out.to_str().unwrap()]), "and verifies");
    local.stop();
}

/// The quickstart as a phone sees it over TFTP, with the default settings: no digest password in any
/// file that is not encrypted, no full configuration of a phone that asked for encryption in a file
/// that is not, the same per-phone trust list for a provisioned MAC as for an unknown one, and the
/// downgrades said in the table.
#[test]
fn the_quickstart_over_tftp_gives_nothing_away_in_clear() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let mut local = Local::start(&manifests, &dir.path().join("state"));
    local.wait_for("warning: Phone/lobby-7970 is downgraded: SecureSrstUnavailable");
    let secrets = ["FakeAlice123", "FakeBob456", "FakeSbcApp789", "example-only"];
    // MAC and whether its profile asks for an encrypted configuration.
    let phones = [
        ("001122334455", true),
        ("00AABBCCDD01", true),
        ("00AABBCCDD02", false),
        ("00AABBCCDD03", true),
        ("00AABBCCDD04", false),
        ("00AABBCCDD05", false),
        ("00AABBCCDD06", true),
    ];
    let out = dir.path().join("file");
    let mut fetched = 0;
    for (mac, asks_encryption) in phones {
        for suffix in [".cnf.xml", ".cnf.xml.sgn", ".cnf.xml.enc.sgn"] {
            let name = format!("SEP{mac}{suffix}");
            let _ = fs::remove_file(&out);
            match local.fetch_tftp_hpa(&name, &out) {
                TftpGet::Fetched => {}
                answer if answer == file_not_found() => continue,
                other => panic!("{name}: {other:?}"),
            }
            fetched += 1;
            let text = String::from_utf8_lossy(&fs::read(&out).unwrap()).into_owned();
            assert!(!suffix.ends_with("enc.sgn"), "no phone of the quickstart has a certificate yet: {name}");
            for secret in secrets {
                assert!(!text.contains(secret), "{name} carries {secret} in clear");
            }
            if asks_encryption {
                assert!(text.contains("<fullConfig>false</fullConfig>") && !text.contains("<fullConfig>true"), "{name}: {text}");
            }
        }
    }
    assert!(fetched >= 10, "the phones' files were fetched ({fetched})");
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &out), TftpGet::Fetched);
    let ctl = fs::read(&out).unwrap();
    for name in ["CTLSEP00AABBCCDD02.tlv", "CTLSEP0000000000FF.tlv"] {
        let _ = fs::remove_file(&out);
        assert_eq!(local.fetch_tftp_hpa(name, &out), TftpGet::Fetched, "{name}");
        assert_eq!(fs::read(&out).unwrap(), ctl, "{name}: the same public bytes, provisioned or not");
    }
    local.stop();
}

/// Runs `command` to its end, or kills it after `seconds`: `None` when it was still running.
fn run_until_exit(mut command: Command, seconds: u64) -> Option<std::process::Output> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("callguard runs");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child.wait_with_output().unwrap())
}

fn callguard_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
    command.args(args);
    with_free_tvs_port(&mut command, args);
    command
}

/// A free TCP port for TVS on every `local`, so that tests running at once do not all ask for 2445.
fn with_free_tvs_port(command: &mut Command, args: &[&str]) {
    if args.first() == Some(&"local") && !args.contains(&"--tvs-port") {
        command.args(["--tvs-port", &free_tcp_port().to_string()]);
    }
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A command run as nobody when the tests run as root, as a user's shell would be.
fn unprivileged(args: &[&str]) -> Command {
    let binary = env!("CARGO_BIN_EXE_callguard");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
        command
    } else {
        Command::new(binary)
    };
    command.args(args);
    with_free_tvs_port(&mut command, args);
    command
}

/// Issue 11, point 8: with the TFTP port taken, `local` says which process holds it, and has
/// written nothing: no CA was issued for a cluster that cannot be served. As root the port is one
/// below 1024, which root may bind: the failure is the address in use, not privileges.
#[test]
fn with_its_port_taken_local_names_the_holder_and_writes_nothing() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let taken = if root {
        (900..1024).rev().find_map(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).ok()).expect("a free port below 1024")
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    };
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let args = ["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--tftp-port", &port.to_string()];
    let output = run_until_exit(callguard_command(&args), 60).expect("local exits");
    let text = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port} is in use by PID {}", std::process::id())), "{text}");
    assert!(!text.contains("need root"), "not a matter of privileges: {text}");
    assert!(!state.exists(), "nothing written before the port is bound");

    // The same when the port comes from the cluster's spec.
    set_spec_tftp_port(&manifests, port);
    let args = ["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()];
    let output = run_until_exit(callguard_command(&args), 60).expect("local exits");
    let text = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("is in use by PID {}", std::process::id())) && text.contains("spec.ports.tftpPort"), "{text}");
    assert!(!state.exists(), "nothing written before the port is bound");
    drop(taken);
}

/// Issue 11, point 8: an explicit port below 1024 without the privilege says what is missing (root
/// or CAP_NET_BIND_SERVICE) and the fallback, and writes nothing.
#[test]
fn without_privileges_an_explicit_low_port_is_refused_before_anything_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let output = run_until_exit(
        unprivileged(&["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--tftp-port", "69"]),
        60,
    )
    .expect("local exits");
    let text = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("CAP_NET_BIND_SERVICE") && text.contains("6969"), "{text}");
    assert!(!state.exists(), "nothing written before the port is bound");
}

/// The cluster's `spec.ports.tftpPort` in a copy of the quickstart, set to `port`.
fn set_spec_tftp_port(manifests: &Path, port: u16) {
    let path = manifests.join("cluster.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("tftpPort:")).expect("the quickstart sets tftpPort").to_owned();
    let indent = &line[..line.len() - line.trim_start().len()];
    fs::write(&path, text.replacen(&line, &format!("{indent}tftpPort: {port}"), 1)).unwrap();
}

/// Issue 11, point 10: the quickstart puts TFTP where phones look, 69 (P.1-16).
#[test]
fn the_quickstart_serves_tftp_on_69() {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/cluster.yaml")).unwrap();
    let cluster: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let port = cluster["spec"]["ports"]["tftpPort"].as_u64();
    assert!(port.is_none() || port == Some(69), "spec.ports.tftpPort: {port:?}");
}

/// Issue 11, point 10: without --tftp-port, `local` listens on the cluster's spec.ports.tftpPort.
/// (A spec that asks for 69 without the privilege falls back to 6969: see above.)
#[test]
fn local_listens_on_the_clusters_tftp_port() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let port = free_udp_port();
    set_spec_tftp_port(&manifests, port);
    let state = dir.path().join("state");
    let capf_port = free_tcp_port().to_string();
    let args = ["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--capf-port", &capf_port];
    let mut local = Local::spawn(callguard_command(&args), port);
    local.wait_for(&format!("serving TFTP on 127.0.0.1:{port}"));
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &dir.path().join("ctl.tlv")), TftpGet::Fetched);
    // A new port in the spec applies at the next start, which `local` points out.
    let other = free_udp_port();
    set_spec_tftp_port(&manifests, other);
    local.wait_for(&format!("spec.ports.tftpPort is now {other}; still serving on {port} until callguard local restarts"));
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &dir.path().join("ctl2.tlv")), TftpGet::Fetched);
    local.stop();
}

/// Issue 11, point 6: one state directory, one writer. A `build` or a second `local` on the state
/// directory a `local` holds exits 2 and names the holder; once it stops, the build runs.
#[test]
fn a_second_local_or_a_build_on_a_held_state_directory_is_refused_with_its_holder() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    let holder = format!("PID {}", local.child.id());
    let build = ["build", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()];
    let output = run_until_exit(callguard_command(&build), 120).expect("build ends");
    let text = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains(&holder) && text.contains("callguard local"), "names the holder: {text}");
    let port = free_udp_port().to_string();
    let capf_port = free_tcp_port().to_string();
    let second =
        ["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--tftp-port", &port, "--capf-port", &capf_port];
    let output = run_until_exit(callguard_command(&second), 60).expect("the second local exits");
    let text = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{text}{}", String::from_utf8_lossy(&output.stdout));
    assert!(text.contains(&holder) && text.contains("callguard local"), "names the holder: {text}");
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &dir.path().join("ctl.tlv")), TftpGet::Fetched, "the holder keeps serving");
    local.stop();
    let output = run_until_exit(callguard_command(&build), 120).expect("build ends");
    assert_eq!(output.status.code(), Some(0), "free again: {}", stderr_of(&output));
}

/// A phone's LSC issued by the state's cluster CA, and its key in `dir`.
fn lsc_for(state: &Path, device: &str, dir: &Path) -> (PathBuf, Vec<u8>) {
    let (key, lsc) = process::lsc_from_state(state, device);
    let key_path = dir.join(format!("{device}.key"));
    fs::write(&key_path, callguard::core::pki::keys::pkcs8_pem(&key)).unwrap();
    (key_path, lsc)
}

/// Issue 11, point 7: a certificate added with `callguard device add-cert`, or written into the
/// state's `devices/` by hand, is served within seconds: the phone's `.enc.sgn` appears, encrypted
/// for that certificate, without an edit of the manifests.
#[test]
fn a_device_certificate_added_while_local_runs_is_served_within_seconds() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let out = |name: &str| dir.path().join(name);
    let mut local = Local::start(&manifests, &state);
    local.wait_for("CallControlCluster  quickstart       True   Ready");
    let lobby = "SEP001122334455.cnf.xml.enc.sgn";
    assert_eq!(local.fetch_tftp_hpa(lobby, &out("none")), file_not_found(), "no certificate yet");

    let (key, lsc) = lsc_for(&state, "SEP001122334455", dir.path());
    let (lsc_file, encrypted, ctl) = (out("lsc.der"), out("lobby.enc.sgn"), out("ctl.tlv"));
    fs::write(&lsc_file, &lsc).unwrap();
    let add = ["device", "add-cert", "--state-dir", state.to_str().unwrap(), "--device", "SEP001122334455", lsc_file.to_str().unwrap()];
    let output = run_until_exit(callguard_command(&add), 60).expect("add-cert ends");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let started = Instant::now();
    fetch_until(&local, lobby, &encrypted, |_| true);
    assert!(started.elapsed() < Duration::from_secs(10), "served after {:?}", started.elapsed());
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &ctl), TftpGet::Fetched);
    let decrypt = ["trust", "decrypt", encrypted.to_str().unwrap(), "--key", key.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()];
    let output = run_until_exit(callguard_command(&decrypt), 60).expect("decrypt ends");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("<fullConfig>true</fullConfig>"));

    // By hand, PEM or DER: the same.
    let (_, lsc) = lsc_for(&state, "SEP00AABBCCDD06", dir.path());
    fs::write(state.join("namespaces/default/devices/SEP00AABBCCDD06.crt"), &lsc).unwrap();
    fetch_until(&local, "SEP00AABBCCDD06.cnf.xml.enc.sgn", &out("backoffice.enc.sgn"), |_| true);
    local.stop();
}

/// Issue 11, point 9: a fix after an invalid edit says so, with the time; removing a file says what
/// went; each TFTP request is logged at debug level with its client, file, result and bytes.
#[test]
fn local_says_valid_again_what_a_removed_file_dropped_and_logs_requests_at_debug() {
    require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let port = free_udp_port();
    let mut command = callguard_command(&["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
    command.args([
        "--tftp-port",
        &port.to_string(),
        "--capf-port",
        &free_tcp_port().to_string(),
        "--log-level",
        "callguard::services::tftp=debug",
    ]);
    let mut local = Local::spawn(command, port);
    local.wait_for("CallControlCluster  quickstart       True   Ready");

    let out = dir.path().join("ctl.tlv");
    assert_eq!(local.fetch_tftp_hpa("CTLFile.tlv", &out), TftpGet::Fetched);
    let size = fs::metadata(&out).unwrap().len();
    let line = local.wait_for("file=CTLFile.tlv");
    assert!(line.contains("client=127.0.0.1:") && line.contains("result=sent") && line.contains(&format!("bytes={size}")), "{line}");
    assert_eq!(local.fetch_tftp_hpa("SEP0000000000AA.cnf.xml.sgn", &dir.path().join("none")), file_not_found());
    let line = local.wait_for("file=SEP0000000000AA.cnf.xml.sgn");
    assert!(line.contains("client=127.0.0.1:") && line.contains("result=FileNotFound"), "{line}");

    let cluster = manifests.join("cluster.yaml");
    let text = fs::read_to_string(&cluster).unwrap();
    fs::write(&cluster, text.replacen("securityMode: Mixed", "securityMode: Bogus", 1)).unwrap();
    local.wait_for("still serving the last good build");
    fs::write(&cluster, text).unwrap();
    let line = local.wait_for("valid again");
    let clock = regex::Regex::new(r"\b\d\d:\d\d:\d\d\b").unwrap();
    assert!(clock.is_match(&line), "with the time: {line}");

    fs::remove_file(manifests.join("trunk.yaml")).unwrap();
    let line = local.wait_for("object(s) went");
    assert!(line.contains("2 object(s) went") && line.contains("1 SipTrunk") && line.contains("1 SipTrunkSecurityProfile"), "{line}");
    local.stop();
}
