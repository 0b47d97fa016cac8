//! Layer three: rules across the objects of one namespace. Each rule is a small function whose
//! comment names the page of the guide it enforces; the README lists them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Finding, ObjectRef, SecretPolicy, Snapshot, Violation};
use crate::api::*;
use crate::core::token::material;

/// Every violation of the cross-object rules in one namespace, in a stable order.
pub fn check(snapshot: &Snapshot, policy: SecretPolicy) -> Vec<Finding> {
    let mut out = Findings { snapshot, policy, findings: Vec::new() };
    let cluster = single_cluster(&mut out);
    manufacturer_cas(&mut out, cluster);
    tokens(&mut out, cluster);
    phones(&mut out, cluster);
    shared_lines(&mut out);
    trunk_profiles(&mut out);
    trunks(&mut out);
    users(&mut out);
    realms(&mut out);
    out.findings
}

struct Findings<'a> {
    snapshot: &'a Snapshot,
    policy: SecretPolicy,
    findings: Vec<Finding>,
}

impl<'a> Findings<'a> {
    fn push(&mut self, kind: &str, name: &str, field: impl Into<String>, message: impl Into<String>) {
        let object = ObjectRef { kind: kind.into(), namespace: self.snapshot.namespace.clone(), name: name.into() };
        self.findings.push(Finding { object, violation: Violation::new(field, message) });
    }

    /// A reference to `target_kind/target` that is not in the snapshot: the object is there but
    /// invalid, and its own error says why, or it is missing (`not_found`).
    fn unresolved(&mut self, kind: &str, name: &str, field: impl Into<String>, target_kind: &str, target: &str, not_found: String) {
        let message = if self.snapshot.is_invalid(target_kind, target) {
            format!("{target_kind}/{target} is invalid (see its own error)")
        } else {
            not_found
        };
        self.push(kind, name, field, message);
    }

    /// A Secret key reference resolves (docs/architecture.md §3.2). Returns the value when it is present.
    fn secret(&mut self, kind: &str, name: &str, field: &str, reference: &SecretKeyRef) -> Option<&'a [u8]> {
        if self.snapshot.is_invalid("Secret", &reference.name) {
            self.push(kind, name, field, format!("Secret/{} is invalid (see its own error)", reference.name));
            return None;
        }
        match self.snapshot.secrets.get(&reference.name) {
            Some(secret) => match secret.0.get(&reference.key) {
                Some(value) => Some(value.as_slice()),
                None => {
                    self.push(
                        kind,
                        name,
                        field,
                        format!("Secret {:?} has no key {:?} (docs/architecture.md §3.2)", reference.name, reference.key),
                    );
                    None
                }
            },
            None => {
                if self.policy == SecretPolicy::Require {
                    self.push(
                        kind,
                        name,
                        field,
                        format!(
                            "Secret {:?} not found in namespace {:?} (docs/architecture.md §3.2)",
                            reference.name, self.snapshot.namespace
                        ),
                    );
                }
                None
            }
        }
    }
}

/// One CallControlCluster per namespace; every other Callguard object belongs to it (docs/architecture.md §3.1).
fn single_cluster<'a>(out: &mut Findings<'a>) -> Option<&'a CallControlCluster> {
    let snapshot = out.snapshot;
    let mut clusters = snapshot.clusters.values();
    let first = clusters.next();
    for extra in clusters {
        let name = extra.metadata.name.clone().unwrap_or_default();
        let first_name = first.and_then(|c| c.metadata.name.clone()).unwrap_or_default();
        out.push(
            "CallControlCluster",
            &name,
            "metadata.name",
            format!(
                "namespace {:?} already holds CallControlCluster/{first_name}; one cluster per namespace (docs/architecture.md §3.1)",
                snapshot.namespace
            ),
        );
    }
    // An invalid cluster is there: its own error is the one to fix.
    let invalid_cluster = snapshot.invalid.iter().any(|(kind, _)| kind == "CallControlCluster");
    if first.is_none() && !snapshot.is_empty() && !invalid_cluster {
        let (kind, name) = any_object(snapshot);
        out.push(
            kind,
            &name,
            "metadata.namespace",
            format!(
                "namespace {:?} has no CallControlCluster for this object to belong to (docs/architecture.md §3.1)",
                snapshot.namespace
            ),
        );
    }
    first.map(|cluster| &**cluster)
}

