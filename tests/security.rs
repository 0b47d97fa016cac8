//! The security model, attack by attack, against the real controller and the in-process API server
//! with Kubernetes RBAC enforced for the data-plane pod:
//! - every Role and ClusterRole the chart and the operator write, and the Secrets each could read or
//!   write: no data-plane identity reads a token's key or password; of the data plane only CAPF reads
//!   the CA key (it issues LSCs) and writes, only the keys of its record Secrets; TFTP and TVS read
//!   their projections alone, and the TFTP pod serves under its Role alone;
//! - a phone the operator stalls is not served;
//! - losing the CA, the published trust lists, or both with the CA Secret, stalls the cluster with
//!   no new key, the pods keep serving, and only the explicit action makes a new identity;
//! - a wrong token password is counted even when every apply fails;
//! - a locked or compromised token's certificate is refused under another name;
//! - the operator reads only the Secrets it owns or is pointed at, in the namespaces it manages;
//! - a downgraded phone says so in a condition and an event;
//! - the operator under the chart's own RBAC, scoped and cluster-wide, makes no request it refuses.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/cluster.rs"]
mod support;
use peers::require;
use support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Verb};
use serde_json::{Value, json};

/// What no data-plane identity may read: the tokens' keys and passwords, the token registry.
const NEVER_FOR_THE_DATA_PLANE: [&str; 5] =
    ["token-primary", "token-primary-password", "token-backup", "token-backup-password", "quickstart-tokens"];
/// What only CAPF reads of the data plane: the CA key, which issues LSCs, and the CAPF certificate's key.
const ONLY_FOR_CAPF: [&str; 2] = ["quickstart-ca", "quickstart-cm1-capf"];

/// Waits until the operator has written nothing for a second and a half: a reconcile in flight
/// would otherwise apply what it read before the test's next edit.
async fn settle(server: &FakeApiServer) {
    let mut seen = server.writes().len();
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = server.writes().len();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// How many reconciles the operator has run: each lists the namespace's SipRealms, which nothing
/// else lists once the watches run.
fn reconciles(server: &FakeApiServer) -> usize {
    server
        .reads()
        .iter()
        // The ConfigMaps the cluster owns, less the projections: a list only a reconcile makes (the
        // Callguard objects come from the watch caches).
        .filter(|r| {
            r.verb == fake_apiserver::Verb::List
                && r.resource == "configmaps"
                && r.namespace.as_deref() == Some(NAMESPACE)
                && r.label_selector.as_deref().is_some_and(|selector| selector.contains("!="))
        })
        .count()
}

/// Makes the operator reconcile the cluster, and waits until one such reconcile has ended: a label
/// on the cluster changes twice, and the reconcile the second change starts begins only after the
/// first one's has finished (a controller never runs two reconciles of one object at once). What
/// was not written by then, a whole reconcile of the current state did not write. No sleep.
async fn reconciled_again(server: &FakeApiServer) {
    for _ in 0..2 {
        let before = reconciles(server);
        let nudge = format!("{before}");
        edit(server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| {
            c["metadata"]["labels"]["test.callguard.io/nudge"] = json!(nudge)
        })
        .await;
        until("a reconcile after the nudge", || reconciles(server) > before).await;
    }
}

async fn ready_quickstart(server: &FakeApiServer) -> (callguard::ops::shutdown::Shutdown, tokio::task::JoinHandle<Result<(), String>>) {
    let running = quickstart_ready(server, "operator").await;
    until("the projection", || server.get("v1", "Secret", Some(NAMESPACE), "quickstart-tftp-files").is_some()).await;
    settle(server).await;
    running
}

fn helm() -> std::path::PathBuf {
    let helm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/helm");
    assert!(helm.exists(), "helm is missing at {}: ./scripts/chart-check installs it (scripts/test runs it first)", helm.display());
    helm
}

/// The RBAC objects of the chart rendered as release `release` with `settings`.
fn chart_rbac(release: &str, settings: &[&str]) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/callguard");
    let mut command = std::process::Command::new(helm());
    command.args(["template", release]).arg(&chart).args(["--namespace", "callguard-system"]);
    for setting in settings {
        command.args(["--set", setting]);
    }
    let output = command.output().expect("helm runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| Value::deserialize(document).ok())
        .filter(|d| matches!(d["kind"].as_str(), Some("Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding")))
        .collect()
}

use serde::Deserialize;

/// Every ServiceAccount some binding in the server names, as `namespace/name`.
fn bound_service_accounts(server: &FakeApiServer) -> BTreeSet<(String, String)> {
    let mut bindings = server.list("rbac.authorization.k8s.io/v1", "RoleBinding", None);
    bindings.extend(server.list("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", None));
    bindings
        .iter()
        .flat_map(|b| {
            let namespace = b["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            b["subjects"].as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["kind"] == "ServiceAccount").map(move |s| {
                (s["namespace"].as_str().map(str::to_owned).unwrap_or_else(|| namespace.clone()), s["name"].as_str().unwrap().to_owned())
            })
        })
        .collect()
}

