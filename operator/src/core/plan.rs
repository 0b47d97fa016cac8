//! What a change to the manifests will make an administrator do: the resets and restarts the guide
//! requires for it (P.1-10, P.1-16, P.1-17, P.3-5, P.6-7, P.12-4, P.13-7, P.14-7, P.16-5), and what the
//! build does with it (certificates issued, trust lists re-signed). Pure: it compares two validated
//! snapshots of one namespace and the two builds made of them on one state, in that order.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::core::build::catalog::TftpCatalog;
use crate::core::build::{Change, ChangeKind};
use crate::validate::Snapshot;

/// What the guide asks be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Action {
    /// Reset one device (a phone, a trunk, a gateway) so that it fetches its files again.
    Reset,
    /// Reset every device of the cluster.
    ResetAllDevices,
    /// Restart a service on the nodes that run it.
    Restart,
}

/// A service of the guide that an action restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Service {
    CallManager,
    Tftp,
    CtlProvider,
    CertificateAuthorityProxyFunction,
}

/// One required step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Step {
    pub action: Action,
    /// `Phone/NAME`, `SipTrunk/NAME`, `H323Gateway/NAME`, the cluster, or a service.
    pub target: String,
    /// The change that asks for it.
    pub why: String,
    /// The guide's page.
    pub page: &'static str,
}

/// The whole plan of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub namespace: String,
    pub steps: Vec<Step>,
    /// Certificates the build issues for the change, one line each.
    pub certificates_issued: Vec<String>,
    /// Trust lists signed anew (`ITLFile.tlv`, `CTLFile.tlv`).
    pub trust_lists_resigned: Vec<String>,
    /// The rotation steps the change takes (an ITL signer announced, a new CA), then what each
    /// rotation under way waits for before its next step (P.3-18).
    pub rotation_steps: Vec<String>,
}

impl Plan {
    fn step(&mut self, action: Action, target: impl Into<String>, why: impl Into<String>, page: &'static str) {
        self.steps.push(Step { action, target: target.into(), why: why.into(), page });
    }

    fn restart(&mut self, service: Service, why: &str, page: &'static str) {
        self.step(Action::Restart, format!("{service:?}"), why, page);
    }
}

/// The plan for going from `old` to `new` in one namespace. `changes` are the second build's, made on
/// the state the first left; the catalogs are what each build serves.
pub fn plan(old: &Snapshot, new: &Snapshot, built: &crate::core::build::BuildOutput, old_catalog: &TftpCatalog) -> Plan {
    let (changes, new_catalog) = (&built.changes, &built.catalog);
    let mut plan = Plan { namespace: new.namespace.clone(), ..Plan::default() };
    cluster_steps(old, new, &mut plan);
    let resigned: Vec<String> = new_catalog
        .trust_lists
        .iter()
        .filter(|(name, bytes)| old_catalog.trust_lists.get(*name) != Some(*bytes))
        .map(|(name, _)| name.clone())
        .collect();
    if resigned.iter().any(|name| name == "CTLFile.tlv") {
        let why = if old.tokens.keys().ne(new.tokens.keys()) {
            "the CTL is signed anew: the security tokens changed"
        } else {
            "the CTL is signed anew"
        };
        plan.restart(Service::CallManager, why, "P.1-10");
        plan.restart(Service::Tftp, why, "P.1-10");
        plan.step(Action::ResetAllDevices, "every device", why, "P.16-5");
    }
    phone_steps(old, new, old_catalog, new_catalog, &mut plan);
    trunk_and_gateway_steps(old, new, &mut plan);
    plan.certificates_issued = issued(changes);
    plan.trust_lists_resigned = resigned;
    plan.rotation_steps = rotation_steps(built);
    plan.steps.sort();
    plan.steps.dedup();
    plan
}

/// What the build did of a rotation, then what each rotation under way waits for.
fn rotation_steps(built: &crate::core::build::BuildOutput) -> Vec<String> {
    let steps = built.changes.iter().filter(|c| matches!(c.kind, ChangeKind::RotationStarted | ChangeKind::RotationCompleted));
    steps.map(|c| c.message.clone()).chain(built.rotations.iter().map(|r| format!("under way: {r}"))).collect()
}

fn issued(changes: &[Change]) -> Vec<String> {
    changes.iter().filter(|c| c.kind == ChangeKind::CertificateIssued).map(|c| c.message.clone()).collect()
}

