//! The operator under faults. The in-process API server injects, into the operator's requests
//! only, 500s, 409 conflicts, lost answers (a write carried out whose answer is a 504, so that the
//! operator cannot tell it happened), expired (410) and dropped watches; and the test kills the
//! operator at a random point of its work (after a random number of its writes) fifty times over,
//! starting it again each time. After each kill and at the end, with the faults off and the cluster
//! converged to Ready:
//! - no certificate the operator stored was replaced or lost, and no serial number was issued twice
//!   by one issuer;
//! - no Secret the user owns was written by the operator, and each is as the user wrote it;
//! - no token failure was counted: every password is right, whatever the operator's retries.
//!
//! A second run starts a CA rotation and an ITL signer rotation (no grace period) and kills the
//! operator the same way: a simulated phone that follows every trust list the cluster publishes
//! accepts each one, the rotations complete, and the cluster is never taken for one whose identity
//! was lost.
//!
//! The run's seed is printed; `CALLGUARD_FAULT_SEED` repeats a run.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/cluster.rs"]
mod support;
#[path = "support/trusting_phone.rs"]
mod trusting_phone;
use support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use callguard::adapters::controller::labels::{COMPONENT, PROJECTION_COMPONENT};
use callguard::core::pki::inspect::{CertificateFacts, certificate_der};
use fake_apiserver::{FakeApiServer, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const KILLS: usize = 50;
const OPERATOR: &str = "operator";

/// The certificates in one Secret value (a PEM bundle), as DER.
fn certificates(bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let end = "-----END CERTIFICATE-----";
    text.match_indices("-----BEGIN CERTIFICATE-----")
        .filter_map(|(start, _)| text[start..].find(end).map(|length| &text[start..start + length + end.len()]))
        .filter_map(|pem| certificate_der(pem.as_bytes()).ok())
        .collect()
}

/// What the operator stored and the checks across kills.
#[derive(Default)]
struct Ledger {
    /// Each certificate-holding value of the state Secrets, as first seen: `(Secret, key)`.
    stored: BTreeMap<(String, String), Vec<Vec<u8>>>,
    /// Every certificate seen, by issuer and serial.
    issued: BTreeMap<(String, String), Vec<u8>>,
}

impl Ledger {
    /// Records the state Secrets (not the pods' projections, which are copies), and fails on a
    /// stored certificate replaced or lost, or a serial of one issuer on two certificates.
    fn check(&mut self, server: &FakeApiServer, when: &str) {
        let mut now = BTreeMap::new();
        for secret in server.list("v1", "Secret", Some(NAMESPACE)) {
            let labels = &secret["metadata"]["labels"];
            if labels["app.kubernetes.io/managed-by"] != "callguard" || labels[COMPONENT] == PROJECTION_COMPONENT {
                continue;
            }
            let name = secret["metadata"]["name"].as_str().unwrap().to_owned();
            for key in secret["data"].as_object().map(|d| d.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                let found = certificates(&decoded(&secret, "data", &key));
                if !found.is_empty() {
                    now.insert((name.clone(), key), found);
                }
            }
        }
        for (place, certificates) in &now {
            for der in certificates {
                let facts = CertificateFacts::from_der(der).unwrap();
                let id = (facts.issuer.clone(), facts.serial.to_string());
                let first = self.issued.entry(id.clone()).or_insert_with(|| der.clone());
                assert!(first == der, "{when}: serial {} of {} issued twice ({place:?})", id.1, id.0);
            }
            match self.stored.get(place) {
                Some(first) => assert!(first == certificates, "{when}: the certificate in {place:?} was replaced"),
                None => {
                    self.stored.insert(place.clone(), certificates.clone());
                }
            }
        }
        let lost: Vec<&(String, String)> = self.stored.keys().filter(|place| !now.contains_key(*place)).collect();
        assert!(lost.is_empty(), "{when}: stored certificates lost: {lost:?}");
    }
}

fn failed_logins(server: &FakeApiServer) -> u64 {
    let Some(secret) = server.get("v1", "Secret", Some(NAMESPACE), "quickstart-tokens") else { return 0 };
    let registry: Value = serde_yaml::from_slice(&decoded(&secret, "data", "registry.yaml")).unwrap_or(Value::Null);
    registry["certificates"].as_object().map(|c| c.values().filter_map(|r| r["consecutiveFailedLogins"].as_u64()).sum()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_kills_under_api_faults_lose_nothing_and_issue_nothing_twice() {
    let seed = std::env::var("CALLGUARD_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("fault seed {seed} (CALLGUARD_FAULT_SEED={seed} repeats this run)");
    let server = FakeApiServer::start().await;
    let objects = quickstart();
    let user_secrets: BTreeSet<String> =
        objects.iter().filter(|o| o["kind"] == "Secret").map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    load(&server, objects);
    let as_written: BTreeMap<String, Value> = user_secrets
        .iter()
        .map(|name| (name.clone(), server.get("v1", "Secret", Some(NAMESPACE), name).unwrap()["data"].clone()))
        .collect();

    server.inject_faults(Some(operator_faults(seed)));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    // Killed wherever it is: mid-list, mid-apply, mid-status.
    kill_repeatedly(&server, &mut rng, KILLS, |kill| ledger.check(&server, &format!("after kill {kill}"))).await;
    let injected = server.injected_faults();
    println!("injected: {injected:?}");
    for fault in ["internal_error", "conflict", "lost_answer", "expired_watch", "dropped_watch"] {
        assert!(injected.get(fault).is_some_and(|&n| n > 0), "{fault} was never injected: {injected:?}");
    }

    server.inject_faults(None);
    let (shutdown, operator) = start_operator(&server, OPERATOR, false);
    until("the cluster to converge to Ready once the faults stop", || is_ready(&cluster(&server))).await;
    ledger.check(&server, "at the end");
    assert!(ledger.stored.keys().any(|(secret, _)| secret == "quickstart-ca"), "the CA is among what was checked");
    shutdown.trigger();
    operator.await.unwrap().unwrap();

    let written: Vec<String> = server
        .writes()
        .iter()
        .filter(|w| w.identity.as_deref() == Some(OPERATOR) && w.resource == "secrets")
        .filter_map(|w| w.name.clone())
        .filter(|name| user_secrets.contains(name))
        .collect();
    assert!(written.is_empty(), "the operator wrote the user's Secrets: {written:?}");
    for (name, data) in &as_written {
        assert_eq!(&server.get("v1", "Secret", Some(NAMESPACE), name).unwrap()["data"], data, "Secret/{name} as the user wrote it");
    }
    assert_eq!(failed_logins(&server), 0, "no token failure the user did not cause");
}

/// Faults on the operator's requests only, from `seed`.
fn operator_faults(seed: u64) -> Faults {
    Faults {
        identity: Some(OPERATOR.into()),
        internal_error: 0.04,
        conflict: 0.04,
        lost_answer: 0.04,
        expired_watch: 0.2,
        dropped_watch: 0.2,
        seed,
    }
}

/// Kills the operator at a random point of its progress, not of the clock (a loaded machine would
/// let every kill land before the first write): after a random number of its writes, or 5 s;
/// `kills` times, calling `after_each` after each.
async fn kill_repeatedly(server: &FakeApiServer, rng: &mut StdRng, kills: usize, mut after_each: impl FnMut(usize)) {
    for kill in 1..=kills {
        let (_shutdown, operator) = start_operator(server, OPERATOR, false);
        let writes = || server.writes().iter().filter(|w| w.identity.as_deref() == Some(OPERATOR)).count();
        let (before, after) = (writes(), rng.gen_range(0..30));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while writes() < before + after && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        operator.abort();
        let _ = operator.await;
        after_each(kill);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_killed_at_random_points_publish_only_what_a_phone_accepts() {
    use callguard::core::trust::TrustListKind;
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seed = std::env::var("CALLGUARD_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("fault seed {seed} (CALLGUARD_FAULT_SEED={seed} repeats this run)");
    let server = FakeApiServer::start().await;
    let (shutdown, operator) = quickstart_ready(&server, OPERATOR).await;
    let original = cluster(&server)["status"]["identity"].clone();

    // A phone that takes every version of the trust lists, as they are written.
    let phone = std::sync::Arc::new(std::sync::Mutex::new(trusting_phone::TrustingPhone::default()));
    let refusals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let configs: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(server.client(), NAMESPACE);
    let follower = {
        let (phone, refusals) = (phone.clone(), refusals.clone());
        tokio::spawn(async move {
            let mut events = watcher(configs, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let (watcher::Event::Apply(map) | watcher::Event::InitApply(map)) = event else { continue };
                if map.metadata.name.as_deref() != Some("quickstart-trust") {
                    continue;
                }
                for kind in [TrustListKind::Ctl, TrustListKind::Itl] {
                    if let Some(bytes) = map.binary_data.as_ref().and_then(|d| d.get(kind.filename()))
                        && let Err(e) = phone.lock().unwrap().offer(kind, &bytes.0)
                    {
                        refusals.lock().unwrap().push(e);
                    }
                }
            }
        })
    };
    until("the phone to hold the ITL", || phone.lock().unwrap().itl.is_some()).await;
    shutdown.trigger();
    operator.await.unwrap().unwrap();

    edit(&server, "CallControlCluster", "callcontrolclusters", CLUSTER, |c| {
        c["metadata"]["annotations"] = serde_json::json!({"callguard.io/rotate-ca": "r1", "callguard.io/rotate-itl-signer": "r1"});
        c["spec"]["rotation"] = serde_json::json!({"gracePeriodMinutes": 0});
    })
    .await;
    server.inject_faults(Some(operator_faults(seed)));
    let mut rng = StdRng::seed_from_u64(seed);
    kill_repeatedly(&server, &mut rng, 25, |_| {}).await;
    server.inject_faults(None);

    let (shutdown, operator) = start_operator(&server, OPERATOR, false);
    let record = || cluster(&server)["status"]["identity"].clone();
    until("both rotations to complete", || {
        let now = record();
        is_ready(&cluster(&server))
            && now["ca"] != original["ca"]
            && now["previousCa"].is_null()
            && now["itlSigner"] != original["itlSigner"]
            && now["incomingItlSigner"].is_null()
    })
    .await;
    let published = decoded(&object(&server, "ConfigMap", "quickstart-trust"), "binaryData", "ITLFile.tlv");
    until("the phone to hold the last ITL", || phone.lock().unwrap().itl.as_ref().is_some_and(|l| l.as_bytes() == published)).await;
    shutdown.trigger();
    operator.await.unwrap().unwrap();
    follower.abort();

    let refusals = refusals.lock().unwrap().clone();
    assert!(refusals.is_empty(), "the phone refused: {refusals:?}");
    assert_eq!(record()["id"], original["id"], "the same identity, rotated");
    let ca = certificate_der(&decoded(&object(&server, "Secret", "quickstart-ca"), "data", "ca.crt")).unwrap();
    let phone = phone.lock().unwrap();
    for held in phone.itl.as_ref().unwrap().records.iter() {
        assert!(callguard::core::pki::inspect::is_issued_by(&held.certificate_der, &ca), "{} is the new CA's", held.subject);
    }
    assert!(server.get("v1", "Secret", Some(NAMESPACE), "quickstart-cm1-callmanager-tftp-next").is_none());
}
