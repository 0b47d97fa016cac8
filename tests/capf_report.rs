//! `callguard capf report`: the CAPF report as CSV, from a state directory of `callguard build` and
//! from the Phone objects of a cluster, read back by Python's `csv` module.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use callguard::api::CertificateOperation;
use callguard::core::build::capf::{OperationId, update};
use callguard::core::build::state::StateDir;
use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

#[path = "support/peers.rs"]
mod peers;
#[path = "support/cluster.rs"]
mod support;

use peers::require;

/// Written out rather than imported from the crate: the columns are what users' scripts read.
const HEADER: [&str; 14] = [
    "Device Name",
    "Phone",
    "Model",
    "Protocol",
    "Certificate Operation",
    "Operation Completes By",
    "Authentication Mode",
    "Operation Status",
    "LSC State",
    "LSC Serial",
    "LSC Issuer",
    "LSC Not After",
    "Consecutive Auth Failures",
    "Last Completed Operation",
];

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().expect("the callguard binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The rows of a CSV file as Python's `csv` module reads them (strict: a badly quoted field fails).
fn python_csv(file: &Path) -> Vec<Vec<String>> {
    require("python3", "python3");
    let script = "import csv, json, sys\nwith open(sys.argv[1], newline='') as f:\n    print(json.dumps(list(csv.reader(f, strict=True))))";
    let output = Command::new("python3").args(["-c", script]).arg(file).output().expect("python3 runs");
    assert!(output.status.success(), "python3 csv: {}", text(&output));
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}

/// A row as a map from column to value, for readable failures.
fn by_column(rows: &[Vec<String>]) -> Vec<std::collections::BTreeMap<&'static str, String>> {
    assert_eq!(rows[0], HEADER, "the header row");
    rows[1..]
        .iter()
        .map(|row| {
            assert_eq!(row.len(), HEADER.len(), "{row:?}");
            HEADER.iter().copied().zip(row.iter().cloned()).collect()
        })
        .collect()
}

