//! Whether SRTP keys may go to a gateway or H.323 trunk, and what that makes of its calls
//! (Chapter 13, P.13-2 to P.13-4). Pure: no IO.
//!
//! The keys of an SRTP call cross the signalling path: CallManager sends an MGCP gateway the master
//! key and salt over MGCP (P.13-2), and H.323 gateways and trunks make their own keys and send them
//! to CallManager over signalling (P.13-3). The signalling does not protect them: only IPSec does,
//! and CallManager does not know whether IPSec is in place; without it the keys travel in clear
//! (P.13-2, P.13-3).
//! Callguard promises more than CallManager does, and sends keys to a gateway only when all of
//! these hold:
//!
//! 1. an IPSec association is declared for its signalling path (`spec.ipsec.mode` other than
//!    `None`; P.13-3, P.13-6). The declaration is the administrator's word: nothing here checks
//!    that IPSec is active, and `spec.ipsec.verifiedByAdmin` is an acknowledgement, never proof;
//! 2. SRTP is allowed (H.323: "SRTP Allowed", unticked means RTP always, P.13-3) or supported
//!    (MGCP: the MGCP SRTP package, P.13-2);
//! 3. MTP Required is off: with it, audio pass-through is disabled and the call is non-secure (P.13-3);
//! 4. the call is not an outbound FastStart call, which CallManager always classifies non-secure
//!    (P.13-3).
//!
//! Otherwise the device's calls are `NotSecure` and the decision says why, in words, with the
//! pages. When keys may go, a call is still encrypted only when SRTP is negotiated for it: every
//! device in the call must support SRTP, and transfer, conference, transcoding or music on hold may
//! fall back to RTP (P.13-2, P.13-3). For MGCP, keys go for SRTP streams only, never for SRTCP
//! (P.13-2): [`KeyDistribution::SrtpOnly`].

use serde::Serialize;

use crate::api::{GatewayIpsec, H323DeviceKind, H323GatewaySpec, IpsecMode, MediaSecurity, MgcpGatewaySpec};

/// The kind of device, which decides how keys travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "protocol", content = "kind")]
pub enum Device {
    /// An H.323 gateway or one of the three H.323 trunk windows (P.13-3).
    H323(H323DeviceKind),
    /// A Cisco IOS MGCP gateway (P.13-2).
    Mgcp,
}

/// What the rule reads of a gateway's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    pub device: Device,
    /// H.323 "SRTP Allowed", or MGCP support of the SRTP package.
    pub srtp: bool,
    /// H.323 "MTP Required" (P.13-3); MGCP gateways have no such setting.
    pub mtp_required: bool,
    /// H.323 "Enable Outbound FastStart": its outbound calls are FastStart calls (P.13-3).
    pub outbound_fast_start: bool,
}

impl Gateway {
    pub fn h323(spec: &H323GatewaySpec) -> Self {
        Gateway {
            device: Device::H323(spec.kind()),
            srtp: spec.srtp_allowed(),
            mtp_required: spec.mtp_required(),
            outbound_fast_start: spec.enable_outbound_fast_start(),
        }
    }

    pub fn mgcp(spec: &MgcpGatewaySpec) -> Self {
        Gateway { device: Device::Mgcp, srtp: spec.srtp(), mtp_required: false, outbound_fast_start: false }
    }
}

/// The signalling path to the gateway, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "path", content = "ipsecMode")]
pub enum Signaling {
    /// An IPSec association is declared (not verified) in this mode (P.13-3, P.13-6).
    IpsecDeclared(IpsecMode),
    /// No IPSec: whatever crosses the path is in clear (P.13-2, P.13-3).
    Clear,
}

impl Signaling {
    pub fn of(ipsec: &GatewayIpsec) -> Self {
        match ipsec.mode() {
            IpsecMode::None => Signaling::Clear,
            mode => Signaling::IpsecDeclared(mode),
        }
    }

