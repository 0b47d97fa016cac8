//! Build, the last step before apply: everything a cluster owns (its state as Secrets and the
//! trust ConfigMap, each data-plane service's projection and workload), as a pure function of the
//! cluster, its build's output and the operator's image settings. No API call is made here, so that
//! what a reconcile would apply is unit-tested without a server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::capf_records;
use super::labels;
use super::projection::{
    CapfProjection, SipProjection, capf_name, index_name, project, project_capf, project_sip, project_tvs, sip_name, tvs_name,
};
use super::state_objects::{certificate_secret, objects_from_state};
use super::workloads::{DataPlaneService, Pods, Workload, WorkloadInputs, workload};
use crate::api::CallControlCluster;
use crate::core::build::BuildOutput;
use crate::core::build::identity::{call_manager_bases, role_file_name, tftp_signer_base};
use crate::core::build::state::StateFiles;
use crate::core::pki::issue::ServerRole;
use crate::validate::Snapshot;

/// What every data-plane pod gets from the operator's own settings.
#[derive(Debug, Clone, Default)]
pub struct WorkloadDefaults {
    /// The operator's image, which the data-plane pods run.
    pub image: String,
    /// Ports of the API server, for the data-plane NetworkPolicies.
    pub api_server_ports: Vec<u16>,
    /// Pull Secrets the data-plane pods use for the image.
    pub image_pull_secrets: Vec<String>,
}

/// What the desired objects are made of.
pub struct DesiredInputs<'a> {
    pub cluster: &'a CallControlCluster,
    pub owner: &'a OwnerReference,
    /// The build's state, after the build.
    pub files: &'a StateFiles,
    pub output: &'a BuildOutput,
    /// The validated namespace, for the SIP directory.
    pub snapshot: &'a Snapshot,
    /// What the CAPF pods need of the phones.
    pub capf_directory: crate::adapters::capf::Update,
    /// The CAPF record Secrets that hold a record, kept whether or not CAPF still runs.
    pub holding_records: std::collections::BTreeSet<String>,
    pub defaults: &'a WorkloadDefaults,
}