fn any_object(s: &Snapshot) -> (&'static str, String) {
    let first = |kind: &'static str, names: Option<&String>| names.map(|n| (kind, n.clone()));
    first("SecurityToken", s.tokens.keys().next())
        .or_else(|| first("PhoneSecurityProfile", s.phone_profiles.keys().next()))
        .or_else(|| first("Phone", s.phones.keys().next()))
        .or_else(|| first("SipTrunkSecurityProfile", s.trunk_profiles.keys().next()))
        .or_else(|| first("SipTrunk", s.trunks.keys().next()))
        .or_else(|| first("SrstReference", s.srst_references.keys().next()))
        .or_else(|| first("H323Gateway", s.h323_gateways.keys().next()))
        .or_else(|| first("MgcpGateway", s.mgcp_gateways.keys().next()))
        .or_else(|| first("EndUser", s.end_users.keys().next()))
        .or_else(|| first("ApplicationUser", s.application_users.keys().next()))
        .or_else(|| first("SipRealm", s.realms.keys().next()))
        .unwrap_or(("CallControlCluster", String::new()))
}

fn cluster_name(cluster: &CallControlCluster) -> String {
    cluster.metadata.name.clone().unwrap_or_default()
}

/// Whether a token may sign or be listed: Active and not locked (P.16-5). The reason has no section.
fn token_usable(token: &SecurityToken) -> Result<(), String> {
    if token.status.as_ref().is_some_and(|s| s.locked) {
        return Err(format!("is locked, and can never be used again: {}", TOKEN_LOCK_RULE));
    }
    match token.spec.state() {
        TokenState::Active => Ok(()),
        state => Err(format!("is {state:?}: re-sign the CTL with a remaining token and remove it")),
    }
}

/// The CTL's tokens resolve (P.3-9); mixed mode needs two usable tokens (P.1-12, P.3-13); the signer
/// is usable (P.16-5); every token's Secrets resolve.
fn tokens(out: &mut Findings<'_>, cluster: Option<&CallControlCluster>) {
    let snapshot = out.snapshot;
    for (name, token) in &snapshot.tokens {
        token_material(out, name, "spec.certificate", &token.spec.certificate, material::check_certificate);
        token_material(out, name, "spec.privateKey", &token.spec.private_key, material::check_encrypted_key);
        out.secret("SecurityToken", name, "spec.password", &token.spec.password);
    }
    let Some(cluster) = cluster else { return };
    let cname = cluster_name(cluster);
    let Some(ctl) = &cluster.spec.ctl else { return };
    let mixed = cluster.spec.security_mode() == ClusterSecurityMode::Mixed;
    for (i, token_name) in ctl.tokens.iter().enumerate() {
        match snapshot.tokens.get(token_name) {
            None => out.unresolved(
                "CallControlCluster",
                &cname,
                format!("spec.ctl.tokens[{i}]"),
                "SecurityToken",
                token_name,
                format!("SecurityToken {token_name:?} not found (P.3-9)"),
            ),
            // Mixed mode lists exactly two tokens (CEL), so each must be usable (P.1-12, P.3-13).
            Some(token) if mixed => {
                if let Err(why) = token_usable(token) {
                    out.push(
                        "CallControlCluster",
                        &cname,
                        format!("spec.ctl.tokens[{i}]"),
                        format!("SecurityToken {token_name:?} {why}; mixed mode needs two usable tokens (P.16-5, P.1-12)"),
                    );
                }
            }
            Some(_) => {}
        }
    }
    // In mixed mode the signer is one of the tokens above; a non-secure cluster's CTL is signed too.
    if !mixed
        && let Some(signer) = snapshot.tokens.get(&ctl.signing_token)
        && let Err(why) = token_usable(signer)
    {
        out.push(
            "CallControlCluster",
            &cname,
            "spec.ctl.signingToken",
            format!("SecurityToken {:?} {why}; nothing signs with it (P.16-5)", ctl.signing_token),
        );
    }
}