    pub fn is_secure(self) -> bool {
        matches!(self, Signaling::IpsecDeclared(_))
    }
}

/// Which keys CallManager gives the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyDistribution {
    /// None: the device's calls use RTP.
    Withheld,
    /// MGCP: the master key and salt of SRTP streams, never keys or salt of SRTCP streams (P.13-2).
    SrtpOnly,
    /// H.323: the device generates its own keys and exchanges them with CallManager over the
    /// signalling path (P.13-3).
    ExchangedOverSignaling,
}

/// Why a device's calls are not secure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NotSecureReason {
    /// H.323 SRTP Allowed is off (P.13-3).
    SrtpNotAllowed,
    /// The MGCP gateway does not support the SRTP package (P.13-2).
    SrtpNotSupported,
    /// MTP Required is on (P.13-3).
    MtpRequired,
    /// Outbound calls use FastStart (P.13-3).
    OutboundFastStart,
    /// SRTP is on, but no IPSec association is declared: keys are withheld (P.13-2, P.13-3).
    NoIpsec,
}

impl NotSecureReason {
    /// The reason in words, with its pages.
    pub fn sentence(self) -> &'static str {
        match self {
            NotSecureReason::SrtpNotAllowed => "SRTP Allowed is off: CallManager always uses RTP with this device (P.13-3)",
            NotSecureReason::SrtpNotSupported => {
                "the gateway does not support the MGCP SRTP package (spec.srtp false): its calls use RTP (P.13-2)"
            }
            NotSecureReason::MtpRequired => {
                "MTP Required is on: audio pass-through is disabled, so calls through this device are non-secure (P.13-3)"
            }
            NotSecureReason::OutboundFastStart => {
                "Enable Outbound FastStart is on: CallManager always classifies outbound FastStart calls as non-secure (P.13-3)"
            }
            NotSecureReason::NoIpsec => {
                "no IPSec association is declared (spec.ipsec.mode None): SRTP keys would cross the signaling path in clear, so none are sent (P.13-2, P.13-3)"
            }
        }
    }
}

/// What the rule decided for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaDecision {
    pub device: Device,
    pub security: MediaSecurity,
    pub keys: KeyDistribution,
    /// Empty when `security` is `Encrypted`.
    pub reasons: Vec<NotSecureReason>,
    /// SRTP allowed (H.323) or supported (MGCP): the case in which IPSec matters at all.
    pub srtp: bool,
    pub signaling: Signaling,
    /// `spec.ipsec.verifiedByAdmin`: the administrator's word, recorded and never checked; it
    /// decides nothing.
    pub ipsec_acknowledged: bool,
}

impl MediaDecision {
    /// SRTP is on but no IPSec is declared, so no keys are sent (the `SrtpWithheld` case).
    pub fn withheld_for_lack_of_ipsec(&self) -> bool {
        self.reasons.contains(&NotSecureReason::NoIpsec)
    }

    /// The decision in words: why the calls are not secure, or what an encrypted call takes.
    pub fn reason(&self) -> String {
        if self.security == MediaSecurity::NotSecure {
            return self.reasons.iter().map(|r| r.sentence()).collect::<Vec<_>>().join("; ");
        }
        let mode = match self.signaling {
            Signaling::IpsecDeclared(mode) => format!("{mode:?}"),
            Signaling::Clear => "None".into(),
        };
        let keys = match self.keys {
            KeyDistribution::SrtpOnly => "CallManager sends the master key and salt of SRTP streams only, never of SRTCP streams (P.13-2)",
            _ => "the device and CallManager exchange SRTP keys over the signaling path (P.13-3)",
        };
        format!(
            "SRTP is on and an IPSec association is declared ({mode}): {keys}; a call is encrypted when SRTP is negotiated with every device in it (P.13-2, P.13-3). The association is declared, not verified: CallManager does not check IPSec (P.13-3, P.13-7)"
        )
    }
}