/// Everything the cluster owns. Err: a projection that cannot be made (too large to shard).
pub fn desired_objects(inputs: DesiredInputs<'_>) -> Result<Desired, String> {
    let DesiredInputs { cluster, owner, files, output, snapshot, capf_directory, holding_records, defaults } = inputs;
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let (secrets, trust_map) = objects_from_state(&name, files);
    let mut desired = Desired::default();
    for secret in secrets {
        desired.secrets.push(owned(secret, owner));
    }
    desired.config_maps.push(owned(trust_map, owner));
    let hash = content_hash(files);
    if let Some(signer) = tftp_signer_base(cluster).and_then(|base| certificate_secret(&name, &base)) {
        // The TFTP pods' files: shards first, then the index that names them.
        let projection = project(&name, &output.catalog).map_err(|e| e.to_string())?;
        let mut readable = vec![signer.clone()];
        readable.extend(projection.names());
        desired.secrets.extend(projection.shards.into_iter().map(|s| owned(s, owner)));
        desired.secrets.push(owned(projection.index, owner));
        let args = vec![("--signer-secret", signer), ("--files-secret", index_name(&name))];
        desired.add(workload(DataPlaneService::Tftp, cluster, &workload_inputs(defaults, &hash, args, &readable, &[])), owner);
    }
    // The record Secrets CAPF writes into: created (empty) for every phone it may enroll, kept while
    // they hold a record, whether or not CAPF still runs.
    let records = capf_records::desired(&name, capf_directory.scheduled_devices(), holding_records);
    let record_names: Vec<String> = records.iter().filter_map(|s| s.metadata.name.clone()).collect();
    desired.secrets.extend(records.into_iter().map(|s| owned(s, owner)));
    if let Some(capf) = &output.capf {
        let base = format!("certs/{}.{}", capf.certificate.node, role_file_name(ServerRole::Capf));
        let certificate = certificate_secret(&name, &base).unwrap_or_default();
        let projection =
            CapfProjection { node: capf.certificate.node.clone(), hostname: capf.certificate.hostname.clone(), directory: capf_directory };
        desired.secrets.push(owned(project_capf(&name, &projection).map_err(|e| e.to_string())?, owner));
        let args = vec![
            ("--ca-secret", labels::ca_secret(&name)),
            ("--certificate-secret", certificate),
            ("--directory-secret", capf_name(&name)),
        ];
        let readable: Vec<String> = args.iter().map(|(_, secret)| secret.clone()).collect();
        desired.add(workload(DataPlaneService::Capf, cluster, &workload_inputs(defaults, &hash, args, &readable, &record_names)), owner);
    }
    if let Some(tvs) = &output.tvs {
        desired.secrets.push(owned(project_tvs(&name, tvs).map_err(|e| e.to_string())?, owner));
        let readable = vec![tvs_name(&name)];
        desired.add(
            workload(
                DataPlaneService::Tvs,
                cluster,
                &workload_inputs(defaults, &hash, vec![("--secret", tvs_name(&name))], &readable, &[]),
            ),
            owner,
        );
    }
    if let Some(sip) = &output.sip {
        let certificates: Vec<String> = call_manager_bases(cluster).iter().filter_map(|base| certificate_secret(&name, base)).collect();
        let ports = cluster.spec.ports();
        let projection = SipProjection {
            sip_port: ports.sip_port(),
            sip_tls_port: ports.sip_secure_port(),
            legacy_tls: sip.legacy_tls,
            directory: crate::adapters::sip::parts(snapshot, sip),
        };
        let trunk_ports = crate::services::sip::trunk::incoming_ports(&projection.directory.trunks);
        let projection = project_sip(&name, &projection).map_err(|e| e.to_string())?;
        let mut readable = certificates.clone();
        readable.extend(projection.names());
        desired.secrets.extend(projection.shards.into_iter().map(|s| owned(s, owner)));
        desired.secrets.push(owned(projection.index, owner));
        let mut args = vec![("--directory-secret", sip_name(&name))];
        args.extend(certificates.into_iter().map(|secret| ("--certificate-secret", secret)));
        // Calls' media goes through the relays, driven over their control interface with pinned TLS.
        let media = output.media_control.as_ref().map(|control| MediaWiring::new(&name, &namespace, cluster, control));
        if let Some(media) = &media {
            args.push(("--media-client-secret", media.client_secret.clone()));
            readable.push(media.client_secret.clone());
        }
        let mut inputs = workload_inputs(defaults, &hash, args, &readable, &[]);
        inputs.extra_ports = trunk_service_ports(cluster, &trunk_ports);
        if let Some(media) = &media {
            inputs.extra_args =
                vec!["--media-relay".into(), media.target.clone(), "--media-relay-sha256".into(), media.relay_sha256.clone()];
            inputs.extra_egress = vec![(i32::from(cluster.spec.media().control_port()), "TCP")];
        }
        desired.add(workload(DataPlaneService::Sip, cluster, &inputs), owner);
        if let Some(media) = media {
            let readable = vec![media.relay_secret.clone()];
            let mut inputs = workload_inputs(defaults, &hash, vec![("--control-secret", media.relay_secret)], &readable, &[]);
            inputs.extra_args = vec!["--client-sha256".into(), media.client_sha256];
            desired.add(workload(DataPlaneService::Media, cluster, &inputs), owner);
        }
    }
    Ok(desired)
}

