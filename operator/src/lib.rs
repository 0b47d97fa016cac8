//! Callguard: the security plane of a CallManager-style cluster as Kubernetes resources.
//!
//! The folders are the layers (docs/architecture.md): `api` and `validate` say what a manifest
//! may be, `core` turns validated objects into certificates and files without a Kubernetes
//! client, `services` are the data plane's protocols and servers, `adapters` run the core and the
//! services (the controller, `callguard local`, the `serve` pods), and `ops` is what running needs.

// kube-derive repeats `type_ = ...` in each `printcolumn(...)`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
pub mod api;
pub mod validate;

pub mod core;
pub mod services;

pub mod adapters;
pub mod bench;
pub mod ops;
