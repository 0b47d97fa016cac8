//! `cargo bench --bench reconcile [-- PHONES]`: a cluster of 30,000 phones (the size of a large
//! CallManager cluster) reconciled by the real `callguard operator` process against the in-process API
//! server, from cold (no CA, no trust list, no status) to every object's status written; then, warm,
//! one phone edited until its status shows the new generation. Prints both times, the API requests,
//! and the operator's peak resident memory (its `ru_maxrss`), each beside its target.
//!
//! There is no peer to compare with: the targets are absolute (cold under 10 s, peak memory under
//! 256 MiB, one edit reflected in under 1 s).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::json;

const NAMESPACE: &str = "default";

/// The in-process API server runs in this process, beside the operator's on the same two cores; on
/// glibc's allocator a quarter of its CPU went to malloc and free (perf, cold start), time the
/// operator's writes then waited for. The operator itself runs on mimalloc too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Without `--bench` (as `cargo test --benches` runs it) a small namespace checks that the
    // benchmark works, and the figures mean nothing; tests/bench_smoke.rs runs the same check.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let default = if benchmarking { 30_000 } else { 300 };
    let phones: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(default);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    if let Err(e) = runtime.block_on(run(phones)) {
        eprintln!("bench reconcile: {e}");
        std::process::exit(2);
    }
}

