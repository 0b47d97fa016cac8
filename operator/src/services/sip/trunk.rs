//! What a SIP trunk may send (Table 14-1, P.1-6): the profile's Accept flags act as the trunk's
//! access list, checked first (403 when it refuses); then digest with the credentials of the
//! application users behind the trunk; then, with application-level authorization, the same flag
//! of the application user that answered the challenge.

use std::net::IpAddr;

use crate::api::{DeviceSecurityMode, OutgoingTransport, SipMethodAcceptance};
use crate::core::phone_config::DigestAuth;

/// The requests Table 14-1 gates, each behind its own Accept flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// SUBSCRIBE for presence ("Accept Presence Subscription").
    PresenceSubscription,
    /// REFER outside a dialog ("Accept Out-of-Dialog Refer").
    OutOfDialogRefer,
    /// NOTIFY outside a subscription ("Accept Unsolicited Notification").
    UnsolicitedNotification,
    /// INVITE or REFER that replaces a dialog ("Accept Header Replacement").
    HeaderReplacement,
}

impl Feature {
    /// The setting's name in Table 14-1.
    pub fn setting(self) -> &'static str {
        match self {
            Feature::PresenceSubscription => "Accept Presence Subscription",
            Feature::OutOfDialogRefer => "Accept Out-of-Dialog Refer",
            Feature::UnsolicitedNotification => "Accept Unsolicited Notification",
            Feature::HeaderReplacement => "Accept Header Replacement",
        }
    }

    /// Whether `accept` ticks this feature's box (unset is unticked).
    pub fn accepted_by(self, accept: &SipMethodAcceptance) -> bool {
        let flag = match self {
            Feature::PresenceSubscription => accept.accept_presence_subscription,
            Feature::OutOfDialogRefer => accept.accept_out_of_dialog_refer,
            Feature::UnsolicitedNotification => accept.accept_unsolicited_notification,
            Feature::HeaderReplacement => accept.accept_header_replacement,
        };
        flag.unwrap_or(false)
    }
}

/// The feature a request uses, if any: `method` in upper case, `in_dialog` when its To has a tag,
/// `event` its Event header's package, `replaces` whether it carries a Replaces header (or, for a
/// REFER, a Refer-To with an embedded Replaces).
pub fn feature_of(method: &str, in_dialog: bool, event: Option<&str>, replaces: bool) -> Option<Feature> {
    if replaces && matches!(method, "INVITE" | "REFER") {
        return Some(Feature::HeaderReplacement);
    }
    match method {
        "SUBSCRIBE" if event.is_some_and(|e| e.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("presence")) => {
            Some(Feature::PresenceSubscription)
        }
        "REFER" if !in_dialog => Some(Feature::OutOfDialogRefer),
        "NOTIFY" if !in_dialog => Some(Feature::UnsolicitedNotification),
        _ => None,
    }
}

/// An application user behind a trunk: its digest credentials and its own authorization flags.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplicationCredentials {
    pub credentials: DigestAuth,
    pub accept: SipMethodAcceptance,
}

/// One SIP trunk as the service sees it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SipTrunkEntry {
    /// `SipTrunk/<name>`, for log lines.
    pub subject: String,
    pub mode: DeviceSecurityMode,
    pub incoming_port: u16,
    /// Incoming Transport Type TLS; else TCP+UDP.
    pub tls: bool,
    /// X.509 subject names its TLS peers present (Table 14-1).
    pub subject_names: Vec<String>,
    /// The destinations that are IP addresses: where its TCP and UDP requests come from.
    pub peer_addresses: Vec<IpAddr>,
    /// Nonce validity, when the profile enables digest.
    pub digest_nonce_validity: Option<u32>,
    pub application_level_authorization: bool,
    pub accept: SipMethodAcceptance,
    pub application_users: Vec<ApplicationCredentials>,
    /// Where calls to the trunk go (Table 14-1): a call whose Request-URI names one of them.
    #[serde(default)]
    pub destinations: Vec<TrunkDestinationEntry>,
    /// The profile's Outgoing Transport Type (Table 14-1).
    #[serde(default = "default_outgoing")]
    pub outgoing: OutgoingTransport,
    /// What answers the peer's challenges: the trunk's SipRealm (P.15-5).
    #[serde(default)]
    pub realm: Option<RealmCredentials>,
}

fn default_outgoing() -> OutgoingTransport {
    OutgoingTransport::Tcp
}

/// A host and port a trunk sends SIP to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrunkDestinationEntry {
    pub host: String,
    pub port: u16,
}

/// A SipRealm: the realm a peer challenges with, and the user and password that answer it (Table 15-3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RealmCredentials {
    pub realm: String,
    pub credentials: DigestAuth,
}

/// Why a trunk's request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrunkRefusal {
    /// The profile's access list refuses the feature.
    NotAccepted(Feature),
    /// The application user that authenticated may not use the feature.
    ApplicationNotAuthorized { user: String, feature: Feature },
}

impl TrunkRefusal {
    pub fn reason(&self, trunk: &str) -> String {
        match self {
            TrunkRefusal::NotAccepted(feature) => {
                format!("{trunk}: its SIP trunk security profile does not tick {} (Table 14-1)", feature.setting())
            }
            TrunkRefusal::ApplicationNotAuthorized { user, feature } => {
                format!(
                    "{trunk}: application user {user} does not have {} (application-level authorization, Table 14-1)",
                    feature.setting()
                )
            }
        }
    }
}

