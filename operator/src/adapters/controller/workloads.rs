//! The data-plane workloads of a cluster, as Kubernetes objects: for each service a ServiceAccount,
//! a Role that lets its pods read exactly the Secrets they serve (by name), a RoleBinding, a
//! Deployment (a StatefulSet for signaling, whose pods are the cluster's CallManager nodes) running
//! `callguard serve <service>` from the operator's own image, a Service and a NetworkPolicy. Pure
//! functions.
//!
//! The model every service follows: the operator projects what a service needs into Secrets it owns
//! (`projection`), and the service's Role lists those Secrets and the service's own key by name, with
//! no rule on any other Secret, ConfigMap or Callguard object. CAPF alone may also write: the keys
//! of its record Secrets (`capf_records`), and it alone reads the CA key. Media reads only its
//! control certificate's Secret; the SIP pods reach it through its control port alone.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, LocalObjectReference, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Toleration, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::labels;
use crate::api::{CallControlCluster, Exposure};

/// The data-plane services the operator runs. Closed set: one variant per service that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlaneService {
    /// TFTP: trust lists and phone configuration files (P.1-16).
    Tftp,
    /// CAPF: phones' LSCs (P.6-1), and EST beside it (docs/operations.md §6.10).
    Capf,
    /// TVS: certificates a phone's ITL does not list (docs/wire-formats.md §8).
    Tvs,
    /// SIP: registrar and proxy, one pod per node that runs CallManager (P.3-5, Table 5-2, Table 14-1).
    Sip,
    /// Media: the relay of calls' RTP and RTCP, SRTP only on encrypted calls (P.1-20), on its
    /// nodes' network by default, driven by the SIP pods.
    Media,
}

/// EST's port in the CAPF pods (RFC 7030 asks for HTTPS; 8443 needs no privilege).
pub const EST_PORT: u16 = 8443;

impl DataPlaneService {
    pub fn name(self) -> &'static str {
        match self {
            DataPlaneService::Tftp => "tftp",
            DataPlaneService::Capf => "capf",
            DataPlaneService::Tvs => "tvs",
            DataPlaneService::Sip => "sip",
            DataPlaneService::Media => "media",
        }
    }

    /// What its pods may read: the named Secrets, nothing else; and what they may write: the keys of
    /// the named Secrets, never a new one. `list` and `watch` under `resourceNames` are allowed only
    /// for a request that selects one of those names (`metadata.name=`), which is how the pods watch
    /// them.
    fn rules(self, readable: &[String], writable: &[String]) -> Vec<PolicyRule> {
        let rule = |names: &[String], verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(names.to_vec()),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        };
        let mut rules = vec![rule(readable, &["get", "list", "watch"])];
        if !writable.is_empty() {
            rules.push(rule(writable, &["get", "patch"]));
        }
        rules
    }

    /// Its ports: the first is the one `--port` sets.
    fn ports(self, cluster: &CallControlCluster) -> Vec<(String, i32, &'static str)> {
        let ports = cluster.spec.ports();
        match self {
            DataPlaneService::Tftp => vec![("tftp".to_owned(), i32::from(ports.tftp_port()), "UDP")],
            DataPlaneService::Capf => {
                vec![("capf".to_owned(), i32::from(ports.capf_port()), "TCP"), ("est".to_owned(), i32::from(EST_PORT), "TCP")]
            }
            DataPlaneService::Tvs => vec![("tvs".to_owned(), i32::from(crate::services::tvs::DEFAULT_PORT), "TCP")],
            DataPlaneService::Sip => {
                let (sip, tls) = (i32::from(ports.sip_port()), i32::from(ports.sip_secure_port()));
                vec![("sip".to_owned(), sip, "UDP"), ("sip-tcp".to_owned(), sip, "TCP"), ("sip-tls".to_owned(), tls, "TCP")]
            }
            DataPlaneService::Media => vec![("control".to_owned(), i32::from(cluster.spec.media().control_port()), "TCP")],
        }
    }

    /// Arguments of its own, besides the Secrets it reads.
    fn arguments(self, cluster: &CallControlCluster) -> Vec<String> {
        match self {
            // Every packet from the listening port, the one a Service, a load balancer or NAT
            // carries back to the phone.
            DataPlaneService::Tftp => vec!["--transfer-port".into(), "listening".into()],
            DataPlaneService::Capf => vec!["--est-port".into(), EST_PORT.to_string()],
            DataPlaneService::Tvs => Vec::new(),
            DataPlaneService::Sip => vec!["--tls-port".into(), cluster.spec.ports().sip_secure_port().to_string()],
            DataPlaneService::Media => {
                let media = cluster.spec.media();
                let (ports, latching) = (media.ports(), media.latching.unwrap_or_default());
                vec![
                    "--first-port".into(),
                    ports.start().to_string(),
                    "--last-port".into(),
                    ports.end().to_string(),
                    "--inactivity-seconds".into(),
                    media.inactivity().as_secs().to_string(),
                    "--latching".into(),
                    format!("{latching:?}"),
                ]
            }
        }
    }

    /// The UDP ports its pods receive on besides its Service's: the relay's range.
    fn udp_range(self, cluster: &CallControlCluster) -> Option<(i32, i32)> {
        let ports = (self == DataPlaneService::Media).then(|| cluster.spec.media().ports())?;
        Some((i32::from(*ports.start()), i32::from(*ports.end())))
    }

    /// A pod per node that runs CallManager, each with the identity of its node: a StatefulSet,
    /// whose pods know their ordinal. The others are interchangeable replicas.
    fn per_node(self) -> bool {
        self == DataPlaneService::Sip
    }
}

