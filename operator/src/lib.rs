//! Callguard: the security plane of a CallManager-style cluster as Kubernetes resources.

// kube-derive repeats `type_ = ...` in each `printcolumn(...)`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
pub mod api;
pub mod bench;
pub mod build;
pub mod capf;
pub mod controller;
pub mod crdgen;
pub mod dataplane;
pub mod local;
pub mod manifest;
pub mod ops;
pub mod phone_config;
pub mod pki;
pub mod private_file;
pub mod srst;
pub mod tftp;
pub mod token;
pub mod trust;
pub mod tvs;
pub mod validate;