fn cluster_steps(old: &Snapshot, new: &Snapshot, plan: &mut Plan) {
    let (Some(old), Some(new)) = (old.clusters.values().next(), new.clusters.values().next()) else { return };
    let (old, new) = (&old.spec, &new.spec);
    if old.security_mode() != new.security_mode() {
        let why = format!("the cluster security mode goes from {:?} to {:?}", old.security_mode(), new.security_mode());
        plan.step(Action::ResetAllDevices, "every device", &why, "P.1-10");
        plan.restart(Service::CallManager, &why, "P.1-10");
    }
    let (old_ports, new_ports) = (old.ports(), new.ports());
    for (name, before, after) in [
        ("the SIP Phone Secure Port", old_ports.sip_secure_port(), new_ports.sip_secure_port()),
        ("the Ethernet Phone Port", old_ports.ethernet_phone_port(), new_ports.ethernet_phone_port()),
    ] {
        if before != after {
            let why = format!("{name} goes from {before} to {after}");
            plan.step(Action::ResetAllDevices, "every phone", &why, "P.3-5");
            plan.restart(Service::CallManager, &why, "P.3-5");
            plan.restart(Service::CtlProvider, &why, "P.1-10");
        }
    }
    if old_ports.ctl_provider_port() != new_ports.ctl_provider_port() {
        let why = format!("the CTL Provider port goes from {} to {}", old_ports.ctl_provider_port(), new_ports.ctl_provider_port());
        plan.restart(Service::CtlProvider, &why, "P.3-5");
    }
    let (old_capf, new_capf) = (old.capf(), new.capf());
    let service_parameters =
        |c: &crate::api::CapfParameters| (c.certificate_validity_years(), c.max_key_generation_retries(), c.key_size());
    if service_parameters(&old_capf) != service_parameters(&new_capf) {
        plan.restart(Service::CertificateAuthorityProxyFunction, "a CAPF service parameter changes", "P.6-7");
    }
    if old_capf.operation_expires_in_days() != new_capf.operation_expires_in_days() {
        plan.step(Action::ResetAllDevices, "every device", "the CAPF enterprise parameter \"Operation Expires in\" changes", "P.1-10");
    }
}

fn phone_steps(old: &Snapshot, new: &Snapshot, old_catalog: &TftpCatalog, new_catalog: &TftpCatalog, plan: &mut Plan) {
    let changed_profiles: BTreeSet<&String> = new
        .phone_profiles
        .iter()
        .filter(|(name, profile)| old.phone_profiles.get(*name).is_some_and(|o| differs(&o.spec, &profile.spec)))
        .map(|(n, _)| n)
        .collect();
    for (name, phone) in &new.phones {
        let target = format!("Phone/{name}");
        let Some(before) = old.phones.get(name) else { continue };
        let (was, is) = (&before.spec, &phone.spec);
        if was.security_profile_ref != is.security_profile_ref {
            let why = format!("its security profile goes from {} to {}", was.security_profile_ref, is.security_profile_ref);
            plan.step(Action::Reset, &target, why, "P.1-10");
        } else if changed_profiles.contains(&is.security_profile_ref) {
            plan.step(Action::Reset, &target, format!("its security profile {} changes", is.security_profile_ref), "P.1-10");
        }
        if was.hardening != is.hardening {
            plan.step(Action::Reset, &target, "its hardening settings change", "P.1-10");
        }
        if was.digest_user_ref != is.digest_user_ref {
            plan.step(Action::Reset, &target, "its digest user changes: the credentials reach it in its configuration file", "P.1-17");
        }
        if was.srst_reference_ref != is.srst_reference_ref
            || is.srst_reference_ref.as_ref().is_some_and(|srst| srst_changed(old, new, srst))
        {
            plan.step(Action::Reset, &target, "its SRST reference or that reference's security changes", "P.12-4");
        }
        let device = is.device_name();
        if old_catalog.phones.get(&device) != new_catalog.phones.get(&device) {
            plan.step(Action::Reset, &target, format!("TFTP serves it a new {device}.cnf.xml, which it fetches when reset"), "P.1-16");
        }
    }
}

/// Whether two specs differ in more than their description, which no device sees.
fn differs<T: Serialize>(old: &T, new: &T) -> bool {
    let without_description = |spec: &T| {
        let mut value = serde_json::to_value(spec).unwrap_or_default();
        if let Some(fields) = value.as_object_mut() {
            fields.remove("description");
        }
        value
    };
    without_description(old) != without_description(new)
}