/// After `callguard build` of the quickstart, an LSC made by openssl added with `device add-cert`,
/// and an operation CAPF completed kept in the state's `capf/` record, the report lists every phone
/// in device-name order with what the state says: the LSC's serial, issuer (with commas, so quoted)
/// and notAfter as openssl reads them, the completed operation, the pending one.
#[test]
fn the_report_from_a_state_directory_reads_back_with_python_csv() {
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let state = dir.path().join("state");
    let build = || {
        let output = callguard(&["build", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "build: {}", text(&output));
    };
    build();

    // lobby-7970's LSC, made by openssl from the state's CA.
    let device = "SEP001122334455";
    let ca = state.join("namespaces/default/ca");
    openssl(dir.path(), &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", "phone.key"]);
    openssl(dir.path(), &["req", "-new", "-key", "phone.key", "-subj", &format!("/CN={device}"), "-out", "phone.csr"]);
    fs::write(dir.path().join("lsc.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
        .unwrap();
    let (ca_crt, ca_key) = (ca.join("ca.crt"), ca.join("ca.key"));
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "phone.csr",
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-set_serial",
            "0x5A17",
            "-days",
            "30",
            "-extfile",
            "lsc.ext",
            "-out",
            "lsc.pem",
        ],
    );
    let lsc = dir.path().join("lsc.pem");
    let added = callguard(&["device", "add-cert", "--state-dir", state.to_str().unwrap(), "--device", device, lsc.to_str().unwrap()]);
    assert_eq!(added.status.code(), Some(0), "{}", text(&added));
    let facts = openssl(dir.path(), &["x509", "-in", "lsc.pem", "-noout", "-serial", "-issuer", "-enddate", "-dateopt", "iso_8601"]);
    let fact = |name: &str| facts.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {facts}")).to_owned();
    let serial = fact("serial=").to_lowercase();
    let issuer = fact("issuer=").replace(" = ", "=");
    let not_after = fact("notAfter=").replace(' ', "T");

    // hallway-7911 (null string): CAPF completed its Install/Upgrade, as the record says.
    let hallway = "SEP00AABBCCDD04";
    let namespace_state = StateDir::open(&state.join("namespaces/default")).unwrap();
    let id = OperationId { operation: CertificateOperation::InstallUpgrade, completes_by: "2036-06-30T17:00:00Z".into() };
    let at = time::OffsetDateTime::parse("2026-03-01T10:00:00Z", &time::format_description::well_known::Rfc3339).unwrap();
    update(&namespace_state, hallway, |record| record.complete(id.clone(), at, None)).unwrap();
    build();

    let out = dir.path().join("report.csv");
    let output = callguard(&["capf", "report", "--state-dir", state.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(fs::read_to_string(&out).unwrap().contains("\r\n"), "RFC 4180 ends lines with CRLF");
    let rows = python_csv(&out);
    let rows = by_column(&rows);
    let devices: Vec<&str> = rows.iter().map(|r| r["Device Name"].as_str()).collect();
    assert_eq!(
        devices,
        [
            "SEP001122334455",
            "SEP00AABBCCDD01",
            "SEP00AABBCCDD02",
            "SEP00AABBCCDD03",
            "SEP00AABBCCDD04",
            "SEP00AABBCCDD05",
            "SEP00AABBCCDD06"
        ],
        "one row per phone of the quickstart, by device name"
    );
    let row = |device: &str| rows.iter().find(|r| r["Device Name"] == device).unwrap();
    let lobby = row(device);
    let expected = |pairs: &[(&'static str, &str)]| -> std::collections::BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    assert_eq!(
        *lobby,
        expected(&[
            ("Device Name", device),
            ("Phone", "lobby-7970"),
            ("Model", "7970"),
            ("Protocol", "SCCP"),
            ("Certificate Operation", "Install/Upgrade"),
            ("Operation Completes By", "2036-06-30T17:00:00Z"),
            ("Authentication Mode", "By Authentication String"),
            ("Operation Status", "Pending: Install/Upgrade until 2036-06-30T17:00:00Z (Table 6-2)"),
            ("LSC State", "Pending"),
            ("LSC Serial", &serial),
            ("LSC Issuer", &issuer),
            ("LSC Not After", &not_after),
            ("Consecutive Auth Failures", "0"),
            ("Last Completed Operation", ""),
        ])
    );
    assert!(issuer.contains(','), "the issuer has commas, so the field was quoted: {issuer}");
    assert_eq!(
        *row(hallway),
        expected(&[
            ("Device Name", hallway),
            ("Phone", "hallway-7911"),
            ("Model", "7911"),
            ("Protocol", "SCCP"),
            ("Certificate Operation", "Install/Upgrade"),
            ("Operation Completes By", "2036-06-30T17:00:00Z"),
            ("Authentication Mode", "By Null String"),
            ("Operation Status", "Completed: Install/Upgrade at 2026-03-01T10:00:00Z"),
            ("LSC State", "None"),
            ("LSC Serial", ""),
            ("LSC Issuer", ""),
            ("LSC Not After", ""),
            ("Consecutive Auth Failures", "0"),
            ("Last Completed Operation", "Install/Upgrade at 2026-03-01T10:00:00Z"),
        ])
    );
    let bob = row("SEP00AABBCCDD02");
    assert_eq!(
        (bob["Certificate Operation"].as_str(), bob["Authentication Mode"].as_str(), bob["LSC State"].as_str()),
        ("No Pending Operation", "By Existing Certificate (Precedence to LSC)", "None")
    );

    // Standard output carries the same bytes; a state that was never built says what to do.
    let stdout = callguard(&["capf", "report", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(stdout.stdout, fs::read(&out).unwrap());
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let output = callguard(&["capf", "report", "--state-dir", empty.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("run callguard build or local first"), "{}", text(&output));
}

/// From a cluster: the Phones of the namespace with the status the operator wrote, their profiles'
/// authentication modes, and nothing of another namespace; fields with commas, quotes and a line
/// break survive the round trip through Python's `csv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_from_a_cluster_reads_back_with_python_csv() {
    let server = FakeApiServer::start().await;
    let lsc = json!({
        "subject": "CN=SEP001122334455",
        "issuer": "CN=quickstart CA, O=\"Call, guard\"",
        "serialNumber": "0a5b17",
        "notAfter": "2031-02-03T04:05:06Z",
        "sha256": "00".repeat(32),
    });
    let objects: Vec<Value> = support::quickstart()
        .into_iter()
        .map(|mut object| {
            match object["metadata"]["name"].as_str() {
                Some("lobby-7970") => {
                    object["status"] = json!({"lscState": "Installed", "operationStatus": "Completed: Install/Upgrade at 2026-03-01T10:00:00Z, LSC serial 0a5b17", "lsc": lsc, "consecutiveAuthFailures": 0});
                }
                Some("hallway-7911") => {
                    object["status"] = json!({"lscState": "Failed", "operationStatus": "Failed: Install/Upgrade: the phone said \"no\"\nand hung up", "consecutiveAuthFailures": 3});
                }
                _ => {}
            }
            object
        })
        .collect();
    support::load(&server, objects);
    let mut stranger = support::quickstart().into_iter().find(|o| o["metadata"]["name"] == "lobby-7970").unwrap();
    stranger["metadata"]["namespace"] = json!("elsewhere");
    stranger["metadata"]["name"] = json!("stranger");
    stranger["spec"]["macAddress"] = json!("0000000000FF");
    server.insert(stranger).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fs::write(&kubeconfig, server.kubeconfig("admin")).unwrap();
    let out = dir.path().join("report.csv");
    let (k, o) = (kubeconfig.clone(), out.clone());
    let output = tokio::task::spawn_blocking(move || {
        callguard(&["capf", "report", "--kubeconfig", k.to_str().unwrap(), "--namespace", "default", "--out", o.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = python_csv(&out);
    let rows = by_column(&rows);
    let devices: Vec<&str> = rows.iter().map(|r| r["Device Name"].as_str()).collect();
    assert_eq!(devices.len(), 7, "the quickstart's seven phones, none of another namespace: {devices:?}");
    assert!(devices.windows(2).all(|w| w[0] < w[1]), "sorted by device name: {devices:?}");
    let row = |device: &str| rows.iter().find(|r| r["Device Name"] == device).unwrap();
    let lobby = row("SEP001122334455");
    assert_eq!(
        [
            &lobby["Phone"],
            &lobby["Certificate Operation"],
            &lobby["Authentication Mode"],
            &lobby["Operation Status"],
            &lobby["LSC State"],
            &lobby["LSC Serial"],
            &lobby["LSC Issuer"],
            &lobby["LSC Not After"]
        ],
        [
            "lobby-7970",
            "Install/Upgrade",
            "By Authentication String",
            "Completed: Install/Upgrade at 2026-03-01T10:00:00Z, LSC serial 0a5b17",
            "Installed",
            "0a5b17",
            "CN=quickstart CA, O=\"Call, guard\"",
            "2031-02-03T04:05:06Z"
        ]
    );
    let hallway = row("SEP00AABBCCDD04");
    assert_eq!(
        [&hallway["Authentication Mode"], &hallway["Operation Status"], &hallway["LSC State"], &hallway["Consecutive Auth Failures"]],
        ["By Null String", "Failed: Install/Upgrade: the phone said \"no\"\nand hung up", "Failed", "3"]
    );
    assert_eq!(row("SEP00AABBCCDD05")["LSC State"], "None", "a phone with no status");

    // The kubeconfig's namespace when none is asked for.
    let o = out.clone();
    let output = tokio::task::spawn_blocking(move || {
        callguard(&["capf", "report", "--kubeconfig", kubeconfig.to_str().unwrap(), "--out", o.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(by_column(&python_csv(&out)).len(), 7);
}
