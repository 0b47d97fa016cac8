//! What the Trust Verification Service vouches for after a build (docs/wire-formats.md §8 "What
//! Callguard vouches for"), and the certificate it presents.
//!
//! - Every record of the served trust lists, with its role: the ITL (the cluster's function
//!   certificates and the TFTP signer as SAST) and, in mixed mode, the CTL (the tokens as SAST).
//!   A certificate with several records gets all their roles.
//! - Every phone certificate of a phone of the manifests kept in the state's `devices/` (an LSC,
//!   or a MIC put there by `callguard device add-cert`), with the Callguard-only role
//!   [`PHONE_ROLE`]: no server role, so that no phone can pass for a call agent, a TFTP server,
//!   CAPF or an application server with its own certificate.
//! - No secure-SRST gateway certificate: their approval is not part of the build yet
//!   (docs/wire-formats.md §9.2).
//!
//! The list is a pure function of the build's output; no key goes into it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BuildError;
use super::identity::{ClusterIdentity, FunctionCertificate, role_file_name};
use crate::api::CallControlCluster;
use crate::core::pki::issue::{ServerRole, node_roles};
use crate::core::trust::{Mode, Role, TrustList};

/// The role code TVS gives a phone's own certificate (docs/wire-formats.md §8): outside the codes of
/// §1.7, so that a phone checking roles accepts it for no server function.
pub const PHONE_ROLE: Role = Role::Unknown(255);

/// One certificate TVS vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vouched {
    /// Where it comes from: `<node>.<function>`, `token.<n>` or `device.SEP<MAC>`.
    pub name: String,
    /// Role codes (docs/wire-formats.md §1.7), ascending, without repeats.
    pub roles: Vec<u16>,
    /// DER, standard base64 in JSON.
    #[serde(with = "crate::core::pki::der_base64")]
    pub certificate: Vec<u8>,
}

/// The certificate TVS presents: the first node's TVS certificate, which the ITL lists with role 21;
/// `None` when the first node runs no CallManager, and then no TVS runs.
pub fn tls_certificate<'a>(cluster: &CallControlCluster, identity: &'a ClusterIdentity) -> Option<&'a FunctionCertificate> {
    let first = cluster.spec.first_node()?;
    node_roles(&cluster.spec, first).into_iter().find(|role| *role == ServerRole::Tvs)?;
    identity.functions.iter().find(|f| f.node == first.name && f.role == ServerRole::Tvs)
}

/// What TVS vouches for: the records of `trust_lists` (`ITLFile.tlv`, `CTLFile.tlv`), named after the
/// function certificate or the SecurityToken (`tokens`: name -> DER) they hold, and the phones'
/// certificates, by device name. Sorted by name.
pub fn vouched(
    trust_lists: &BTreeMap<String, Arc<[u8]>>,
    identity: &ClusterIdentity,
    tokens: &BTreeMap<String, Vec<u8>>,
    phones: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<Vouched>, BuildError> {
    // DER -> (name, roles)
    let mut by_der: BTreeMap<Vec<u8>, (String, Vec<u16>)> = BTreeMap::new();
    let mut unnamed = 0usize;
    let listed = identity.listed();
    for (file, bytes) in trust_lists {
        let list = TrustList::parse(bytes, Mode::Strict).map_err(|e| BuildError::State(format!("{file}: {e}")))?;
        for record in list.records {
            let entry = by_der.entry(record.certificate_der.clone()).or_insert_with(|| {
                let name = match listed.iter().find(|f| f.certificate_der == record.certificate_der) {
                    Some(function) => format!("{}.{}", function.node, role_file_name(function.role)),
                    None => match tokens.iter().find(|(_, der)| **der == record.certificate_der) {
                        Some((token, _)) => format!("token.{token}"),
                        None => {
                            unnamed += 1;
                            format!("record.{unnamed}")
                        }
                    },
                };
                (name, Vec::new())
            });
            entry.1.push(record.role.code());
        }
    }
    for (device, der) in phones {
        by_der.entry(der.clone()).or_insert_with(|| (format!("device.{device}"), Vec::new())).1.push(PHONE_ROLE.code());
    }
    let mut list: Vec<Vouched> = by_der
        .into_iter()
        .map(|(certificate, (name, mut roles))| {
            roles.sort_unstable();
            roles.dedup();
            Vouched { name, roles, certificate }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_the_der_as_base64_and_the_role_codes() {
        let entry = Vouched { name: "device.SEP001122334455".into(), roles: vec![255], certificate: vec![0x30, 0x82] };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(json, r#"{"name":"device.SEP001122334455","roles":[255],"certificate":"MII="}"#);
        assert_eq!(serde_json::from_str::<Vouched>(&json).unwrap(), entry);
    }
}
