//! Keys and certificates: the cluster CA, server certificates, LSCs, and the renewal policy.

pub mod ca;
pub mod der_base64;
pub mod inspect;
pub mod issue;
pub mod keys;
pub mod renewal;
pub mod serial;
pub mod signing;
