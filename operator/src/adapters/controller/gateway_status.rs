//! The status of an `H323Gateway` or `MgcpGateway`: `mediaSecurity` and its reason from
//! `core::gateway_media`, and the conditions that say what the operator cannot know (P.13-2 to
//! P.13-4). Pure.
//!
//! - `IpsecNotVerified`: True whenever SRTP is allowed or supported, since neither CallManager nor
//!   the operator can check that IPSec protects the signalling path (P.13-3, P.13-4, P.13-7).
//! - `SrtpWithheld`: True when SRTP is on but no IPSec association is declared, so no keys are sent.
//! - `OutboundFastStartDisabled` (H.323 only): True when SRTP Allowed disables Enable Outbound
//!   FastStart (P.13-3).

use serde_json::{Map, Value, json};

use super::conditions::Wanted;
use crate::core::gateway_media::{Device, MediaDecision, NotSecureReason};

pub const IPSEC_NOT_VERIFIED: &str = "IpsecNotVerified";
pub const SRTP_WITHHELD: &str = "SrtpWithheld";
pub const OUTBOUND_FAST_START_DISABLED: &str = "OutboundFastStartDisabled";

/// The domain conditions and the `status` fields of a gateway, from its decision.
pub fn gateway_status(decision: &MediaDecision) -> (Vec<Wanted>, Map<String, Value>) {
    let mut conditions = Vec::new();
    conditions.push(if decision.srtp {
        let acknowledged = if decision.ipsec_acknowledged {
            "; spec.ipsec.verifiedByAdmin records the administrator's word that it was, which the operator cannot check"
        } else {
            ""
        };
        Wanted::new(
            IPSEC_NOT_VERIFIED,
            true,
            "CannotBeVerified",
            format!(
                "SRTP is on: CallManager does not verify that IPSec protects the signaling path, and neither can the operator; make sure it is configured and active (P.13-3, P.13-4, P.13-7){acknowledged}"
            ),
        )
    } else {
        Wanted::new(IPSEC_NOT_VERIFIED, false, "SrtpOff", "SRTP is off: no keys cross the signaling path")
    });
    conditions.push(if decision.withheld_for_lack_of_ipsec() {
        Wanted::new(SRTP_WITHHELD, true, "NoIpsecDeclared", NotSecureReason::NoIpsec.sentence())
    } else if decision.srtp {
        Wanted::new(SRTP_WITHHELD, false, "IpsecDeclared", "")
    } else {
        Wanted::new(SRTP_WITHHELD, false, "SrtpOff", "")
    });
    if let Device::H323(_) = decision.device {
        conditions.push(if decision.srtp {
            Wanted::new(OUTBOUND_FAST_START_DISABLED, true, "SrtpAllowed", "SRTP Allowed disables Enable Outbound FastStart (P.13-3)")
        } else {
            Wanted::new(OUTBOUND_FAST_START_DISABLED, false, "SrtpNotAllowed", "")
        });
    }
    let mut extra = Map::new();
    extra.insert("mediaSecurity".into(), json!(decision.security));
    extra.insert("mediaSecurityReason".into(), json!(decision.reason()));
    (conditions, extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{H323DeviceKind, IpsecMode};
    use crate::core::gateway_media::{Gateway, Signaling, decide};

    /// Each condition's type, status and reason.
    type Conditions = Vec<(&'static str, bool, String)>;

    fn status(device: Device, srtp: bool, signaling: Signaling) -> (Conditions, Map<String, Value>) {
        let decision = decide(&Gateway { device, srtp, mtp_required: false, outbound_fast_start: false }, signaling);
        let (conditions, extra) = gateway_status(&decision);
        (conditions.into_iter().map(|w| (w.type_, w.status, w.reason)).collect(), extra)
    }

    const H323: Device = Device::H323(H323DeviceKind::InterClusterTrunkGatekeeperControlled);

    #[test]
    fn srtp_without_ipsec_is_withheld_and_not_verified() {
        let (conditions, extra) = status(H323, true, Signaling::Clear);
        assert_eq!(
            conditions,
            [
                (IPSEC_NOT_VERIFIED, true, "CannotBeVerified".into()),
                (SRTP_WITHHELD, true, "NoIpsecDeclared".into()),
                (OUTBOUND_FAST_START_DISABLED, true, "SrtpAllowed".into())
            ]
        );
        assert_eq!(extra["mediaSecurity"], "NotSecure");
        assert!(extra["mediaSecurityReason"].as_str().is_some_and(|r| r.contains("so none are sent")));
    }

    #[test]
    fn srtp_with_ipsec_declared_is_encrypted_and_still_not_verified() {
        let (conditions, extra) = status(Device::Mgcp, true, Signaling::IpsecDeclared(IpsecMode::Infrastructure));
        assert_eq!(conditions, [(IPSEC_NOT_VERIFIED, true, "CannotBeVerified".into()), (SRTP_WITHHELD, false, "IpsecDeclared".into())]);
        assert_eq!(extra["mediaSecurity"], "Encrypted");
    }

    #[test]
    fn srtp_off_warns_of_nothing() {
        let (conditions, extra) = status(H323, false, Signaling::Clear);
        assert!(conditions.iter().all(|(_, status, _)| !status), "{conditions:?}");
        assert_eq!(extra["mediaSecurity"], "NotSecure");
    }
}