/// The incoming ports of `trunks`, with whether each is TLS (Table 14-1): what the service listens
/// on beside the phones' ports.
pub fn incoming_ports(trunks: &[SipTrunkEntry]) -> std::collections::BTreeMap<u16, bool> {
    trunks.iter().map(|t| (t.incoming_port, t.tls)).collect()
}

impl SipTrunkEntry {
    /// Step 1 of P.1-6: the access list the profile's flags make.
    pub fn admits(&self, feature: Option<Feature>) -> Result<(), TrunkRefusal> {
        match feature {
            Some(feature) if !feature.accepted_by(&self.accept) => Err(TrunkRefusal::NotAccepted(feature)),
            _ => Ok(()),
        }
    }

    /// Step 5 of P.1-6: after digest named `user`, that application user's own flag.
    pub fn authorizes(&self, user: &str, feature: Option<Feature>) -> Result<(), TrunkRefusal> {
        let Some(feature) = feature.filter(|_| self.application_level_authorization) else { return Ok(()) };
        let allowed = self.application_users.iter().any(|a| a.credentials.name == user && feature.accepted_by(&a.accept));
        if allowed { Ok(()) } else { Err(TrunkRefusal::ApplicationNotAuthorized { user: user.to_string(), feature }) }
    }

    /// The credentials digest checks an answer from `user` against.
    pub fn application_user(&self, user: &str) -> Option<&DigestAuth> {
        self.application_users.iter().map(|a| &a.credentials).find(|c| c.name == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(presence: bool, refer: bool, notify: bool, replaces: bool) -> SipMethodAcceptance {
        SipMethodAcceptance {
            accept_presence_subscription: Some(presence),
            accept_out_of_dialog_refer: Some(refer),
            accept_unsolicited_notification: Some(notify),
            accept_header_replacement: Some(replaces),
        }
    }

    fn trunk(profile: SipMethodAcceptance, application: SipMethodAcceptance, app_level: bool) -> SipTrunkEntry {
        SipTrunkEntry {
            subject: "SipTrunk/sbc".into(),
            mode: DeviceSecurityMode::NonSecure,
            incoming_port: 5070,
            tls: false,
            subject_names: vec![],
            peer_addresses: vec![],
            digest_nonce_validity: Some(600),
            application_level_authorization: app_level,
            accept: profile,
            application_users: vec![ApplicationCredentials {
                credentials: DigestAuth { name: "presence".into(), password: "secret".into() },
                accept: application,
            }],
            destinations: vec![],
            outgoing: OutgoingTransport::Tcp,
            realm: None,
        }
    }

    #[test]
    fn requests_map_to_the_features_of_table_14_1() {
        assert_eq!(feature_of("SUBSCRIBE", false, Some("presence"), false), Some(Feature::PresenceSubscription));
        assert_eq!(feature_of("SUBSCRIBE", false, Some("Presence;id=1"), false), Some(Feature::PresenceSubscription));
        assert_eq!(feature_of("SUBSCRIBE", false, Some("message-summary"), false), None);
        assert_eq!(feature_of("REFER", false, None, false), Some(Feature::OutOfDialogRefer));
        assert_eq!(feature_of("REFER", true, None, false), None);
        assert_eq!(feature_of("NOTIFY", false, Some("message-summary"), false), Some(Feature::UnsolicitedNotification));
        assert_eq!(feature_of("NOTIFY", true, Some("presence"), false), None);
        assert_eq!(feature_of("INVITE", false, None, true), Some(Feature::HeaderReplacement));
        assert_eq!(feature_of("REFER", true, None, true), Some(Feature::HeaderReplacement));
        assert_eq!(feature_of("INVITE", false, None, false), None);
    }

    #[test]
    fn the_profile_refuses_first_then_the_application_user() {
        let everything = accept(true, true, true, true);
        let nothing = accept(false, false, false, false);
        // The 403 case of P.14-4: the application user may, the trunk's box is unticked.
        let closed = trunk(nothing.clone(), everything.clone(), true);
        assert_eq!(closed.admits(Some(Feature::PresenceSubscription)), Err(TrunkRefusal::NotAccepted(Feature::PresenceSubscription)));
        assert_eq!(closed.admits(None), Ok(()));
        // The trunk may, the application user may not.
        let open = trunk(everything.clone(), nothing.clone(), true);
        assert_eq!(open.admits(Some(Feature::OutOfDialogRefer)), Ok(()));
        assert_eq!(
            open.authorizes("presence", Some(Feature::OutOfDialogRefer)),
            Err(TrunkRefusal::ApplicationNotAuthorized { user: "presence".into(), feature: Feature::OutOfDialogRefer })
        );
        assert_eq!(open.authorizes("presence", None), Ok(()));
        // Without application-level authorization, the application user's flags do not count.
        assert_eq!(trunk(everything.clone(), nothing, false).authorizes("presence", Some(Feature::OutOfDialogRefer)), Ok(()));
        assert_eq!(trunk(everything.clone(), everything, true).authorizes("presence", Some(Feature::HeaderReplacement)), Ok(()));
    }
}