/// A token's certificate is a PEM X.509 certificate with an RSA 2048 key (P.3-9, docs/wire-formats.md §3.3) and
/// its key an `ENCRYPTED PRIVATE KEY` (P.3-17): a placeholder would only fail when the CTL is signed.
fn token_material<T>(
    out: &mut Findings<'_>,
    name: &str,
    field: &str,
    reference: &SecretKeyRef,
    check: impl Fn(&[u8]) -> Result<T, material::MaterialError>,
) {
    if let Some(value) = out.secret("SecurityToken", name, field, reference)
        && let Err(e) = check(value)
    {
        out.push("SecurityToken", name, field, format!("Secret {:?} key {:?} {e}", reference.name, reference.key));
    }
}

/// The rules that tie a phone to its profile, user, SRST reference and cluster.
fn phones(out: &mut Findings<'_>, cluster: Option<&CallControlCluster>) {
    let snapshot = out.snapshot;
    for (name, phone) in &snapshot.phones {
        let spec = &phone.spec;
        // Every phone has a profile of its own protocol (P.5-1, P.5-9).
        let Some(profile) = snapshot.phone_profiles.get(&spec.security_profile_ref) else {
            out.unresolved(
                "Phone",
                name,
                "spec.securityProfileRef",
                "PhoneSecurityProfile",
                &spec.security_profile_ref,
                format!("PhoneSecurityProfile {:?} not found; every phone needs a security profile (P.5-1)", spec.security_profile_ref),
            );
            continue;
        };
        let profile_spec = &profile.spec;
        if profile_spec.protocol != spec.protocol {
            out.push(
                "Phone",
                name,
                "spec.securityProfileRef",
                format!(
                    "PhoneSecurityProfile {:?} is for {} phones but this phone runs {} (P.5-9)",
                    spec.security_profile_ref,
                    profile_spec.protocol.label(),
                    spec.protocol.label()
                ),
            );
        }
        // A device gets only a profile it supports (P.5-1): 7905 and 7912 cannot be secure (P.1-8, P.7-4).
        if profile_spec.device_security_mode().is_secure() && !spec.model.supports_device_security() {
            out.push(
                "Phone",
                name,
                "spec.securityProfileRef",
                format!(
                    "model {} does not support device security mode {} of PhoneSecurityProfile {:?} (P.5-1, P.1-8)",
                    spec.model,
                    profile_spec.device_security_mode().label(),
                    spec.security_profile_ref
                ),
            );
        }
        digest_user(out, name, spec, profile_spec);
        if let Some(srst) = &spec.srst_reference_ref
            && !snapshot.srst_references.contains_key(srst)
        {
            out.unresolved(
                "Phone",
                name,
                "spec.srstReferenceRef",
                "SrstReference",
                srst,
                format!("SrstReference {srst:?} not found (T12-1)"),
            );
        }
        capf_operation(out, name, spec, profile_spec, cluster);
        config_encryption(out, name, spec, profile_spec, cluster);
    }
}

/// Digest enabled on the profile needs a Digest User with credentials, or the phone cannot register
/// (P.1-17, P.8-5).
fn digest_user(out: &mut Findings<'_>, name: &str, spec: &PhoneSpec, profile: &PhoneSecurityProfileSpec) {
    let snapshot = out.snapshot;
    match &spec.digest_user_ref {
        Some(user_ref) => match snapshot.end_users.get(user_ref) {
            None => out.unresolved("Phone", name, "spec.digestUserRef", "EndUser", user_ref, format!("EndUser {user_ref:?} not found (P.8-5)")),
            Some(user) if profile.digest_enabled() && user.spec.digest_credentials.is_none() => out.push("Phone", name, "spec.digestUserRef", format!(
                "EndUser {user_ref:?} has no digest credentials; with digest authentication enabled the phone cannot register (P.1-17, T8-2)"
            )),
            Some(_) => {}
        },
        None if profile.digest_enabled() => out.push("Phone", name, "spec.digestUserRef", format!(
            "PhoneSecurityProfile {:?} enables digest authentication: set a digest user or the phone cannot register (P.1-17, P.8-5)",
            spec.security_profile_ref
        )),
        None => {}
    }
}

