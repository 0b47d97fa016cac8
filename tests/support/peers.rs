//! The real peers the integration tests use, shared by the test binaries that include this file.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Fails the test when `program` is not installed: a missing peer is never a silent skip.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{program} is missing: install the Debian package {package} (scripts/test does)");
}

/// What tftp-hpa's client made of one read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpGet {
    /// The file came whole, without a TFTP error.
    Fetched,
    /// The server answered with ERROR `code` and `message` (tftp-hpa prints "Error code N: message").
    ServerError { code: u16, message: String },
    /// Anything else (no answer, a client failure), with what the client printed.
    Failed(String),
}

/// The answer for a file the server does not have: ERROR 1, File not found (RFC 1350 §5), with the
/// message Callguard's server sends.
pub fn file_not_found() -> TftpGet {
    TftpGet::ServerError { code: 1, message: "file not found".into() }
}

/// Fetches `name` from the TFTP server on 127.0.0.1:`port` into `out` with tftp-hpa's client, in
/// binary mode.
pub fn tftp_hpa_get(port: u16, name: &str, out: &Path) -> TftpGet {
    let command = format!("get {name} {}", out.display());
    let output =
        Command::new("tftp").args(["127.0.0.1", &port.to_string(), "-m", "binary", "-c"]).args(command.split(' ')).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    if let Some((_, rest)) = text.split_once("Error code ") {
        let (code, message) = rest.split_once(':').unwrap_or((rest, ""));
        let code = code.trim().parse().unwrap_or_else(|_| panic!("an error code in tftp-hpa's output: {text}"));
        return TftpGet::ServerError { code, message: message.lines().next().unwrap_or_default().trim().to_owned() };
    }
    if output.status.success() && out.exists() { TftpGet::Fetched } else { TftpGet::Failed(text) }
}
