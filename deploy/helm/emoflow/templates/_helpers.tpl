{{/* Name of the release's objects: <release>-emoflow, or the release name when it already says emoflow. */}}
{{- define "emoflow.fullname" -}}
{{- if contains "emoflow" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-emoflow" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; dict "root" . "component" "ingest". */}}
{{- define "emoflow.labels" -}}
app.kubernetes.io/name: emoflow
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "emoflow.selectorLabels" -}}
app.kubernetes.io/name: emoflow
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "emoflow.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .component (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "emoflow.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-credentials" (include "emoflow.fullname" .)) -}}
{{- end -}}

{{/*
Grace period of a component's pods: the preStop pause, then SIGTERM and up
to -shutdown-timeout for the in-flight work, then up to 5 s for the HTTP
server (internal/service), plus 5 s of margin. A drain timeout must fit in
the shutdown timeout (the binaries drain within it).
*/}}
{{- define "emoflow.gracePeriod" -}}
{{- $c := index .root.Values .component -}}
{{- if hasKey $c "drainTimeoutSeconds" -}}
{{- if ge (int $c.drainTimeoutSeconds) (int $c.shutdownTimeoutSeconds) -}}
{{- fail (printf "%s.drainTimeoutSeconds (%d) must be below %s.shutdownTimeoutSeconds (%d): the binary drains within its shutdown timeout" .component (int $c.drainTimeoutSeconds) .component (int $c.shutdownTimeoutSeconds)) -}}
{{- end -}}
{{- end -}}
{{- add (int $c.preStopSeconds) (int $c.shutdownTimeoutSeconds) 5 5 -}}
{{- end -}}

{{/* KEDA ceiling: autoscaling.maxReplicas, default and at most kafka.topicPartitions. */}}
{{- define "emoflow.maxReplicas" -}}
{{- $c := index .root.Values .component -}}
{{- $partitions := int .root.Values.kafka.topicPartitions -}}
{{- $max := int ($c.autoscaling.maxReplicas | default $partitions) -}}
{{- if gt $max $partitions -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) exceeds kafka.topicPartitions (%d): replicas beyond the partition count sit idle" .component $max $partitions) -}}
{{- end -}}
{{- if lt $max (int $c.autoscaling.minReplicas) -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) is below minReplicas (%d)" .component $max (int $c.autoscaling.minReplicas)) -}}
{{- end -}}
{{- $max -}}
{{- end -}}

{{/* The pod-level settings shared by the three Deployments. */}}
{{- define "emoflow.podCommon" -}}
{{- $c := index .root.Values .component -}}
serviceAccountName: {{ include "emoflow.fullname" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "emoflow.gracePeriod" . }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container-level settings shared by the three Deployments. */}}
{{- define "emoflow.containerCommon" -}}
{{- $c := index .root.Values .component -}}
image: {{ include "emoflow.image" . }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .root.Values.containerSecurityContext | nindent 2 }}
ports:
  - name: http
    containerPort: {{ $c.port }}
    protocol: TCP
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  failureThreshold: 3
lifecycle:
  preStop:
    sleep:
      seconds: {{ $c.preStopSeconds }}
resources:
  {{- toYaml $c.resources | nindent 2 }}
{{- end -}}

{{/* Environment shared by the three binaries. */}}
{{- define "emoflow.envCommon" -}}
{{- $c := index .root.Values .component -}}
- name: EMOFLOW_HTTP_ADDR
  value: {{ printf ":%d" (int $c.port) | quote }}
- name: EMOFLOW_SHUTDOWN_TIMEOUT
  value: {{ printf "%ds" (int $c.shutdownTimeoutSeconds) | quote }}
- name: EMOFLOW_LOG_FORMAT
  value: json
{{- if hasKey $c "drainTimeoutSeconds" }}
- name: EMOFLOW_DRAIN_TIMEOUT
  value: {{ printf "%ds" (int $c.drainTimeoutSeconds) | quote }}
{{- end }}
{{- end -}}

{{/* Service, PodDisruptionBudget and ServiceMonitor of a component. */}}
{{- define "emoflow.serviceObjects" -}}
{{- $c := index .root.Values .component -}}
{{- $name := printf "%s-%s" (include "emoflow.fullname" .root) .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "emoflow.labels" . | nindent 4 }}
spec:
  selector:
    {{- include "emoflow.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.port }}
      targetPort: http
      protocol: TCP
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "emoflow.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $c.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "emoflow.selectorLabels" . | nindent 6 }}
{{- if .root.Values.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $name }}
  labels:
    {{- include "emoflow.labels" . | nindent 4 }}
    {{- with .root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "emoflow.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      interval: {{ .root.Values.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/* KEDA ScaledObject of a Kafka consumer (ingest, sink). */}}
{{- define "emoflow.scaledObject" -}}
{{- $c := index .root.Values .component -}}
{{- $name := printf "%s-%s" (include "emoflow.fullname" .root) .component -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $name }}
  labels:
    {{- include "emoflow.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ $name }}
  minReplicaCount: {{ $c.autoscaling.minReplicas }}
  maxReplicaCount: {{ include "emoflow.maxReplicas" . }}
  pollingInterval: {{ $c.autoscaling.pollingInterval }}
  cooldownPeriod: {{ $c.autoscaling.cooldownPeriod }}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: {{ .root.Values.kafka.brokers | quote }}
        consumerGroup: {{ $c.groupId | quote }}
        topic: {{ .topic | quote }}
        lagThreshold: {{ $c.autoscaling.lagThreshold | quote }}
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
{{- end -}}
