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
- The CRDs in the chart are the repository's crds/: the copy in crds-source/ is byte for byte the
  same, and each rendered CRD equals its source apart from the labels and annotations the chart adds.

Each rendered configuration is written to --out for kubernetes-validate. Exits 1 on any mismatch.
"""

import argparse
import pathlib
import subprocess
import sys

import yaml

RELEASE = "callguard"
NAMESPACE = "callguard-system"
LEASE_NAME = "callguard-operator"
OWNED_VERBS = {"get", "list", "watch", "create", "patch", "delete"}


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
        ("apps", ("deployments",)),
        ("rbac.authorization.k8s.io", ("roles", "rolebindings")),
        ("networking.k8s.io", ("networkpolicies",)),
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


def check_configuration(name, settings, replicas, leader_election, crds_installed, keep, scope, managed, args, checks):
    result = render(args.helm, args.chart, settings)
    if result.returncode != 0:
        checks.expect(False, f"{name}: helm template failed: {result.stderr.strip()}")
        return
    (args.out / f"{name}.yaml").write_text(result.stdout)
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    plurals = crd_plurals(args.crds)

    operator_rbac = check_rbac(name, documents, operator_contract(plurals), scope, managed, leader_election, checks)

    if crds_installed:
        check_crds(documents, args.crds, keep, checks)
    else:
        checks.equal(by_kind(documents, "CustomResourceDefinition"), [], f"{name}: no CRDs with crds.install=false")

    operator_flags = [flag for namespace in managed for flag in ("--namespace", namespace)]
    service_account = check_deployment(name, documents, replicas, leader_election, operator_flags, checks)
    if service_account:
        check_bindings(documents, service_account, checks)
    deployments = by_kind(documents, "Deployment")
    if deployments:
        check_metrics_service(documents, deployments[0]["spec"]["template"]["metadata"]["labels"], checks)
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

    # name, --set values, replicas, leader election, CRDs installed, CRDs kept, RBAC scope, managed namespaces
    configurations = [
        ("default", [], 1, False, True, True, "namespaced", [NAMESPACE]),
        ("namespaced-two", ["rbac.namespaces={voice-a,voice-b}"], 1, False, True, True, "namespaced", ["voice-a", "voice-b"]),
        ("cluster", ["rbac.scope=cluster"], 1, False, True, True, "cluster", []),
        ("two-replicas", ["replicaCount=2"], 2, True, True, True, "namespaced", [NAMESPACE]),
        ("two-replicas-release-and-voice-a", ["replicaCount=2", f"rbac.namespaces={{{NAMESPACE},voice-a}}"], 2, True, True, True,
         "namespaced", [NAMESPACE, "voice-a"]),
        ("cluster-two-replicas", ["replicaCount=2", "rbac.scope=cluster"], 2, True, True, True, "cluster", []),
        ("no-crds", ["crds.install=false"], 1, False, False, True, "namespaced", [NAMESPACE]),
        ("leader-election-single", ["leaderElection=true"], 1, True, True, True, "namespaced", [NAMESPACE]),
        ("three-replicas-crds-not-kept", ["replicaCount=3", "crds.keep=false"], 3, True, True, False, "namespaced", [NAMESPACE]),
    ]
    for configuration in configurations:
        check_configuration(*configuration, args, checks)

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
