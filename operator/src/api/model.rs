//! The phone models the guide names, and what each supports. The seed gives these facts in
//! scattered places (P.1-8, P.7-4, P.9-2, T8-1); where it is silent the choice is written here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PhoneProtocol;

/// A Cisco IP phone model named by the guide (P.4-2, P.7-4).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PhoneModel {
    #[serde(rename = "7905")]
    Cisco7905,
    #[serde(rename = "7911")]
    Cisco7911,
    #[serde(rename = "7912")]
    Cisco7912,
    #[serde(rename = "7940")]
    Cisco7940,
    #[serde(rename = "7941")]
    Cisco7941,
    #[serde(rename = "7960")]
    Cisco7960,
    #[serde(rename = "7961")]
    Cisco7961,
    #[serde(rename = "7970")]
    Cisco7970,
    #[serde(rename = "7971")]
    Cisco7971,
}

/// How a model receives an encrypted configuration file (P.7-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigEncryptionMethod {
    /// Symmetric key entered on the phone by hand: RC4-256 (7905, 7912) or AES-128 (7940, 7960),
    /// SIP firmware only (Table 7-2).
    ManualKey { key_bits: u16 },
    /// A fresh AES-128 key wrapped with the phone's public key (7911, 7941, 7961, 7970, 7971).
    PhonePublicKey,
}

impl PhoneModel {
    pub const ALL: [PhoneModel; 9] = [
        PhoneModel::Cisco7905,
        PhoneModel::Cisco7911,
        PhoneModel::Cisco7912,
        PhoneModel::Cisco7940,
        PhoneModel::Cisco7941,
        PhoneModel::Cisco7960,
        PhoneModel::Cisco7961,
        PhoneModel::Cisco7970,
        PhoneModel::Cisco7971,
    ];

    /// The model number as written in manifests.
    pub fn number(self) -> &'static str {
        match self {
            PhoneModel::Cisco7905 => "7905",
            PhoneModel::Cisco7911 => "7911",
            PhoneModel::Cisco7912 => "7912",
            PhoneModel::Cisco7940 => "7940",
            PhoneModel::Cisco7941 => "7941",
            PhoneModel::Cisco7960 => "7960",
            PhoneModel::Cisco7961 => "7961",
            PhoneModel::Cisco7970 => "7970",
            PhoneModel::Cisco7971 => "7971",
        }
    }

    /// 7905 and 7912 run SIP firmware only in the guide (P.7-4: "Cisco SIP IP Phone 7905, 7912").
    pub fn supports_protocol(self, protocol: PhoneProtocol) -> bool {
        match self {
            PhoneModel::Cisco7905 | PhoneModel::Cisco7912 => protocol == PhoneProtocol::Sip,
            _ => true,
        }
    }

    /// Whether the model can register Authenticated or Encrypted. 7905 and 7912 verify no file
    /// signature (P.7-4) and 7912 supports no encrypted call (P.1-8), so neither can hold a CTL:
    /// both are limited to Non Secure profiles (P.5-1: a device gets only a profile it supports).
    pub fn supports_device_security(self) -> bool {
        !matches!(self, PhoneModel::Cisco7905 | PhoneModel::Cisco7912)
    }

    /// Whether the model talks to CAPF for an LSC (Chapter 6); the same models as above.
    pub fn supports_capf(self) -> bool {
        self.supports_device_security()
    }

    /// The encrypted configuration method of the model with this protocol, if any (P.7-4).
    pub fn config_encryption(self, protocol: PhoneProtocol) -> Option<ConfigEncryptionMethod> {
        match (self, protocol) {
            (PhoneModel::Cisco7905 | PhoneModel::Cisco7912, PhoneProtocol::Sip) => {
                Some(ConfigEncryptionMethod::ManualKey { key_bits: 256 })
            }
            (PhoneModel::Cisco7940 | PhoneModel::Cisco7960, PhoneProtocol::Sip) => {
                Some(ConfigEncryptionMethod::ManualKey { key_bits: 128 })
            }
            (PhoneModel::Cisco7940 | PhoneModel::Cisco7960, PhoneProtocol::Sccp) => None,
            (PhoneModel::Cisco7905 | PhoneModel::Cisco7912, PhoneProtocol::Sccp) => None,
            _ => Some(ConfigEncryptionMethod::PhonePublicKey),
        }
    }

    /// Whether selecting a Digest User puts the credentials into the configuration file (T8-1 step 5);
    /// 7940/7960 take them only by hand on the phone (T8-1 step 6).
    pub fn digest_credentials_in_config(self) -> bool {
        matches!(
            self,
            PhoneModel::Cisco7911 | PhoneModel::Cisco7941 | PhoneModel::Cisco7961 | PhoneModel::Cisco7970 | PhoneModel::Cisco7971
        )
    }

    /// 7912 cannot perform PC Voice VLAN Access (P.9-2).
    pub fn supports_pc_voice_vlan_access(self) -> bool {
        self != PhoneModel::Cisco7912
    }
}