/// The phone's CAPF operation fits its profile's authentication mode (Table 6-2, P.6-12), its model
/// (Chapter 6) and the cluster (Table 6-1).
fn capf_operation(
    out: &mut Findings<'_>,
    name: &str,
    spec: &PhoneSpec,
    profile: &PhoneSecurityProfileSpec,
    cluster: Option<&CallControlCluster>,
) {
    let Some(capf) = &spec.capf else { return };
    let by_string = profile.authentication_mode() == CapfAuthenticationMode::ByAuthenticationString;
    if let Some(reference) = &capf.authentication_string {
        if !by_string {
            out.push("Phone", name, "spec.capf.authenticationString", format!(
                "an authentication string applies only when the profile's authentication mode is ByAuthenticationString; PhoneSecurityProfile {:?} uses {:?} (Table 6-2)",
                spec.security_profile_ref, profile.authentication_mode()
            ));
        }
        if let Some(value) = out.secret("Phone", name, "spec.capf.authenticationString", reference)
            && !is_auth_string(value)
        {
            out.push(
                "Phone",
                name,
                "spec.capf.authenticationString",
                format!("Secret {:?} key {:?} must hold 4 to 10 digits (Table 6-2)", reference.name, reference.key),
            );
        }
    }
    if capf.certificate_operation() == CertificateOperation::NoPendingOperation {
        return;
    }
    if !spec.model.supports_capf() {
        out.push(
            "Phone",
            name,
            "spec.capf.certificateOperation",
            format!("model {} takes no locally significant certificate from CAPF (Chapter 6, P.7-4)", spec.model),
        );
    }
    if by_string && capf.authentication_string.is_none() {
        out.push(
            "Phone",
            name,
            "spec.capf.authenticationString",
            format!(
                "PhoneSecurityProfile {:?} authenticates CAPF by authentication string: set one for operation {:?} (Table 6-2, P.6-12)",
                spec.security_profile_ref,
                capf.certificate_operation()
            ),
        );
    }
    let mic_configured = cluster.and_then(|c| c.spec.capf.as_ref()).is_some_and(|c| c.manufacturer_ca_certificates.is_some());
    if profile.authentication_mode() == CapfAuthenticationMode::ByExistingCertificatePrecedenceMic && !mic_configured {
        out.push(
            "Phone",
            name,
            "spec.capf.certificateOperation",
            format!(
                "PhoneSecurityProfile {:?} authenticates CAPF by the phone's MIC, and the cluster names no manufacturer CA that issues MICs: set CallControlCluster spec.capf.manufacturerCaCertificates (Table 5-1)",
                spec.security_profile_ref
            ),
        );
    }
    if let Some(cluster) = cluster
        && !cluster.spec.capf_enabled()
    {
        out.push(
            "Phone",
            name,
            "spec.capf.certificateOperation",
            format!("CallControlCluster {:?} runs no CAPF service on its first node (Table 6-1, P.6-6)", cluster_name(cluster)),
        );
    }
}

/// `spec.capf.manufacturerCaCertificates` holds one to 64 PEM CA certificates (Table 5-1).
fn manufacturer_cas(out: &mut Findings<'_>, cluster: Option<&CallControlCluster>) {
    let Some(cluster) = cluster else { return };
    let Some(reference) = cluster.spec.capf.as_ref().and_then(|c| c.manufacturer_ca_certificates.as_ref()) else { return };
    let (name, field) = (cluster_name(cluster), "spec.capf.manufacturerCaCertificates");
    if let Some(value) = out.secret("CallControlCluster", &name, field, reference)
        && let Err(e) = crate::core::pki::inspect::ca_bundle(value)
    {
        out.push(
            "CallControlCluster",
            &name,
            field,
            format!(
                "Secret {:?} key {:?} must hold the PEM certificates of the CAs that issue MICs: {e} (Table 5-1)",
                reference.name, reference.key
            ),
        );
    }
}