/// The operator under the chart's own RBAC, as each kind of release installs it (its namespaces
/// only, and cluster scope), with leader election: the quickstart becomes Ready and not one of its
/// requests is refused, so that a rule missing from the chart fails here and not in a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_needs_no_permission_the_chart_does_not_grant() {
    for (release, settings, namespaces) in
        // Two replicas: the chart grants the Lease only when they elect a leader.
        [
            ("scoped", &["rbac.namespaces={default}", "replicaCount=2"][..], vec![NAMESPACE.to_owned()]),
            ("clusterwide", &["rbac.scope=cluster", "replicaCount=2"], vec![]),
        ]
    {
        let server = FakeApiServer::start().await;
        load(&server, quickstart());
        for object in chart_rbac(release, settings) {
            server.insert(object).expect("the chart's RBAC object is stored");
        }
        let account = format!("{release}-callguard");
        let identity = format!("callguard-system/{account}");
        server.authenticate_as_service_account(&identity, "callguard-system", &account);
        let mut options = options(&identity, true);
        options.lease_namespace = "callguard-system".into();
        options.namespaces = namespaces;
        let (shutdown, operator) = start_operator_with(&server, options);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !is_ready(&cluster(&server)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        settle(&server).await;
        let refused_reads: Vec<String> =
            server.reads().iter().filter(|r| r.forbidden).map(|r| format!("{:?} {}", r.verb, r.path)).collect();
        let refused_writes: Vec<String> =
            server.writes().iter().filter(|w| w.status == 403).map(|w| format!("{:?} {}", w.verb, w.path)).collect();
        assert!(refused_reads.is_empty() && refused_writes.is_empty(), "{release}: refused {refused_reads:?} {refused_writes:?}");
        assert!(is_ready(&cluster(&server)), "{release}: the cluster is Ready: {}", cluster(&server)["status"]);
        assert!(
            server.writes().iter().any(|w| w.resource == "leases.coordination.k8s.io" && w.status < 300),
            "{release}: it took the Lease"
        );
        shutdown.trigger();
        operator.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_plane_identity_reads_a_key_it_does_not_use() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = ready_quickstart(&server).await;
    // The chart in both scopes, as two releases side by side, managing the quickstart's namespace.
    let mut rbac = chart_rbac("scoped", &["rbac.namespaces={default}", "replicaCount=2"]);
    rbac.extend(chart_rbac("clusterwide", &["rbac.scope=cluster"]));
    for object in rbac {
        server.insert(object).expect("the chart's RBAC object is stored");
    }

    let secrets: Vec<String> =
        server.list("v1", "Secret", Some(NAMESPACE)).iter().map(|s| s["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    let mut readable: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (namespace, name) in bound_service_accounts(&server) {
        let identity = format!("{namespace}/{name}");
        server.authenticate_as_service_account(&identity, &namespace, &name);
        let can_list = server.can(&identity, "list", "", "secrets", Some(NAMESPACE), None);
        let reads = secrets
            .iter()
            .filter(|secret| can_list || server.can(&identity, "get", "", "secrets", Some(NAMESPACE), Some(secret)))
            .cloned()
            .collect();
        readable.insert(identity, reads);
    }
    println!("Secrets of namespace {NAMESPACE} each identity could read:");
    for (identity, secrets) in &readable {
        println!("  {identity}: {}", secrets.iter().cloned().collect::<Vec<_>>().join(", "));
    }

    let operators = ["callguard-system/scoped-callguard", "callguard-system/clusterwide-callguard"];
    for operator in operators {
        assert_eq!(readable.get(operator).map(BTreeSet::len), Some(secrets.len()), "the operator ({operator}) reads its namespace");
    }
    let data_plane: Vec<&String> = readable.keys().filter(|identity| !operators.contains(&identity.as_str())).collect();
    assert_eq!(
        data_plane,
        [
            "default/quickstart-capf",
            "default/quickstart-media",
            "default/quickstart-sip",
            "default/quickstart-tftp",
            "default/quickstart-tvs"
        ],
        "the data-plane identities"
    );
    let tftp = &readable["default/quickstart-tftp"];
    let pod_args = tftp_pod_args(&server);
    let arg = |name: &str| pod_args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone()).unwrap();
    assert!(tftp.contains(&arg("--signer-secret")) && tftp.contains(&arg("--files-secret")), "{tftp:?}");
    assert!(tftp.iter().all(|s| *s == arg("--signer-secret") || s.starts_with("quickstart-tftp-files")), "only what it serves: {tftp:?}");
    let records: BTreeSet<String> = secrets.iter().filter(|s| s.starts_with("quickstart-capf-records-")).cloned().collect();
    assert_eq!(
        records.len(),
        3,
        "a record Secret for each of the quickstart's two phones and one CTI instance with a CAPF operation: {records:?}"
    );
    let capf_reads: BTreeSet<String> =
        ["quickstart-ca", "quickstart-cm1-capf", "quickstart-capf"].map(String::from).into_iter().chain(records.clone()).collect();
    assert_eq!(readable["default/quickstart-capf"], capf_reads, "CAPF reads the CA, its certificate, its projection and its records");
    assert_eq!(readable["default/quickstart-tvs"], BTreeSet::from(["quickstart-tvs".to_owned()]), "TVS reads its projection alone");
    // SIP: its projection (index and shards) and the certificates of the nodes that run CallManager,
    // which SIP-TLS presents; both quickstart nodes also run TFTP, so theirs is the one certificate
    // of the two functions (P.1-11); and its media control key, with which it drives the relays.
    let sip_reads: BTreeSet<String> = [
        "quickstart-sip",
        "quickstart-sip-0",
        "quickstart-cm1-callmanager-tftp",
        "quickstart-cm2-callmanager-tftp",
        "quickstart-media-client",
    ]
    .map(String::from)
    .into_iter()
    .collect();
    assert_eq!(readable["default/quickstart-sip"], sip_reads, "SIP reads its projection and the CallManager certificates");
    // The relay: its control key alone; no phone's credentials, no CA, not the SIP side's key.
    assert_eq!(
        readable["default/quickstart-media"],
        BTreeSet::from(["quickstart-media-relay".to_owned()]),
        "the relay reads its key alone"
    );
    // And the key in it is TVS's own (ITL role 21), not the TFTP signer's, which signs the ITL.
    let certificate = |secret: &str| decoded(&object(&server, "Secret", secret), "data", "tls.crt");
    assert_eq!(certificate("quickstart-tvs"), certificate("quickstart-cm1-tvs"));
    assert_ne!(certificate("quickstart-tvs"), certificate(&arg("--signer-secret")), "the TVS pod holds no signing key");
    for (identity, reads) in readable.iter().filter(|(identity, _)| data_plane.contains(identity)) {
        for secret in NEVER_FOR_THE_DATA_PLANE {
            assert!(secrets.contains(&secret.to_owned()), "{secret} exists in the quickstart");
            assert!(!reads.contains(secret), "{identity} must not read {secret}");
        }
        for secret in ONLY_FOR_CAPF.iter().filter(|_| identity.as_str() != "default/quickstart-capf") {
            assert!(!reads.contains(*secret), "{identity} must not read {secret}");
        }
        // Writes: CAPF's record Secrets, by CAPF, and nothing else; no data-plane identity creates a Secret.
        let writable: BTreeSet<String> =
            secrets.iter().filter(|s| server.can(identity, "patch", "", "secrets", Some(NAMESPACE), Some(s))).cloned().collect();
        let expected = if identity.as_str() == "default/quickstart-capf" { records.clone() } else { BTreeSet::new() };
        assert_eq!(writable, expected, "what {identity} may write");
        assert!(!server.can(identity, "create", "", "secrets", Some(NAMESPACE), None), "{identity} creates no Secret");
        assert!(!server.can(identity, "update", "", "secrets", Some(NAMESPACE), Some("quickstart-ca")), "{identity} rewrites no CA");
    }
    let namespaced_operator = "callguard-system/scoped-callguard";
    assert!(!server.can(namespaced_operator, "get", "", "secrets", Some("elsewhere"), Some("anything")), "nothing outside its namespaces");

    // The pod serves under its Role alone, and the API refuses it the CA key.
    server.authenticate_as_service_account("tftp-pod", NAMESPACE, "quickstart-tftp");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("tftp-pod")).unwrap();
    let served = tokio::task::spawn_blocking(move || {
        let tftp = ServeTftp::start(&kubeconfig, &pod_args);
        (tftp.bytes("CTLFile.tlv"), tftp.bytes("SEP00AABBCCDD04.cnf.xml.sgn"))
    })
    .await
    .unwrap();
    assert!(served.0.is_some() && served.1.is_some(), "the pod serves with its Role: {served:?}");
    let as_pod: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(server.client_as("tftp-pod"), NAMESPACE);
    let refused = as_pod.get("quickstart-ca").await.expect_err("the CA key is refused");
    assert!(matches!(refused, kube::Error::Api(ref e) if e.code == 403), "{refused:?}");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// A pod started for the quickstart's TFTP signer and projection, with full rights.
async fn serve_tftp(server: &FakeApiServer, dir: &Path) -> ServeTftp {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("tftp-pod")).unwrap();
    let pod_args = tftp_pod_args(server);
    tokio::task::spawn_blocking(move || ServeTftp::start(&kubeconfig, &pod_args)).await.unwrap()
}