/// Decides whether SRTP keys may be sent to `gateway` over `signaling`, and so how its calls are classified.
pub fn decide(gateway: &Gateway, signaling: Signaling) -> MediaDecision {
    let mut reasons = Vec::new();
    if !gateway.srtp {
        reasons.push(match gateway.device {
            Device::H323(_) => NotSecureReason::SrtpNotAllowed,
            Device::Mgcp => NotSecureReason::SrtpNotSupported,
        });
    }
    if gateway.mtp_required {
        reasons.push(NotSecureReason::MtpRequired);
    }
    if gateway.outbound_fast_start {
        reasons.push(NotSecureReason::OutboundFastStart);
    }
    // Without SRTP, no key is at stake: the lack of IPSec is no reason of its own.
    if gateway.srtp && !signaling.is_secure() {
        reasons.push(NotSecureReason::NoIpsec);
    }
    let (security, keys) = if reasons.is_empty() {
        let keys = match gateway.device {
            Device::Mgcp => KeyDistribution::SrtpOnly,
            Device::H323(_) => KeyDistribution::ExchangedOverSignaling,
        };
        (MediaSecurity::Encrypted, keys)
    } else {
        (MediaSecurity::NotSecure, KeyDistribution::Withheld)
    };
    MediaDecision { device: gateway.device, security, keys, reasons, srtp: gateway.srtp, signaling, ipsec_acknowledged: false }
}

/// The decision for an H.323 gateway or trunk, from its spec.
pub fn decide_h323(spec: &H323GatewaySpec) -> MediaDecision {
    let ipsec = spec.ipsec();
    MediaDecision { ipsec_acknowledged: ipsec.verified_by_admin(), ..decide(&Gateway::h323(spec), Signaling::of(&ipsec)) }
}

