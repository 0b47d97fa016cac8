#!/usr/bin/env python3
"""Renders charts/callguard in each supported configuration and checks what the operator relies on.

- The RBAC is exactly the operator's contract: every (API group, resource, verb, names) that the
  operator's Role in each managed namespace (namespaced scope) or its ClusterRole (cluster scope)
  and the leader-election Role grant, no more and no less, no wildcard, no other Role or
  ClusterRole, and every binding names the operator's ServiceAccount.
- The operator runs with exactly one `--namespace NS` per managed namespace in namespaced scope
  (the release namespace when rbac.namespaces is empty) and none in cluster scope; a list of
  namespaces with cluster scope, a namespace listed twice and an unknown scope are refused.
- `--leader-election` is passed exactly when leader election is on (auto: more than one replica),
  the leader-election Role exists exactly then, and leaderElection=false with two replicas is refused.
- With networkPolicy.enabled, one NetworkPolicy selects the operator pods and allows exactly
  ingress to the metrics port and egress to DNS (UDP and TCP 53) and TCP to the API server ports;
  without it there is none. The operator gets one `--api-server-port P` per configured port either
  way, and a duplicate, missing or out-of-range port is refused.
- The CRDs in the chart are the repository's crds/: the copy in crds-source/ is byte for byte the
  same, and each rendered CRD equals its source apart from the labels and annotations the chart adds.

Each rendered configuration is written to --out for kubernetes-validate. Exits 1 on any mismatch.
"""

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys

import yaml

RELEASE = "callguard"
NAMESPACE = "callguard-system"
LEASE_NAME = "callguard-operator"
OWNED_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
METRICS_PORT = 8080
DEFAULT_API_SERVER_PORTS = [443, 6443]


@dataclasses.dataclass
class Configuration:
    """One rendering of the chart and what it must contain."""

    name: str
    settings: list
    replicas: int = 1
    leader_election: bool = False
    crds_installed: bool = True
    crds_kept: bool = True
    scope: str = "namespaced"
    managed: list = dataclasses.field(default_factory=lambda: [NAMESPACE])  # namespaces given --namespace
    network_policy: bool = True
    api_server_ports: list = dataclasses.field(default_factory=lambda: list(DEFAULT_API_SERVER_PORTS))
    image_pull_secrets: list = dataclasses.field(default_factory=list)


class Checks:
    """Collects failures instead of stopping at the first, so one run shows every drift."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def expect(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL: {what}", file=sys.stderr)

    def equal(self, actual, expected, what):
        if actual == expected:
            self.passed += 1
        elif isinstance(expected, set) and isinstance(actual, set):
            self.failures.append(what)
            print(f"FAIL: {what}\n  missing: {sorted(expected - actual)}\n  extra:   {sorted(actual - expected)}", file=sys.stderr)
        else:
            self.failures.append(what)
            print(f"FAIL: {what}\n  expected: {expected!r}\n  actual:   {actual!r}", file=sys.stderr)


def crd_plurals(crds_dir):
    return sorted(yaml.safe_load(path.read_text())["spec"]["names"]["plural"] for path in sorted(crds_dir.glob("*.yaml")))


def operator_contract(plurals):
    """The operator's API use in each namespace it manages: (group, resource, verb, resourceNames) tuples."""
    grants = set()
    for plural in plurals:
        grants |= {("callguard.io", plural, verb, ()) for verb in ("get", "list", "watch")}
        grants |= {("callguard.io", f"{plural}/status", verb, ()) for verb in ("get", "patch", "update")}
    for group, resources in (
        ("", ("secrets", "configmaps", "services", "serviceaccounts")),
        ("apps", ("deployments", "statefulsets")),
        ("rbac.authorization.k8s.io", ("roles", "rolebindings")),
        ("networking.k8s.io", ("networkpolicies",)),
        ("policy", ("poddisruptionbudgets",)),
    ):
        grants |= {(group, resource, verb, ()) for resource in resources for verb in OWNED_VERBS}
    grants |= {("events.k8s.io", "events", verb, ()) for verb in ("create", "patch")}
    return grants


# Leases: get, create, update. `create` cannot name its object; get and update are kept to the one Lease.
LEADER_ELECTION_CONTRACT = {
    ("coordination.k8s.io", "leases", "create", ()),
    ("coordination.k8s.io", "leases", "get", (LEASE_NAME,)),
    ("coordination.k8s.io", "leases", "update", (LEASE_NAME,)),
}