fn is_auth_string(value: &[u8]) -> bool {
    (4..=10).contains(&value.len()) && value.iter().all(u8::is_ascii_digit)
}

/// Encrypted configuration only for models that support it, with the key they need, in a cluster
/// that serves it (Chapter 7: P.7-2, P.7-4, Table 7-1, Table 7-2).
fn config_encryption(
    out: &mut Findings<'_>,
    name: &str,
    spec: &PhoneSpec,
    profile: &PhoneSecurityProfileSpec,
    cluster: Option<&CallControlCluster>,
) {
    let method = spec.model.config_encryption(spec.protocol);
    if let Some(manual) = &spec.config_encryption
        && let Some(value) = out.secret("Phone", name, "spec.configEncryption.symmetricKey", &manual.symmetric_key)
        && let Some(ConfigEncryptionMethod::ManualKey { key_bits }) = method
    {
        let hex_len = usize::from(key_bits / 4);
        if value.len() != hex_len || !value.iter().all(u8::is_ascii_hexdigit) {
            out.push(
                "Phone",
                name,
                "spec.configEncryption.symmetricKey",
                format!(
                    "model {} needs a {key_bits}-bit symmetric key: {hex_len} hexadecimal digits in Secret {:?} key {:?} (Table 7-2)",
                    spec.model, manual.symmetric_key.name, manual.symmetric_key.key
                ),
            );
        }
    }
    if !profile.tftp_encrypted_config() {
        return;
    }
    match method {
        None => out.push("Phone", name, "spec.securityProfileRef", format!(
            "PhoneSecurityProfile {:?} asks for an encrypted configuration, which model {} with {} does not support (P.7-4)",
            spec.security_profile_ref, spec.model, spec.protocol.label()
        )),
        Some(ConfigEncryptionMethod::ManualKey { .. }) if spec.config_encryption.is_none() => out.push("Phone", name, "spec.configEncryption", format!(
            "model {} decrypts its configuration with a manual symmetric key: set configEncryption.symmetricKey (Table 7-1 step 4, Table 7-2)",
            spec.model
        )),
        Some(_) => {}
    }
    if let Some(cluster) = cluster {
        let cname = cluster_name(cluster);
        if cluster.spec.security_mode() != ClusterSecurityMode::Mixed {
            out.push(
                "Phone",
                name,
                "spec.securityProfileRef",
                format!("encrypted configuration needs CallControlCluster {cname:?} in mixed mode (Table 7-1 step 1)"),
            );
        } else if !cluster.spec.tftp_encrypted_configuration() {
            out.push("Phone", name, "spec.securityProfileRef", format!(
                "encrypted configuration needs spec.tftpEncryptedConfiguration: true on CallControlCluster {cname:?} (Table 7-1 step 2, P.7-2)"
            ));
        }
    }
}

/// A shared line with an encrypted phone must be encrypted on every phone (P.4-2).
fn shared_lines(out: &mut Findings<'_>) {
    let snapshot = out.snapshot;
    let mut lines: BTreeMap<&str, Vec<(&str, DeviceSecurityMode)>> = BTreeMap::new();
    for (name, phone) in &snapshot.phones {
        let Some(profile) = snapshot.phone_profiles.get(&phone.spec.security_profile_ref) else { continue };
        for dn in &phone.spec.directory_numbers {
            lines.entry(dn.0.as_str()).or_default().push((name, profile.spec.device_security_mode()));
        }
    }
    for (dn, members) in lines {
        let Some((encrypted, _)) = members.iter().find(|(_, mode)| *mode == DeviceSecurityMode::Encrypted) else { continue };
        for (name, mode) in &members {
            if *mode != DeviceSecurityMode::Encrypted {
                let i = snapshot.phones[*name].spec.directory_numbers.iter().position(|d| d.0 == dn).unwrap_or(0);
                out.push("Phone", name, format!("spec.directoryNumbers[{i}]"), format!(
                    "line {dn} is shared with encrypted Phone {encrypted:?}: every phone on it must be Encrypted, this one is {} (P.4-2)",
                    mode.label()
                ));
            }
        }
    }
}

