{{/*
Helpers shared by every component. Component-specific helpers take a dict
`(dict "ctx" $ "component" "operator")` so the node agent (component "agent") reuses the
same naming and labels.
*/}}

{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "sharedip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name prefix. Component names are appended, so this is cut to 45 characters
to leave room for component suffixes ("-operator", "-agent", "-linode") within 63.
*/}}
{{- define "sharedip.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "sharedip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource of the release. */}}
{{- define "sharedip.labels" -}}
helm.sh/chart: {{ include "sharedip.chart" . }}
app.kubernetes.io/name: {{ include "sharedip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sharedip
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of a component's resources: "<fullname>-<component>". */}}
{{- define "sharedip.componentName" -}}
{{- printf "%s-%s" (include "sharedip.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component (immutable once deployed: never add to these). */}}
{{- define "sharedip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sharedip.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of a component's resources. */}}
{{- define "sharedip.componentLabels" -}}
{{ include "sharedip.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Image reference from a component's `image` values: digest wins over tag; the tag defaults to
the chart's appVersion. Call with (dict "ctx" $ "image" .Values.operator.image).
*/}}
{{- define "sharedip.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ operator */}}

{{- define "sharedip.operator.fullname" -}}
{{- include "sharedip.componentName" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "sharedip.operator.labels" -}}
{{- include "sharedip.componentLabels" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "sharedip.operator.selectorLabels" -}}
{{- include "sharedip.selectorLabels" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "sharedip.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "sharedip.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sharedip.operator.leaseName" -}}
{{- default (include "sharedip.operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* HTTP listen address "host:port"; IPv6 hosts get brackets. */}}
{{- define "sharedip.operator.httpAddr" -}}
{{- $host := .Values.operator.http.bindAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]:%d" $host (int .Values.operator.http.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.operator.http.port) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ node agent */}}

{{- define "sharedip.agent.fullname" -}}
{{- include "sharedip.componentName" (dict "ctx" . "component" "agent") }}
{{- end }}

{{- define "sharedip.agent.labels" -}}
{{- include "sharedip.componentLabels" (dict "ctx" . "component" "agent") }}
{{- end }}

{{- define "sharedip.agent.selectorLabels" -}}
{{- include "sharedip.selectorLabels" (dict "ctx" . "component" "agent") }}
{{- end }}

{{- define "sharedip.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "sharedip.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* HTTP listen address "host:port" of the agent; IPv6 hosts get brackets. */}}
{{- define "sharedip.agent.httpAddr" -}}
{{- $host := .Values.agent.http.bindAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]:%d" $host (int .Values.agent.http.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.agent.http.port) }}
{{- end }}
{{- end }}

{{/*
Host the kubelet probes: empty (the pod IP, i.e. the node's address, since the pod uses the host
network) unless the agent listens on loopback only.
*/}}
{{- define "sharedip.agent.probeHost" -}}
{{- $host := .Values.agent.http.bindAddress }}
{{- if or (hasPrefix "127." $host) (eq $host "::1") }}
{{- $host }}
{{- end }}
{{- end }}

{{/* agent.shutdownTimeout ("250ms", "20s", "2m") in whole seconds, rounded up. */}}
{{- define "sharedip.agent.shutdownSeconds" -}}
{{- $t := .Values.agent.shutdownTimeout }}
{{- if hasSuffix "ms" $t }}
{{- div (add (int (trimSuffix "ms" $t)) 999) 1000 }}
{{- else if hasSuffix "m" $t }}
{{- mul (int (trimSuffix "m" $t)) 60 }}
{{- else }}
{{- int (trimSuffix "s" $t) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ Linode API token */}}

{{/* Name of the Secret that holds the Linode API token. */}}
{{- define "sharedip.linode.secretName" -}}
{{- if .Values.linode.existingSecret }}
{{- .Values.linode.existingSecret }}
{{- else }}
{{- printf "%s-linode" (include "sharedip.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Fails rendering with a message that says what to do when no token source is configured.
Rendered (as an empty string) by every template that needs the token.
*/}}
{{- define "sharedip.linode.validate" -}}
{{- if and (not .Values.linode.existingSecret) (not .Values.linode.token) }}
{{- fail "\n\nA Linode API token is required. Either\n  * create a Secret and pass its name:  kubectl -n <namespace> create secret generic sharedip-linode --from-file=token=<file>\n    then  --set linode.existingSecret=sharedip-linode\n  * or let the chart create it:         --set-file linode.token=<file>\nThe token needs the 'IPs: Read/Write' and 'Linodes: Read/Write' scopes." }}
{{- end }}
{{- if and .Values.linode.existingSecret .Values.linode.token }}
{{- fail "\n\nSet only one of linode.existingSecret and linode.token." }}
{{- end }}
{{- end }}
