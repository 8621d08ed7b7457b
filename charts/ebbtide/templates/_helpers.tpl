{{/* Chart name, overridable. */}}
{{- define "ebbtide.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart, unless the release name already has it. */}}
{{- define "ebbtide.fullname" -}}
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

{{- define "ebbtide.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ebbtide.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebbtide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ebbtide.labels" -}}
helm.sh/chart: {{ include "ebbtide.chart" . }}
{{ include "ebbtide.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "ebbtide.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ebbtide.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ebbtide.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The rules the operator needs on the objects it reconciles, shared by the ClusterRole
(all namespaces) and the per-namespace Roles. Derived from what the operator does:
- taskqueues: kopf watches them and patches them (finalizer, progress annotations, status);
- deployments/statefulsets: the worker Deployment and the managed Redis or RabbitMQ; the
  scale subresource is the only thing written on every tick;
- services/secrets/persistentvolumeclaims/networkpolicies: the managed broker and its
  Secret, and reading the external broker's Secret;
- configmaps: the managed RabbitMQ's rabbitmq.conf and enabled_plugins (no list/watch);
- pods: reading worker pods and annotating pod-deletion-cost before a scale-down;
- events: kopf's and the operator's Events (core and events.k8s.io).
No wildcards: every verb is listed.
*/}}
{{- define "ebbtide.operatorRules" -}}
- apiGroups: ["ebbtide.dev"]
  resources: ["taskqueues"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["ebbtide.dev"]
  resources: ["taskqueues/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["services", "secrets", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Read-only, cluster-scoped discovery kopf uses: CRD changes and namespace lists. */}}
{{- define "ebbtide.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end -}}
