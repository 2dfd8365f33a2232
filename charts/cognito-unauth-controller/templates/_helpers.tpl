{{- define "cuc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cuc.fullname" -}}
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

{{/* The labels of every object: commonLabels, then the chart's own (which win). */}}
{{- define "cuc.labels" -}}
{{- $own := dict
    "app.kubernetes.io/name" (include "cuc.name" .)
    "app.kubernetes.io/instance" .Release.Name
    "app.kubernetes.io/version" .Chart.AppVersion
    "app.kubernetes.io/managed-by" .Release.Service
    "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_") -}}
{{- toYaml (merge $own (.Values.commonLabels | default dict | deepCopy)) -}}
{{- end -}}

{{- define "cuc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cuc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* An object's metadata: name, namespace (when given), the labels of every object
    plus its own, commonAnnotations plus its own (its own win). Called with a dict:
    root (the chart's context), name, and optionally namespace, labels, annotations. */}}
{{- define "cuc.metadata" -}}
name: {{ .name }}
{{- with .namespace }}
namespace: {{ . }}
{{- end }}
labels:
  {{- toYaml (merge (.labels | default dict | deepCopy) (include "cuc.labels" .root | fromYaml)) | nindent 2 }}
{{- with merge (.annotations | default dict | deepCopy) (.root.Values.commonAnnotations | default dict | deepCopy) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "cuc.serviceAccountName" -}}
{{- default (include "cuc.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* repository@digest when image.digest is set, else repository:tag (appVersion by default). */}}
{{- define "cuc.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The chart's default image.repository: no image is published under that name, so
    NOTES.txt warns while it is still in use. */}}
{{- define "cuc.placeholderImage" -}}cognito-unauth-controller{{- end -}}

{{- define "cuc.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Whether the chart renders RBAC at all (rbac.create; absent after `helm upgrade
    --reuse-values` from a release older than the value: true). */}}
{{- define "cuc.rbac" -}}
{{- if (.Values.rbac | default dict | dig "create" true) -}}true{{- end -}}
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

{{/* A webhook object's metadata: "cuc.metadata" with the webhook's name and component
    labels. Called with a dict: root, name, and optionally namespace, annotations. */}}
{{- define "cuc.webhookMetadata" -}}
{{- include "cuc.metadata" (dict "root" .root "name" .name "namespace" .namespace "labels" (include "cuc.webhookSelectorLabels" .root | fromYaml) "annotations" .annotations) -}}
{{- end -}}

{{/* A number as our binary and the API server read it. Helm reads every number in
    values.yaml as a float, and a float of a million or more renders in exponent form
    ("3.1536e+07"), which an integer flag refuses (issue 24). "cuc.int": a whole number,
    always in digits (the schema refuses fractions for these keys); "cuc.number": a whole
    number in digits, anything else as it is (a rate such as 0.5). */}}
{{- define "cuc.int" -}}
{{- printf "%d" (int64 .) -}}
{{- end -}}

{{- define "cuc.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- printf "%v" . -}}
{{- end -}}
{{- end -}}

{{/* What both webhooks of the configuration share. */}}
{{- define "cuc.webhookCommon" -}}
{{- $fullname := include "cuc.webhookName" . -}}
admissionReviewVersions: ["v1"]
sideEffects: None
failurePolicy: {{ .Values.webhook.failurePolicy }}
# Another webhook that adds a container after this one gets the mount too.
reinvocationPolicy: IfNeeded
timeoutSeconds: {{ include "cuc.int" .Values.webhook.timeoutSeconds }}
clientConfig:
  service:
    name: {{ $fullname }}
    namespace: {{ .Release.Namespace }}
    path: /mutate
    port: 443
rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
{{- with .Values.webhook.objectSelector }}
objectSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The namespaces the webhooks are called for (a namespaceSelector's matchExpressions):
webhook.namespaceSelector's own, then: with watchNamespaces only those (a team's release
acts on its own namespaces only), never the release's own, kube-system or
webhook.excludeNamespaces. */}}
{{- define "cuc.webhookNamespaces" -}}
{{- with (.Values.webhook.namespaceSelector | default dict).matchExpressions }}{{ toYaml . }}
{{ end -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
    {{- toYaml (concat (list .Release.Namespace "kube-system") (.Values.excludeNamespaces | default list) .Values.webhook.excludeNamespaces | uniq) | nindent 4 }}
{{- with .Values.watchNamespaces }}
- key: kubernetes.io/metadata.name
  operator: In
  values:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* CEL, from (list A B FIELD): A.FIELD is the same as B.FIELD (both absent, or equal). */}}
{{- define "cuc.sameField" -}}
{{- $a := printf "%s.%s" (index . 0) (index . 2) -}}
{{- $b := printf "%s.%s" (index . 1) (index . 2) -}}
(has({{ $a }}) == has({{ $b }}) && (!has({{ $a }}) || {{ $a }} == {{ $b }}))
{{- end -}}
