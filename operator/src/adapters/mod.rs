//! What runs the core and the services: the Kubernetes controller, `callguard local` on loopback,
//! and the `serve` entry points of the data-plane pods.

pub mod capf_report;
pub mod controller;
pub mod local;
pub mod serve;
