//! Secure SRST: obtaining the gateway certificate and approving it (docs/wire-formats.md §9.2).
//!
//! Two ways in: a TLS handshake with the gateway's Certificate Provider that records the certificate it
//! presents (`capture`), or a Secret holding exactly one PEM certificate (`secret`). Either way the
//! certificate is pending until an administrator repeats its SHA-256 fingerprint (`approval`).

pub mod approval;
pub mod capture;
pub mod error;
pub mod secret;

pub use approval::{ApprovalState, GatewayCertificate, Observation, normalise_fingerprint};
pub use capture::{DEFAULT_PROVIDER_PORT, capture_certificate};
pub use error::{InvalidSrstCertificate, SrstError};
pub use secret::{SECRET_CERTIFICATE_KEY, certificate_from_pem, certificate_from_secret};
