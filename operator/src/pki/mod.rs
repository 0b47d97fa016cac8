//! Keys and certificates: the cluster CA, server certificates, LSCs, and the renewal policy.

pub mod keys;
