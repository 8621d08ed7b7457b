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
(all namespaces) and the per-namespace Roles. Derived from every Kubernetes call in
operator/ebbtide_operator/kube.py and kopf's own (tests/unit/chart/test_rbac.py pins them):
- taskqueues: kopf lists and watches them and patches them (finalizer, progress
  annotations); get: the tick re-reads one after its status write got a 409 (fence.py);
  taskqueues/status: the tick's status patch and kopf's progress;
- deployments: the worker Deployment and an ephemeral broker (get, create, patch, delete
  of our own objects); list/watch feed the worker-Deployment cache; deployments/scale is
  the only thing written on a scale;
- statefulsets/services/configmaps/networkpolicies: the managed broker, by name only;
- secrets: get (the broker URLs, by name) and create (the managed broker's admin and role
  Secrets); patch only our own on a rotation (a role's URL, the broker's users file);
  delete only replaces our own Secret on a broker-type switch. Never list or watch: the
  operator cannot enumerate the cluster's Secrets;
- pods: patch (pod-deletion-cost before a scale-down) and list (the worker pods' waiting
  reasons, by label, while some are not ready: an image that cannot be found). No get,
  no watch;
- events: create (kopf.event, core v1 Events).
PersistentVolumeClaims are the StatefulSet controller's business: no grant.
No wildcards, no update: every verb is listed and used.
*/}}
{{- define "ebbtide.operatorRules" -}}
- apiGroups: ["ebbtide.dev"]
  resources: ["taskqueues"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ebbtide.dev"]
  resources: ["taskqueues/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if gt (int .Values.replicaCount) 1 }}
- apiGroups: ["kopf.dev"]
  resources: [{{ ternary "clusterkopfpeerings" "kopfpeerings" (empty .Values.watchNamespaces) | quote }}]
  verbs: ["get", "list", "watch", "patch", "create"]
{{- end }}
{{- if .Values.rbac.certManager }}
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
{{- end -}}

{{/* Read-only, cluster-scoped discovery kopf uses: CRD changes and namespace lists. */}}
{{- define "ebbtide.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
