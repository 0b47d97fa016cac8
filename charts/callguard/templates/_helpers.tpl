{{/* Chart name, overridable; Kubernetes names are at most 63 characters. */}}
{{- define "callguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: RELEASE-callguard, or RELEASE when it already says callguard. */}}
{{- define "callguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "callguard.labels" -}}
helm.sh/chart: {{ include "callguard.chart" . }}
{{ include "callguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: callguard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels that select the operator pods; never change them (a Deployment's selector is immutable). */}}
{{- define "callguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "callguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "callguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of the operator, and of the data-plane pods it creates. */}}
{{- define "callguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
"true" when the operator runs with --leader-election: leaderElection auto means on with more than
one replica. Two replicas without a leader would both write, so that combination is refused.
*/}}
{{- define "callguard.leaderElection" -}}
{{- $setting := toString .Values.leaderElection }}
{{- $replicas := int .Values.replicaCount }}
{{- if eq $setting "auto" }}
{{- gt $replicas 1 }}
{{- else if eq $setting "true" }}
{{- true }}
{{- else if eq $setting "false" }}
{{- if gt $replicas 1 }}
{{- fail (printf "leaderElection=false with replicaCount=%d: every replica would reconcile and write; set leaderElection to auto or true, or replicaCount to 1" $replicas) }}
{{- end }}
{{- false }}
{{- else }}
{{- fail (printf "leaderElection must be auto, true or false, not %q" $setting) }}
{{- end }}
{{- end }}

{{/* The name of the Lease the operator elects its leader with: fixed in the operator. */}}
{{- define "callguard.leaseName" -}}
callguard-operator
{{- end }}

{{/* The twelve plurals of the callguard.io API group, the kinds the operator reconciles. */}}
{{- define "callguard.plurals" -}}
- applicationusers
- callcontrolclusters
- endusers
- h323gateways
- mgcpgateways
- phones
- phonesecurityprofiles
- securitytokens
- siprealms
- siptrunks
- siptrunksecurityprofiles
- srstreferences
{{- end }}

{{/*
The scope of the operator's RBAC and watches: "namespaced" (a Role per managed namespace) or
"cluster" (a ClusterRole). values.schema.json already limits rbac.scope to these two.
*/}}
{{- define "callguard.rbacScope" -}}
{{- $scope := toString .Values.rbac.scope }}
{{- if not (has $scope (list "namespaced" "cluster")) }}
{{- fail (printf "rbac.scope must be namespaced or cluster, not %q" $scope) }}
{{- end }}
{{- $scope }}
{{- end }}

{{/*
The namespaces the operator manages, as a JSON list: in namespaced scope rbac.namespaces, or the
release namespace when it is empty; in cluster scope none (every namespace, no --namespace flag).
Each gets one Role and one RoleBinding, so a namespace listed twice is refused, and so is a list
with cluster scope, which would silently manage every namespace instead.
*/}}
{{- define "callguard.managedNamespaces" -}}
{{- $scope := include "callguard.rbacScope" . }}
{{- $namespaces := .Values.rbac.namespaces | default list }}
{{- if eq $scope "cluster" }}
{{- if $namespaces }}
{{- fail (printf "rbac.namespaces=%s with rbac.scope=cluster: cluster scope manages every namespace; set rbac.scope=namespaced to manage only these namespaces, or leave rbac.namespaces empty" (join "," $namespaces)) }}
{{- end }}
{{- list | toJson }}
{{- else }}
{{- if not $namespaces }}
{{- $namespaces = list .Release.Namespace }}
{{- end }}
{{- $seen := dict }}
{{- range $namespaces }}
{{- if hasKey $seen (toString .) }}
{{- fail (printf "rbac.namespaces lists %q twice: list each managed namespace once" (toString .)) }}
{{- end }}
{{- $_ := set $seen (toString .) true }}
{{- end }}
{{- $namespaces | toJson }}
{{- end }}
{{- end }}

{{/*
Exactly what the operator calls in a namespace it manages: the rules of its Role in each managed
namespace (namespaced scope) or of its ClusterRole (cluster scope). The test command
(scripts/chart_contract.py) compares them with the operator's contract, so that a rule added here
or there shows.
*/}}
{{- define "callguard.operatorRules" -}}
{{- $ownedVerbs := list "get" "list" "watch" "create" "patch" "delete" -}}
# The Callguard resources: read the spec, write only the status.
- apiGroups: ["callguard.io"]
  resources:
    {{- include "callguard.plurals" . | nindent 4 }}
  verbs: ["get", "list", "watch"]
- apiGroups: ["callguard.io"]
  resources:
    {{- range (include "callguard.plurals" . | fromYamlArray) }}
    - {{ . }}/status
    {{- end }}
  verbs: ["get", "patch", "update"]
# What a CallControlCluster owns: certificates and keys (Secrets), the trust lists (ConfigMap),
# and the data-plane workloads with their Services and ServiceAccounts (signaling is a StatefulSet).
- apiGroups: [""]
  resources: ["configmaps", "secrets", "serviceaccounts", "services"]
  verbs: {{ toJson $ownedVerbs }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: {{ toJson $ownedVerbs }}
# Each data-plane service gets a Role that reads exactly its own Secrets, by name. Kubernetes lets
# the operator grant only what it holds itself, which the Secret rules above cover.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings", "roles"]
  verbs: {{ toJson $ownedVerbs }}
# A PodDisruptionBudget per data-plane service that runs more than one replica.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: {{ toJson $ownedVerbs }}
# One NetworkPolicy per data-plane service, limiting its pods' traffic.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: {{ toJson $ownedVerbs }}
# Events for issuance, rotation, token lock and failures (events.k8s.io/v1).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
