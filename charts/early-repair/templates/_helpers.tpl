{{/*
Names and labels shared by every template. The three names the trainer Job refers to
(trainer ServiceAccount, S3 Secret, LocalQueue) come straight from values - never prefixed
with the release name - so they equal the sweep spec's defaults.
*/}}

{{- define "early-repair.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "early-repair.fullname" -}}
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

{{- define "early-repair.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "early-repair.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name }}
{{- end }}

{{/* Selector labels: stable across upgrades, so never the chart version. */}}
{{- define "early-repair.selectorLabels" -}}
app.kubernetes.io/name: {{ include "early-repair.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "early-repair.labels" -}}
helm.sh/chart: {{ include "early-repair.chart" . }}
{{ include "early-repair.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: early-repair
{{- end }}

{{- define "early-repair.minio.fullname" -}}
{{- printf "%s-minio" (include "early-repair.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "early-repair.minio.selectorLabels" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ include "early-repair.minio.fullname" . }}
{{- end }}

{{- define "early-repair.minio.labels" -}}
helm.sh/chart: {{ include "early-repair.chart" . }}
{{ include "early-repair.minio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.minio.image.tag | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: early-repair
{{- end }}

{{/* In-cluster S3 endpoint of the bundled MinIO. */}}
{{- define "early-repair.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:9000" (include "early-repair.minio.fullname" .) (include "early-repair.namespace" .) }}
{{- end }}

{{/* Restricted Pod Security: the container-level half (the pod-level half sets the user). */}}
{{- define "early-repair.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The two credential variables, read from the S3 Secret by reference. */}}
{{- define "early-repair.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.secretName }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.secretName }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