/// `/metrics`, `/healthz` and `/readyz` of a data-plane pod.
const METRICS_PORT: i32 = 8080;

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// What a service's pods need besides the cluster.
pub struct WorkloadInputs<'a> {
    /// The operator's own image.
    pub image: &'a str,
    /// The Secrets the service is told to read, as its options: `--signer-secret NAME`, ...
    pub secret_args: Vec<(&'static str, String)>,
    /// Every Secret the pods may read: those of `secret_args` and a projection's shards.
    pub readable_secrets: &'a [String],
    /// Secrets whose keys the pods may write (CAPF's records); none for the other services.
    pub writable_secrets: &'a [String],
    /// Digest of the certificates and trust lists the pods use; a change rolls them.
    pub content_hash: &'a str,
    /// Ports of the Kubernetes API server, the one place the pods connect to.
    pub api_server_ports: &'a [u16],
    /// Pull Secrets of the image, by name, in the cluster's namespace.
    pub image_pull_secrets: &'a [String],
    /// Ports besides the service's own, by name (the SIP trunks' incoming ports, Table 14-1).
    pub extra_ports: Vec<(String, i32, &'static str)>,
    /// Options besides the Secrets' (the SIP pods' way to the media relays and its pin).
    pub extra_args: Vec<String>,
    /// Ports the pods connect to besides DNS and the API server (the SIP pods: the relays' control port).
    pub extra_egress: Vec<(i32, &'static str)>,
}

/// Requests and limits of a data-plane container unless the cluster's placement sets them: enough for
/// a TFTP server signing on demand, and a memory ceiling so one pod cannot starve its node.
fn default_resources() -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_owned(), quantity("50m")), ("memory".to_owned(), quantity("64Mi"))])),
        limits: Some(BTreeMap::from([("memory".to_owned(), quantity("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// Replicas on different nodes: required on the node's network (they would share its ports),
/// preferred otherwise, so that one node going down leaves a replica serving.
fn spread(selector: &BTreeMap<String, String>, required: bool) -> Affinity {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() }),
        topology_key: "kubernetes.io/hostname".into(),
        ..PodAffinityTerm::default()
    };
    let anti = if required {
        PodAntiAffinity { required_during_scheduling_ignored_during_execution: Some(vec![term]), ..PodAntiAffinity::default() }
    } else {
        PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: term,
            }]),
            ..PodAntiAffinity::default()
        }
    };
    Affinity { pod_anti_affinity: Some(anti), ..Affinity::default() }
}

