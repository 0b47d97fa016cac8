//! SIP inside `callguard local`, driven by sipp (Debian `sip-tester`) over real UDP and TCP: the
//! quickstart plus tests/fixtures/sip-lab, whose Non Secure phones 2001 and 2002 register with digest
//! over UDP and 2003 over TCP (Table 5-2). A REGISTER is answered 401 with the realm's challenge and
//! 200 with the binding once sipp answers it with the EndUser's credentials (P.8-5); a wrong password
//! gets 403; a line whose phone is Authenticated (1002, TLS only) gets 403 over UDP and TCP, and a
//! UDP phone's line over TCP too. A call from 2001 to 2002 goes through the proxy: the INVITE is
//! challenged, the callee sees the proxy's Record-Route and no `a=crypto` (neither leg is TLS,
//! P.1-6), the answer loses its `a=crypto` too, ACK and BYE follow the route. sipp's exit status is
//! the verdict: 0 when every step of the scenario saw what it expects. A missing sipp fails the test.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
#[path = "support/sipp.rs"]
mod sipp;
use process::{Running, free_tcp_port, free_udp_and_tcp_port, free_udp_port};
use sipp::{Sipp, fixture, retrying_bind, sipp_to};

use std::path::Path;
use std::process::Command;

/// A running `callguard local` with the SIP lab on a free SIP port.
struct Local {
    process: Running,
    sip_port: u16,
    _state: tempfile::TempDir,
    _extra: Option<tempfile::TempDir>,
}

crate::deref_to_running!(Local);

impl Local {
    fn start() -> Local {
        Local::start_with(None)
    }

    /// With the manifests of `extra` too.
    fn start_with(extra: Option<tempfile::TempDir>) -> Local {
        let state = tempfile::tempdir().unwrap();
        let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        // SIP needs one port free for both UDP and TCP.
        let sip_port = free_udp_and_tcp_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["local", quickstart.to_str().unwrap(), fixture("sip-lab").to_str().unwrap()])
            .args(extra.iter().map(|dir| dir.path().to_str().unwrap().to_owned()))
            .args(["--state-dir", state.path().to_str().unwrap()])
            .args(["--tftp-port", &free_udp_port().to_string(), "--capf-port", &free_tcp_port().to_string()])
            .args(["--tvs-port", &free_tcp_port().to_string(), "--est-port", &free_tcp_port().to_string()])
            .args(["--sip-port", &sip_port.to_string(), "--sip-tls-port", &free_tcp_port().to_string()]);
        let mut local = Local { process: Running::spawn(command), sip_port, _state: state, _extra: extra };
        let line = local.wait_for("serving SIP on");
        assert!(line.contains(&format!("127.0.0.1:{sip_port} (UDP and TCP)")), "{line}");
        local.wait_for("serving TFTP on");
        local
    }

    /// Runs `scenario` once with sipp over `transport` (`u1` UDP, `t1` TCP) for `line`, with the
    /// digest credentials `user`/`password`; sipp's exit status and its error log.
    fn sipp(&self, scenario: &str, transport: &str, line: &str, credentials: Option<(&str, &str)>) -> (i32, String) {
        retrying_bind(|| self.sipp_with(scenario, transport, line, credentials, free_udp_and_tcp_port(), &[]).wait())
    }

    /// Starts sipp with `scenario` from local port `port`, with `extra` arguments.
    fn sipp_with(&self, scenario: &str, transport: &str, line: &str, credentials: Option<(&str, &str)>, port: u16, extra: &[&str]) -> Sipp {
        sipp_to(self.sip_port, scenario, transport, line, credentials, port, extra)
    }
}

#[test]
fn sipp_registers_over_udp_with_digest() {
    let local = Local::start();
    let (status, errors) = local.sipp("register-digest.xml", "u1", "2001", Some(("carol", "FakeCarol123")));
    assert_eq!(status, 0, "sipp: {errors}");
    // `callguard sip registrations` shows the binding within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let table = loop {
        let output = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["sip", "registrations", "--state-dir", local._state.path().to_str().unwrap()])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        if table.lines().any(|l| l.starts_with("2001 ")) {
            break table;
        }
        assert!(std::time::Instant::now() < deadline, "no 2001 in: {table}{}", String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let row = table.lines().find(|l| l.starts_with("2001 ")).unwrap();
    assert!(row.contains("SEP0000000C2001") && row.contains("UDP") && row.contains("127.0.0.1:"), "{table}");
    assert!(table.starts_with("LINE"), "{table}");
}