/// Each (X.509 subject name, incoming port) pair belongs to one trunk profile (Table 14-1).
fn trunk_profiles(out: &mut Findings<'_>) {
    let snapshot = out.snapshot;
    let mut owners: HashMap<(String, u16), &str> = HashMap::new();
    for (name, profile) in &snapshot.trunk_profiles {
        let port = profile.spec.incoming_port();
        let mut own = BTreeSet::new();
        for subject in profile.spec.subject_names() {
            if !own.insert(subject) {
                continue;
            }
            if let Some(first) = owners.get(&(subject.to_string(), port)) {
                out.push("SipTrunkSecurityProfile", name, "spec.x509SubjectName", format!(
                    "subject name {subject:?} with incoming port {port} is already used by SipTrunkSecurityProfile {first:?}; each subject name and port pair must be unique (Table 14-1)"
                ));
            } else {
                owners.insert((subject.to_string(), port), name);
            }
        }
    }
}

/// A trunk's profile, users and realm resolve (P.14-1, P.15-3, P.15-5); a profile with subject
/// names serves one trunk, since the (subject, port) pair picks the trunk (Table 14-1); digest
/// needs an application user with credentials (P.15-3).
fn trunks(out: &mut Findings<'_>) {
    let snapshot = out.snapshot;
    let mut subject_owner: HashMap<&str, &str> = HashMap::new();
    for (name, trunk) in &snapshot.trunks {
        let spec = &trunk.spec;
        match snapshot.trunk_profiles.get(&spec.security_profile_ref) {
            None => out.unresolved(
                "SipTrunk",
                name,
                "spec.securityProfileRef",
                "SipTrunkSecurityProfile",
                &spec.security_profile_ref,
                format!("SipTrunkSecurityProfile {:?} not found; every SIP trunk needs one (P.14-1)", spec.security_profile_ref),
            ),
            Some(profile) => {
                if !profile.spec.subject_names().is_empty()
                    && let Some(other) = subject_owner.insert(spec.security_profile_ref.as_str(), name.as_str())
                {
                    out.push("SipTrunk", name, "spec.securityProfileRef", format!(
                            "SipTrunkSecurityProfile {:?} lists X.509 subject names and already serves SipTrunk {other:?}; a subject name and port pair may belong to one trunk only: give each TLS trunk its own profile (Table 14-1)",
                            spec.security_profile_ref
                        ));
                }
                if profile.spec.digest_enabled() {
                    let with_credentials = spec
                        .application_user_refs
                        .iter()
                        .any(|u| snapshot.application_users.get(u).is_some_and(|u| u.spec.digest_credentials.is_some()));
                    // An invalid user may be the one with credentials: its own error comes first.
                    let unknown = spec.application_user_refs.iter().any(|u| snapshot.is_invalid("ApplicationUser", u));
                    if !with_credentials && !unknown {
                        out.push("SipTrunk", name, "spec.applicationUserRefs", format!(
                            "SipTrunkSecurityProfile {:?} enables digest authentication: reference an application user with digest credentials (P.15-3)",
                            spec.security_profile_ref
                        ));
                    }
                }
            }
        }
        for (i, user) in spec.application_user_refs.iter().enumerate() {
            if !snapshot.application_users.contains_key(user) {
                out.unresolved(
                    "SipTrunk",
                    name,
                    format!("spec.applicationUserRefs[{i}]"),
                    "ApplicationUser",
                    user,
                    format!("ApplicationUser {user:?} not found (P.15-3)"),
                );
            }
        }
        if let Some(realm) = &spec.sip_realm_ref
            && !snapshot.realms.contains_key(realm)
        {
            out.unresolved("SipTrunk", name, "spec.sipRealmRef", "SipRealm", realm, format!("SipRealm {realm:?} not found (P.15-5)"));
        }
    }
}