/// Ingress only to the service's ports and the metrics port; egress only to DNS and the API server.
fn network_policy(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    ports: &[(String, i32, &'static str)],
    udp_range: Option<(i32, i32)>,
    api_server_ports: &[u16],
    extra_egress: &[(i32, &'static str)],
) -> NetworkPolicy {
    let port = |number: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.to_owned()),
        ..NetworkPolicyPort::default()
    };
    let range = udp_range.map(|(first, last)| NetworkPolicyPort { end_port: Some(last), ..port(first, "UDP") });
    let ingress =
        ports.iter().map(|(_, number, protocol)| port(*number, protocol)).chain([port(METRICS_PORT, "TCP")]).chain(range).collect();
    let egress = [port(53, "UDP"), port(53, "TCP")]
        .into_iter()
        .chain(api_server_ports.iter().map(|p| port(i32::from(*p), "TCP")))
        .chain(extra_egress.iter().map(|(number, protocol)| port(*number, protocol)))
        .collect();
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector), ..LabelSelector::default() }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule { ports: Some(ingress), ..NetworkPolicyIngressRule::default() }]),
            egress: Some(vec![NetworkPolicyEgressRule { ports: Some(egress), ..NetworkPolicyEgressRule::default() }]),
        }),
    }
}

/// What runs a service's pods.
pub enum Pods {
    Deployment(Box<Deployment>),
    /// One pod per node that runs CallManager ([`DataPlaneService::per_node`]).
    StatefulSet(Box<StatefulSet>),
}

impl Pods {
    pub fn template(&self) -> &PodTemplateSpec {
        match self {
            Pods::Deployment(deployment) => &deployment.spec.template,
            Pods::StatefulSet(set) => &set.spec.template,
        }
    }

    pub fn replicas(&self) -> Option<i32> {
        match self {
            Pods::Deployment(deployment) => deployment.spec.replicas,
            Pods::StatefulSet(set) => set.spec.replicas,
        }
    }
}

/// Every object of one data-plane service, owner references left to the caller.
pub struct Workload {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub pods: Pods,
    /// How phones reach the service: its ports, exposed as the cluster's placement says.
    pub service: Service,
    /// The `/metrics` port, inside the Kubernetes cluster only, for Prometheus.
    pub metrics_service: Service,
    /// With more than one replica, one stays up through voluntary disruptions.
    pub disruption_budget: Option<PodDisruptionBudget>,
    pub network_policy: NetworkPolicy,
}

