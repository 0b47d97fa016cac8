//! The cluster's trust lists: the ITL, always, signed by the TFTP certificate; and in mixed mode the
//! CTL, signed by a security token (Chapter 3, docs/wire-formats.md §3).

use super::BuildError;
use super::identity::{ClusterIdentity, FunctionCertificate};
use crate::core::pki::issue::ServerRole;
use crate::core::trust::{BuiltTrustList, HashAlgorithm, Role, Signer, TrustFileBuilder, TrustList, TrustListKind};

/// The record role of a function certificate (docs/wire-formats.md §1.7).
pub fn record_role(role: ServerRole) -> Role {
    match role {
        ServerRole::CallManager => Role::Ccm,
        ServerRole::Tftp => Role::Tftp,
        ServerRole::CallManagerAndTftp => Role::CcmTftp,
        ServerRole::Capf => Role::Capf,
        ServerRole::Tvs => Role::Tvs,
    }
}

/// The signer of `.sgn` files and of the ITL: the TFTP function certificate.
pub fn tftp_signer(identity: &ClusterIdentity) -> Result<Signer, BuildError> {
    let tftp: &FunctionCertificate = identity.tftp().ok_or(BuildError::NoTftpNode)?;
    Signer::new(tftp.certificate_der.clone(), tftp.key.clone(), false).map_err(|e| BuildError::Trust(format!("TFTP signer: {e}")))
}

/// One trust list to build: who signs it, which records, and the file it replaces.
pub struct TrustListPlan<'a> {
    pub kind: TrustListKind,
    pub signer: &'a Signer,
    /// Certificates listed with the SAST role, the signer's first.
    pub sast: Vec<Vec<u8>>,
    pub functions: &'a [FunctionCertificate],
    pub hash: HashAlgorithm,
    /// The published file of the same name: the new one must be signed by one of its SAST (docs/wire-formats.md §3.9).
    pub previous: Option<&'a TrustList>,
    pub now: u32,
}

/// Builds the file. The timestamp is the time the record set last changed (docs/wire-formats.md §3.7 step 5): when
/// the records and signer equal the previous file's, its timestamp is kept, so that an unchanged trust
/// list gives an unchanged file (PKCS#1 v1.5 signatures are deterministic).
pub fn build_trust_list(plan: &TrustListPlan<'_>) -> Result<BuiltTrustList, BuildError> {
    let build = |timestamp: u32| {
        let mut builder = TrustFileBuilder::new(plan.kind, plan.signer, timestamp).hash(plan.hash);
        if let Some(previous) = plan.previous {
            builder = builder.previous(previous);
        }
        for certificate in &plan.sast {
            builder = builder.record(certificate, Role::Sast);
        }
        // TVS is the ITL's: a phone asks TVS about what its ITL does not list; the CTL names no TVS.
        let listed = plan.functions.iter().filter(|f| plan.kind == TrustListKind::Itl || f.role != ServerRole::Tvs);
        for function in listed {
            builder = builder.record(&function.certificate_der, record_role(function.role));
        }
        builder.build().map_err(|e| BuildError::Trust(format!("{}: {e}", plan.kind.filename())))
    };
    let Some(previous) = plan.previous else { return build(plan.now) };
    let kept = build(previous.header.timestamp)?;
    if kept.bytes == previous.as_bytes() { Ok(kept) } else { build(plan.now) }
}