/// Users: digest credentials resolve and are alphanumeric (T8-2, T15-2); CAPF profile strings are
/// 4 to 10 digits (Table 11-2); user IDs are unique, one credential set per user and realm (P.1-17).
fn users(out: &mut Findings<'_>) {
    let snapshot = out.snapshot;
    let mut ids: HashMap<String, (&str, &str)> = HashMap::new();
    // CAPF knows a CTI client by its instance ID as it knows a phone by its device name (Table 11-2).
    let mut instances: HashMap<String, String> =
        snapshot.phones.iter().map(|(name, phone)| (phone.spec.device_name(), format!("the device name of Phone/{name}"))).collect();
    let end_users = snapshot
        .end_users
        .iter()
        .map(|(n, u)| ("EndUser", n, u.spec.user_id.as_deref(), u.spec.digest_credentials.as_ref(), &u.spec.capf_profiles));
    let app_users = snapshot
        .application_users
        .iter()
        .map(|(n, u)| ("ApplicationUser", n, u.spec.user_id.as_deref(), u.spec.digest_credentials.as_ref(), &u.spec.capf_profiles));
    for (kind, name, user_id, credentials, capf_profiles) in end_users.chain(app_users) {
        let user_id = user_id.unwrap_or(name).to_string();
        if let Some((other_kind, other)) = ids.insert(user_id.clone(), (kind, name)) {
            out.push(
                kind,
                name,
                "spec.userId",
                format!(
                    "user ID {user_id:?} is already used by {other_kind}/{other}; one set of digest credentials per user and realm (P.1-17)"
                ),
            );
        }
        if let Some(reference) = credentials
            && let Some(value) = out.secret(kind, name, "spec.digestCredentials", reference)
            && (value.is_empty() || !value.iter().all(u8::is_ascii_alphanumeric))
        {
            out.push(
                kind,
                name,
                "spec.digestCredentials",
                format!("Secret {:?} key {:?} must hold alphanumeric digest credentials (T8-2, T15-2)", reference.name, reference.key),
            );
        }
        for (i, profile) in capf_profiles.iter().enumerate() {
            if profile.instance_id.chars().count() > 64 {
                out.push(
                    kind,
                    name,
                    format!("spec.capfProfiles[{i}].instanceId"),
                    "an instance ID is the CN of the certificate CAPF issues: at most 64 characters (RFC 5280 upper bounds, Table 11-2)",
                );
            }
            if let Some(other) = instances.insert(profile.instance_id.clone(), format!("an instance ID of {kind}/{name}")) {
                out.push(
                    kind,
                    name,
                    format!("spec.capfProfiles[{i}].instanceId"),
                    format!(
                        "instance ID {:?} is also {other}; CAPF tells application instances and phones apart by it (Table 11-2)",
                        profile.instance_id
                    ),
                );
            }
            if let Some(reference) = &profile.authentication_string {
                let field = format!("spec.capfProfiles[{i}].authenticationString");
                if let Some(value) = out.secret(kind, name, &field, reference)
                    && !is_auth_string(value)
                {
                    out.push(
                        kind,
                        name,
                        field,
                        format!("Secret {:?} key {:?} must hold 4 to 10 digits (Table 11-2)", reference.name, reference.key),
                    );
                }
            }
        }
    }
}

/// A realm's password resolves, and each realm has one credential set (P.1-17, Table 15-3).
fn realms(out: &mut Findings<'_>) {
    let snapshot = out.snapshot;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, realm) in &snapshot.realms {
        out.secret("SipRealm", name, "spec.password", &realm.spec.password);
        if let Some(other) = seen.insert(realm.spec.realm.as_str(), name) {
            out.push(
                "SipRealm",
                name,
                "spec.realm",
                format!(
                    "realm {:?} is already configured by SipRealm {other:?}; one user and password per realm (P.1-17, Table 15-3)",
                    realm.spec.realm
                ),
            );
        }
    }
}