fn srst_changed(old: &Snapshot, new: &Snapshot, name: &str) -> bool {
    let secure = |s: &Snapshot| s.srst_references.get(name).map(|r| (r.spec.is_srst_secure(), r.spec.certificate_update_generation));
    secure(old) != secure(new)
}

fn trunk_and_gateway_steps(old: &Snapshot, new: &Snapshot, plan: &mut Plan) {
    let changed_profiles: BTreeMap<&String, bool> = new
        .trunk_profiles
        .iter()
        .map(|(name, p)| (name, old.trunk_profiles.get(name).is_some_and(|o| differs(&o.spec, &p.spec))))
        .collect();
    for (name, trunk) in &new.trunks {
        let Some(before) = old.trunks.get(name) else { continue };
        let target = format!("SipTrunk/{name}");
        if before.spec.security_profile_ref != trunk.spec.security_profile_ref {
            let why = format!("its security profile goes from {} to {}", before.spec.security_profile_ref, trunk.spec.security_profile_ref);
            plan.step(Action::Reset, &target, why, "P.14-7");
        } else if changed_profiles.get(&trunk.spec.security_profile_ref) == Some(&true) {
            plan.step(Action::Reset, &target, format!("its security profile {} changes", trunk.spec.security_profile_ref), "P.14-7");
        }
    }
    for (name, gateway) in &new.h323_gateways {
        if old.h323_gateways.get(name).is_some_and(|before| before.spec.srtp_allowed() != gateway.spec.srtp_allowed()) {
            plan.step(Action::Reset, format!("H323Gateway/{name}"), "SRTP Allowed is toggled", "P.13-7");
        }
    }
}

/// The plan as a pull-request comment.
pub fn markdown(plans: &[Plan], old: &str, new: &str) -> String {
    let mut out = format!("## callguard plan: `{old}` → `{new}`\n");
    for plan in plans {
        out.push_str(&format!("\n### Namespace `{}`\n\n", plan.namespace));
        if plan.steps.is_empty() {
            out.push_str("No reset or restart is required.\n");
        } else {
            out.push_str("| action | target | why | guide |\n| --- | --- | --- | --- |\n");
            for step in &plan.steps {
                out.push_str(&format!("| {:?} | {} | {} | {} |\n", step.action, step.target, step.why.replace('|', "\\|"), step.page));
            }
        }
        let sections = [
            ("Certificates issued", &plan.certificates_issued),
            ("Trust lists signed anew", &plan.trust_lists_resigned),
            ("Rotation steps", &plan.rotation_steps),
        ];
        for (title, lines) in sections {
            if !lines.is_empty() {
                out.push_str(&format!("\n{title}:\n"));
                for line in lines {
                    out.push_str(&format!("- {line}\n"));
                }
            }
        }
    }
    out
}

/// Builds `old` and then `new` on one in-memory state, namespace by namespace, and plans each
/// namespace `new` holds. The CA and keys the first build makes stand for the cluster's own: what
/// the plan reports is what changes between the two builds, not their values.
pub fn plan_namespaces(
    old: BTreeMap<String, Snapshot>,
    new: BTreeMap<String, Snapshot>,
    now: time::OffsetDateTime,
) -> Result<Vec<Plan>, String> {
    use crate::core::build::state::StateDir;
    use crate::core::build::{BuildOptions, build_namespace};
    let mut plans = Vec::new();
    let options = BuildOptions::default();
    let mut old = old;
    for (namespace, after) in new {
        let state = StateDir::in_memory(Default::default());
        let built = |snapshot: &Snapshot, which: &str| {
            build_namespace(std::sync::Arc::new(snapshot.clone()), &state, now, &options)
                .map_err(|e| format!("namespace {namespace}, {which}: the build fails: {e}"))
        };
        let Some(before) = old.remove(&namespace) else {
            // A namespace of its own: nothing ran there to reset.
            let first = built(&after, "a new namespace")?;
            plans.push(Plan {
                namespace: namespace.clone(),
                steps: Vec::new(),
                certificates_issued: issued(&first.changes),
                trust_lists_resigned: first.catalog.trust_lists.keys().cloned().collect(),
                rotation_steps: Vec::new(),
            });
            continue;
        };
        let first = built(&before, "before the change")?;
        let second = built(&after, "after the change")?;
        plans.push(plan(&before, &after, &second, &first.catalog));
    }
    Ok(plans)
}
