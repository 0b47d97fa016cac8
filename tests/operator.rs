//! The operator's controller against the in-process API server: the quickstart
//! becomes Secrets, trust lists, the TFTP workload and Ready statuses, the gateways' with their
//! media security and an event where SRTP keys are withheld; `callguard serve tftp` started
//! against the same API serves the CTL and a phone's signed configuration to the real `tftp` client; deleting the cluster removes what it owned; an invalid namespace is Stalled and
//! gets nothing; sixteen wrong passwords lock a token, which shows in status and signs nothing; the
//! pods' content hash follows the certificates and trust lists; Argo CD's health check (argocd/health.lua)
//! says of the status the operator writes what argocd/health_test.yaml says of the committed copies;
//! of two replicas only the leader writes; a watch the operator may not make is reported in `/readyz`
//! and a metric while the other kinds' changes are reconciled; a Phone its type cannot read is named
//! by validation; the ITL signer rotates, asked by annotation, in two steps a phone accepts.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/cluster.rs"]
mod support;
#[path = "support/trusting_phone.rs"]
mod trusting_phone;
use peers::{TftpGet, file_not_found, require};
use support::*;

use std::path::{Path, PathBuf};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_becomes_secrets_trust_lists_a_tftp_workload_and_ready_statuses() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator-a").await;

    let cluster_object = cluster(&server);
    let uid = cluster_object["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(cluster_object["status"]["observedGeneration"], cluster_object["metadata"]["generation"]);
    for (type_, status) in [("Reconciling", "False"), ("Stalled", "False"), ("CertificatesIssued", "True"), ("TrustListPublished", "True")]
    {
        assert_eq!(condition(&cluster_object, type_).map(|c| c.0), Some(status.to_owned()), "{type_}");
    }

    // Secrets: the CA and one TLS Secret per function certificate, owned by the cluster.
    let ca = server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").expect("the CA Secret");
    assert!(owned_by_cluster(&ca, &uid) && ca["data"]["ca.key"].is_string() && ca["data"]["ca.crt"].is_string());
    let secrets = server.list("v1", "Secret", Some(NAMESPACE));
    let tls: Vec<&Value> = secrets.iter().filter(|s| s["type"] == "kubernetes.io/tls").collect();
    assert!(tls.len() >= 3, "CallManager/TFTP and CAPF certificates: {}", tls.len());
    assert!(tls.iter().all(|s| owned_by_cluster(s, &uid) && s["metadata"]["labels"]["callguard.io/cluster"] == CLUSTER));

    // The trust lists, which verify.
    let trust_map = server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").expect("the trust ConfigMap");
    assert!(owned_by_cluster(&trust_map, &uid));
    let dir = tempfile::tempdir().unwrap();
    use base64::Engine;
    let decode = |key: &str| base64::engine::general_purpose::STANDARD.decode(trust_map["binaryData"][key].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("published-ctl.tlv"), decode("CTLFile.tlv")).unwrap();
    assert!(trust(&["verify", dir.path().join("published-ctl.tlv").to_str().unwrap()]).status.success());

    // The TFTP workload: ServiceAccount, Role, RoleBinding, Deployment, UDP Service.
    let deployment = server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").expect("the TFTP Deployment");
    assert!(owned_by_cluster(&deployment, &uid));
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/callguard:test");
    assert_eq!(container["args"][0], "serve");
    assert_eq!(content_hash(&deployment), expected_content_hash(&server), "the pod template digests what the operator published");
    let service = server.get("v1", "Service", Some(NAMESPACE), "quickstart-tftp").expect("the TFTP Service");
    let tftp_port = cluster_object["spec"]["ports"]["tftpPort"].as_u64().unwrap_or(69);
    assert_eq!(
        (service["spec"]["ports"][0]["port"].clone(), service["spec"]["ports"][0]["protocol"].clone()),
        (json!(tftp_port), json!("UDP"))
    );
    for kind in [("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding")] {
        assert!(server.get(kind.0, kind.1, Some(NAMESPACE), "quickstart-tftp").is_some_and(|o| owned_by_cluster(&o, &uid)), "{kind:?}");
    }
    // Two replicas kept apart, a disruption budget, the pull Secret, a metrics Service.
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    let budget = server.get("policy/v1", "PodDisruptionBudget", Some(NAMESPACE), "quickstart-tftp").expect("a PodDisruptionBudget");
    assert!(owned_by_cluster(&budget, &uid) && budget["spec"]["minAvailable"] == 1);
    let metrics = server.get("v1", "Service", Some(NAMESPACE), "quickstart-tftp-metrics").expect("the metrics Service");
    assert_eq!(metrics["spec"]["ports"][0]["port"], 8080);
    let no_configmap_per_phone = server.list("v1", "ConfigMap", Some(NAMESPACE)).len();
    assert_eq!(no_configmap_per_phone, 1, "phones are never copied into ConfigMaps");

    // Every object has Ready (True or False) and observedGeneration.
    for kind in [
        "Phone",
        "PhoneSecurityProfile",
        "SecurityToken",
        "EndUser",
        "SipTrunk",
        "SipTrunkSecurityProfile",
        "SrstReference",
        "H323Gateway",
        "MgcpGateway",
        "SipRealm",
        "ApplicationUser",
    ] {
        for object in server.list("callguard.io/v1alpha1", kind, Some(NAMESPACE)) {
            assert!(condition(&object, "Ready").is_some(), "{kind}/{} has no Ready", object["metadata"]["name"]);
            assert_eq!(object["status"]["observedGeneration"], object["metadata"]["generation"], "{kind}");
        }
    }
    let conference = server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), "conference-7912").unwrap();
    assert_eq!(condition(&conference, "Ready").map(|c| c.0), Some("True".into()));
    // A certificate operation waits for a CAPF service, and says so (Table 6-2).
    let hallway = server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), "hallway-7911").unwrap();
    assert_eq!(condition(&hallway, "Ready").map(|c| (c.0, c.1)), Some(("False".into(), "CertificateOperationPending".into())));
    assert_eq!(
        (hallway["status"]["lscState"].as_str(), hallway["status"]["operationStatus"].as_str()),
        (Some("Pending"), Some("Pending: Install/Upgrade until 2036-06-30T17:00:00Z (Table 6-2)"))
    );
    // The tokens say which CTL lists them and which signed it.
    let primary = server.get("callguard.io/v1alpha1", "SecurityToken", Some(NAMESPACE), "token-primary").unwrap();
    let backup = server.get("callguard.io/v1alpha1", "SecurityToken", Some(NAMESPACE), "token-backup").unwrap();
    assert_eq!((primary["status"]["inCurrentCtl"].as_bool(), primary["status"]["signedCurrentCtl"].as_bool()), (Some(true), Some(true)));
    assert_eq!((backup["status"]["inCurrentCtl"].as_bool(), backup["status"]["signedCurrentCtl"].as_bool()), (Some(true), Some(false)));
    // Bob's profile has digest on but his file is not encrypted: his credentials are withheld (P.7-1).
    let bob = server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), "bob-7941").unwrap();
    assert_eq!(condition(&bob, "Ready").map(|c| (c.0, c.1)), Some(("False".into(), "DigestCredentialsWithheld".into())));
    let lobby = server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), "lobby-7970").unwrap();
    assert_eq!(condition(&lobby, "Ready").map(|c| (c.0, c.1)), Some(("False".into(), "AwaitingDeviceCertificate".into())));
    // Gateways (P.13-2, P.13-3): SRTP keys go only where IPSec is declared, and IPSec is never taken as verified.
    let h323 = server.get("callguard.io/v1alpha1", "H323Gateway", Some(NAMESPACE), "pstn-h323").unwrap();
    assert_eq!(h323["status"]["mediaSecurity"], "Encrypted", "{}", h323["status"]);
    assert!(h323["status"]["mediaSecurityReason"].as_str().unwrap().contains("declared, not verified"), "{}", h323["status"]);
    for (type_, status) in
        [("Ready", "True"), ("IpsecNotVerified", "True"), ("SrtpWithheld", "False"), ("OutboundFastStartDisabled", "True")]
    {
        assert_eq!(condition(&h323, type_).map(|c| c.0), Some(status.to_owned()), "H323Gateway {type_}");
    }
    let mgcp = server.get("callguard.io/v1alpha1", "MgcpGateway", Some(NAMESPACE), "branch-mgcp").unwrap();
    assert_eq!(mgcp["status"]["mediaSecurity"], "NotSecure", "{}", mgcp["status"]);
    assert_eq!(
        mgcp["status"]["mediaSecurityReason"],
        "no IPSec association is declared (spec.ipsec.mode None): SRTP keys would cross the signaling path in clear, so none are sent (P.13-2, P.13-3)"
    );
    assert_eq!(condition(&mgcp, "SrtpWithheld").map(|c| (c.0, c.1)), Some(("True".into(), "NoIpsecDeclared".into())));
    assert_eq!(condition(&mgcp, "IpsecNotVerified").map(|c| c.0), Some("True".into()));
    assert!(condition(&mgcp, "OutboundFastStartDisabled").is_none(), "MGCP has no FastStart");
    until("the SrtpWithheld event on the MGCP gateway", || {
        server
            .list("events.k8s.io/v1", "Event", Some(NAMESPACE))
            .iter()
            .any(|e| e["reason"] == "SrtpWithheld" && e["type"] == "Warning" && e["regarding"]["name"] == "branch-mgcp")
    })
    .await;
    let spec_writes = server.writes().into_iter().filter(|w| w.resource.ends_with("callguard.io") && w.subresource.is_none()).count();
    assert_eq!(spec_writes, 0, "the operator never writes a Callguard object's spec");

    // `callguard serve tftp` against the same API server serves the CTL and a signed configuration.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("tftp-pod")).unwrap();
    let pod_args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let (ctl, config) = (dir.path().join("ctl.tlv"), dir.path().join("bob.sgn"));
    let fetched = tokio::task::spawn_blocking({
        let (kubeconfig, ctl, config) = (kubeconfig.clone(), ctl.clone(), config.clone());
        move || {
            let tftp = ServeTftp::start(&kubeconfig, &pod_args);
            (
                tftp.fetch("CTLFile.tlv", &ctl),
                tftp.fetch("SEP00AABBCCDD02.cnf.xml.sgn", &config),
                tftp.fetch("SEP001122334455.cnf.xml.enc.sgn", &dir_child(&ctl)),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!((&fetched.0, &fetched.1), (&TftpGet::Fetched, &TftpGet::Fetched), "CTL and bob's signed configuration fetched");
    assert_eq!(fetched.2, file_not_found(), "no encrypted file without the phone's certificate");
    assert_eq!(std::fs::read(&ctl).unwrap(), decode("CTLFile.tlv"), "the pod serves the CTL the operator published");
    let verified = trust(&["verify", config.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));

    // Deleting the cluster removes what it owned.
    let clusters: kube::Api<callguard::api::CallControlCluster> = kube::Api::namespaced(server.client(), NAMESPACE);
    clusters.delete(CLUSTER, &Default::default()).await.unwrap();
    until("the owned objects to go", || {
        server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").is_none()
            && server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").is_none()
            && server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").is_none()
    })
    .await;
    assert!(server.get("v1", "Secret", Some(NAMESPACE), "token-primary").is_some(), "the user's own Secrets stay");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// The pod template's `callguard.io/content-hash`.
fn content_hash(deployment: &Value) -> String {
    deployment["spec"]["template"]["metadata"]["annotations"]["callguard.io/content-hash"]
        .as_str()
        .unwrap_or_else(|| panic!("the pod template has a content hash: {}", deployment["spec"]["template"]["metadata"]))
        .to_owned()
}

/// The digest the pod template should carry, computed apart from the operator (by the openssl CLI)
/// from what the operator published: every certificate (the CA's, and each function certificate's
/// under its state name `certs/<node>.<role>.crt`) and every trust list (`published/<file>`), in the
/// order of those names, each as its name, its length (64-bit big-endian) and its bytes; SHA-256,
/// the first 16 bytes in hex.
fn expected_content_hash(server: &FakeApiServer) -> String {
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let ca = server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").expect("the CA Secret");
    files.insert("ca/ca.crt".into(), decoded(&ca, "data", "ca.crt"));
    for secret in server.list("v1", "Secret", Some(NAMESPACE)) {
        if let Some(base) = secret["metadata"]["annotations"]["callguard.io/state-name"].as_str() {
            files.insert(format!("certs/{base}.crt"), decoded(&secret, "data", "tls.crt"));
        }
    }
    let trust = server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").expect("the trust ConfigMap");
    for key in trust["binaryData"].as_object().expect("binaryData").keys() {
        files.insert(format!("published/{key}"), decoded(&trust, "binaryData", key));
    }
    assert!(files.keys().filter(|name| name.starts_with("certs/")).count() >= 3, "{:?}", files.keys());
    assert!(files.contains_key("published/CTLFile.tlv") && files.contains_key("published/ITLFile.tlv"), "{:?}", files.keys());
    let mut stream = Vec::new();
    for (name, bytes) in &files {
        stream.extend_from_slice(name.as_bytes());
        stream.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        stream.extend_from_slice(bytes);
    }
    let mut openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl CLI is installed");
    std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), &stream).unwrap();
    let output = openssl.wait_with_output().unwrap();
    assert!(output.status.success());
    let digest = String::from_utf8(output.stdout).unwrap();
    let hex = digest.split_whitespace().next().expect("a digest");
    assert_eq!(hex.len(), 64, "{digest}");
    hex[..32].to_owned()
}

/// The TFTP projection's Secrets by name, with their data: what the pods serve.
fn projection(server: &FakeApiServer) -> std::collections::BTreeMap<String, Value> {
    server
        .list("v1", "Secret", Some(NAMESPACE))
        .into_iter()
        .filter(|s| s["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("quickstart-tftp-files")))
        .map(|s| (s["metadata"]["name"].as_str().unwrap().to_owned(), s["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_content_hash_follows_the_certificates_and_trust_lists_and_only_them() {
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator-a").await;
    let deployment = || server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").expect("the TFTP Deployment");
    until("the TFTP Deployment", || server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").is_some()).await;
    let first = content_hash(&deployment());
    assert_eq!(first, expected_content_hash(&server));

    // A SIP phone's new line changes what the pods serve (the projection), not a certificate or a
    // trust list: the pod template stays, and no pod restarts.
    let served = projection(&server);
    let ctl = object(&server, "ConfigMap", "quickstart-trust")["binaryData"]["CTLFile.tlv"].clone();
    edit(&server, "Phone", "phones", "bob-7941", |phone| phone["spec"]["directoryNumbers"] = json!(["1999"])).await;
    until("the projection to carry the edit", || projection(&server) != served).await;
    assert_eq!(object(&server, "ConfigMap", "quickstart-trust")["binaryData"]["CTLFile.tlv"], ctl, "the CTL is unchanged");
    assert_eq!(content_hash(&deployment()), first, "served configurations are not in the digest");
    assert_eq!(expected_content_hash(&server), first);

    // Signing with the other token makes a new CTL: the digest changes, to that of the new CTL.
    edit(&server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| c["spec"]["ctl"]["signingToken"] = json!("token-backup")).await;
    until("a new CTL", || object(&server, "ConfigMap", "quickstart-trust")["binaryData"]["CTLFile.tlv"] != ctl).await;
    until("a new content hash", || content_hash(&deployment()) != first).await;
    assert_eq!(content_hash(&deployment()), expected_content_hash(&server), "the digest of the new trust lists");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// Ready follows the data plane: the TFTP Deployment with no replica available (its pods crashing,
/// its node gone) turns the cluster's Ready False, naming it; available again, Ready again. The
/// SIP StatefulSet, owned like the Deployments, wakes the operator the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_workload_with_no_replica_available_turns_the_cluster_not_ready() {
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator").await;
    let available = || condition(&cluster(&server), "DataPlaneAvailable");
    assert_eq!(available().map(|(status, reason, _)| (status, reason)), Some(("True".into(), "Available".into())));

    server.set_available_replicas("Deployment", NAMESPACE, "quickstart-tftp", Some(0));
    until("Ready False for the TFTP pods", || {
        condition(&cluster(&server), "Ready").is_some_and(|(s, r, _)| s == "False" && r == "DataPlaneUnavailable")
    })
    .await;
    let (_, _, message) = condition(&cluster(&server), "Ready").unwrap();
    assert_eq!(message, "Deployment/quickstart-tftp: 0 of 2 available");
    assert_eq!(available().map(|(status, reason, _)| (status, reason)), Some(("False".into(), "Unavailable".into())));

    server.set_available_replicas("Deployment", NAMESPACE, "quickstart-tftp", None);
    until("Ready again", || is_ready(&cluster(&server))).await;
    server.set_available_replicas("StatefulSet", NAMESPACE, "quickstart-sip", Some(1));
    until("Degraded for one SIP pod", || {
        available().is_some_and(|(s, r, m)| s == "True" && r == "Degraded" && m == "StatefulSet/quickstart-sip: 1 of 2 available")
    })
    .await;
    assert!(is_ready(&cluster(&server)), "one node still serves");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// The operator's identity may list SipRealms but not watch them (a rule missing from a Role, as a
/// third-party API server once did with a broken watch): that watch fails, and says so in `/readyz`
/// and `callguard_watch_failing`, while every other kind's changes are reconciled as usual. Once the
/// rule is granted, the watch recovers and readiness returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_the_operator_may_not_make_is_reported_and_holds_back_no_other() {
    let server = FakeApiServer::start().await;
    load(&server, quickstart());
    let kinds = [
        "callcontrolclusters",
        "securitytokens",
        "phonesecurityprofiles",
        "phones",
        "siptrunksecurityprofiles",
        "siptrunks",
        "srstreferences",
        "h323gateways",
        "mgcpgateways",
        "endusers",
        "applicationusers",
    ];
    let role = |realm_verbs: &[&str]| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "operator"},
            "rules": [
                {"apiGroups": ["", "apps", "rbac.authorization.k8s.io", "networking.k8s.io", "policy", "events.k8s.io"],
                 "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": ["callguard.io"], "resources": kinds.iter().chain(&["*/status"]).collect::<Vec<_>>(), "verbs": ["*"]},
                {"apiGroups": ["callguard.io"], "resources": ["siprealms"], "verbs": realm_verbs},
            ]
        })
    };
    server.insert(role(&["get", "list"])).unwrap();
    server
        .insert(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "operator"},
            "subjects": [{"kind": "ServiceAccount", "namespace": "callguard-system", "name": "operator"}]
        }))
        .unwrap();
    server.authenticate_as_service_account("operator", "callguard-system", "operator");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut options = options("operator", false);
    options.metrics_bind = format!("127.0.0.1:{port}").parse().unwrap();
    let (shutdown, operator) = start_operator_with(&server, options);
    let get = |path: &'static str| async move {
        let reply = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.expect("the operator's HTTP endpoint answers");
        (reply.status().as_u16(), reply.text().await.unwrap())
    };
    let failing = r#"callguard_watch_failing{resource="SipRealm",namespace="default"}"#;

    until("the cluster to be Ready", || is_ready(&cluster(&server))).await;
    let mut readiness = get("/readyz").await;
    for _ in 0..100 {
        if readiness.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        readiness = get("/readyz").await;
    }
    assert_eq!(readiness.0, 503, "{}", readiness.1);
    assert!(readiness.1.starts_with("watch of SipRealm in default failing: ") && readiness.1.contains("403"), "{}", readiness.1);
    let metrics = get("/metrics").await.1;
    assert!(metrics.contains(&format!("{failing} 1\n")), "{metrics}");
    assert!(!metrics.contains(r#"callguard_watch_failing{resource="Phone",namespace="default"} 1"#), "{metrics}");

    // A Phone's change is reconciled meanwhile: it names a profile that does not exist.
    edit(&server, "Phone", "phones", "bob-7941", |bob| bob["spec"]["securityProfileRef"] = json!("no-such-profile")).await;
    until("the cluster to stall on the Phone's change", || {
        condition(&cluster(&server), "Stalled")
            .is_some_and(|(s, r, m)| s == "True" && r == "InvalidConfiguration" && m.contains("no-such-profile"))
    })
    .await;

    // The rule granted: the watch works again, and so does readiness.
    let api: kube::Api<k8s_openapi::api::rbac::v1::ClusterRole> = kube::Api::all(server.client());
    let mut granted: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(role(&["get", "list", "watch"])).unwrap();
    granted.metadata.resource_version = api.get("operator").await.unwrap().metadata.resource_version;
    api.replace("operator", &Default::default(), &granted).await.unwrap();
    let mut readiness = get("/readyz").await;
    for _ in 0..600 {
        if readiness.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        readiness = get("/readyz").await;
    }
    assert_eq!(readiness, (200, "ready\n".to_owned()));
    let metrics = get("/metrics").await.1;
    assert!(metrics.contains(&format!("{failing} 0\n")), "{metrics}");
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

fn dir_child(path: &Path) -> PathBuf {
    path.with_file_name("lobby.enc.sgn")
}

/// The quickstart with `change` made to Phone/bob-7941, under the operator, until the cluster is
/// Stalled as InvalidConfiguration naming bob and `fault`, and bob's own status says so too.
async fn stalled_by_bob(
    change: impl FnOnce(&mut Value),
    fault: &str,
) -> (FakeApiServer, callguard::ops::shutdown::Shutdown, tokio::task::JoinHandle<Result<(), String>>) {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    change(objects.iter_mut().find(|o| o["kind"] == "Phone" && o["metadata"]["name"] == "bob-7941").unwrap());
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    until("the cluster to be Stalled", || condition(&cluster(&server), "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let (_, reason, message) = condition(&cluster(&server), "Stalled").unwrap();
    assert_eq!(reason, "InvalidConfiguration");
    assert!(message.contains("Phone/bob-7941") && message.contains(fault), "{message}");
    assert_eq!(condition(&cluster(&server), "Ready").map(|c| c.0), Some("False".into()));
    // The statuses are written concurrently: the phone's may follow the cluster's.
    let bob = || object(&server, "Phone", "bob-7941");
    until("the phone's own Stalled", || condition(&bob(), "Stalled").is_some()).await;
    let (status, _, own) = condition(&bob(), "Stalled").unwrap();
    assert_eq!(status, "True", "the offending object says so too");
    assert!(own.contains(fault), "{own}");
    (server, shutdown, operator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_namespace_is_stalled_with_the_validation_message_and_gets_nothing() {
    let (server, shutdown, operator) =
        stalled_by_bob(|bob| bob["spec"]["securityProfileRef"] = json!("no-such-profile"), "no-such-profile").await;
    assert!(server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").is_none(), "nothing is issued");
    assert!(server.list("apps/v1", "Deployment", Some(NAMESPACE)).is_empty() && server.list("v1", "ConfigMap", Some(NAMESPACE)).is_empty());
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// A Phone stored in a shape its type cannot read (written past the schema, or under an older one):
/// the namespace is still read, validation names the Phone and its field in the cluster's Stalled
/// and in the Phone's own status, and fixing it makes the cluster Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_its_type_cannot_read_is_named_by_validation_and_the_rest_is_read() {
    let (server, shutdown, operator) = stalled_by_bob(|bob| bob["spec"]["directoryNumbers"] = json!("1002"), "directoryNumbers").await;
    assert!(condition(&object(&server, "Phone", "alice-7961"), "Ready").is_some_and(|(_, r, _)| r == "ClusterNotReconciled"));
    edit(&server, "Phone", "phones", "bob-7941", |bob| bob["spec"]["directoryNumbers"] = json!(["1002"])).await;
    until("the cluster to be Ready once the phone is fixed", || is_ready(&cluster(&server))).await;
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// Puts `password` into the primary token's password Secret, as a client's PUT would.
async fn set_primary_password(server: &FakeApiServer, password: &str) {
    use k8s_openapi::ByteString;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(server.client(), NAMESPACE);
    let mut secret = secrets.get("token-primary-password").await.unwrap();
    secret.string_data = None;
    secret.data = Some([("password".to_owned(), ByteString(password.as_bytes().to_vec()))].into());
    secrets.replace("token-primary-password", &Default::default(), &secret).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_wrong_passwords_lock_a_token_which_then_shows_in_status_and_signs_no_ctl() {
    require("lua5.1", "lua5.1");
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let password = objects.iter_mut().find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "token-primary-password").unwrap();
    password["stringData"] = json!({"password": "wrong-1"});
    // lockedAt is written in whole seconds.
    let started = k8s_openapi::jiff::Timestamp::now() - std::time::Duration::from_secs(1);
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator-a", false);
    let token = || server.get("callguard.io/v1alpha1", "SecurityToken", Some(NAMESPACE), "token-primary").unwrap();
    let failures = || token()["status"]["consecutiveFailedLogins"].as_u64();
    // Fifteen distinct wrong passwords are tolerated, each counted once; the sixteenth locks (P.16-5).
    for attempt in 1..=16u64 {
        if attempt > 1 {
            set_primary_password(&server, &format!("wrong-{attempt}")).await;
        }
        until(&format!("wrong password {attempt} to be counted"), || failures() == Some(attempt)).await;
        let locked = token()["status"]["locked"].as_bool();
        assert_eq!(locked, Some(attempt == 16), "after {attempt} wrong passwords: {}", token()["status"]);
    }
    let status = token()["status"].clone();
    let locked_at = status["lockedAt"].as_str().unwrap_or_else(|| panic!("lockedAt is set: {status}"));
    let locked_at: k8s_openapi::jiff::Timestamp = locked_at.parse().expect("RFC 3339");
    assert!(locked_at >= started && locked_at <= k8s_openapi::jiff::Timestamp::now(), "locked during this run: {locked_at}");
    until("the token's Locked condition", || condition(&token(), "Ready").is_some_and(|c| c.1 == "Locked")).await;
    let ready = condition(&token(), "Ready").unwrap();
    assert_eq!(ready.0, "False", "{}", ready.2);
    until("the TokenLocked event", || {
        server.list("events.k8s.io/v1", "Event", Some(NAMESPACE)).iter().any(|e| e["reason"] == "TokenLocked" && e["type"] == "Warning")
    })
    .await;

    // Locked for good: the right password no longer opens it.
    set_primary_password(&server, "example-only-primary-4fJq9").await;
    until("the CTL signed without the locked token", || {
        server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").is_some_and(|t| t["binaryData"]["CTLFile.tlv"].is_string())
    })
    .await;
    let trust_map = server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").unwrap();
    use base64::Engine;
    let ctl = base64::engine::general_purpose::STANDARD.decode(trust_map["binaryData"]["CTLFile.tlv"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ctl.tlv"), &ctl).unwrap();
    let inspected = trust(&["inspect", dir.path().join("ctl.tlv").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(text.contains("token-backup") && !text.contains("token-primary"), "the locked token neither signs nor is listed:\n{text}");
    until("the cluster's verdict", || condition(&cluster(&server), "Ready").is_some_and(|c| c.1 == "FewerThanTwoTokens")).await;
    assert_eq!(token()["status"]["locked"], true, "the right password does not unlock it");
    assert_eq!(condition(&token(), "Ready").map(|c| c.1), Some("Locked".into()));
    // What Argo CD shows of the locked token (argocd/health.lua), kept for argocd/run_tests.py.
    let locked = token();
    let health = argocd_health(&locked);
    assert_eq!(health, ("Degraded".into(), condition(&locked, "Ready").unwrap().2), "a locked token is Degraded");
    check_fixture("token_locked", &locked, &health);
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_leader_writes() {
    let server = FakeApiServer::start().await;
    load(&server, quickstart());
    let (shutdown_a, a) = start_operator(&server, "replica-a", true);
    let (shutdown_b, b) = start_operator(&server, "replica-b", true);
    until("the cluster to be Ready", || condition(&cluster(&server), "Ready").is_some_and(|(s, _, _)| s == "True")).await;
    let writers: std::collections::BTreeSet<String> =
        server.writes().into_iter().filter(|w| !w.resource.starts_with("leases")).filter_map(|w| w.identity).collect();
    assert_eq!(writers.len(), 1, "one writer: {writers:?}");
    let lease = server.get("coordination.k8s.io/v1", "Lease", Some(NAMESPACE), "callguard-operator").expect("the Lease");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert_eq!(writers.into_iter().next(), Some(holder.clone()), "the writer holds the Lease");

    // The leader stops; the other takes over and repairs what is deleted.
    let (leader_stop, standby) = if holder == "replica-a" { (shutdown_a.clone(), "replica-b") } else { (shutdown_b.clone(), "replica-a") };
    leader_stop.trigger();
    let apps: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(server.client(), NAMESPACE);
    until("the standby to lead", || {
        server
            .get("coordination.k8s.io/v1", "Lease", Some(NAMESPACE), "callguard-operator")
            .is_some_and(|l| l["spec"]["holderIdentity"] == standby)
    })
    .await;
    apps.delete("quickstart-tftp", &Default::default()).await.unwrap();
    until("the Deployment to be recreated", || server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").is_some()).await;
    shutdown_a.trigger();
    shutdown_b.trigger();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// The Argo CD health check (argocd/health.lua) on the status the operator writes

/// Where the objects the operator wrote are kept for argocd/run_tests.py, which `scripts/chart-check`
/// runs: this test writes them when CALLGUARD_WRITE_FIXTURES is set, and otherwise fails when they
/// differ from what the operator writes now.
const ARGOCD_FIXTURES: &str = "argocd/testdata/operator";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the operator crate sits in the repository").to_owned()
}

/// A Lua 5.1 string literal: printable ASCII as is, every other byte as a decimal escape.
fn lua_string(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        match byte {
            b'\\' | b'"' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7E => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

/// The object as a Lua table constructor, as Argo CD hands the live object to the script (null is nil).
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            format!("{{{}}}", map.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// `(status, message)` of argocd/health.lua for `object`, run by lua5.1 as argocd/run_tests.py runs it.
fn argocd_health(object: &Value) -> (String, String) {
    let script = repository().join("argocd/health.lua");
    let driver = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(object),
        lua_string(script.to_str().unwrap())
    );
    let mut lua = std::process::Command::new("lua5.1")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lua5.1 runs");
    std::io::Write::write_all(&mut lua.stdin.take().unwrap(), driver.as_bytes()).unwrap();
    let output = lua.wait_with_output().unwrap();
    assert!(output.status.success(), "health.lua: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_owned(), message.to_owned())
}

/// What the health check reads of an object the operator wrote, and all of its status but what
/// differs from run to run: the conditions' transition times and a token's lockedAt (set to one
/// instant), and the cluster's identity record (digests of keys made for the run).
fn as_fixture(object: &Value) -> Value {
    let mut status = object["status"].clone();
    if let Some(status) = status.as_object_mut() {
        status.remove("identity");
        if status.contains_key("lockedAt") {
            status.insert("lockedAt".into(), json!("2026-01-01T00:00:00Z"));
        }
        if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            for condition in conditions.iter_mut() {
                condition["lastTransitionTime"] = json!("2026-01-01T00:00:00Z");
            }
            conditions.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
        }
    }
    json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "generation": object["metadata"]["generation"],
        },
        "status": status,
    })
}

/// Checks the committed fixture `name` against `object` (or writes it), and the case argocd/health_test.yaml
/// gives it against `health`.
fn check_fixture(name: &str, object: &Value, health: &(String, String)) {
    let header = "# Written by the operator against the in-process API server (tests/operator.rs,\n\
                  # argocd_health_of_the_status_the_operator_writes and sixteen_wrong_passwords_lock_a_token...);\n\
                  # times are set to one instant and the cluster's identity record is left out. Regenerate with\n\
                  #   CALLGUARD_WRITE_FIXTURES=1 cargo test --test operator -- argocd_health sixteen_wrong_passwords\n";
    let text = format!("{header}{}", serde_yaml::to_string(&as_fixture(object)).unwrap());
    let path = repository().join(ARGOCD_FIXTURES).join(format!("{name}.yaml"));
    if std::env::var_os("CALLGUARD_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from what the operator writes now: run `CALLGUARD_WRITE_FIXTURES=1 cargo test --test operator -- argocd_health \
         sixteen_wrong_passwords` \
         and commit it\n--- committed\n{committed}\n--- written now\n{text}",
        path.display()
    );
    let cases: Value = serde_yaml::from_str(&std::fs::read_to_string(repository().join("argocd/health_test.yaml")).unwrap()).unwrap();
    let input = format!("testdata/operator/{name}.yaml");
    let case = cases["tests"].as_array().unwrap().iter().find(|c| c["inputPath"] == input.as_str());
    let expected = case.map(|c| (c["healthStatus"]["status"].as_str().unwrap_or(""), c["healthStatus"]["message"].as_str().unwrap_or("")));
    assert_eq!(
        expected,
        Some((health.0.as_str(), health.1.as_str())),
        "argocd/health_test.yaml must check {input} for what health.lua says of it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_health_of_the_status_the_operator_writes() {
    require("lua5.1", "lua5.1");
    // A Ready cluster, and a phone whose security is downgraded: the quickstart's lobby phone.
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator-a").await;
    let lobby = || object(&server, "Phone", "lobby-7970");
    until("the lobby phone's Downgraded condition", || condition(&lobby(), "Downgraded").is_some()).await;
    // And one that is Ready all the same: the conference phone, whose web access setting has no
    // known encoding.
    let conference = || object(&server, "Phone", "conference-7912");
    until("the conference phone Ready and Downgraded", || is_ready(&conference()) && condition(&conference(), "Downgraded").is_some())
        .await;
    let (ready_cluster, downgraded_phone, ready_downgraded_phone) = (cluster(&server), lobby(), conference());
    shutdown.trigger();
    operator.await.unwrap().unwrap();
    assert_eq!(condition(&downgraded_phone, "Downgraded").map(|c| (c.0, c.1)), Some(("True".into(), "SecureSrstUnavailable".into())));

    // A Stalled cluster: a phone on a profile that does not exist.
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let bob = objects.iter_mut().find(|o| o["kind"] == "Phone" && o["metadata"]["name"] == "bob-7941").unwrap();
    bob["spec"]["securityProfileRef"] = json!("no-such-profile");
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator-a", false);
    until("the cluster to be Stalled", || condition(&cluster(&server), "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let stalled_cluster = cluster(&server);
    shutdown.trigger();
    operator.await.unwrap().unwrap();

    // What Argo CD shows for each, from the live objects.
    let healthy = argocd_health(&ready_cluster);
    assert_eq!(healthy, ("Healthy".into(), "Ready".into()), "a Ready cluster");
    let stalled = argocd_health(&stalled_cluster);
    let (_, _, validation) = condition(&stalled_cluster, "Stalled").unwrap();
    assert_eq!(stalled, ("Degraded".into(), validation.clone()), "a Stalled cluster shows the validation message");
    assert!(validation.contains("Phone/bob-7941") && validation.contains("no-such-profile"), "{validation}");
    let downgraded = argocd_health(&downgraded_phone);
    let (_, _, not_ready) = condition(&downgraded_phone, "Ready").unwrap();
    assert_eq!(downgraded, ("Degraded".into(), not_ready), "the lobby phone is not Ready: it awaits its certificate");
    let ready_downgraded = argocd_health(&ready_downgraded_phone);
    let (_, _, what) = condition(&ready_downgraded_phone, "Downgraded").unwrap();
    assert_eq!(ready_downgraded, ("Healthy".into(), format!("Downgraded: {what}")), "a Ready phone's downgrade shows in Argo CD too");

    // The same objects, committed for argocd/run_tests.py, which must say the same of them.
    for (name, object, health) in [
        ("cluster_ready", &ready_cluster, &healthy),
        ("cluster_stalled", &stalled_cluster, &stalled),
        ("phone_downgraded", &downgraded_phone, &downgraded),
        ("phone_ready_downgraded", &ready_downgraded_phone, &ready_downgraded),
    ] {
        assert_eq!(&argocd_health(&as_fixture(object)), health, "{name}: the fixture keeps what the health check reads");
        check_fixture(name, object, health);
    }
}

/// `callguard.io/rotate-itl-signer` on the cluster: the incoming signer waits in a Secret of its own
/// and is announced in the ITL (event `RotationStarted`, the record's `incomingItlSigner`, the Ready
/// message) for the grace period; shortening it lets the incoming signer sign (`RotationCompleted`).
/// A phone holding each published ITL accepts the next, and ends trusting only the new signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_itl_signer_rotates_through_the_operator_in_steps_a_phone_accepts() {
    use callguard::core::trust::TrustListKind;
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator").await;
    let itl = || decoded(&object(&server, "ConfigMap", "quickstart-trust"), "binaryData", "ITLFile.tlv");
    let mut phone = trusting_phone::TrustingPhone::default();
    phone.offer(TrustListKind::Itl, &itl()).unwrap();
    let record = || cluster(&server)["status"]["identity"].clone();
    let original = record()["itlSigner"].as_str().unwrap().to_owned();
    let events = |reason: &str| server.list("events.k8s.io/v1", "Event", Some(NAMESPACE)).iter().filter(|e| e["reason"] == reason).count();

    edit(&server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| {
        c["metadata"]["annotations"] = json!({"callguard.io/rotate-itl-signer": "2026-12"});
        c["spec"]["rotation"] = json!({"gracePeriodMinutes": 1440});
    })
    .await;
    until("the incoming signer announced", || record()["incomingItlSigner"].is_string()).await;
    let incoming = record()["incomingItlSigner"].as_str().unwrap().to_owned();
    until("the announcing ITL", || {
        phone.clone().offer(TrustListKind::Itl, &itl()).is_ok() && itl() != phone.itl.as_ref().unwrap().as_bytes()
    })
    .await;
    phone.offer(TrustListKind::Itl, &itl()).unwrap();
    assert_eq!(phone.itl_sast().len(), 2, "the current and the incoming signer");
    let next = object(&server, "Secret", "quickstart-cm1-callmanager-tftp-next");
    assert_eq!(sha256(&pem_der(&decoded(&next, "data", "tls.crt"))), incoming, "the incoming signer waits in its own Secret");
    let (_, _, message) = condition(&cluster(&server), "Ready").unwrap();
    assert!(message.contains("ITL signer rotation, step 1 of 2"), "{message}");
    assert!(events("RotationStarted") >= 1);
    assert_eq!(record()["itlSigner"], original.as_str(), "the current signer still signs");

    edit(&server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| c["spec"]["rotation"] = json!({"gracePeriodMinutes": 0})).await;
    until("the incoming signer signing", || record()["itlSigner"] == incoming.as_str() && record()["incomingItlSigner"].is_null()).await;
    until("the ITL it signs", || phone.itl.as_ref().is_some_and(|held| held.as_bytes() != itl())).await;
    phone.offer(TrustListKind::Itl, &itl()).unwrap();
    assert_eq!(phone.itl_sast().iter().map(|der| sha256(der)).collect::<Vec<_>>(), std::slice::from_ref(&incoming), "only the new signer");
    let signer = object(&server, "Secret", "quickstart-cm1-callmanager-tftp");
    assert_eq!(sha256(&pem_der(&decoded(&signer, "data", "tls.crt"))), incoming);
    until("the incoming Secret gone", || server.get("v1", "Secret", Some(NAMESPACE), "quickstart-cm1-callmanager-tftp-next").is_none())
        .await;
    until("RotationCompleted", || events("RotationCompleted") >= 1).await;
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    callguard::core::pki::inspect::certificate_der(pem).unwrap()
}

fn sha256(der: &[u8]) -> String {
    callguard::core::build::identity_record::sha256_hex(der)
}

/// Only the statuses that change are written: an edit to one phone's description writes that phone's
/// status alone (a typed field read back as 0 once made every phone's status look changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_to_one_phone_writes_only_its_status() {
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, "operator").await;
    let status_writes = || {
        server
            .writes()
            .iter()
            .filter(|w| w.identity.as_deref() == Some("operator") && w.subresource.as_deref() == Some("status"))
            .filter_map(|w| Some(format!("{}/{}", w.resource, w.name.clone()?)))
            .collect::<Vec<_>>()
    };
    // Settled: two seconds with no status written.
    let mut count = status_writes().len();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let now = status_writes().len();
        if now == count {
            break;
        }
        count = now;
    }
    let reads_before = server.reads().len();
    edit(&server, "Phone", "phones", "bob-7941", |p| p["spec"]["description"] = json!("edited")).await;
    until("bob's new generation in status", || {
        let bob = object(&server, "Phone", "bob-7941");
        bob["status"]["observedGeneration"] == bob["metadata"]["generation"]
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let written = status_writes()[count..].to_vec();
    assert_eq!(written, ["phones.callguard.io/bob-7941"], "only the edited phone's status is written");
    // The namespace came from the watch caches: no Callguard kind was listed again, except the
    // clusters and the tokens, which are read fresh.
    let listed: std::collections::BTreeSet<String> = server.reads()[reads_before..]
        .iter()
        .filter(|r| r.verb == fake_apiserver::Verb::List && r.resource.ends_with(".callguard.io"))
        .map(|r| r.resource.clone())
        .collect();
    assert_eq!(
        listed,
        ["callcontrolclusters.callguard.io", "securitytokens.callguard.io"].map(String::from).into(),
        "what the reconcile of the edit listed"
    );
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}
