//! sipp (Debian `sip-tester`) as the tests run it: one scenario of tests/fixtures/sipp toward a
//! loopback port, its exit status the verdict. A missing sipp fails the test. Needs the `peers` and
//! `process` support modules beside it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path)
}

/// Starts sipp with `scenario` toward 127.0.0.1:`target`, from local port `port`.
pub fn sipp_to(
    target: u16,
    scenario: &str,
    transport: &str,
    line: &str,
    credentials: Option<(&str, &str)>,
    port: u16,
    extra: &[&str],
) -> Sipp {
    {
        super::peers::require("sipp", "sip-tester");
        let logs = tempfile::tempdir().unwrap();
        let mut command = Command::new("sipp");
        command
            .current_dir(logs.path())
            .args(["-sf", fixture("sipp").join(scenario).to_str().unwrap()])
            .args(["-s", line, "-m", "1", "-t", transport, "-nostdin", "-timeout", "10", "-trace_err"])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .arg(format!("127.0.0.1:{target}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((user, password)) = credentials {
            command.args(["-au", user, "-ap", password]);
        }
        Sipp { child: command.spawn().expect("sipp runs"), logs }
    }
}

/// Runs `run` again, up to twice, when sipp could not bind its port: another test took the free
/// port between our check and sipp's bind.
pub fn retrying_bind(run: impl Fn() -> (i32, String)) -> (i32, String) {
    let mut result = run();
    for _ in 0..2 {
        if !result.1.contains("Unable to bind main socket") {
            break;
        }
        result = run();
    }
    result
}

/// A sipp run; its error log lands in its own directory.
pub struct Sipp {
    child: std::process::Child,
    logs: tempfile::TempDir,
}

impl Sipp {
    /// The exit status (after at most the scenario's own timeout) and the error log.
    pub fn wait(mut self) -> (i32, String) {
        let status = self.child.wait().expect("sipp ends");
        let errors: String = std::fs::read_dir(self.logs.path())
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect::<Vec<_>>()
            .join("\n");
        (status.code().unwrap_or(-1), errors)
    }
}