/// A digest of the CA's and the functions' certificates and the trust lists the data plane uses
/// (never a key: the digest sits in a pod template). Not the phones' certificates: an LSC that CAPF
/// issues reaches the pods through their projections, and must not roll every pod.
fn content_hash(files: &crate::core::build::state::StateFiles) -> String {
    let mut digest = Sha256::new();
    let rolls =
        |name: &str| (name.starts_with("ca/") || name.starts_with("certs/")) && name.ends_with(".crt") || name.starts_with("published/");
    for (name, (bytes, _)) in files.iter().filter(|(name, _)| rolls(name)) {
        digest.update(name.as_bytes());
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    }
    digest.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

pub(super) fn owned<K: Resource>(mut object: K, owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference) -> K {
    object.meta_mut().owner_references = Some(vec![owner.clone()]);
    object
}

/// Everything the cluster owns, by kind.
#[derive(Default)]
pub struct Desired {
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
}

impl Desired {
    /// Every object of a data-plane service, owned by the cluster.
    fn add(&mut self, workload: Workload, owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference) {
        self.service_accounts.push(owned(workload.service_account, owner));
        self.roles.push(owned(workload.role, owner));
        self.role_bindings.push(owned(workload.role_binding, owner));
        match workload.pods {
            Pods::Deployment(deployment) => self.deployments.push(owned(*deployment, owner)),
            Pods::StatefulSet(set) => self.stateful_sets.push(owned(*set, owner)),
        }
        self.services.push(owned(workload.service, owner));
        self.services.push(owned(workload.metrics_service, owner));
        self.disruption_budgets.extend(workload.disruption_budget.map(|budget| owned(budget, owner)));
        self.network_policies.push(owned(workload.network_policy, owner));
    }
}

/// How the SIP pods and the relay pods find and trust each other.
struct MediaWiring {
    /// The relays' control interface, through their headless Service.
    target: String,
    relay_secret: String,
    client_secret: String,
    relay_sha256: String,
    client_sha256: String,
}

impl MediaWiring {
    fn new(
        cluster_name: &str,
        namespace: &str,
        cluster: &CallControlCluster,
        control: &crate::core::build::media_control::MediaControlIdentity,
    ) -> Self {
        let secret = |base: &str| certificate_secret(cluster_name, base).unwrap_or_default();
        let pin = |der: &[u8]| crate::core::pki::inspect::sha256_hex(der);
        MediaWiring {
            target: format!("{}.{namespace}.svc:{}", labels::service_name(cluster_name, "media"), cluster.spec.media().control_port()),
            relay_secret: secret(crate::core::build::media_control::RELAY),
            client_secret: secret(crate::core::build::media_control::CLIENT),
            relay_sha256: pin(&control.relay.certificate_der),
            client_sha256: pin(&control.client.certificate_der),
        }
    }
}

fn workload_inputs<'a>(
    defaults: &'a WorkloadDefaults,
    content_hash: &'a str,
    secret_args: Vec<(&'static str, String)>,
    readable_secrets: &'a [String],
    writable_secrets: &'a [String],
) -> WorkloadInputs<'a> {
    WorkloadInputs {
        image: &defaults.image,
        secret_args,
        readable_secrets,
        writable_secrets,
        content_hash,
        api_server_ports: &defaults.api_server_ports,
        image_pull_secrets: &defaults.image_pull_secrets,
        extra_ports: Vec::new(),
        extra_args: Vec::new(),
        extra_egress: Vec::new(),
    }
}