#[test]
fn sip_registrations_says_when_no_local_served_sip() {
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(state.path().join("namespaces/default")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["sip", "registrations", "--state-dir", state.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no callguard local has served SIP for namespace default"), "{stderr}");
}

#[test]
fn sipp_registers_over_tcp_with_digest() {
    let local = Local::start();
    let (status, errors) = local.sipp("register-digest.xml", "t1", "2003", Some(("erin", "FakeErin123")));
    assert_eq!(status, 0, "sipp: {errors}");
}

#[test]
fn a_wrong_password_is_refused_with_403() {
    let local = Local::start();
    let (status, errors) = local.sipp("register-wrong-password.xml", "u1", "2001", Some(("carol", "FakeCarol124")));
    assert_eq!(status, 0, "sipp: {errors}");
    // Another user's right password is wrong for this line.
    let (status, errors) = local.sipp("register-wrong-password.xml", "t1", "2003", Some(("carol", "FakeCarol123")));
    assert_eq!(status, 0, "sipp: {errors}");
}

#[test]
fn an_authenticated_phones_line_is_refused_over_udp_and_tcp() {
    let local = Local::start();
    for transport in ["u1", "t1"] {
        let (status, errors) = local.sipp("register-forbidden.xml", transport, "1002", None);
        assert_eq!(status, 0, "{transport}: sipp: {errors}");
    }
    // A UDP phone's line over TCP, and a TCP phone's over UDP.
    assert_eq!(local.sipp("register-forbidden.xml", "t1", "2001", None).0, 0, "2001 is UDP only");
    assert_eq!(local.sipp("register-forbidden.xml", "u1", "2003", None).0, 0, "2003 is TCP only");
    // The scenario can fail: a line that may register is challenged, not refused.
    let (status, _) = local.sipp("register-forbidden.xml", "u1", "2001", None);
    assert_ne!(status, 0, "2001 over UDP is challenged, not refused");
}

#[test]
fn a_call_between_two_registered_phones_goes_through_the_proxy_without_srtp_keys() {
    let local = Local::start();
    // The callee registers from the port its answering sipp then listens on.
    let callee_port = free_udp_port();
    let (status, errors) = local.sipp_with("register-digest.xml", "u1", "2002", Some(("dave", "FakeDave123")), callee_port, &[]).wait();
    assert_eq!(status, 0, "registering the callee: {errors}");
    let callee = local.sipp_with("call-uas.xml", "u1", "2002", None, callee_port, &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let caller =
        local.sipp_with("call-uac.xml", "u1", "2001", Some(("carol", "FakeCarol123")), free_udp_port(), &["-key", "callee", "2002"]);
    let (status, errors) = caller.wait();
    assert_eq!(status, 0, "the caller: {errors}");
    let (status, errors) = callee.wait();
    assert_eq!(status, 0, "the callee: {errors}");
}

// ---------------------------------------------------------------------------------------------------------------
// Trunks (Table 14-1): a TCP+UDP trunk whose peer is 127.0.0.1, on an incoming port of its own, with
// digest and the application user "gateway"; each Accept flag of the profile, and the application
// user's, as the case needs.

/// The Accept flags, in Table 14-1's order: presence, out-of-dialog REFER, unsolicited NOTIFY, Replaces.
type Flags = [bool; 4];

/// A `callguard local` with the trunk: its profile accepts `profile`, its application user
/// `application`; application-level authorization on. The trunk's incoming port.
fn start_with_trunk(profile: Flags, application: Flags) -> (Local, u16) {
    let port = free_udp_and_tcp_port();
    let flags = |f: Flags| {
        format!(
            "acceptPresenceSubscription: {}\n  acceptOutOfDialogRefer: {}\n  acceptUnsolicitedNotification: {}\n  acceptHeaderReplacement: {}",
            f[0], f[1], f[2], f[3]
        )
    };
    let manifests = format!(
        "apiVersion: callguard.io/v1alpha1\nkind: SipTrunkSecurityProfile\nmetadata:\n  name: gateway-plain\nspec:\n  \
         incomingTransportType: TCPAndUDP\n  outgoingTransportType: UDP\n  incomingPort: {port}\n  \
         enableDigestAuthentication: true\n  enableApplicationLevelAuthorization: true\n  {}\n---\n\
         apiVersion: callguard.io/v1alpha1\nkind: ApplicationUser\nmetadata:\n  name: gateway\nspec:\n  \
         userId: gateway\n  digestCredentials: {{name: gateway-digest, key: digestCredentials}}\n  sipAuthorization:\n    {}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: gateway-digest, labels: {{callguard.io/watch: \"true\"}}}}\n\
         stringData: {{digestCredentials: FakeGateway123}}\n---\n\
         apiVersion: callguard.io/v1alpha1\nkind: SipTrunk\nmetadata:\n  name: gateway\nspec:\n  securityProfileRef: gateway-plain\n  \
         destinations:\n    - {{address: 127.0.0.1, port: 5060}}\n  applicationUserRefs: [gateway]\n",
        flags(profile),
        flags(application).replace("\n  ", "\n    ")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trunk.yaml"), manifests).unwrap();
    let mut local = Local::start_with(Some(dir));
    let line = local.wait_for("serving SIP on");
    assert!(line.contains(&format!("trunks on 127.0.0.1:{port} (UDP and TCP)")), "{line}");
    (local, port)
}

const ALL: Flags = [true; 4];
const NONE: Flags = [false; 4];

impl Local {
    /// `scenario` from the trunk's peer to the trunk's port `port`, for `method` with the header line
    /// `extra`, answering challenges as the application user.
    fn trunk_sipp(&self, port: u16, scenario: &str, method: &str, extra: &str) -> (i32, String) {
        // sipp takes no keyword for a request's method: the scenario is written out with it.
        let template = std::fs::read_to_string(fixture("sipp").join(scenario)).unwrap();
        let written = tempfile::tempdir().unwrap();
        let path = written.path().join(scenario);
        std::fs::write(&path, template.replace("[method]", method)).unwrap();
        let args = ["-key", "extra", extra];
        retrying_bind(|| {
            sipp_to(port, path.to_str().unwrap(), "u1", "1001", Some(("gateway", "FakeGateway123")), free_udp_and_tcp_port(), &args).wait()
        })
    }
}

/// Each case: refused by the profile's flag alone (403 before any challenge), then, with the flag
/// ticked for both the trunk and its application user, past every check (the service then answers
/// 501, or routes an INVITE).
fn check_feature(index: usize, method: &str, extra: &str, accepted: &str) {
    let mut closed = ALL;
    closed[index] = false;
    let (local, port) = start_with_trunk(closed, ALL);
    let (status, errors) = local.trunk_sipp(port, "trunk-refused.xml", method, extra);
    assert_eq!(status, 0, "unticked on the profile, refused although the application user may: {errors}");
    drop(local);
    let (local, port) = start_with_trunk(ALL, ALL);
    let (status, errors) = local.trunk_sipp(port, accepted, method, extra);
    assert_eq!(status, 0, "ticked on both: accepted: {errors}");
}

#[test]
fn a_trunks_presence_subscription_follows_accept_presence_subscription() {
    check_feature(0, "SUBSCRIBE", "Event: presence", "trunk-authorized.xml");
}

#[test]
fn a_trunks_out_of_dialog_refer_follows_accept_out_of_dialog_refer() {
    check_feature(1, "REFER", "Refer-To: <sip:1001@127.0.0.1>", "trunk-authorized.xml");
}

#[test]
fn a_trunks_unsolicited_notify_follows_accept_unsolicited_notification() {
    check_feature(2, "NOTIFY", "Event: message-summary", "trunk-authorized.xml");
}

#[test]
fn a_trunks_replaces_header_follows_accept_header_replacement() {
    check_feature(3, "INVITE", "Replaces: 12345@127.0.0.1;to-tag=1;from-tag=2", "trunk-invite-accepted.xml");
}

/// Application-level authorization: the trunk accepts presence, its application user may not: 403
/// once digest has named the user.
#[test]
fn application_level_authorization_refuses_what_the_application_user_lacks() {
    let (local, port) = start_with_trunk(ALL, NONE);
    let (status, errors) = local.trunk_sipp(port, "trunk-app-refused.xml", "SUBSCRIBE", "Event: presence");
    assert_eq!(status, 0, "{errors}");
    // A request no flag gates passes with digest alone.
    let (status, errors) = local.trunk_sipp(port, "trunk-authorized.xml", "OPTIONS", "Accept: application/sdp");
    assert_eq!(status, 0, "{errors}");
}
