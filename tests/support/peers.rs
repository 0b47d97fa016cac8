//! The real peers the integration tests use, shared by the test binaries that include this file.

use std::path::Path;
use std::process::Command;

/// Fails the test when `program` is not installed: a missing peer is never a silent skip.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{program} is missing: install the Debian package {package} (scripts/test does)");
}

/// Fetches `name` from the TFTP server on 127.0.0.1:`port` into `out` with tftp-hpa's client, in
/// binary mode; whether it came without a TFTP error.
pub fn tftp_hpa_get(port: u16, name: &str, out: &Path) -> bool {
    let command = format!("get {name} {}", out.display());
    let output =
        Command::new("tftp").args(["127.0.0.1", &port.to_string(), "-m", "binary", "-c"]).args(command.split(' ')).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    output.status.success() && !text.contains("Error code") && out.exists()
}
