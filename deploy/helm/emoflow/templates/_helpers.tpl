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

{{/* The pod-level settings shared by the Deployments. */}}
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

{{/* The container-level settings shared by the Deployments. */}}
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

{{/* Environment shared by the binaries. */}}
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

{{/* KEDA ScaledObject of a Kafka consumer (ingest, sink, alerter). */}}
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
        {{- with .root.Values.kafka.sasl.mechanism }}
        sasl: {{ ternary "scram_sha512" "plaintext" (eq . "scram-sha-512") }}
        {{- end }}
        {{- if .root.Values.kafka.tls.enabled }}
        tls: enable
        {{- end }}
      {{- if or .root.Values.kafka.sasl.mechanism (and .root.Values.kafka.tls.enabled .root.Values.kafka.tls.caSecret) }}
      authenticationRef:
        name: {{ include "emoflow.kafkaAuthName" .root }}
      {{- end }}
{{- end -}}

{{/* An environment variable from the Secret; dict "root" . "name" "EMOFLOW_X" "key" "secret-key". */}}
{{- define "emoflow.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "emoflow.secretName" .root }}
      key: {{ .key }}
{{- end -}}

{{/*
TLS environment of one connection; dict "root" . "prefix" "KAFKA" "tls"
.Values.kafka.tls "dir" "kafka". The CA certificate is mounted by
emoflow.tlsMount / emoflow.tlsVolume under /etc/emoflow/tls/<dir>.
*/}}
{{- define "emoflow.tlsEnv" -}}
{{- if .tls.enabled }}
- name: {{ printf "EMOFLOW_%s_TLS" .prefix }}
  value: "true"
{{- if .tls.caSecret }}
- name: {{ printf "EMOFLOW_%s_TLS_CA_FILE" .prefix }}
  value: {{ printf "/etc/emoflow/tls/%s/%s" .dir .tls.caKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "emoflow.tlsMount" -}}
{{- if and .tls.enabled .tls.caSecret }}
- name: {{ printf "tls-%s" .dir }}
  mountPath: {{ printf "/etc/emoflow/tls/%s" .dir }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "emoflow.tlsVolume" -}}
{{- if and .tls.enabled .tls.caSecret }}
- name: {{ printf "tls-%s" .dir }}
  secret:
    secretName: {{ .tls.caSecret }}
    items:
      - key: {{ .tls.caKey }}
        path: {{ .tls.caKey }}
{{- end }}
{{- end -}}

{{/* Kafka TLS and SASL environment of the Kafka clients (ingest, sink, alerter). */}}
{{- define "emoflow.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
{{- include "emoflow.tlsEnv" (dict "root" . "prefix" "KAFKA" "tls" $k.tls "dir" "kafka") }}
{{- with $k.sasl.mechanism }}
{{- if not (has . (list "scram-sha-512" "plain")) }}
{{- fail (printf "kafka.sasl.mechanism %q: want scram-sha-512 or plain" .) }}
{{- end }}
{{- if and (eq . "plain") (not $k.tls.enabled) }}
{{- fail "kafka.sasl.mechanism plain sends the password as it is: set kafka.tls.enabled" }}
{{- end }}
- name: EMOFLOW_KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{ include "emoflow.secretEnv" (dict "root" $ "name" "EMOFLOW_KAFKA_SASL_USERNAME" "key" $.Values.secrets.keys.kafkaSaslUsername) }}
{{ include "emoflow.secretEnv" (dict "root" $ "name" "EMOFLOW_KAFKA_SASL_PASSWORD" "key" $.Values.secrets.keys.kafkaSaslPassword) }}
{{- end }}
{{- end -}}

{{/*
Kafka environment of a consumer-group stage (ingest, sink, alerter); dict
"root" . "component" "sink": brokers, its group, the partition count of the
topics it creates, the events topic, TLS and SASL.
*/}}
{{- define "emoflow.consumerEnv" -}}
{{- $c := index .root.Values .component -}}
- name: EMOFLOW_KAFKA_BROKERS
  value: {{ .root.Values.kafka.brokers | quote }}
- name: EMOFLOW_GROUP_ID
  value: {{ $c.groupId | quote }}
- name: EMOFLOW_TOPIC_PARTITIONS
  value: {{ .root.Values.kafka.topicPartitions | quote }}
- name: EMOFLOW_EVENTS_TOPIC
  value: {{ .root.Values.kafka.eventsTopic | quote }}
{{ include "emoflow.kafkaEnv" .root }}
{{- end -}}

{{/* KEDA TriggerAuthentication for the Kafka scaler, when Kafka needs SASL or TLS. */}}
{{- define "emoflow.kafkaAuthName" -}}
{{- printf "%s-kafka" (include "emoflow.fullname" .) -}}
{{- end -}}
