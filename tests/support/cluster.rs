//! The quickstart in the in-process API server, the operator running against it, and
//! `callguard serve tftp` as a pod would run it: what `tests/operator.rs` and `tests/security.rs`
//! share.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callguard::adapters::controller::OperatorOptions;
use callguard::ops::shutdown::Shutdown;
use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

use super::peers::{TftpGet, file_not_found, tftp_hpa_get};

pub const NAMESPACE: &str = "default";
pub const CLUSTER: &str = "quickstart";

/// The quickstart's objects, in namespace [`NAMESPACE`].
pub fn quickstart() -> Vec<Value> {
    manifests(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart"))
}

/// The objects of the manifests in `dir`, in namespace [`NAMESPACE`].
pub fn manifests(dir: &Path) -> Vec<Value> {
    let (documents, errors) = callguard::validate::manifest::load_paths(&[dir.to_path_buf()]);
    assert!(errors.is_empty(), "{errors:?}");
    documents
        .into_iter()
        .map(|d| {
            let mut value = d.value;
            value["metadata"]["namespace"] = json!(NAMESPACE);
            value
        })
        .collect()
}

pub fn load(server: &FakeApiServer, objects: Vec<Value>) {
    for object in objects {
        server.insert(object.clone()).unwrap_or_else(|e| panic!("insert {}: {e:?}", object["metadata"]["name"]));
    }
}

pub fn options(identity: &str, leader_election: bool) -> OperatorOptions {
    OperatorOptions {
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        leader_election,
        lease_namespace: NAMESPACE.into(),
        image: "registry.example/callguard:test".into(),
        identity: Some(identity.into()),
        namespaces: vec![NAMESPACE.into()],
        api_server_ports: vec![443, 6443],
        image_pull_secrets: vec!["regcred".into()],
    }
}

/// Runs the operator in this process until the returned handle is triggered.
pub fn start_operator(
    server: &FakeApiServer,
    identity: &str,
    leader_election: bool,
) -> (Shutdown, tokio::task::JoinHandle<Result<(), String>>) {
    start_operator_with(server, options(identity, leader_election))
}

pub fn start_operator_with(server: &FakeApiServer, options: OperatorOptions) -> (Shutdown, tokio::task::JoinHandle<Result<(), String>>) {
    let shutdown = Shutdown::new();
    let identity = options.identity.clone().unwrap_or_default();
    let task = tokio::spawn(callguard::adapters::controller::run(server.client_as(&identity), options, shutdown.clone()));
    (shutdown, task)
}

/// The quickstart loaded and the operator run as `identity` (no leader election) until the cluster
/// is Ready.
pub async fn quickstart_ready(server: &FakeApiServer, identity: &str) -> (Shutdown, tokio::task::JoinHandle<Result<(), String>>) {
    load(server, quickstart());
    let running = start_operator(server, identity, false);
    until("the cluster to be Ready", || is_ready(&cluster(server))).await;
    running
}

/// `(status, reason, message)` of a condition.
pub fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or("").into(), c["reason"].as_str().unwrap_or("").into(), c["message"].as_str().unwrap_or("").into())
    })
}

pub fn cluster(server: &FakeApiServer) -> Value {
    server.get("callguard.io/v1alpha1", "CallControlCluster", Some(NAMESPACE), CLUSTER).expect("the cluster exists")
}

pub fn object(server: &FakeApiServer, kind: &str, name: &str) -> Value {
    let api_version = if matches!(kind, "Secret" | "ConfigMap") { "v1" } else { "callguard.io/v1alpha1" };
    server.get(api_version, kind, Some(NAMESPACE), name).unwrap_or_else(|| panic!("{kind}/{name} exists"))
}

/// Polls until `ready` holds, for up to 90 s.
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_ready(object: &Value) -> bool {
    condition(object, "Ready").is_some_and(|(s, _, _)| s == "True")
}

pub fn owned_by_cluster(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid && r["controller"] == true))
}

/// The arguments the operator gave the TFTP pods.
pub fn tftp_pod_args(server: &FakeApiServer) -> Vec<String> {
    let deployment = server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-tftp").expect("the TFTP Deployment");
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

/// `callguard serve tftp` against the fake API server, as a pod would run it.
pub struct ServeTftp {
    child: std::process::Child,
    pub port: u16,
}

impl ServeTftp {
    /// Runs the pod's own arguments (`args` of the Deployment's container) on loopback, with the
    /// identity of `kubeconfig`.
    pub fn start(kubeconfig: &Path, pod_args: &[String]) -> ServeTftp {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let arg = |name: &str| {
            pod_args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone()).unwrap_or_else(|| panic!("{name} in {pod_args:?}"))
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["serve", "tftp", "--cluster", CLUSTER, "--namespace", NAMESPACE])
            .args(["--signer-secret", &arg("--signer-secret"), "--files-secret", &arg("--files-secret")])
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("callguard runs");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("serve tftp says it serves");
        assert!(line.starts_with("serving TFTP on"), "{line}");
        ServeTftp { child, port }
    }

    pub fn fetch(&self, name: &str, out: &Path) -> TftpGet {
        tftp_hpa_get(self.port, name, out)
    }

    /// The file's bytes, or `None` when the server answers ERROR 1 (File not found); any other
    /// failure fails the test.
    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("file");
        match self.fetch(name, &out) {
            TftpGet::Fetched => Some(std::fs::read(&out).unwrap()),
            answer if answer == file_not_found() => None,
            other => panic!("{name}: {other:?}"),
        }
    }
}

impl Drop for ServeTftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn trust(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).arg("trust").args(args).output().unwrap()
}

/// The base64 `data` value of a Secret or `binaryData` value of a ConfigMap, decoded.
pub fn decoded(object: &Value, field: &str, key: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(object[field][key].as_str().unwrap_or_else(|| panic!("{field}.{key}"))).unwrap()
}

/// The API of `plural` in the quickstart's namespace, for any kind.
pub fn dynamic(server: &FakeApiServer, api_version: &str, kind: &str, plural: &str) -> kube::Api<kube::api::DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    kube::Api::namespaced_with(server.client(), NAMESPACE, &kube::discovery::ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// Edits an object's spec (or data) as a client's PUT would.
pub async fn edit(server: &FakeApiServer, kind: &str, plural: &str, name: &str, change: impl FnOnce(&mut Value)) {
    let mut value = object(server, kind, name);
    change(&mut value);
    let api = dynamic(server, value["apiVersion"].as_str().unwrap(), kind, plural);
    let typed: kube::api::DynamicObject = serde_json::from_value(value).unwrap();
    api.replace(name, &Default::default(), &typed).await.unwrap_or_else(|e| panic!("replace {kind}/{name}: {e}"));
}