def grants_of(role):
    grants = set()
    for rule in role.get("rules", []):
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    grants.add((group, resource, verb, names))
    return grants


def render(helm, chart, settings):
    command = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for setting in settings:
        command += ["--set", setting]
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True)


def by_kind(documents, kind):
    return [document for document in documents if document.get("kind") == kind]


def only(documents, kind, checks):
    found = by_kind(documents, kind)
    checks.equal(len(found), 1, f"one {kind}")
    return found[0] if found else {}


def check_crds(documents, crds_dir, keep, checks):
    rendered = {document["metadata"]["name"]: document for document in by_kind(documents, "CustomResourceDefinition")}
    sources = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        sources[source["metadata"]["name"]] = source
    checks.equal(sorted(rendered), sorted(sources), "the chart renders one CRD per file of crds/")
    for name, source in sources.items():
        document = rendered.get(name)
        if document is None:
            continue
        metadata = dict(document["metadata"])
        annotations = metadata.pop("annotations", {})
        labels = metadata.pop("labels", {})
        checks.equal(metadata, source["metadata"], f"CRD {name}: metadata apart from labels and annotations")
        checks.equal({k: v for k, v in document.items() if k != "metadata"}, {k: v for k, v in source.items() if k != "metadata"},
                     f"CRD {name}: everything but metadata equals crds/")
        checks.equal(annotations.get("helm.sh/resource-policy"), "keep" if keep else None, f"CRD {name}: resource-policy keep is {keep}")
        checks.equal(labels.get("app.kubernetes.io/part-of"), "callguard", f"CRD {name}: labelled part-of callguard")


def check_no_wildcards(documents, checks):
    for role in by_kind(documents, "ClusterRole") + by_kind(documents, "Role"):
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                checks.expect("*" not in rule.get(field, []), f"{role['kind']} {role['metadata']['name']}: no wildcard in {field}")
            checks.expect("nonResourceURLs" not in rule, f"{role['kind']} {role['metadata']['name']}: no nonResourceURLs")


def identity(document):
    """(kind, namespace, name): how the checks below name an object."""
    return (document["kind"], document["metadata"].get("namespace"), document["metadata"]["name"])


def check_bindings(documents, service_account, checks):
    for binding in by_kind(documents, "ClusterRoleBinding") + by_kind(documents, "RoleBinding"):
        kind, namespace, name = identity(binding)
        what = f"{kind} {namespace + '/' if namespace else ''}{name}"
        checks.equal(binding["subjects"], [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}],
                     f"{what}: bound to the operator's ServiceAccount in {NAMESPACE}")
        # A RoleBinding can only grant a Role of its own namespace; a ClusterRoleBinding a ClusterRole.
        role_kind = "ClusterRole" if kind == "ClusterRoleBinding" else "Role"
        roles = {identity(role) for role in by_kind(documents, role_kind)}
        checks.expect(binding["roleRef"].get("apiGroup") == "rbac.authorization.k8s.io" and binding["roleRef"]["kind"] == role_kind
                      and (role_kind, namespace, binding["roleRef"]["name"]) in roles, f"{what}: refers to a rendered {role_kind} of its namespace")