/// The SIP trunks' incoming ports other than the cluster's SIP ports, as Service ports: TLS on TCP,
/// else UDP and TCP (Table 14-1).
fn trunk_service_ports(cluster: &CallControlCluster, trunk_ports: &BTreeMap<u16, bool>) -> Vec<(String, i32, &'static str)> {
    let ports = cluster.spec.ports();
    trunk_ports
        .iter()
        .filter(|(port, _)| ![ports.sip_port(), ports.sip_secure_port()].contains(port))
        .flat_map(|(&port, &tls)| {
            let number = i32::from(port);
            if tls {
                vec![(format!("trunk-{port}"), number, "TCP")]
            } else {
                vec![(format!("trunk-{port}-udp"), number, "UDP"), (format!("trunk-{port}-tcp"), number, "TCP")]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::core::build::state::{Sensitivity, StateDir};
    use crate::core::build::{BuildOptions, build_namespace};
    use crate::validate::manifest::load_paths;
    use crate::validate::{SecretPolicy, validate_documents};

    /// The quickstart built into an empty state, as a first reconcile would.
    struct Built {
        cluster: CallControlCluster,
        owner: OwnerReference,
        snapshot: Arc<Snapshot>,
        capf_directory: Option<crate::adapters::capf::Update>,
        output: BuildOutput,
        files: StateFiles,
        defaults: WorkloadDefaults,
    }

    impl Built {
        fn quickstart() -> Built {
            let (documents, errors) = load_paths(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")]);
            assert!(errors.is_empty(), "{errors:?}");
            let cluster = documents.iter().find(|d| d.value["kind"] == "CallControlCluster").unwrap();
            let mut cluster: CallControlCluster = serde_json::from_value(cluster.value.clone()).unwrap();
            cluster.metadata.namespace = Some("default".into());
            cluster.metadata.uid = Some("0b0e6f0a-cluster-uid".into());
            let owner = cluster.controller_owner_ref(&()).unwrap();
            let mut report = validate_documents(&documents, SecretPolicy::Require);
            assert!(report.violations.is_empty(), "{:?}", report.violations);
            let snapshot = Arc::new(report.snapshots.remove("default").unwrap());
            let capf_directory = Some(crate::adapters::capf::Update::of(&snapshot));
            let state = StateDir::in_memory(StateFiles::new());
            let output = build_namespace(Arc::clone(&snapshot), &state, time::OffsetDateTime::now_utc(), &BuildOptions::default()).unwrap();
            let defaults = WorkloadDefaults {
                image: "registry.example/callguard:test".into(),
                api_server_ports: vec![6443],
                image_pull_secrets: vec![],
            };
            Built { cluster, owner, snapshot, capf_directory, output, files: state.files(), defaults }
        }

        fn desired(&mut self) -> Desired {
            desired_objects(DesiredInputs {
                cluster: &self.cluster,
                owner: &self.owner,
                files: &self.files,
                output: &self.output,
                snapshot: &self.snapshot,
                capf_directory: self.capf_directory.take().unwrap(),
                holding_records: Default::default(),
                defaults: &self.defaults,
            })
            .unwrap()
        }
    }

    fn names<K: Resource>(objects: &[K]) -> Vec<String> {
        let mut names: Vec<String> = objects.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect();
        names.sort();
        names
    }

    /// The Secret names a Role lets its pods get.
    fn readable(desired: &Desired, service: &str) -> Vec<String> {
        let role = desired.roles.iter().find(|r| r.metadata.name.as_deref() == Some(&format!("quickstart-{service}")[..])).unwrap();
        let mut names: Vec<String> = role
            .rules
            .iter()
            .flatten()
            .filter(|rule| rule.resources.iter().flatten().any(|r| r == "secrets"))
            .flat_map(|rule| rule.resource_names.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_quickstart_owns_its_state_and_the_five_services_and_every_object_names_it_as_owner() {
        let mut built = Built::quickstart();
        let desired = built.desired();
        assert_eq!(names(&desired.deployments), ["quickstart-capf", "quickstart-media", "quickstart-tftp", "quickstart-tvs"]);
        assert_eq!(names(&desired.stateful_sets), ["quickstart-sip"]);
        assert_eq!(names(&desired.config_maps), [labels::trust_config_map("quickstart")]);
        assert!(names(&desired.secrets).contains(&labels::ca_secret("quickstart")), "{:?}", names(&desired.secrets));
        let owners: Vec<Option<&Vec<OwnerReference>>> = desired
            .secrets
            .iter()
            .map(|o| o.meta().owner_references.as_ref())
            .chain(desired.config_maps.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.deployments.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.stateful_sets.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.roles.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.role_bindings.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.service_accounts.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.services.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.network_policies.iter().map(|o| o.meta().owner_references.as_ref()))
            .chain(desired.disruption_budgets.iter().map(|o| o.meta().owner_references.as_ref()))
            .collect();
        assert!(owners.iter().all(|o| *o == Some(&vec![built.owner.clone()])), "every object is the cluster's, as its controller");
    }

    /// The relay's key goes to the relay alone, the signaling side's to SIP alone, and the CA's
    /// private key only to CAPF, which signs LSCs with it.
    #[test]
    fn each_service_reads_only_the_keys_it_uses() {
        let mut built = Built::quickstart();
        let desired = built.desired();
        assert_eq!(readable(&desired, "media"), ["quickstart-media-relay"]);
        let sip = readable(&desired, "sip");
        assert!(sip.contains(&"quickstart-media-client".to_owned()) && !sip.contains(&"quickstart-media-relay".to_owned()), "{sip:?}");
        let ca = labels::ca_secret("quickstart");
        for service in ["tftp", "tvs", "sip", "media"] {
            assert!(!readable(&desired, service).contains(&ca), "{service} reads the CA");
        }
        assert!(readable(&desired, "capf").contains(&ca));
    }

    /// The pods' content hash follows the certificates and the published lists, not an LSC that
    /// CAPF issues (which reaches the pods through their projections without rolling them).
    #[test]
    fn the_content_hash_moves_with_a_certificate_and_not_with_an_lsc() {
        let built = Built::quickstart();
        let before = content_hash(&built.files);
        let mut with_lsc = built.files.clone();
        with_lsc.insert("devices/SEP00AABBCCDD01.crt".into(), (b"an LSC".to_vec(), Sensitivity::Public));
        assert_eq!(content_hash(&with_lsc), before);
        let mut renewed = built.files.clone();
        let (name, _) = renewed
            .iter()
            .find(|(name, _)| name.starts_with("certs/") && name.ends_with(".crt"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .unwrap();
        renewed.insert(name, (b"a renewed certificate".to_vec(), Sensitivity::Public));
        assert_ne!(content_hash(&renewed), before);
    }
}
