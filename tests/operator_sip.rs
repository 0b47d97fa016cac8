//! Signaling through the operator, against the in-process API server with RBAC enforced for the
//! pods: the operator writes the SIP StatefulSet (a pod per node that runs CallManager), its Role,
//! its Service and the sharded projection of the SIP directory. `callguard serve sip` runs with the
//! StatefulSet's own arguments under the SIP ServiceAccount, as pod 0 and as pod 1: each presents its
//! own node's CallManager certificate over TLS. sipp (Debian `sip-tester`) registers line 2001 with
//! digest over UDP and `/metrics` counts the binding; a password changed in its Secret is served
//! without a restart: the old one gets 403, the new one 200. `callguard serve media` runs with the
//! media Deployment's arguments under its own ServiceAccount, and a call between two lines gets
//! its legs from it over the pinned control interface, released at the BYE.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
#[path = "support/sipp.rs"]
mod sipp;
#[path = "support/cluster.rs"]
mod support;
use process::{Running, free_tcp_port, free_udp_and_tcp_port};
use sipp::{fixture, retrying_bind, sipp_to};
use support::*;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Secret;

/// `callguard serve sip` as pod `ordinal` of the StatefulSet, with its arguments, on loopback ports.
struct ServeSip {
    process: Running,
    port: u16,
    tls_port: u16,
    metrics_port: u16,
}

crate::deref_to_running!(ServeSip);

impl ServeSip {
    fn start(kubeconfig: &Path, args: &[String], ordinal: usize) -> ServeSip {
        assert_eq!(&args[..2], ["serve", "sip"]);
        let kept = without_listening_options(&args[2..]);
        let (port, tls_port, metrics_port) = (free_udp_and_tcp_port(), free_tcp_port(), free_tcp_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["serve", "sip"])
            .args(&kept)
            .args(["--namespace", NAMESPACE, "--bind", "127.0.0.1", "--port", &port.to_string(), "--tls-port", &tls_port.to_string()])
            .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("quickstart-sip-{ordinal}"));
        let mut sip = ServeSip { process: Running::spawn(command), port, tls_port, metrics_port };
        sip.wait_for("serving SIP on");
        sip
    }

    /// sipp's verdict on `scenario` for `line` over UDP with these credentials.
    fn sipp(&self, scenario: &str, line: &str, user: &str, password: &str) -> (i32, String) {
        retrying_bind(|| sipp_to(self.port, scenario, "u1", line, Some((user, password)), free_udp_and_tcp_port(), &[]).wait())
    }

    fn metrics(&self) -> String {
        scrape(self.metrics_port)
    }

    /// The subject of the certificate SIP-TLS presents, as `openssl s_client` prints it.
    fn tls_subject(&self) -> String {
        peers::require("openssl", "openssl");
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.tls_port), "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        text.lines().find(|l| l.starts_with("Peer certificate:")).unwrap_or_else(|| panic!("no peer certificate in: {text}")).to_owned()
    }
}

/// `callguard serve media` with the Deployment's arguments, on loopback.
struct ServeMedia {
    process: Running,
    control_port: u16,
    metrics_port: u16,
}

crate::deref_to_running!(ServeMedia);

impl ServeMedia {
    fn start(kubeconfig: &Path, args: &[String]) -> ServeMedia {
        assert_eq!(&args[..2], ["serve", "media"]);
        let kept = without_listening_options(&args[2..]);
        let (control_port, metrics_port) = (free_tcp_port(), free_tcp_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["serve", "media"])
            .args(&kept)
            .args(["--namespace", NAMESPACE, "--bind", "127.0.0.1", "--advertise", "127.0.0.1", "--port", &control_port.to_string()])
            .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
            .env("KUBECONFIG", kubeconfig);
        let mut media = ServeMedia { process: Running::spawn(command), control_port, metrics_port };
        media.wait_for("relaying media on");
        media
    }
}

