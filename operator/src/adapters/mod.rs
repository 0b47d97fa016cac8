//! What runs the core and the services: the Kubernetes controller, `callguard local` on loopback,
//! and the `serve` entry points of the data-plane pods.

pub mod backup;
pub mod capf;
pub mod capf_report;
pub mod controller;
pub mod local;
pub mod serve;
pub mod sip;

/// The time of day, UTC, that a line of `callguard local` or a service starts with.
pub(crate) fn clock() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02} UTC", now.hour(), now.minute(), now.second())
}
