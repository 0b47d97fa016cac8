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

{{/* The ten plurals of the callguard.io API group, the kinds the operator reconciles. */}}
{{- define "callguard.plurals" -}}
- applicationusers
- callcontrolclusters
- endusers
- phones
- phonesecurityprofiles
- securitytokens
- siprealms
- siptrunks
- siptrunksecurityprofiles
- srstreferences
{{- end }}