/// A pod's arguments but for where it listens, which the test picks.
fn without_listening_options(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if ["--bind", "--port", "--tls-port", "--metrics-bind"].contains(&arg.as_str()) {
            rest.next();
        } else {
            kept.push(arg.clone());
        }
    }
    kept
}

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn stateful_set(server: &FakeApiServer) -> serde_json::Value {
    server.get("apps/v1", "StatefulSet", Some(NAMESPACE), "quickstart-sip").expect("the SIP StatefulSet")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_signaling_pod_serves_the_projection_as_its_node_and_follows_a_changed_password() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    objects.extend(manifests(&fixture("sip-lab")));
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    // The objects are applied one after another: waiting for one of them alone races the rest.
    let kinds = [("apps/v1", "StatefulSet"), ("v1", "Secret"), ("v1", "Service"), ("rbac.authorization.k8s.io/v1", "Role")];
    until("the cluster Ready with every SIP object", || {
        is_ready(&cluster(&server)) && kinds.iter().all(|(api, kind)| server.get(api, kind, Some(NAMESPACE), "quickstart-sip").is_some())
    })
    .await;

    let set = stateful_set(&server);
    assert_eq!(set["spec"]["replicas"], 2, "cm1 and cm2 run CallManager");
    let template = &set["spec"]["template"];
    let tftp = server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").unwrap();
    assert_eq!(
        template["metadata"]["annotations"], tftp["spec"]["template"]["metadata"]["annotations"],
        "rolled by the same certificate digest as the other pods"
    );
    let args: Vec<String> = serde_json::from_value(template["spec"]["containers"][0]["args"].clone()).unwrap();
    let certificates: Vec<&String> = args.windows(2).filter(|w| w[0] == "--certificate-secret").map(|w| &w[1]).collect();
    assert_eq!(certificates.len(), 2, "{args:?}");
    let role = server.get("rbac.authorization.k8s.io/v1", "Role", Some(NAMESPACE), "quickstart-sip").unwrap();
    let readable: Vec<String> = serde_json::from_value(role["rules"][0]["resourceNames"].clone()).unwrap();
    assert!(readable.iter().any(|n| n == "quickstart-sip") && readable.iter().any(|n| n == "quickstart-sip-0"), "{readable:?}");
    assert!(certificates.iter().all(|c| readable.contains(c)), "{readable:?}");
    assert!(!readable.iter().any(|n| n == "quickstart-ca" || n.contains("digest")), "no CA key, no user Secret: {readable:?}");
    let service = server.get("v1", "Service", Some(NAMESPACE), "quickstart-sip").unwrap();
    let ports: Vec<(String, i64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["protocol"].as_str().unwrap().into(), p["port"].as_i64().unwrap()))
        .collect();
    assert!(
        ports.contains(&("UDP".into(), 5060)) && ports.contains(&("TCP".into(), 5060)) && ports.contains(&("TCP".into(), 5061)),
        "{ports:?}"
    );

    // The relay, under its own ServiceAccount, with the Deployment's arguments.
    let relay = server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-media").expect("the media Deployment");
    let media_args: Vec<String> = serde_json::from_value(relay["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
    assert_eq!(relay["spec"]["template"]["spec"]["hostNetwork"], true, "RTP on the node's own address");
    server.authenticate_as_service_account("media-pod", NAMESPACE, "quickstart-media");
    let dir = tempfile::tempdir().unwrap();
    let media_kubeconfig = dir.path().join("media-kubeconfig");
    std::fs::write(&media_kubeconfig, server.kubeconfig("media-pod")).unwrap();
    let media = tokio::task::spawn_blocking(move || ServeMedia::start(&media_kubeconfig, &media_args)).await.unwrap();
    // The SIP pods reach it through its headless Service; here, on loopback.
    let target = args.windows(2).find(|w| w[0] == "--media-relay").map(|w| w[1].clone()).expect("SIP is told where the relays are");
    assert_eq!(target, "quickstart-media.default.svc:2233");
    let args: Vec<String> = args.into_iter().map(|a| if a == target { format!("127.0.0.1:{}", media.control_port) } else { a }).collect();

    server.authenticate_as_service_account("sip-pod", NAMESPACE, "quickstart-sip");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("sip-pod")).unwrap();
    let (first, second) = tokio::task::spawn_blocking({
        let (kubeconfig, args) = (kubeconfig.clone(), args.clone());
        move || (ServeSip::start(&kubeconfig, &args, 0), ServeSip::start(&kubeconfig, &args, 1))
    })
    .await
    .unwrap();
    let first = tokio::task::spawn_blocking(move || {
        assert!(first.tls_subject().contains("cm1.quickstart.example"), "pod 0 is cm1: {}", first.tls_subject());
        assert!(second.tls_subject().contains("cm2.quickstart.example"), "pod 1 is cm2: {}", second.tls_subject());
        let (status, errors) = first.sipp("register-digest.xml", "2001", "carol", "FakeCarol123");
        assert_eq!(status, 0, "sipp: {errors}");
        let metrics = first.metrics();
        assert!(metrics.contains("callguard_sip_bindings 1\n"), "{metrics}");
        assert!(metrics.contains("callguard_sip_registrations_total 1\n"), "{metrics}");
        // What `kubectl exec … -- callguard sip registrations --serving` prints in pod 0 (the first
        // to start here holds the name; in a cluster each pod has its own network namespace).
        let asked = Command::new(env!("CARGO_BIN_EXE_callguard")).args(["sip", "registrations", "--serving"]).output().unwrap();
        let table = String::from_utf8_lossy(&asked.stdout);
        assert!(asked.status.success(), "{table}{}", String::from_utf8_lossy(&asked.stderr));
        let row = table.lines().find(|l| l.starts_with("2001 ")).unwrap_or_else(|| panic!("line 2001 registered: {table}"));
        assert!(row.contains("UDP") && row.contains("127.0.0.1:"), "{row}");

        // A call from 2001 to 2002: its legs come from the relay pod, and go back at the BYE.
        let callee_port = free_udp_and_tcp_port();
        let (status, errors) =
            sipp_to(first.port, "register-digest.xml", "u1", "2002", Some(("dave", "FakeDave123")), callee_port, &[]).wait();
        assert_eq!(status, 0, "registering the callee: {errors}");
        let callee = sipp_to(first.port, "call-uas.xml", "u1", "2002", None, callee_port, &[]);
        std::thread::sleep(Duration::from_millis(500));
        let caller = sipp_to(
            first.port,
            "call-uac.xml",
            "u1",
            "2001",
            Some(("carol", "FakeCarol123")),
            free_udp_and_tcp_port(),
            &["-key", "callee", "2002"],
        );
        let (status, errors) = caller.wait();
        assert_eq!(status, 0, "the caller: {errors}");
        assert_eq!(callee.wait().0, 0, "the callee");
        let deadline = Instant::now() + Duration::from_secs(10);
        let relayed = loop {
            let text = scrape(media.metrics_port);
            if text.contains("callguard_media_calls_active 0\n") || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Over UDP no key may pass (P.1-6): an unencrypted call, its legs released at the BYE.
        assert!(relayed.contains("callguard_media_calls_total{security=\"unencrypted\"} 1\n"), "{relayed}");
        assert!(relayed.contains("callguard_media_calls_active 0\n"), "{relayed}");
        drop(media);
        first
    })
    .await
    .unwrap();

    // A new password: the operator projects it, the running pod serves it.
    let secrets: kube::Api<Secret> = kube::Api::namespaced(server.client(), NAMESPACE);
    let patch = serde_json::json!({"data": {"digestCredentials": k8s_openapi::ByteString(b"FakeCarol456".to_vec())}});
    secrets.patch("carol-digest", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, errors) = first.sipp("register-digest.xml", "2001", "carol", "FakeCarol456");
            if status == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the new password never worked: {errors}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let (status, errors) = first.sipp("register-wrong-password.xml", "2001", "carol", "FakeCarol123");
        assert_eq!(status, 0, "the old password is refused: {errors}");
    })
    .await
    .unwrap();
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}