async fn fetch(tftp: &ServeTftp, name: &str) -> Option<Vec<u8>> {
    let (port, name) = (tftp.port, name.to_owned());
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("file");
        match peers::tftp_hpa_get(port, &name, &out) {
            peers::TftpGet::Fetched => Some(std::fs::read(&out).unwrap()),
            answer if answer == peers::file_not_found() => None,
            other => panic!("{name}: {other:?}"),
        }
    })
    .await
    .unwrap()
}

async fn delete(server: &FakeApiServer, api_version: &str, kind: &str, plural: &str, name: &str) {
    dynamic(server, api_version, kind, plural)
        .delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete {kind}/{name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_the_operator_stalls_is_not_served() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = ready_quickstart(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let tftp = serve_tftp(&server, dir.path()).await;
    let hallway = "SEP00AABBCCDD04.cnf.xml.sgn";
    let before = fetch(&tftp, hallway).await.expect("the hallway phone's file");

    // An edit that the cross-object rules refuse: a new line on a profile that does not exist.
    edit(&server, "Phone", "phones", "hallway-7911", |phone| {
        phone["spec"]["directoryNumbers"] = json!(["1999"]);
        phone["spec"]["securityProfileRef"] = json!("no-such-profile");
    })
    .await;
    until("the cluster to stall", || condition(&cluster(&server), "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    reconciled_again(&server).await;
    let after = fetch(&tftp, hallway).await.expect("still served");
    assert_eq!(after, before, "the pod serves the last validated file, not the refused edit");
    assert!(!String::from_utf8_lossy(&after).contains("1999"));
    drop(tftp);
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

fn identity_id(server: &FakeApiServer) -> String {
    cluster(server)["status"]["identity"]["id"].as_str().expect("the identity is recorded in status").to_owned()
}

fn stalled_with(server: &FakeApiServer, reason: &str) -> Option<String> {
    condition(&cluster(server), "Stalled").filter(|(s, r, _)| s == "True" && r == reason).map(|(_, _, message)| message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_identity_stalls_and_only_the_named_identity_is_replaced() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = ready_quickstart(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let tftp = serve_tftp(&server, dir.path()).await;
    let ctl = fetch(&tftp, "CTLFile.tlv").await.expect("the CTL");
    let id = identity_id(&server);
    let ca = object(&server, "Secret", "quickstart-ca");
    let trust = object(&server, "ConfigMap", "quickstart-trust");

    // ca.crt gone, the key still there: before, a new CA overwrote the key.
    edit(&server, "Secret", "secrets", "quickstart-ca", |s| {
        s["data"].as_object_mut().unwrap().remove("ca.crt");
    })
    .await;
    until("IdentityLost", || stalled_with(&server, "IdentityLost").is_some()).await;
    let message = stalled_with(&server, "IdentityLost").unwrap();
    assert!(message.contains("the cluster CA certificate (Secret quickstart-ca, key ca.crt) is missing"), "{message}");
    assert!(message.contains(&format!("callguard.io/new-identity={id}")) && message.contains("P.3-18"), "{message}");
    reconciled_again(&server).await;
    let kept = object(&server, "Secret", "quickstart-ca");
    assert_eq!(kept["data"]["ca.key"], ca["data"]["ca.key"], "no new key is written");
    assert!(kept["data"]["ca.crt"].is_null(), "and no new certificate");
    assert_eq!(fetch(&tftp, "CTLFile.tlv").await.as_ref(), Some(&ctl), "the pods keep serving the last good files");
    // Restoring the certificate is the way back.
    edit(&server, "Secret", "secrets", "quickstart-ca", |s| s["data"]["ca.crt"] = ca["data"]["ca.crt"].clone()).await;
    until("Ready again after the restore", || is_ready(&cluster(&server))).await;
    settle(&server).await;

    // The published CTL gone: the next CTL would skip the continuity check.
    edit(&server, "ConfigMap", "configmaps", "quickstart-trust", |c| {
        c["binaryData"].as_object_mut().unwrap().remove("CTLFile.tlv");
    })
    .await;
    until("IdentityLost for the CTL", || stalled_with(&server, "IdentityLost").is_some_and(|m| m.contains("the published CTL"))).await;
    edit(&server, "ConfigMap", "configmaps", "quickstart-trust", |c| c["binaryData"] = trust["binaryData"].clone()).await;
    until("Ready again", || is_ready(&cluster(&server))).await;
    settle(&server).await;

    // The CA Secret and the trust ConfigMap together: before, a whole new identity came up Ready.
    delete(&server, "v1", "Secret", "secrets", "quickstart-ca").await;
    delete(&server, "v1", "ConfigMap", "configmaps", "quickstart-trust").await;
    until("IdentityLost for both", || stalled_with(&server, "IdentityLost").is_some_and(|m| m.contains("the published ITL"))).await;
    reconciled_again(&server).await;
    assert!(server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").is_none(), "no new CA");
    assert_eq!(identity_id(&server), id, "the record outlives the stall");
    assert_eq!(fetch(&tftp, "CTLFile.tlv").await.as_ref(), Some(&ctl), "still the last good files");

    // Naming another identity does nothing; naming this one replaces it, and says so.
    let annotate = |value: String| {
        let server = &server;
        async move {
            edit(server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| {
                c["metadata"]["annotations"] = json!({"callguard.io/new-identity": value});
            })
            .await
        }
    };
    annotate("0000000000000000".into()).await;
    reconciled_again(&server).await;
    assert!(stalled_with(&server, "IdentityLost").is_some(), "another id is no permission");
    annotate(id.clone()).await;
    until("a new identity", || is_ready(&cluster(&server)) && identity_id(&server) != id).await;
    let new_ca = object(&server, "Secret", "quickstart-ca");
    assert_ne!(new_ca["data"]["ca.crt"], ca["data"]["ca.crt"]);
    // What was left of the old identity is set aside in a Secret of its own, not destroyed, and a
    // later reconcile keeps it.
    let retired_name = format!("quickstart-retired-{id}");
    let retired = object(&server, "Secret", &retired_name);
    let keys: Vec<&String> = retired["data"].as_object().map(|d| d.keys().collect()).unwrap_or_default();
    assert!(keys.iter().any(|k| k.starts_with("certs_") && k.ends_with(".key")), "the old function keys are kept: {keys:?}");
    settle(&server).await;
    assert!(server.get("v1", "Secret", Some(NAMESPACE), &retired_name).is_some(), "a later reconcile keeps the retired identity");
    let events = server.list("events.k8s.io/v1", "Event", Some(NAMESPACE));
    let announced = events.iter().find(|e| e["reason"] == "NewIdentity").expect("a NewIdentity event");
    assert_eq!(announced["type"], "Warning");
    assert!(announced["note"].as_str().unwrap().contains(&id), "{announced}");
    drop(tftp);
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// The token registry the operator keeps, decoded.
/// `callguard` with the kubeconfig of `identity` on `server`, from a blocking thread.
async fn callguard_as(server: &FakeApiServer, identity: &str, dir: &Path, args: Vec<String>) -> std::process::Output {
    let kubeconfig = dir.join(format!("{identity}.kubeconfig"));
    std::fs::write(&kubeconfig, server.kubeconfig(identity)).unwrap();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).env("KUBECONFIG", kubeconfig).output().unwrap()
    })
    .await
    .unwrap()
}

/// The CA Secret and the trust ConfigMap deleted, the cluster stalled on the lost identity:
/// `callguard restore` of a backup taken before brings them back, the cluster is Ready on the same
/// identity, and the TFTP pods serve the same trust lists, byte for byte. A second restore writes
/// nothing; one over a state that differs is refused, naming what differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_identity_comes_back_from_a_backup_with_the_same_files() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = ready_quickstart(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let tftp = serve_tftp(&server, dir.path()).await;
    let (ctl, itl) = (fetch(&tftp, "CTLFile.tlv").await.expect("the CTL"), fetch(&tftp, "ITLFile.tlv").await.expect("the ITL"));
    let (ca, trust, id) =
        (object(&server, "Secret", "quickstart-ca"), object(&server, "ConfigMap", "quickstart-trust"), identity_id(&server));
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "a long enough passphrase").unwrap();
    let backup = dir.path().join("default.backup");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let args = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let taken = callguard_as(
        &server,
        "admin",
        dir.path(),
        args(&["backup", "--namespace", NAMESPACE, "--out", &path(&backup), "--passphrase-file", &path(&passphrase)]),
    )
    .await;
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));

    delete(&server, "v1", "Secret", "secrets", "quickstart-ca").await;
    delete(&server, "v1", "ConfigMap", "configmaps", "quickstart-trust").await;
    until("IdentityLost", || stalled_with(&server, "IdentityLost").is_some()).await;

    let restore = args(&["restore", &path(&backup), "--namespace", NAMESPACE, "--passphrase-file", &path(&passphrase)]);
    let restored = callguard_as(&server, "admin", dir.path(), restore.clone()).await;
    let said = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert!(restored.status.success(), "{said}{}", String::from_utf8_lossy(&restored.stderr));
    assert!(said.contains("Secret/quickstart-ca created") && said.contains("ConfigMap/quickstart-trust created"), "{said}");
    until("Ready on the restored identity", || is_ready(&cluster(&server))).await;
    assert_eq!(identity_id(&server), id, "the same identity");
    assert_eq!(object(&server, "Secret", "quickstart-ca")["data"], ca["data"]);
    assert_eq!(object(&server, "ConfigMap", "quickstart-trust")["binaryData"], trust["binaryData"]);
    settle(&server).await;
    assert_eq!(fetch(&tftp, "CTLFile.tlv").await, Some(ctl), "the same CTL, byte for byte");
    assert_eq!(fetch(&tftp, "ITLFile.tlv").await, Some(itl), "the same ITL, byte for byte");

    let again = callguard_as(&server, "admin", dir.path(), restore.clone()).await;
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success() && !said.contains("created") && !said.contains("replaced"), "{said}");
    drop(tftp);
    // A state that differs from the backup (the operator stopped, so that it does not mend the
    // edit first) is not written over.
    shutdown.trigger();
    operator.await.unwrap().unwrap();
    edit(&server, "Secret", "secrets", "quickstart-ca", |s| s["data"]["serials"] = json!("AAAA")).await;
    let refused = callguard_as(&server, "admin", dir.path(), restore).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Secret/quickstart-ca") && stderr.contains("nothing was written"), "{stderr}");
    assert_eq!(object(&server, "Secret", "quickstart-ca")["data"]["serials"], json!("AAAA"), "left as it was");
}

fn registry(server: &FakeApiServer) -> Option<Value> {
    let secret = server.get("v1", "Secret", Some(NAMESPACE), "quickstart-tokens")?;
    serde_yaml::from_slice(&decoded(&secret, "data", "registry.yaml")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_password_is_counted_even_when_every_apply_fails() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let password = objects.iter_mut().find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "token-primary-password").unwrap();
    password["stringData"] = json!({"password": "not-the-password"});
    password.as_object_mut().unwrap().remove("data");
    // A Deployment of the TFTP workload's name whose selector differs: the apply of the workload is
    // refused (a selector is immutable) on every reconcile.
    objects.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "quickstart-tftp", "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": "other"}}, "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": []}}}
    }));
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    let failures = || -> u64 {
        registry(&server)
            .and_then(|r| r["certificates"].as_object().cloned())
            .map(|c| c.values().filter_map(|r| r["consecutiveFailedLogins"].as_u64()).sum())
            .unwrap_or(0)
    };
    // The registry is written before the workload is applied, so wait for both: the count and the
    // refused apply that follows it.
    let refused = || server.writes().into_iter().filter(|w| w.resource == "deployments.apps" && w.status == 422).count();
    until("the wrong password to be counted and the workload apply refused", || failures() == 1 && refused() > 0).await;
    // Two more reconciles, each presenting the same wrong password again before its apply is refused.
    let seen = refused();
    until("two more reconciles", || refused() >= seen + 2).await;
    assert_eq!(failures(), 1, "the same wrong password, retried, counts once");
    // The failed step says so, on the cluster: the apply, with the API server's answer.
    let events = server.list("events.k8s.io/v1", "Event", Some(NAMESPACE));
    let failed = events.iter().find(|e| e["reason"] == "ApplyFailed" && e["type"] == "Warning").expect("an ApplyFailed event");
    assert_eq!(failed["regarding"]["name"], "quickstart");
    assert!(failed["note"].as_str().is_some_and(|note| note.starts_with("applying: ") && note.contains("quickstart-tftp")), "{failed}");
    let mac = registry(&server).unwrap().to_string();
    assert!(!mac.contains("not-the-password"));
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_or_compromised_token_is_refused_under_another_name() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let mut copies = Vec::new();
    for token in objects.iter_mut().filter(|o| o["kind"] == "SecurityToken") {
        let mut copy = token.clone();
        copy["metadata"]["name"] = json!(format!("{}-copy", token["metadata"]["name"].as_str().unwrap()));
        copies.push(copy);
        if token["metadata"]["name"] == "token-primary" {
            // As sixteen wrong passwords left it (P.16-5).
            token["status"] = json!({"consecutiveFailedLogins": 16, "locked": true, "lockedAt": "2026-11-01T00:00:00Z"});
        } else {
            token["spec"]["state"] = json!("Compromised");
        }
    }
    objects.extend(copies);
    let cluster_object = objects.iter_mut().find(|o| o["kind"] == "CallControlCluster").unwrap();
    cluster_object["spec"]["ctl"]["tokens"] = json!(["token-primary-copy", "token-backup-copy"]);
    cluster_object["spec"]["ctl"]["signingToken"] = json!("token-primary-copy");
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    let ready = |name: &str| condition(&object(&server, "SecurityToken", name), "Ready");
    until("the copies' status", || ready("token-primary-copy").is_some() && ready("token-backup-copy").is_some()).await;
    assert_eq!(ready("token-primary-copy").map(|c| c.1), Some("Locked".into()), "the lock follows the certificate");
    let (_, reason, message) = ready("token-backup-copy").unwrap();
    assert_eq!(reason, "CertificateRefused", "{message}");
    assert!(message.contains("SecurityToken/token-backup") && message.contains("Compromised"), "{message}");
    until("the cluster's verdict", || condition(&cluster(&server), "Ready").is_some_and(|(_, r, _)| r == "CtlNotSigned")).await;
    let trust = server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust");
    assert!(trust.is_none_or(|t| t["binaryData"]["CTLFile.tlv"].is_null()), "no CTL is signed by a copy");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_only_the_secrets_it_owns_or_is_pointed_at_in_its_namespaces() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    objects.push(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "payroll", "namespace": NAMESPACE}, "stringData": {"k": "v"}}),
    );
    // A Secret the objects name but that is not labelled callguard.io/watch is read by name.
    let password = objects.iter_mut().find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "token-primary-password").unwrap();
    password["metadata"].as_object_mut().unwrap().remove("labels");
    let elsewhere: Vec<Value> = quickstart()
        .into_iter()
        .map(|mut o| {
            o["metadata"]["namespace"] = json!("elsewhere");
            o
        })
        .collect();
    objects.extend(elsewhere);
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    until("the cluster to be Ready", || is_ready(&cluster(&server))).await;
    let reads: Vec<_> = server.reads().into_iter().filter(|r| r.identity.as_deref() == Some("operator")).collect();
    assert!(reads.iter().all(|r| r.namespace.as_deref() != Some("elsewhere")), "nothing outside its namespace is read");
    assert!(reads.iter().all(|r| r.namespace.is_some() || r.resource.starts_with("leases")), "no cluster-wide reads");
    let elsewhere = server.get("callguard.io/v1alpha1", "CallControlCluster", Some("elsewhere"), CLUSTER).unwrap();
    assert!(elsewhere["status"].is_null(), "another namespace's cluster is left alone");
    for read in reads.iter().filter(|r| r.resource == "secrets") {
        match read.verb {
            Verb::List | Verb::Watch => {
                let selector = read.label_selector.clone().unwrap_or_default();
                assert!(
                    selector.contains("app.kubernetes.io/managed-by=callguard") || selector == "callguard.io/watch",
                    "a list or watch of Secrets without a Callguard selector: {read:?}"
                );
            }
            Verb::Get => assert_ne!(read.name.as_deref(), Some("payroll"), "an unreferenced Secret is never read"),
            _ => {}
        }
    }
    assert!(reads.iter().any(|r| r.resource == "secrets" && r.verb == Verb::Get && r.name.as_deref() == Some("token-primary-password")));
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgraded_phone_says_so_in_a_condition_a_column_and_an_event() {
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = ready_quickstart(&server).await;
    let lobby = object(&server, "Phone", "lobby-7970");
    let (status, reason, message) = condition(&lobby, "Downgraded").expect("a Downgraded condition");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SecureSrstUnavailable"), "{message}");
    assert!(message.contains("isSecure") && message.contains("HardeningNotRendered"), "{message}");
    let as_specified = server.list("callguard.io/v1alpha1", "Phone", Some(NAMESPACE));
    assert!(as_specified.iter().any(|p| condition(p, "Downgraded").is_some_and(|c| c.0 == "False" && c.1 == "AsSpecified")));
    until("the event", || {
        server
            .list("events.k8s.io/v1", "Event", Some(NAMESPACE))
            .iter()
            .any(|e| e["reason"] == "SecurityDowngraded" && e["regarding"]["name"] == "lobby-7970" && e["type"] == "Warning")
    })
    .await;
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/phones.callguard.io.yaml")).unwrap(),
    )
    .unwrap();
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"].as_array().unwrap();
    assert!(columns.iter().any(|c| c["name"] == "Downgraded"), "kubectl get phones shows it");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}
