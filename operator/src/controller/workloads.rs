//! The data-plane workloads of a cluster, as Kubernetes objects: for each service a ServiceAccount,
//! a Role that lets its pods read what they serve, a RoleBinding, a Deployment running
//! `callguard serve <service>` from the operator's own image, and a Service. Pure functions.
//!
//! Only TFTP exists today. Signaling (a StatefulSet, one replica per node), CAPF and media join
//! [`DataPlaneService`] as they are built; no workload is created for a service that does not exist.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::labels;
use crate::api::{CallControlCluster, default_ports};

/// The data-plane services the operator runs. Closed set: one variant per service that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlaneService {
    /// TFTP: trust lists and phone configuration files (P.1-16, spec/04 §4).
    Tftp,
}

impl DataPlaneService {
    pub fn name(self) -> &'static str {
        match self {
            DataPlaneService::Tftp => "tftp",
        }
    }

    /// What its pods read, namespaced: it renders phone files from these (DESIGN: data plane reads).
    fn rules(self) -> Vec<PolicyRule> {
        match self {
            DataPlaneService::Tftp => vec![
                rule("callguard.io", &["callcontrolclusters", "phones", "phonesecurityprofiles", "srstreferences", "endusers"]),
                rule("", &["secrets", "configmaps"]),
            ],
        }
    }

    fn ports(self, cluster: &CallControlCluster) -> Vec<(String, i32, &'static str)> {
        match self {
            DataPlaneService::Tftp => {
                let port = cluster.spec.ports().tftp_port.unwrap_or(default_ports::TFTP);
                vec![("tftp".to_owned(), i32::from(port), "UDP")]
            }
        }
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

fn rule(group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: ["get", "list", "watch"].map(String::from).to_vec(),
        ..PolicyRule::default()
    }
}

/// What a service's pods need besides the cluster.
pub struct WorkloadInputs<'a> {
    /// The operator's own image.
    pub image: &'a str,
    /// The TLS Secret of the certificate that signs what the service serves.
    pub signer_secret: &'a str,
    /// Digest of the certificates and trust lists the pods use; a change rolls them.
    pub content_hash: &'a str,
}

/// Every object of one data-plane service, owner references left to the caller.
pub struct Workload {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
}

pub fn workload(service: DataPlaneService, cluster: &CallControlCluster, inputs: &WorkloadInputs<'_>) -> Workload {
    let cluster_name = cluster.metadata.name.clone().unwrap_or_default();
    let name = labels::service_name(&cluster_name, service.name());
    let object_labels = labels::owned(&cluster_name, service.name());
    let metadata = || ObjectMeta { name: Some(name.clone()), labels: Some(object_labels.clone()), ..ObjectMeta::default() };
    let selector =
        BTreeMap::from([(labels::CLUSTER.to_owned(), cluster_name.clone()), (labels::COMPONENT.to_owned(), service.name().to_owned())]);
    let ports = service.ports(cluster);

    let container = Container {
        name: service.name().to_owned(),
        image: Some(inputs.image.to_owned()),
        args: Some(
            [
                "serve",
                service.name(),
                "--cluster",
                &cluster_name,
                "--signer-secret",
                inputs.signer_secret,
                "--bind",
                "0.0.0.0",
                "--port",
                &ports[0].1.to_string(),
                "--metrics-bind",
                &format!("0.0.0.0:{METRICS_PORT}"),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "POD_NAMESPACE".into(),
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..EnvVar::default()
        }]),
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
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            // Port 69 is below 1024: the one capability a non-root TFTP server needs.
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: Some(vec!["NET_BIND_SERVICE".into()]) }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let placement = cluster.spec.placement.clone().unwrap_or_default();
    let tolerations: Vec<Toleration> =
        placement.tolerations.iter().filter_map(|t| serde_json::to_value(t).ok().and_then(|v| serde_json::from_value(v).ok())).collect();
    let pod_labels = object_labels.clone();
    let deployment = Deployment {
        metadata: metadata(),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy { type_: Some("RollingUpdate".into()), ..DeploymentStrategy::default() }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(labels::CONTENT_HASH.to_owned(), inputs.content_hash.to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(true),
                    containers: vec![container],
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
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let service_object = Service {
        metadata: metadata(),
        spec: Some(ServiceSpec {
            selector: Some(selector),
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
    Workload {
        service_account: ServiceAccount { metadata: metadata(), ..ServiceAccount::default() },
        role: Role { metadata: metadata(), rules: Some(service.rules()) },
        role_binding: RoleBinding {
            metadata: metadata(),
            role_ref: RoleRef { api_group: Some("rbac.authorization.k8s.io".into()), kind: "Role".into(), name: name.clone() },
            subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: name.clone(), ..Subject::default() }]),
        },
        deployment,
        service: service_object,
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
        let inputs = WorkloadInputs { image: "callguard:1", signer_secret: "lab-cm1-callmanager-tftp", content_hash: "abc" };
        let w = workload(DataPlaneService::Tftp, &cluster(Some(6969)), &inputs);
        let pod = w.deployment.spec.template.clone();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let args = container.args.clone().unwrap();
        assert_eq!(&args[..4], ["serve", "tftp", "--cluster", "lab"]);
        assert!(
            args.windows(2).any(|w| w == ["--port", "6969"])
                && args.windows(2).any(|w| w == ["--signer-secret", "lab-cm1-callmanager-tftp"])
        );
        assert_eq!(container.image.as_deref(), Some("callguard:1"));
        assert!(args.windows(2).any(|w| w == ["--metrics-bind", "0.0.0.0:8080"]), "the TFTP counters are scraped");
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
    fn its_role_only_reads() {
        let inputs = WorkloadInputs { image: "i", signer_secret: "s", content_hash: "h" };
        let w = workload(DataPlaneService::Tftp, &cluster(None), &inputs);
        for rule in w.role.rules.unwrap() {
            assert_eq!(rule.verbs, ["get", "list", "watch"]);
        }
        assert_eq!(w.role_binding.subjects.unwrap()[0].name, "lab-tftp");
    }
}
