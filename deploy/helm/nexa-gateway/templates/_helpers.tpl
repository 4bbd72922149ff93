{{- define "nexa.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexa.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nexa.labels" -}}
{{ include "nexa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nexa.configMapName" -}}
{{- default (include "nexa.fullname" .) .Values.existingConfigMap -}}
{{- end -}}

{{- define "nexa.secretName" -}}
{{- default (include "nexa.fullname" .) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* The environment both containers share: the same manifest must validate the same way in each. */}}
{{- define "nexa.env" -}}
- name: NEXA_CACHE_ROOT
  value: /var/cache/nexa
- name: NEXA_HOST
  value: "0.0.0.0"
- name: NEXA_PORT
  value: {{ .Values.port | quote }}
- name: NEXA_RELOAD
  value: "true"
- name: NEXA_SHUTDOWN_GRACE_S
  value: {{ .Values.shutdownGraceSeconds | quote }}
- name: NEXA_LOG_FORMAT
  value: json
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
- name: NEXA_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "nexa.secretName" . }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- if .Values.state.existingSecret }}
- name: NEXA_STATE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.state.existingSecret }}
      key: {{ .Values.state.secretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* "true" when an autoscaler owns the Deployment's replica count (the CPU HPA or KEDA's). */}}
{{- define "nexa.autoscaled" -}}
{{- if or .Values.autoscaling.enabled .Values.autoscaling.keda.enabled }}true{{ end -}}
{{- end -}}

{{- define "nexa.inferencePoolName" -}}
{{- default (include "nexa.fullname" .) .Values.inferencePool.name -}}
{{- end -}}
