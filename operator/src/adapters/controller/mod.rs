//! `callguard operator`: the kube adapter of the pipeline (dereference -> validate -> build
//! -> apply -> status). A CallControlCluster is reconciled from everything in its namespace, since
//! the rules and the build span the namespace: a change to any Callguard kind or Secret there
//! reconciles its cluster, and the reconcile writes the status of every object of the namespace.

pub mod availability;
pub mod cache;
pub mod capf_records;
pub mod conditions;
pub mod desired;
pub mod gateway_status;
pub mod labels;
pub mod namespace_objects;
pub mod projection;
pub mod reconcile;
pub mod run;
pub mod state_objects;
pub mod status_writer;
pub mod triggers;
pub mod workloads;

pub use run::{OperatorOptions, run};
