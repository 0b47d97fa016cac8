//! The operator's controller against the in-process API server: the quickstart
//! becomes Secrets, trust lists, the TFTP workload and Ready statuses; `callguard serve tftp`
//! started against the same API serves the CTL and a phone's signed configuration to the real
//! `tftp` client; deleting the cluster removes what it owned; an invalid namespace is Stalled and
//! gets nothing; a locked token shows in status and signs nothing; of two replicas only the leader
//! writes.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/cluster.rs"]
mod support;
use peers::require;
use support::*;

use std::path::{Path, PathBuf};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_becomes_secrets_trust_lists_a_tftp_workload_and_ready_statuses() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    load(&server, quickstart());
    let (shutdown, operator) = start_operator(&server, "operator-a", false);
    until("the cluster to be Ready", || condition(&cluster(&server), "Ready").is_some_and(|(s, _, _)| s == "True")).await;

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
    assert!(pod["metadata"]["annotations"]["callguard.io/content-hash"].as_str().is_some_and(|h| h.len() == 32));
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
        (Some("Pending"), Some("Pending: Install/Upgrade until 2027-06-30T17:00:00Z (Table 6-2)"))
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
    assert!(fetched.0 && fetched.1, "CTL and bob's signed configuration fetched: {fetched:?}");
    assert!(!fetched.2, "no encrypted file without the phone's certificate");
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

fn dir_child(path: &Path) -> PathBuf {
    path.with_file_name("lobby.enc.sgn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_namespace_is_stalled_with_the_validation_message_and_gets_nothing() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let bob = objects.iter_mut().find(|o| o["kind"] == "Phone" && o["metadata"]["name"] == "bob-7941").unwrap();
    bob["spec"]["securityProfileRef"] = json!("no-such-profile");
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator-a", false);
    until("the cluster to be Stalled", || condition(&cluster(&server), "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let (_, reason, message) = condition(&cluster(&server), "Stalled").unwrap();
    assert_eq!(reason, "InvalidConfiguration");
    assert!(message.contains("Phone/bob-7941") && message.contains("no-such-profile"), "{message}");
    assert_eq!(condition(&cluster(&server), "Ready").map(|c| c.0), Some("False".into()));
    // The statuses are written concurrently: the phone's may follow the cluster's.
    let bob = || server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), "bob-7941").unwrap();
    until("the phone's own Stalled", || condition(&bob(), "Stalled").is_some()).await;
    assert_eq!(condition(&bob(), "Stalled").map(|c| c.0), Some("True".into()), "the offending object says so too");
    assert!(server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").is_none(), "nothing is issued");
    assert!(server.list("apps/v1", "Deployment", Some(NAMESPACE)).is_empty() && server.list("v1", "ConfigMap", Some(NAMESPACE)).is_empty());
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_token_shows_in_status_and_signs_no_ctl() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let primary = objects.iter_mut().find(|o| o["kind"] == "SecurityToken" && o["metadata"]["name"] == "token-primary").unwrap();
    // As sixteen wrong passwords would have left it (P.16-5).
    primary["status"] = json!({"consecutiveFailedLogins": 16, "locked": true, "lockedAt": "2026-11-01T00:00:00Z"});
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator-a", false);
    let token = || server.get("callguard.io/v1alpha1", "SecurityToken", Some(NAMESPACE), "token-primary").unwrap();
    until("the token's status", || condition(&token(), "Ready").is_some()).await;
    let ready = condition(&token(), "Ready").unwrap();
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "Locked"), "{}", ready.2);
    assert_eq!(token()["status"]["locked"], true);
    until("the trust ConfigMap", || server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").is_some()).await;
    let trust_map = server.get("v1", "ConfigMap", Some(NAMESPACE), "quickstart-trust").unwrap();
    use base64::Engine;
    let ctl = base64::engine::general_purpose::STANDARD.decode(trust_map["binaryData"]["CTLFile.tlv"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ctl.tlv"), &ctl).unwrap();
    let inspected = trust(&["inspect", dir.path().join("ctl.tlv").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(text.contains("token-backup") && !text.contains("token-primary"), "the locked token neither signs nor is listed:\n{text}");
    let cluster_ready = condition(&cluster(&server), "Ready").unwrap();
    assert_eq!((cluster_ready.0.as_str(), cluster_ready.1.as_str()), ("False", "FewerThanTwoTokens"), "{cluster_ready:?}");
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