def check_deployment(name, documents, replicas, leader_election, operator_flags, checks):
    deployment = only(documents, "Deployment", checks)
    if not deployment:
        return
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    checks.equal(spec["replicas"], replicas, "Deployment replicas")
    checks.equal(spec["strategy"]["type"], "RollingUpdate" if leader_election else "Recreate",
                 "Deployment strategy: rolling only under a leader")
    checks.expect(all(spec["template"]["metadata"]["labels"].get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
                  "Deployment selector matches its pod labels")
    (container,) = pod["containers"]
    image = container["image"]
    expected_args = ["operator", "--metrics-bind", "0.0.0.0:8080", "--image", image] + (["--leader-election"] if leader_election else [])
    expected_args += operator_flags
    checks.equal(container["args"], expected_args,
                 f"{name}: operator args with leader election {'on' if leader_election else 'off'} and {' '.join(operator_flags) or 'no scope flags'}")
    env = {variable["name"]: variable for variable in container.get("env", [])}
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        checks.equal(env.get(name, {}).get("valueFrom"), {"fieldRef": {"fieldPath": field}}, f"{name} from the downward API")
    checks.expect("RUST_LOG" in env, "RUST_LOG is set")
    checks.equal(container["ports"], [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}], "metrics port")
    checks.equal(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"}, "liveness probe on /healthz")
    checks.equal(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"}, "readiness probe on /readyz")
    security = container["securityContext"]
    checks.expect(security.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    checks.expect(security.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    checks.equal(security.get("capabilities"), {"drop": ["ALL"]}, "all capabilities dropped")
    checks.expect(pod["securityContext"].get("runAsNonRoot") is True and pod["securityContext"].get("runAsUser") == 65532,
                  "runs as the image's non-root user 65532")
    checks.equal(pod["securityContext"].get("seccompProfile"), {"type": "RuntimeDefault"}, "seccomp RuntimeDefault")
    service_account = pod["serviceAccountName"]
    accounts = [account["metadata"]["name"] for account in by_kind(documents, "ServiceAccount")]
    checks.equal(accounts, [service_account], "the Deployment runs as the chart's ServiceAccount")
    return service_account


def check_metrics_service(documents, deployment_labels, checks):
    service = only(documents, "Service", checks)
    if service:
        checks.equal(service["spec"]["ports"], [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}],
                     "metrics Service port")
        checks.expect(all(deployment_labels.get(k) == v for k, v in service["spec"]["selector"].items()),
                      "metrics Service selects the operator pods")


def check_namespaces(documents, operator_rbac, checks):
    """Cluster-scoped kinds have no namespace, the operator's Roles and RoleBindings are in the
    namespaces it manages (checked with the RBAC), and everything else is in the release namespace."""
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for document in documents:
        if identity(document) in operator_rbac:
            continue
        namespace = document["metadata"].get("namespace")
        expected = None if document["kind"] in cluster_scoped else NAMESPACE
        checks.equal(namespace, expected, f"{document['kind']} {document['metadata']['name']}: namespace")


def check_rbac(name, documents, contract, scope, managed, leader_election, checks):
    """Every Role and ClusterRole of the release, and what each grants. Returns the identities of
    the operator's own Roles and RoleBindings (or ClusterRole and ClusterRoleBinding)."""
    operator_name = RELEASE  # the chart's full name for the release "callguard"
    if scope == "cluster":
        operator_roles = {("ClusterRole", None, operator_name)}
        operator_bindings = {("ClusterRoleBinding", None, operator_name)}
    else:
        operator_roles = {("Role", namespace, operator_name) for namespace in managed}
        operator_bindings = {("RoleBinding", namespace, operator_name) for namespace in managed}
    leader_roles = {("Role", NAMESPACE, f"{operator_name}-leader-election")} if leader_election else set()
    leader_bindings = {("RoleBinding", NAMESPACE, f"{operator_name}-leader-election")} if leader_election else set()

    roles = by_kind(documents, "ClusterRole") + by_kind(documents, "Role")
    bindings = by_kind(documents, "ClusterRoleBinding") + by_kind(documents, "RoleBinding")
    role_ids = [identity(role) for role in roles]
    binding_ids = [identity(binding) for binding in bindings]
    checks.equal(len(role_ids), len(set(role_ids)), f"{name}: no Role or ClusterRole rendered twice")
    checks.equal(len(binding_ids), len(set(binding_ids)), f"{name}: no binding rendered twice")
    checks.equal(set(role_ids), operator_roles | leader_roles,
                 f"{name}: the Roles and ClusterRoles are the operator's ({scope} scope) and the leader-election Role when on")
    checks.equal(set(binding_ids), operator_bindings | leader_bindings, f"{name}: one binding per Role or ClusterRole")
    for role in roles:
        kind, namespace, role_name = identity(role)
        where = f"{kind} {namespace + '/' if namespace else ''}{role_name}"
        if (kind, namespace, role_name) in operator_roles:
            checks.equal(grants_of(role), contract, f"{name}: {where} grants exactly the operator's contract")
        elif (kind, namespace, role_name) in leader_roles:
            checks.equal(grants_of(role), LEADER_ELECTION_CONTRACT, f"{name}: {where} grants exactly the Lease contract")
    check_no_wildcards(documents, checks)
    return operator_roles | operator_bindings


def check_network_policy(name, documents, configuration, checks):
    """The operator pods' NetworkPolicy, reduced to (direction, peers, protocol, port, endPort)
    tuples: a rule without ports or with peers would show as an extra tuple."""
    policies = by_kind(documents, "NetworkPolicy")
    if not configuration.network_policy:
        checks.equal(policies, [], f"{name}: no NetworkPolicy with networkPolicy.enabled=false")
        return
    checks.equal(len(policies), 1, f"{name}: one NetworkPolicy")
    if not policies:
        return
    (policy,) = policies[:1]
    spec = policy["spec"]
    deployments = by_kind(documents, "Deployment")
    if deployments:
        checks.equal(spec.get("podSelector"), {"matchLabels": deployments[0]["spec"]["selector"]["matchLabels"]},
                     f"{name}: the NetworkPolicy selects the operator pods (the Deployment's selector)")
    checks.equal(sorted(spec.get("policyTypes", [])), ["Egress", "Ingress"], f"{name}: the NetworkPolicy restricts ingress and egress")

    def reduce(direction, rules, peers_field):
        allowed = set()
        for rule in rules:
            peers = json.dumps(rule.get(peers_field), sort_keys=True) if peers_field in rule else None
            for port in rule.get("ports") or [{"port": "every port"}]:
                allowed.add((direction, peers, port.get("protocol", "TCP"), port.get("port"), port.get("endPort")))
        return allowed

    allowed = reduce("ingress", spec.get("ingress", []), "from") | reduce("egress", spec.get("egress", []), "to")
    expected = {("ingress", None, "TCP", METRICS_PORT, None), ("egress", None, "UDP", 53, None), ("egress", None, "TCP", 53, None)}
    expected |= {("egress", None, "TCP", port, None) for port in configuration.api_server_ports}
    checks.equal(allowed, expected, f"{name}: the NetworkPolicy allows exactly the metrics port in, and DNS and the API server ports "
                                    f"{configuration.api_server_ports} out")


def check_configuration(configuration, args, checks):
    name = configuration.name
    replicas, leader_election = configuration.replicas, configuration.leader_election
    scope, managed = configuration.scope, configuration.managed
    result = render(args.helm, args.chart, configuration.settings)
    if result.returncode != 0:
        checks.expect(False, f"{name}: helm template failed: {result.stderr.strip()}")
        return
    (args.out / f"{name}.yaml").write_text(result.stdout)
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    plurals = crd_plurals(args.crds)

    operator_rbac = check_rbac(name, documents, operator_contract(plurals), scope, managed, leader_election, checks)

    if configuration.crds_installed:
        check_crds(documents, args.crds, configuration.crds_kept, checks)
    else:
        checks.equal(by_kind(documents, "CustomResourceDefinition"), [], f"{name}: no CRDs with crds.install=false")

    operator_flags = [flag for namespace in managed for flag in ("--namespace", namespace)]
    operator_flags += [flag for secret in configuration.image_pull_secrets for flag in ("--image-pull-secret", secret)]
    operator_flags += [flag for port in configuration.api_server_ports for flag in ("--api-server-port", str(port))]
    service_account = check_deployment(name, documents, replicas, leader_election, operator_flags, checks)
    if service_account:
        check_bindings(documents, service_account, checks)
    deployments = by_kind(documents, "Deployment")
    if deployments:
        check_metrics_service(documents, deployments[0]["spec"]["template"]["metadata"]["labels"], checks)
    check_network_policy(name, documents, configuration, checks)
    check_namespaces(documents, operator_rbac, checks)
    print(f"   {name}: {len(documents)} objects checked", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--chart", type=pathlib.Path, required=True)
    parser.add_argument("--crds", type=pathlib.Path, required=True, help="the repository's generated crds/")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="directory for the rendered configurations")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.yaml"):
        stale.unlink()
    checks = Checks()

    # The copy the chart packages is the generated CRDs, byte for byte.
    source_dir = args.chart / "crds-source"
    generated = {path.name: path.read_bytes() for path in args.crds.glob("*.yaml")}
    copied = {path.name: path.read_bytes() for path in source_dir.glob("*.yaml")}
    checks.equal(sorted(copied), sorted(generated), f"{source_dir} holds the files of {args.crds}")
    for file_name in sorted(set(generated) & set(copied)):
        checks.expect(copied[file_name] == generated[file_name],
                      f"{source_dir}/{file_name} differs from {args.crds}/{file_name}: run 'cp {args.crds}/*.yaml {source_dir}/'")

    configurations = [
        # Namespaced scope, the release namespace only.
        Configuration("default", []),
        Configuration("namespaced-two", ["rbac.namespaces={voice-a,voice-b}"], managed=["voice-a", "voice-b"]),
        Configuration("cluster", ["rbac.scope=cluster"], scope="cluster", managed=[]),
        Configuration("two-replicas", ["replicaCount=2"], replicas=2, leader_election=True),
        Configuration("two-replicas-release-and-voice-a", ["replicaCount=2", f"rbac.namespaces={{{NAMESPACE},voice-a}}"],
                      replicas=2, leader_election=True, managed=[NAMESPACE, "voice-a"]),
        Configuration("cluster-two-replicas", ["replicaCount=2", "rbac.scope=cluster"], replicas=2, leader_election=True,
                      scope="cluster", managed=[]),
        Configuration("no-crds", ["crds.install=false"], crds_installed=False),
        Configuration("leader-election-single", ["leaderElection=true"], leader_election=True),
        Configuration("three-replicas-crds-not-kept", ["replicaCount=3", "crds.keep=false"], replicas=3, leader_election=True,
                      crds_kept=False),
        # The ports reach the operator whether or not the chart renders the policy.
        Configuration("network-policy-off", ["networkPolicy.enabled=false"], network_policy=False),
        Configuration("network-policy-off-port-8443", ["networkPolicy.enabled=false", "networkPolicy.apiServerPorts={8443}"],
                      network_policy=False, api_server_ports=[8443]),
        Configuration("cluster-api-server-port-6443", ["rbac.scope=cluster", "networkPolicy.apiServerPorts={6443}"],
                      scope="cluster", managed=[], api_server_ports=[6443]),
        # The data-plane pods pull with the chart's pull Secrets too.
        Configuration("image-pull-secrets", ["imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror"],
                      image_pull_secrets=["regcred", "mirror"]),
    ]
    for configuration in configurations:
        check_configuration(configuration, args, checks)

    # Settings the chart refuses, each with the words its message must contain.
    refusals = [
        (["replicaCount=2", "leaderElection=false"], ["leaderElection=false with replicaCount=2"],
         "two replicas without leader election"),
        (["replicas=2"], ["replicas"], "an unknown value (replicas), by values.schema.json"),
        (["rbac.scope=cluster", "rbac.namespaces={voice-a}"], ["rbac.namespaces=voice-a with rbac.scope=cluster"],
         "a namespace list with cluster scope"),
        (["rbac.namespaces={voice-a,voice-b,voice-a}"], ['rbac.namespaces lists "voice-a" twice'], "a namespace listed twice"),
        ([f"rbac.namespaces={{{NAMESPACE},{NAMESPACE}}}"], [f'rbac.namespaces lists "{NAMESPACE}" twice'],
         "the release namespace listed twice"),
        (["rbac.scope=everywhere"], ["/rbac/scope", "namespaced", "cluster"], "an unknown scope, by the schema's enum"),
        (["rbac.namespaces={Voice_A}"], ["/rbac/namespaces/0"], "a namespace that is not a DNS label, by the schema"),
        (["networkPolicy.apiServerPorts={443,443}"], ["/networkPolicy/apiServerPorts"], "an API server port listed twice, by the schema"),
        (["networkPolicy.apiServerPorts=null"], ["/networkPolicy", "apiServerPorts"], "no API server port, by the schema"),
        (["networkPolicy.apiServerPorts={70000}"], ["/networkPolicy/apiServerPorts/0"], "an API server port out of range, by the schema"),
    ]
    for settings, words, what in refusals:
        refused = render(args.helm, args.chart, settings)
        message = refused.stderr.strip()
        checks.expect(refused.returncode != 0 and all(word in message for word in words),
                      f"{what} is refused by helm template with a message naming {words}: exit {refused.returncode}, {message!r}")

    if checks.failures:
        print(f"chart contract: {checks.passed} passed, {len(checks.failures)} failed", file=sys.stderr)
        sys.exit(1)
    print(f"chart contract: {checks.passed} checks passed")


if __name__ == "__main__":
    main()
