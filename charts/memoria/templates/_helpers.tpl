{{/* Names and labels shared by every template. */}}

{{- define "memoria.fullname" -}}
{{- printf "%s-memoria" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "memoria.operatorName" -}}
{{- printf "%s-operator" (include "memoria.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "memoria.serviceAccountName" -}}
{{- default (include "memoria.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "memoria.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "memoria.labels" -}}
app.kubernetes.io/name: memoria
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "memoria.selectorLabels" -}}
app.kubernetes.io/name: memoria
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
