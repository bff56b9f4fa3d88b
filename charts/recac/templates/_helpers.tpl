{{/*
Helm's labels, on every object's metadata (not on selectors or the pod template, so an
upgrade of the chart alone neither changes a selector nor rolls the pods).
*/}}
{{- define "recac.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
The operator's pods: the Deployment's selector and pod labels, the PodDisruptionBudget's and
the Services' selectors.
*/}}
{{- define "recac.selectorLabels" -}}
app.kubernetes.io/name: recac
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's image. */}}
{{- define "recac.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