pub async fn run(phones: usize) -> Result<(), String> {
    let server = FakeApiServer::start().await;
    let yaml = callguard::bench::namespace_yaml(phones);
    let documents =
        callguard::validate::manifest::parse_documents(std::path::Path::new("bench.yaml"), yaml.as_bytes()).map_err(|e| e.to_string())?;
    let objects = documents.len();
    let with_status = documents.iter().filter(|d| d.value["apiVersion"].as_str().is_some_and(|v| v.starts_with("callguard.io/"))).count();
    for document in documents {
        let mut value = document.value;
        value["metadata"]["namespace"] = json!(NAMESPACE);
        server.insert(value).map_err(|e| format!("{e:?}"))?;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("operator")).map_err(|e| e.to_string())?;
    println!("bench reconcile: {phones} phones, {objects} objects in the in-process API server");

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    let started = Instant::now();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["operator", "--metrics-bind", &metrics_bind, "--identity", "bench"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run callguard operator: {e}"))?;

    // Done when every Callguard object has a status for its generation.
    let kinds = ["CallControlCluster", "SecurityToken", "PhoneSecurityProfile", "Phone", "EndUser"];
    let deadline = Instant::now() + Duration::from_secs(600);
    let elapsed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status_writes = server.count_writes(is_status_write);
        if status_writes >= with_status {
            let pending: usize = kinds
                .iter()
                .map(|kind| {
                    server.count("callguard.io/v1alpha1", kind, Some(NAMESPACE), |o| {
                        o["status"]["observedGeneration"] != o["metadata"]["generation"] || o["status"]["conditions"].as_array().is_none()
                    })
                })
                .sum();
            if pending == 0 {
                break started.elapsed();
            }
        }
        if Instant::now() > deadline {
            let _ = operator.kill();
            return Err(format!("no full status after 600 s ({status_writes} status writes)"));
        }
        if let Ok(Some(status)) = operator.try_wait() {
            return Err(format!("the operator exited with {status}"));
        }
    };
    let ready = server.count("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), |p| {
        p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    });
    let requests: u64 = server.request_counts().values().sum();

    // Warm: once no reconcile has run for two seconds (its own writes may have queued one more),
    // one phone's spec changes.
    let cold_metrics = match idle(&metrics_bind).await {
        Ok(text) => text,
        Err(e) => {
            let _ = operator.kill();
            return Err(e);
        }
    };
    let edited = server.list("callguard.io/v1alpha1", "Phone", Some(NAMESPACE)).into_iter().next().ok_or("no phone to edit")?;
    let name = edited["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let resource =
        kube::api::ApiResource::from_gvk_with_plural(&kube::api::GroupVersionKind::gvk("callguard.io", "v1alpha1", "Phone"), "phones");
    let phones_api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(server.client(), NAMESPACE, &resource);
    let requests_before_edit: u64 = server.request_counts().values().sum();
    let status_writes_before_edit = server.count_writes(is_status_write);
    eprintln!("bench reconcile: warm; editing Phone/{name}");
    let edit_started = Instant::now();
    let patch = json!({"spec": {"description": "edited by the benchmark"}});
    let patched =
        phones_api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.map_err(|e| e.to_string())?;
    let generation = patched.metadata.generation;
    let edit_latency = loop {
        let phone = server.get("callguard.io/v1alpha1", "Phone", Some(NAMESPACE), &name).ok_or("the edited phone is gone")?;
        if phone["status"]["observedGeneration"].as_i64() == generation {
            break edit_started.elapsed();
        }
        if edit_started.elapsed() > Duration::from_secs(300) {
            let _ = operator.kill();
            return Err(format!("Phone/{name}'s edit not reflected after 300 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let warm_metrics = match idle(&metrics_bind).await {
        Ok(text) => text,
        Err(e) => {
            let _ = operator.kill();
            return Err(e);
        }
    };

    // SIGTERM, then the peak resident set of the process from the kernel.
    // SAFETY: kill and wait4 on our own child's pid; rusage is plain data the kernel fills.
    let peak_kib = unsafe {
        libc::kill(operator.id() as libc::pid_t, libc::SIGTERM);
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(operator.id() as libc::pid_t, &mut status, 0, &mut usage);
        usage.ru_maxrss
    };
    println!("  cold to every status written: {elapsed:>8.2?}   (target under 10 s)");
    println!("  phones Ready:                 {ready:>8} of {phones}");
    println!("  API requests (cold):          {requests:>8}");
    println!("  one phone's edit in status:   {edit_latency:>8.2?}   (target under 1 s)");
    let requests_edit = server.request_counts().values().sum::<u64>() - requests_before_edit;
    let status_writes_edit = server.count_writes(is_status_write) - status_writes_before_edit;
    println!("  API requests (edit):          {requests_edit:>8} ({status_writes_edit} status writes)");
    let mut projected = (0, 0);
    for secret in server.list("v1", "Secret", Some(NAMESPACE)) {
        if secret["metadata"]["labels"]["app.kubernetes.io/component"] == "tftp-files" {
            let bytes: usize =
                secret["data"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_str()).map(|b64| b64.len() * 3 / 4).sum();
            projected = (projected.0 + 1, projected.1 + bytes);
        }
    }
    println!("  projections (files for the pods): {:>3} Secrets, {:.1} MiB", projected.0, projected.1 as f64 / (1024.0 * 1024.0));
    println!("  operator peak memory (RSS):   {:>8.1} MiB   (target under 256 MiB)", peak_kib as f64 / 1024.0);
    println!("  where it goes, per reconcile step (seconds summed over the reconciles; memory after the step's last run):");
    println!("    {:<12} {:>10} {:>10} {:>12}", "step", "cold", "edit", "RSS MiB");
    for step in ["Dereference", "Validate", "Build", "Desired", "Apply", "Status"] {
        let sum = |text: &str| step_metric(text, "callguard_reconcile_step_duration_seconds_sum", step);
        let resident = step_metric(&warm_metrics, "callguard_reconcile_step_resident_bytes", step) / (1024.0 * 1024.0);
        let (cold, edit) = (sum(&cold_metrics), sum(&warm_metrics) - sum(&cold_metrics));
        println!("    {step:<12} {cold:>10.2} {edit:>10.2} {resident:>12.1}");
    }
    if ready != phones {
        return Err(format!("only {ready} of {phones} phones are Ready"));
    }
    Ok(())
}

fn is_status_write(write: &fake_apiserver::WriteRecord) -> bool {
    write.subresource.as_deref() == Some("status")
}

/// Waits until no reconcile has run for two seconds (its own writes may queue one more); the
/// operator's metrics then.
async fn idle(metrics_bind: &str) -> Result<String, String> {
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = metrics(metrics_bind).await.map_err(|e| format!("the operator's /metrics: {e}"))?;
        let in_flight =
            text.lines().find_map(|l| l.strip_prefix("callguard_reconciles_in_flight ")).and_then(|v| v.trim().parse::<i64>().ok());
        if in_flight != Some(0) {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= Duration::from_secs(2) {
            return Ok(text);
        }
    }
}

/// The value of `metric{step="STEP"}` in a scrape, 0 when absent.
fn step_metric(text: &str, metric: &str, step: &str) -> f64 {
    let prefix = format!("{metric}{{step=\"{step}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// The operator's `/metrics`, over one plain HTTP/1.1 request.
async fn metrics(address: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: callguard\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}
