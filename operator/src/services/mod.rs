//! The data plane: one folder per service, its protocol and its server together.

pub mod capf;
pub mod est;
pub mod legacy_tls;
pub mod media;
pub mod sip;
pub mod srst;
pub mod tcp_listener;
pub mod tftp;
pub mod tls_provider;
pub mod tvs;
pub mod udp_listener;
