{{/* Chart name, truncated to a DNS label. */}}
{{- define "forgetless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "forgetless.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "forgetless.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator pods (immutable: never add version labels here). */}}
{{- define "forgetless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "forgetless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object the chart renders (the operator's Deployment, pods and Service add component). */}}
{{- define "forgetless.labels" -}}
helm.sh/chart: {{ include "forgetless.chart" . }}
app.kubernetes.io/name: {{ include "forgetless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: forgetless
{{- end -}}

{{/* The metrics Service: a DNS label, so the suffix must fit in 63 characters. */}}
{{- define "forgetless.metricsServiceName" -}}
{{- printf "%s-metrics" (include "forgetless.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "forgetless.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "forgetless.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false (name an existing ServiceAccount)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart appVersion.
Usage: include "forgetless.image" (dict "image" .Values.image.operator "root" .)
*/}}
{{- define "forgetless.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches; empty list = all namespaces. Fails on contradictory values. */}}
{{- define "forgetless.watchedNamespaces" -}}
{{- $watch := .Values.operator.watch -}}
{{- if $watch.allNamespaces -}}
{{- if $watch.namespaces -}}
{{- fail "operator.watch: set either allNamespaces: true or a list of namespaces, not both (set allNamespaces: false to watch only operator.watch.namespaces)" -}}
{{- end -}}
{{- else -}}
{{- if not $watch.namespaces -}}
{{- fail "operator.watch.namespaces is empty while operator.watch.allNamespaces is false: list the namespaces to watch, or set allNamespaces: true" -}}
{{- end -}}
{{- range $watch.namespaces }}
- {{ . | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The RBAC rules, generated from operator/forgetless_operator/rbac.py into files/rbac-rules.yaml
(charts/forgetless/hack/chart_sync.py). Usage: include "forgetless.rbacRules" (list . "namespaced")
*/}}
{{- define "forgetless.rbacRules" -}}
{{- $root := index . 0 -}}
{{- $rules := $root.Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- $selected := index $rules (index . 1) -}}
{{- if not $selected -}}
{{- fail (printf "files/rbac-rules.yaml has no %q rules; run python charts/forgetless/hack/chart_sync.py" (index . 1)) -}}
{{- end -}}
{{- if (($root.Values.handOff).kserve).enabled -}}
{{- $selected = concat $selected (index $rules "handOff") -}}
{{- end -}}
{{- toYaml $selected -}}
{{- end -}}