pub fn workload(service: DataPlaneService, cluster: &CallControlCluster, inputs: &WorkloadInputs<'_>) -> Workload {
    let cluster_name = cluster.metadata.name.clone().unwrap_or_default();
    let name = labels::service_name(&cluster_name, service.name());
    let object_labels = labels::owned(&cluster_name, service.name());
    let metadata = || ObjectMeta { name: Some(name.clone()), labels: Some(object_labels.clone()), ..ObjectMeta::default() };
    let selector =
        BTreeMap::from([(labels::CLUSTER.to_owned(), cluster_name.clone()), (labels::COMPONENT.to_owned(), service.name().to_owned())]);
    let mut ports = service.ports(cluster);
    ports.extend(inputs.extra_ports.iter().cloned());

    let mut args: Vec<String> = ["serve", service.name(), "--cluster", &cluster_name].map(String::from).to_vec();
    for (option, secret) in &inputs.secret_args {
        args.extend([(*option).to_owned(), secret.clone()]);
    }
    args.extend(["--bind".to_owned(), "0.0.0.0".to_owned(), "--port".to_owned(), ports[0].1.to_string()]);
    args.extend(service.arguments(cluster));
    args.extend(inputs.extra_args.iter().cloned());
    args.extend(["--metrics-bind".to_owned(), format!("0.0.0.0:{METRICS_PORT}")]);
    // Ports below 1024 (TFTP's 69) need the one capability a non-root server needs for them.
    let privileged = ports.iter().any(|(_, port, _)| *port < 1024);
    let container = Container {
        name: service.name().to_owned(),
        image: Some(inputs.image.to_owned()),
        args: Some(args),
        env: Some(
            [("POD_NAMESPACE", "metadata.namespace")]
                .into_iter()
                .chain(service.per_node().then_some(("POD_NAME", "metadata.name")))
                // The relay names its own address in the SDP: its node's on the node's network.
                .chain(
                    (service == DataPlaneService::Media)
                        .then_some(("ADVERTISED_IP", if cluster.spec.media().host_network() { "status.hostIP" } else { "status.podIP" })),
                )
                .map(|(name, field_path)| EnvVar {
                    name: name.into(),
                    value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                        field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                            field_path: field_path.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        ports: Some(
            ports
                .iter()
                .map(|(port_name, port, protocol)| ContainerPort {
                    name: Some(port_name.clone()),
                    container_port: *port,
                    protocol: Some((*protocol).to_owned()),
                    ..ContainerPort::default()
                })
                .chain([ContainerPort { name: Some("metrics".into()), container_port: METRICS_PORT, ..ContainerPort::default() }])
                .collect(),
        ),
        resources: Some(cluster.spec.placement.as_ref().and_then(|p| p.resources.clone()).unwrap_or_else(default_resources)),
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: privileged.then(|| vec!["NET_BIND_SERVICE".into()]) }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut placement = cluster.spec.placement.clone().unwrap_or_default();
    let mut exposure = placement.exposure();
    let mut replicas = if service.per_node() {
        i32::try_from(crate::core::build::identity::call_manager_bases(cluster).len()).unwrap_or(i32::MAX)
    } else {
        i32::from(placement.replicas())
    };
    if service == DataPlaneService::Media {
        // Phones send RTP to the address the SDP names: the node's own, unless the relay is told
        // otherwise, and a headless Service names every relay pod for the SIP pods.
        let media = cluster.spec.media();
        exposure = if media.host_network() { Exposure::HostNetwork } else { Exposure::ClusterIP };
        replicas = i32::from(media.replicas());
        if !media.node_selector.is_empty() {
            placement.node_selector = media.node_selector.clone();
        }
        if !media.tolerations.is_empty() {
            placement.tolerations = media.tolerations.clone();
        }
    }
    let host_network = exposure == Exposure::HostNetwork;
    let tolerations: Vec<Toleration> =
        placement.tolerations.iter().filter_map(|t| serde_json::to_value(t).ok().and_then(|v| serde_json::from_value(v).ok())).collect();
    let pod_labels = object_labels.clone();
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([(labels::CONTENT_HASH.to_owned(), inputs.content_hash.to_owned())])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            automount_service_account_token: Some(true),
            containers: vec![container],
            image_pull_secrets: (!inputs.image_pull_secrets.is_empty())
                .then(|| inputs.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect()),
            // On the node's network, the service's ports are the node's: one pod per node.
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_owned()),
            affinity: Some(spread(&selector, host_network)),
            node_selector: (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone()),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    };
    let selector_labels = LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() };
    let pods = if service.per_node() {
        Pods::StatefulSet(Box::new(StatefulSet {
            metadata: metadata(),
            spec: StatefulSetSpec {
                replicas: Some(replicas),
                selector: selector_labels,
                service_name: Some(name.clone()),
                // Each pod is a node of its own: none waits for another to start.
                pod_management_policy: Some("Parallel".into()),
                template,
                ..StatefulSetSpec::default()
            },
            ..StatefulSet::default()
        }))
    } else {
        Pods::Deployment(Box::new(Deployment {
            metadata: metadata(),
            spec: DeploymentSpec {
                replicas: Some(replicas),
                selector: selector_labels,
                strategy: Some(DeploymentStrategy { type_: Some("RollingUpdate".into()), ..DeploymentStrategy::default() }),
                template,
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }))
    };
    let (service_type, cluster_ip, traffic_policy) = match exposure {
        // The SIP pods resolve the relays' Service to reach each relay pod.
        Exposure::ClusterIP if service == DataPlaneService::Media => ("ClusterIP", Some("None"), None),
        Exposure::ClusterIP => ("ClusterIP", None, None),
        // Phones are told apart by address: keep the client's, not the node's.
        Exposure::NodePort => ("NodePort", None, Some("Local")),
        Exposure::LoadBalancer => ("LoadBalancer", None, Some("Local")),
        Exposure::HostNetwork => ("ClusterIP", Some("None"), None),
    };
    let annotations = (!placement.service_annotations.is_empty()).then(|| placement.service_annotations.clone());
    let service_object = Service {
        metadata: ObjectMeta { annotations, ..metadata() },
        spec: Some(ServiceSpec {
            type_: Some(service_type.to_owned()),
            cluster_ip: cluster_ip.map(str::to_owned),
            external_traffic_policy: traffic_policy.map(str::to_owned),
            selector: Some(selector.clone()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, port, protocol)| ServicePort {
                        name: Some(port_name.clone()),
                        port: *port,
                        target_port: Some(IntOrString::String(port_name.clone())),
                        protocol: Some((*protocol).to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let metrics_service = Service {
        metadata: ObjectMeta {
            name: Some(format!("{name}-metrics")),
            labels: Some(object_labels.clone()),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let disruption_budget = (replicas > 1).then(|| PodDisruptionBudget {
        metadata: metadata(),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });
    Workload {
        service_account: ServiceAccount { metadata: metadata(), ..ServiceAccount::default() },
        role: Role { metadata: metadata(), rules: Some(service.rules(inputs.readable_secrets, inputs.writable_secrets)) },
        role_binding: RoleBinding {
            metadata: metadata(),
            role_ref: RoleRef { api_group: Some("rbac.authorization.k8s.io".into()), kind: "Role".into(), name: name.clone() },
            subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: name.clone(), ..Subject::default() }]),
        },
        pods,
        service: service_object,
        metrics_service,
        disruption_budget,
        network_policy: network_policy(
            metadata(),
            selector,
            &ports,
            service.udp_range(cluster),
            inputs.api_server_ports,
            &inputs.extra_egress,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(tftp_port: Option<u16>) -> CallControlCluster {
        let mut cluster: CallControlCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "CallControlCluster",
            "metadata": {"name": "lab", "namespace": "voice"},
            "spec": {"nodes": [{"name": "cm1", "hostname": "cm1.example"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        cluster.spec.ports = tftp_port.map(|p| crate::api::ClusterPorts { tftp_port: Some(p), ..Default::default() });
        cluster
    }

    #[test]
    fn tftp_runs_serve_tftp_on_the_clusters_udp_port_with_its_content_hash() {
        let secrets = ["lab-cm1-callmanager-tftp".to_owned(), "lab-tftp-files".to_owned()];
        let inputs = WorkloadInputs {
            image: "callguard:1",
            secret_args: vec![("--signer-secret", "lab-cm1-callmanager-tftp".into()), ("--files-secret", "lab-tftp-files".into())],
            readable_secrets: &secrets,
            writable_secrets: &[],
            content_hash: "abc",
            api_server_ports: &[443, 6443],
            image_pull_secrets: &[],
            extra_ports: Vec::new(),
            extra_args: Vec::new(),
            extra_egress: Vec::new(),
        };
        let w = workload(DataPlaneService::Tftp, &cluster(Some(6969)), &inputs);
        let pod = w.pods.template().clone();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let args = container.args.clone().unwrap();
        assert_eq!(&args[..4], ["serve", "tftp", "--cluster", "lab"]);
        assert!(
            args.windows(2).any(|w| w == ["--port", "6969"])
                && args.windows(2).any(|w| w == ["--signer-secret", "lab-cm1-callmanager-tftp"])
        );
        assert_eq!(container.image.as_deref(), Some("callguard:1"));
        assert!(args.windows(2).any(|w| w == ["--metrics-bind", "0.0.0.0:8080"]), "the TFTP counters are scraped");
        assert!(args.windows(2).any(|w| w == ["--transfer-port", "listening"]), "single-port mode behind a Service");
        let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|g| g.path.clone());
        assert_eq!(probe, Some(Some("/readyz".to_owned())));
        assert_eq!(pod.metadata.unwrap().annotations.unwrap()[labels::CONTENT_HASH], "abc");
        let port = &w.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.protocol.as_deref()), (6969, Some("UDP")));
        assert_eq!(w.service.metadata.name.as_deref(), Some("lab-tftp"));
        let default = workload(DataPlaneService::Tftp, &cluster(None), &inputs);
        assert_eq!(default.service.spec.unwrap().ports.unwrap()[0].port, 69, "P.1-16");
    }

    #[test]
    fn capf_reads_the_ca_and_its_projection_writes_only_its_records_and_listens_on_capf_and_est() {
        let readable = ["lab-ca".to_owned(), "lab-cm1-capf".to_owned(), "lab-capf".to_owned()];
        let records = ["lab-capf-records-0a".to_owned()];
        let inputs = WorkloadInputs {
            image: "callguard:1",
            secret_args: vec![
                ("--ca-secret", "lab-ca".into()),
                ("--certificate-secret", "lab-cm1-capf".into()),
                ("--directory-secret", "lab-capf".into()),
            ],
            readable_secrets: &readable,
            writable_secrets: &records,
            content_hash: "h",
            api_server_ports: &[6443],
            image_pull_secrets: &[],
            extra_ports: Vec::new(),
            extra_args: Vec::new(),
            extra_egress: Vec::new(),
        };
        let w = workload(DataPlaneService::Capf, &cluster(None), &inputs);
        let container = w.pods.template().spec.clone().unwrap().containers[0].clone();
        let args = container.args.unwrap();
        assert_eq!(&args[..2], ["serve", "capf"]);
        for (option, value) in [("--ca-secret", "lab-ca"), ("--directory-secret", "lab-capf"), ("--port", "3804"), ("--est-port", "8443")] {
            assert!(args.windows(2).any(|w| w == [option, value]), "{option} {value} in {args:?}");
        }
        let capabilities = container.security_context.unwrap().capabilities.unwrap();
        assert_eq!(capabilities.add, None, "no port below 1024: no capability");
        let ports: Vec<_> = w.service.spec.unwrap().ports.unwrap().into_iter().map(|p| (p.port, p.protocol.unwrap())).collect();
        assert_eq!(ports, [(3804, "TCP".to_owned()), (8443, "TCP".to_owned())], "P.6-6, and EST beside it");
        let rules = w.role.rules.unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(
            (rules[0].resource_names.as_deref(), rules[0].verbs.as_slice()),
            (Some(&readable[..]), &["get", "list", "watch"].map(String::from)[..])
        );
        assert_eq!(
            (rules[1].resource_names.as_deref(), rules[1].verbs.as_slice()),
            (Some(&records[..]), &["get", "patch"].map(String::from)[..])
        );
    }

    fn exposed(exposure: &str, replicas: Option<u8>) -> Workload {
        let mut cluster = cluster(None);
        cluster.spec.placement = Some(
            serde_json::from_value(serde_json::json!({"exposure": exposure, "replicas": replicas, "serviceAnnotations": {"lb": "x"}}))
                .unwrap(),
        );
        let secrets = ["s".to_owned()];
        let pull = ["regcred".to_owned()];
        let inputs = WorkloadInputs {
            image: "i",
            secret_args: vec![("--signer-secret", "s".into())],
            readable_secrets: &secrets,
            writable_secrets: &[],
            content_hash: "h",
            api_server_ports: &[443],
            image_pull_secrets: &pull,
            extra_ports: Vec::new(),
            extra_args: Vec::new(),
            extra_egress: Vec::new(),
        };
        workload(DataPlaneService::Tftp, &cluster, &inputs)
    }

    #[test]
    fn phones_reach_the_service_as_the_placement_says_keeping_their_address() {
        let balanced = exposed("LoadBalancer", None);
        let spec = balanced.service.spec.clone().unwrap();
        assert_eq!((spec.type_.as_deref(), spec.external_traffic_policy.as_deref()), (Some("LoadBalancer"), Some("Local")));
        assert_eq!(balanced.service.metadata.annotations.unwrap()["lb"], "x");
        let pod = balanced.pods.template().spec.clone().unwrap();
        assert_eq!(balanced.pods.replicas(), Some(2), "two replicas by default");
        assert_eq!(balanced.disruption_budget.unwrap().spec.unwrap().min_available, Some(IntOrString::Int(1)));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert!(pod.host_network.is_none());
        let node_port = exposed("NodePort", Some(1));
        assert_eq!(node_port.service.spec.unwrap().external_traffic_policy.as_deref(), Some("Local"));
        assert!(node_port.disruption_budget.is_none(), "one replica, no budget that would block every drain");
        let host = exposed("HostNetwork", None);
        let pod = host.pods.template().spec.clone().unwrap();
        assert_eq!((pod.host_network, pod.dns_policy.as_deref()), (Some(true), Some("ClusterFirstWithHostNet")));
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(anti.required_during_scheduling_ignored_during_execution.is_some(), "one pod per node on the node's network");
        assert_eq!(host.service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        let metrics = exposed("ClusterIP", None).metrics_service;
        assert_eq!(metrics.metadata.name.as_deref(), Some("lab-tftp-metrics"));
        assert_eq!(metrics.spec.unwrap().ports.unwrap()[0].port, 8080);
    }

    #[test]
    fn sip_runs_a_pod_per_callmanager_node_that_knows_its_name_on_the_sip_ports_and_the_trunks() {
        let mut cluster: CallControlCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "CallControlCluster",
            "metadata": {"name": "lab", "namespace": "voice"},
            "spec": {"nodes": [
                {"name": "cm1", "hostname": "cm1.example"},
                {"name": "tftp1", "hostname": "tftp1.example", "services": {"callManager": false}},
                {"name": "cm2", "hostname": "cm2.example", "services": {"tftp": false}}
            ]}
        }))
        .unwrap();
        cluster.spec.ports = Some(crate::api::ClusterPorts { sip_port: Some(5070), ..Default::default() });
        let readable = ["lab-cm1-callmanager-tftp".to_owned(), "lab-cm2-callmanager".to_owned(), "lab-sip".to_owned()];
        let inputs = WorkloadInputs {
            image: "callguard:1",
            secret_args: vec![
                ("--directory-secret", "lab-sip".into()),
                ("--certificate-secret", "lab-cm1-callmanager-tftp".into()),
                ("--certificate-secret", "lab-cm2-callmanager".into()),
            ],
            readable_secrets: &readable,
            writable_secrets: &[],
            content_hash: "h",
            api_server_ports: &[6443],
            image_pull_secrets: &[],
            extra_ports: vec![("trunk-5080-udp".into(), 5080, "UDP"), ("trunk-5080-tcp".into(), 5080, "TCP")],
            extra_args: Vec::new(),
            extra_egress: Vec::new(),
        };
        let w = workload(DataPlaneService::Sip, &cluster, &inputs);
        let Pods::StatefulSet(set) = &w.pods else { panic!("a StatefulSet") };
        assert_eq!(set.spec.replicas, Some(2), "cm1 and cm2 run CallManager, tftp1 does not (P.3-4)");
        assert_eq!(set.spec.service_name.as_deref(), Some("lab-sip"));
        let container = &w.pods.template().spec.as_ref().unwrap().containers[0];
        let args = container.args.clone().unwrap();
        assert_eq!(&args[..2], ["serve", "sip"]);
        let certificates: Vec<&String> = args.windows(2).filter(|w| w[0] == "--certificate-secret").map(|w| &w[1]).collect();
        assert_eq!(certificates, ["lab-cm1-callmanager-tftp", "lab-cm2-callmanager"], "in the nodes' order: pod N presents the N-th");
        for (option, value) in [("--port", "5070"), ("--tls-port", "5061"), ("--directory-secret", "lab-sip")] {
            assert!(args.windows(2).any(|w| w == [option, value]), "{option} {value} in {args:?}");
        }
        let env: Vec<(&str, &str)> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path.as_str()))
            .collect();
        assert_eq!(env, [("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")]);
        let ports: Vec<_> =
            w.service.spec.unwrap().ports.unwrap().into_iter().map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap())).collect();
        let expected = [
            ("sip", 5070, "UDP"),
            ("sip-tcp", 5070, "TCP"),
            ("sip-tls", 5061, "TCP"),
            ("trunk-5080-udp", 5080, "UDP"),
            ("trunk-5080-tcp", 5080, "TCP"),
        ];
        assert_eq!(ports, expected.map(|(n, p, t)| (n.to_owned(), p, t.to_owned())));
        let rules = w.role.rules.unwrap();
        assert_eq!((rules.len(), rules[0].resource_names.as_deref()), (1, Some(&readable[..])), "reads its Secrets, writes none");
        let ingress = w.network_policy.spec.unwrap().ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(ingress.len(), 6, "the five SIP ports and metrics");
    }

    #[test]
    fn its_role_reads_only_the_named_secrets_and_its_network_is_fenced() {
        let secrets = ["s".to_owned(), "lab-tftp-files".to_owned(), "lab-tftp-files-0".to_owned()];
        let inputs = WorkloadInputs {
            image: "i",
            secret_args: vec![("--signer-secret", "s".into()), ("--files-secret", "lab-tftp-files".into())],
            readable_secrets: &secrets,
            writable_secrets: &[],
            content_hash: "h",
            api_server_ports: &[6443],
            image_pull_secrets: &[],
            extra_ports: Vec::new(),
            extra_args: Vec::new(),
            extra_egress: Vec::new(),
        };
        let w = workload(DataPlaneService::Tftp, &cluster(None), &inputs);
        let rules = w.role.rules.unwrap();
        assert_eq!(rules.len(), 1, "one rule: {rules:?}");
        assert_eq!(rules[0].resources.as_deref(), Some(&["secrets".to_owned()][..]));
        assert_eq!(rules[0].resource_names.as_deref(), Some(&secrets[..]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(w.role_binding.subjects.unwrap()[0].name, "lab-tftp");
        let policy = w.network_policy.spec.unwrap();
        let ingress: Vec<_> = policy.ingress.unwrap()[0].ports.clone().unwrap().into_iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(ingress, [(Some(IntOrString::Int(69)), Some("UDP".into())), (Some(IntOrString::Int(8080)), Some("TCP".into()))]);
        let egress: Vec<_> = policy.egress.unwrap()[0].ports.clone().unwrap().into_iter().map(|p| p.port).collect();
        assert_eq!(egress, [Some(IntOrString::Int(53)), Some(IntOrString::Int(53)), Some(IntOrString::Int(6443))]);
        let resources = w.pods.template().spec.clone().unwrap().containers[0].resources.clone().unwrap();
        assert!(resources.limits.unwrap().contains_key("memory"), "a memory limit by default");
    }

    /// The relay runs on its nodes' network by default, one pod per node, names the node's address
    /// (ADVERTISED_IP) in the SDP, reads only its control Secret, and lets in only its range, its control
    /// port and metrics.
    #[test]
    fn media_runs_on_the_nodes_network_with_its_range_and_reads_only_its_control_secret() {
        let mut cluster = cluster(None);
        cluster.spec.media = Some(
            serde_json::from_value(serde_json::json!({
                "firstPort": 20000, "lastPort": 20999, "latching": "SdpOnly", "replicas": 3,
                "nodeSelector": {"voice/media": "true"}
            }))
            .unwrap(),
        );
        let readable = ["lab-media-relay".to_owned()];
        let inputs = WorkloadInputs {
            image: "i",
            secret_args: vec![("--control-secret", "lab-media-relay".into())],
            readable_secrets: &readable,
            writable_secrets: &[],
            content_hash: "h",
            api_server_ports: &[6443],
            image_pull_secrets: &[],
            extra_ports: Vec::new(),
            extra_args: vec!["--client-sha256".into(), "ab".repeat(32)],
            extra_egress: Vec::new(),
        };
        let w = workload(DataPlaneService::Media, &cluster, &inputs);
        let Pods::Deployment(deployment) = &w.pods else { panic!("a Deployment") };
        assert_eq!(deployment.spec.replicas, Some(3));
        let pod = w.pods.template().spec.clone().unwrap();
        assert_eq!((pod.host_network, pod.dns_policy.as_deref()), (Some(true), Some("ClusterFirstWithHostNet")));
        assert_eq!(pod.node_selector.unwrap().get("voice/media").map(String::as_str), Some("true"));
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap();
        for (option, value) in [
            ("--port", "2233"),
            ("--control-secret", "lab-media-relay"),
            ("--first-port", "20000"),
            ("--last-port", "20999"),
            ("--latching", "SdpOnly"),
            ("--inactivity-seconds", "60"),
        ] {
            assert!(args.windows(2).any(|w| w == [option, value]), "{option} {value} in {args:?}");
        }
        let env: Vec<&str> = container.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["POD_NAMESPACE", "ADVERTISED_IP"]);
        let advertised = container.env.as_ref().unwrap()[1].value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(advertised.field_path, "status.hostIP");
        let service = w.service.spec.unwrap();
        assert_eq!(service.cluster_ip.as_deref(), Some("None"), "headless: the SIP pods reach every relay");
        assert_eq!(w.role.rules.unwrap()[0].resource_names.as_deref(), Some(&readable[..]));
        let ingress: Vec<_> = w.network_policy.spec.unwrap().ingress.unwrap()[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.port, p.end_port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ingress,
            [
                (Some(IntOrString::Int(2233)), None, "TCP".to_owned()),
                (Some(IntOrString::Int(8080)), None, "TCP".to_owned()),
                (Some(IntOrString::Int(20000)), Some(20999), "UDP".to_owned()),
            ]
        );
    }
}
