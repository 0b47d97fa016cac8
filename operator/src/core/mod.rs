//! The pure core: what the cluster's objects become (certificates, trust lists, signed and
//! encrypted phone files), with no Kubernetes client and no network listener.

pub mod backup;
pub mod build;
pub mod capf_report;
pub mod gateway_media;
pub mod parallel;
pub mod phone_config;
pub mod pki;
pub mod plan;
pub mod private_file;
pub mod token;
pub mod trust;
