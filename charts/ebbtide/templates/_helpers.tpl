{{/* The name of the chart, or nameOverride. */}}
{{- define "ebbtide.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release name when it already holds the chart's name. */}}
{{- define "ebbtide.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ebbtide.controllerName" -}}{{ include "ebbtide.fullname" . }}-controller{{- end }}
{{- define "ebbtide.gatewayName" -}}{{ include "ebbtide.fullname" . }}-gateway{{- end }}

{{/* Labels every object carries (the instance label comes with ebbtide.labels or the selector). */}}
{{- define "ebbtide.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: ebbtide
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of objects that belong to no one component. */}}
{{- define "ebbtide.labels" -}}
{{ include "ebbtide.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component ("controller" or "gateway"): name as in manifests/rbac/. */}}
{{- define "ebbtide.selectorLabels" -}}
app.kubernetes.io/name: ebbtide-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "ebbtide.componentLabels" -}}
{{ include "ebbtide.commonLabels" .root }}
{{ include "ebbtide.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The label selector of the gateway's pods, as the controller's --gateway-selector. */}}
{{- define "ebbtide.gatewaySelector" -}}
app.kubernetes.io/name=ebbtide-gateway,app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

{{- define "ebbtide.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Pod spec parts both Deployments share. */}}
{{- define "ebbtide.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling fields of one component's values. */}}
{{- define "ebbtide.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
