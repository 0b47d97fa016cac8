//! The errors of the secure-SRST module; each message names the rule and its docs/wire-formats.md §9 section.

use std::fmt;
use std::time::Duration;

/// Why a declared SRST certificate is refused (docs/wire-formats.md §9.2 step 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidSrstCertificate {
    /// The Secret has no `tls.crt`, or its PEM text has no CERTIFICATE section.
    NoCertificate,
    /// More than one CERTIFICATE section: the gateway certificate must be exactly one.
    SeveralCertificates(usize),
    /// A private key, in `tls.crt` or beside it: the operator must never hold the gateway's key.
    PrivateKey,
    /// A PEM section that is neither a certificate nor a private key.
    UnexpectedSection(String),
    /// The text is not valid PEM.
    NotPem(String),
    /// The CERTIFICATE section is not a DER X.509 certificate.
    NotX509(String),
}

impl fmt::Display for InvalidSrstCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidSrstCertificate::NoCertificate => write!(f, "no PEM certificate in tls.crt"),
            InvalidSrstCertificate::SeveralCertificates(count) => write!(f, "{count} certificates, exactly one is allowed"),
            InvalidSrstCertificate::PrivateKey => write!(f, "the Secret holds a private key, which is refused"),
            InvalidSrstCertificate::UnexpectedSection(label) => write!(f, "unexpected PEM section \"{label}\""),
            InvalidSrstCertificate::NotPem(why) => write!(f, "not PEM: {why}"),
            InvalidSrstCertificate::NotX509(why) => write!(f, "not an X.509 certificate: {why}"),
        }
    }
}

/// Why a gateway certificate could not be obtained or approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrstError {
    /// The gateway address is neither a DNS name nor an IP literal.
    InvalidHost(String),
    Connect {
        endpoint: String,
        reason: String,
    },
    /// Connection and handshake together took longer than allowed.
    Timeout {
        endpoint: String,
        after: Duration,
    },
    /// The TLS handshake failed before the gateway proved it holds the certificate's key.
    Handshake {
        endpoint: String,
        reason: String,
    },
    /// The handshake ended without a certificate from the gateway.
    NoCertificate {
        endpoint: String,
    },
    /// The certificate from the Secret is refused (docs/wire-formats.md §9.2 step 2).
    InvalidSrstCertificate(InvalidSrstCertificate),
    /// Captured or stored bytes that are not a DER X.509 certificate.
    NotACertificate(String),
    /// An approval that is not 64 hexadecimal digits (colons allowed).
    MalformedFingerprint(String),
    /// An approval whose SHA-256 is not the pending certificate's; the certificate stays pending.
    FingerprintMismatch {
        expected: String,
        given: String,
    },
}

impl fmt::Display for SrstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SrstError::InvalidHost(host) => {
                write!(f, "SRST gateway address {host:?} is not a host name or IP address (docs/wire-formats.md §9.2)")
            }
            SrstError::Connect { endpoint, reason } => {
                write!(f, "cannot connect to the SRST gateway {endpoint}: {reason} (docs/wire-formats.md §9.2)")
            }
            SrstError::Timeout { endpoint, after } => {
                write!(
                    f,
                    "SRST gateway {endpoint} did not complete the TLS handshake within {} s (docs/wire-formats.md §9.2)",
                    after.as_secs_f64()
                )
            }
            SrstError::Handshake { endpoint, reason } => {
                write!(f, "TLS handshake with the SRST gateway {endpoint} failed: {reason} (docs/wire-formats.md §9.2)")
            }
            SrstError::NoCertificate { endpoint } => {
                write!(f, "the SRST gateway {endpoint} presented no certificate (docs/wire-formats.md §9.2)")
            }
            SrstError::InvalidSrstCertificate(why) => write!(f, "InvalidSrstCertificate: {why} (docs/wire-formats.md §9.2 step 2)"),
            SrstError::NotACertificate(why) => write!(f, "SRST gateway certificate is not DER X.509: {why} (docs/wire-formats.md §9.2)"),
            SrstError::MalformedFingerprint(given) => {
                write!(f, "approval fingerprint {given:?} is not a SHA-256 fingerprint of 64 hex digits (docs/wire-formats.md §9.2 step 3)")
            }
            SrstError::FingerprintMismatch { expected, given } => write!(
                f,
                "approval fingerprint {given} does not match the pending certificate's SHA-256 {expected}; it stays pending (docs/wire-formats.md §9.2 step 3)"
            ),
        }
    }
}

impl std::error::Error for SrstError {}

impl From<InvalidSrstCertificate> for SrstError {
    fn from(why: InvalidSrstCertificate) -> SrstError {
        SrstError::InvalidSrstCertificate(why)
    }
}