/// The decision for an MGCP gateway, from its spec.
pub fn decide_mgcp(spec: &MgcpGatewaySpec) -> MediaDecision {
    let ipsec = spec.ipsec();
    MediaDecision { ipsec_acknowledged: ipsec.verified_by_admin(), ..decide(&Gateway::mgcp(spec), Signaling::of(&ipsec)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h323(srtp: bool, mtp_required: bool, outbound_fast_start: bool) -> Gateway {
        Gateway { device: Device::H323(H323DeviceKind::H323Gateway), srtp, mtp_required, outbound_fast_start }
    }

    const IPSEC: Signaling = Signaling::IpsecDeclared(IpsecMode::Infrastructure);

    #[test]
    fn h323_with_srtp_allowed_and_ipsec_declared_gets_keys_over_signaling() {
        let decision = decide(&h323(true, false, false), IPSEC);
        assert_eq!((decision.security, decision.keys), (MediaSecurity::Encrypted, KeyDistribution::ExchangedOverSignaling));
        assert!(decision.reasons.is_empty());
        let reason = decision.reason();
        assert!(reason.contains("declared (Infrastructure)") && reason.contains("not verified"), "{reason}");
        assert!(!reason.contains("is verified"), "never claims IPSec is verified: {reason}");
    }

    #[test]
    fn srtp_allowed_off_means_rtp_whatever_ipsec_says() {
        let decision = decide(&h323(false, false, false), IPSEC);
        assert_eq!((decision.security, decision.keys), (MediaSecurity::NotSecure, KeyDistribution::Withheld));
        assert_eq!(decision.reasons, [NotSecureReason::SrtpNotAllowed]);
        assert_eq!(decision.reason(), "SRTP Allowed is off: CallManager always uses RTP with this device (P.13-3)");
        // Without SRTP the lack of IPSec withholds nothing.
        let clear = decide(&h323(false, false, false), Signaling::Clear);
        assert_eq!(clear.reasons, [NotSecureReason::SrtpNotAllowed]);
        assert!(!clear.withheld_for_lack_of_ipsec());
    }

    #[test]
    fn without_ipsec_keys_are_withheld_and_the_reason_says_so() {
        let decision = decide(&h323(true, false, false), Signaling::Clear);
        assert_eq!((decision.security, decision.keys), (MediaSecurity::NotSecure, KeyDistribution::Withheld));
        assert!(decision.withheld_for_lack_of_ipsec());
        assert_eq!(
            decision.reason(),
            "no IPSec association is declared (spec.ipsec.mode None): SRTP keys would cross the signaling path in clear, so none are sent (P.13-2, P.13-3)"
        );
    }

    #[test]
    fn mtp_required_makes_calls_non_secure() {
        let decision = decide(&h323(true, true, false), IPSEC);
        assert_eq!((decision.security, decision.reasons.as_slice()), (MediaSecurity::NotSecure, &[NotSecureReason::MtpRequired][..]));
        assert!(decision.reason().starts_with("MTP Required is on") && decision.reason().ends_with("(P.13-3)"));
    }

    #[test]
    fn outbound_fast_start_calls_are_non_secure() {
        let decision = decide(&h323(true, false, true), IPSEC);
        assert_eq!(decision.reasons, [NotSecureReason::OutboundFastStart]);
        assert_eq!(decision.keys, KeyDistribution::Withheld);
        assert!(decision.reason().contains("outbound FastStart calls as non-secure (P.13-3)"));
    }

    #[test]
    fn every_reason_that_applies_is_given() {
        let decision = decide(&h323(true, true, true), Signaling::Clear);
        assert_eq!(decision.reasons, [NotSecureReason::MtpRequired, NotSecureReason::OutboundFastStart, NotSecureReason::NoIpsec]);
        assert_eq!(decision.reason().matches("; ").count(), 2, "{}", decision.reason());
    }

    #[test]
    fn mgcp_gets_srtp_keys_only_never_srtcp() {
        let gateway = Gateway { device: Device::Mgcp, srtp: true, mtp_required: false, outbound_fast_start: false };
        let decision = decide(&gateway, Signaling::IpsecDeclared(IpsecMode::PlatformAssociation));
        assert_eq!((decision.security, decision.keys), (MediaSecurity::Encrypted, KeyDistribution::SrtpOnly));
        assert!(decision.reason().contains("SRTP streams only, never of SRTCP streams (P.13-2)"), "{}", decision.reason());
    }

    #[test]
    fn mgcp_without_the_srtp_package_or_without_ipsec_is_not_secure() {
        let spec = |srtp: bool, mode: IpsecMode| MgcpGatewaySpec {
            address: "mgcp.example".into(),
            srtp: Some(srtp),
            ipsec: Some(GatewayIpsec { mode: Some(mode), verified_by_admin: Some(true) }),
        };
        let unsupported = decide_mgcp(&spec(false, IpsecMode::Infrastructure));
        assert_eq!(unsupported.reasons, [NotSecureReason::SrtpNotSupported]);
        assert!(unsupported.reason().contains("MGCP SRTP package") && unsupported.reason().contains("(P.13-2)"));
        // verifiedByAdmin changes nothing: it is an acknowledgement, not an association.
        let clear = decide_mgcp(&spec(true, IpsecMode::None));
        assert!(clear.ipsec_acknowledged, "recorded");
        assert_eq!(
            (clear.security, clear.keys, clear.reasons.as_slice()),
            (MediaSecurity::NotSecure, KeyDistribution::Withheld, &[NotSecureReason::NoIpsec][..])
        );
    }

    #[test]
    fn the_spec_defaults_are_not_secure() {
        let spec = H323GatewaySpec {
            kind: None,
            address: "gw.example".into(),
            srtp_allowed: None,
            enable_outbound_fast_start: None,
            mtp_required: None,
            ipsec: None,
        };
        let decision = decide_h323(&spec);
        assert_eq!((decision.device, decision.security), (Device::H323(H323DeviceKind::H323Gateway), MediaSecurity::NotSecure));
        assert_eq!(decision.signaling, Signaling::Clear);
    }
}
