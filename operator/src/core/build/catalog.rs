//! What the TFTP service serves for one namespace, as the build resolved and validated it: the trust
//! lists, how files are signed, and each phone's unsigned payloads.
//!
//! `callguard local` serves it from memory; the operator projects it into Secrets it owns, which the
//! TFTP pods read by name (`controller::projection`). A pod therefore serves only what the operator
//! validated, and reads neither the Callguard objects nor any Secret a user wrote: the digest
//! credentials it needs arrive inside the payloads of the phones allowed to carry them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::phone_files::PhonePayloads;
use crate::core::phone_config::TrustFacts;
use crate::core::trust::{HashAlgorithm, Mode, Role, TrustList, TrustListKind};

/// How phone files are signed, besides the signer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningParameters {
    pub hash: HashAlgorithm,
    /// The ITL's header timestamp, so unchanged input gives unchanged files.
    pub timestamp: u32,
    /// The ITL lists a CallManager: secure modes may be written (P.5-1).
    pub has_call_manager_record: bool,
}

impl SigningParameters {
    pub fn from_itl(hash: HashAlgorithm, itl: &TrustList) -> Self {
        let has_call_manager_record = itl.records.iter().any(|r| matches!(r.role, Role::Ccm | Role::CcmTftp));
        SigningParameters { hash, timestamp: itl.header.timestamp, has_call_manager_record }
    }

    pub fn trust(&self) -> TrustFacts {
        TrustFacts { has_call_manager_record: self.has_call_manager_record }
    }
}

/// The trust lists a TFTP service serves: only these two names, whatever else a store holds.
pub const TRUST_LIST_FILES: [TrustListKind; 2] = [TrustListKind::Itl, TrustListKind::Ctl];

/// Keeps only the trust lists of `files` (the ITL and the CTL), each checked to parse strictly.
pub fn trust_lists_only<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<BTreeMap<String, Arc<[u8]>>, String> {
    let mut lists = BTreeMap::new();
    for (name, bytes) in files {
        if TRUST_LIST_FILES.iter().any(|kind| kind.filename() == name) {
            TrustList::parse(bytes, Mode::Strict).map_err(|e| format!("{name}: {e}"))?;
            lists.insert(name.to_owned(), Arc::from(bytes));
        }
    }
    Ok(lists)
}

/// One namespace's TFTP content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpCatalog {
    /// `ITLFile.tlv` and, in mixed mode, `CTLFile.tlv`.
    pub trust_lists: BTreeMap<String, Arc<[u8]>>,
    pub signing: SigningParameters,
    /// By device name (`SEP<MAC>`).
    pub phones: Arc<BTreeMap<String, PhonePayloads>>,
}

/// Serde for `Option<Vec<u8>>` as standard base64 text.
pub mod base64_option {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)).transpose()
    }
}
