{{- define "cuc.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cuc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cuc.labels" -}}
app.kubernetes.io/name: {{ include "cuc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cuc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cuc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cuc.serviceAccountName" -}}
{{- default (include "cuc.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "cuc.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The rules the controller needs on its own resources, in a watched scope; with
    rolloutRestart.enabled also the patch that rolls spec.rolloutRestartTargets (the
    value may be absent after `helm upgrade --reuse-values` from an older release). */}}
{{- define "cuc.workloadRules" -}}
- apiGroups: ["cognito.kubecred.io"]
  resources: ["cognitounauthcredentials"]
  verbs: ["list", "watch"]
- apiGroups: ["cognito.kubecred.io"]
  resources: ["cognitounauthcredentials/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if (.Values.rolloutRestart | default dict).enabled }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["patch"]
{{- end }}
{{- end -}}

{{/* The injection webhook: its own name label, so that no selector of the controller's
    (Deployment, Service, PodDisruptionBudget) takes in the webhook's pods. */}}
{{- define "cuc.webhookName" -}}
{{- printf "%s-webhook" (include "cuc.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cuc.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-webhook" (include "cuc.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "cuc.webhookLabels" -}}
{{ include "cuc.webhookSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
