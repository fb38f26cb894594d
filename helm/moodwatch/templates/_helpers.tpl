{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "moodwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: "<release>-<chart>" truncated to 63 characters (DNS label limit). */}}
{{- define "moodwatch.fullname" -}}
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

{{/* Name of a component's resources: "<fullname>-<component>", leaving room for the suffix. */}}
{{- define "moodwatch.componentName" -}}
{{- printf "%s-%s" (include "moodwatch.fullname" .ctx | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{- define "moodwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moodwatch.labels" -}}
helm.sh/chart: {{ include "moodwatch.chart" . }}
{{ include "moodwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moodwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "moodwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moodwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component. Args: dict "ctx" $ "component" "analyzer" */}}
{{- define "moodwatch.componentLabels" -}}
{{ include "moodwatch.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moodwatch.componentSelectorLabels" -}}
{{ include "moodwatch.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moodwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moodwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- images */}}

{{/* "repo@digest" (digest wins) or "repo:tag". Args: dict "image" <image values> "appVersion" <default tag> */}}
{{- define "moodwatch.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (toString (.image.tag | default .appVersion)) }}
{{- end }}
{{- end }}

{{- define "moodwatch.workerImage" -}}
{{- include "moodwatch.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* Image the Triton init container copies the model repository from (default: the worker image). */}}
{{- define "moodwatch.modelRepositoryImage" -}}
{{- $img := .Values.triton.modelRepository.image }}
{{- if $img.repository }}
{{- include "moodwatch.imageRef" (dict "image" $img "appVersion" .Chart.AppVersion) }}
{{- else }}
{{- include "moodwatch.workerImage" . }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- settings and env */}}

{{/* Render a value as an env string; integral floats (YAML ints arrive as float64) without exponent. */}}
{{- define "moodwatch.envString" -}}
{{- if kindIs "float64" . }}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* A setting from .Values.settings with the worker's own default. Args: dict "ctx" $ "key" "MOODWATCH_X" "default" "y" */}}
{{- define "moodwatch.setting" -}}
{{- $v := index .ctx.Values.settings .key }}
{{- if kindIs "invalid" $v }}{{ .default }}{{ else }}{{ include "moodwatch.envString" $v }}{{ end }}
{{- end }}

{{- define "moodwatch.tritonUrl" -}}
{{- printf "%s:%d" (include "moodwatch.componentName" (dict "ctx" . "component" "triton")) (int .Values.triton.ports.grpc) }}
{{- end }}

{{/* Keys the chart sets itself; `settings` may not carry them. */}}
{{- define "moodwatch.managedKeys" -}}
MOODWATCH_METRICS_HOST MOODWATCH_METRICS_PORT MOODWATCH_KAFKA_SSL_CAFILE MOODWATCH_ES_CA_CERTS MOODWATCH_DASHBOARD_HOST MOODWATCH_DASHBOARD_PORT MOODWATCH_DASHBOARD_ALLOWED_HOSTS MOODWATCH_DASHBOARD_AUTH_PROXY_USER_HEADER MOODWATCH_DASHBOARD_AUTH_PROXY_GROUPS_HEADER MOODWATCH_DASHBOARD_AUTH_PROXY_IPS MOODWATCH_DASHBOARD_REVIEWER_GROUPS MOODWATCH_DASHBOARD_ADMIN_GROUPS
{{- end }}

{{/* Fails rendering on settings that hold a secret or a chart-managed key. */}}
{{- define "moodwatch.validateSettings" -}}
{{- $managed := splitList " " (include "moodwatch.managedKeys" .) }}
{{- range $k, $v := .Values.settings }}
{{- if regexMatch "(PASSWORD|API_KEY|SECRET|SECRET_KEY|TOKEN|_USERS)$" $k }}
{{- fail (printf "settings.%s looks like a secret: reference an existing Secret under `secrets.%s` instead of inlining it" $k $k) }}
{{- end }}
{{- if has $k $managed }}
{{- fail (printf "settings.%s is set by the chart; remove it (see the comment on `settings` in values.yaml)" $k) }}
{{- end }}
{{- end }}
{{- range $component := list "analyzer" "aggregator" "dashboard" }}
{{- range $k, $v := (index $.Values $component).env | default dict }}
{{- if regexMatch "(PASSWORD|API_KEY|SECRET|SECRET_KEY|TOKEN|_USERS)$" $k }}
{{- fail (printf "%s.env.%s looks like a secret: reference an existing Secret under `secrets.%s` instead of inlining it" $component $k $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.secrets }}
{{- if hasKey $.Values.settings $k }}
{{- fail (printf "%s is both in settings and in secrets; keep it in secrets only" $k) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ConfigMap data: settings (null dropped) plus the chart-managed keys. YAML map of strings. */}}
{{- define "moodwatch.settingsData" -}}
{{- include "moodwatch.validateSettings" . }}
{{- $data := dict }}
{{- range $k, $v := .Values.settings }}
{{- if not (kindIs "invalid" $v) }}
{{- $_ := set $data $k (include "moodwatch.envString" $v) }}
{{- end }}
{{- end }}
{{- $_ := set $data "MOODWATCH_METRICS_HOST" "0.0.0.0" }}
{{- $_ := set $data "MOODWATCH_METRICS_PORT" (toString (int .Values.workers.metricsPort)) }}
{{- if and .Values.triton.enabled (not (hasKey $data "MOODWATCH_TRITON_URL")) }}
{{- $_ := set $data "MOODWATCH_TRITON_URL" (include "moodwatch.tritonUrl" .) }}
{{- end }}
{{- if .Values.tls.kafkaCA.secretName }}
{{- $_ := set $data "MOODWATCH_KAFKA_SSL_CAFILE" "/etc/moodwatch/tls/kafka/ca.crt" }}
{{- end }}
{{- if .Values.tls.elasticsearchCA.secretName }}
{{- $_ := set $data "MOODWATCH_ES_CA_CERTS" "/etc/moodwatch/tls/elasticsearch/ca.crt" }}
{{- end }}
{{- range $k := keys $data | sortAlpha }}
{{ $k }}: {{ index $data $k | quote }}
{{- end }}
{{- end }}

{{/* env entries from existing Secrets (secretKeyRef only; values never rendered) for one component.
Args: dict "ctx" $ "component" "analyzer". An entry without `components` goes to every worker. */}}
{{- define "moodwatch.secretEnv" -}}
{{- $component := .component }}
{{- range $name := keys .ctx.Values.secrets | sortAlpha }}
{{- $ref := index $.ctx.Values.secrets $name }}
{{- if and $ref $ref.secretName (or (not $ref.components) (has $component $ref.components)) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName | quote }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The dashboard's Host allow-list and auth-proxy env. Args: dict "ctx" $ "values" .Values.dashboard */}}
{{- define "moodwatch.dashboardEnv" -}}
{{- $v := .values }}
{{- $name := include "moodwatch.componentName" (dict "ctx" .ctx "component" "dashboard") }}
{{- $hosts := $v.allowedHosts | default list }}
{{- if not $hosts }}
{{- if $v.ingress.enabled }}{{ $hosts = concat $hosts $v.ingress.hosts }}{{ end }}
{{- $hosts = concat $hosts (list $name (printf "%s.%s.svc" $name .ctx.Release.Namespace) "localhost" "127.0.0.1") }}
{{- end }}
- name: MOODWATCH_DASHBOARD_ALLOWED_HOSTS
  value: {{ join "," $hosts | quote }}
{{- with $v.authProxy }}
{{- if .enabled }}
- name: MOODWATCH_DASHBOARD_AUTH_PROXY_USER_HEADER
  value: {{ .userHeader | quote }}
{{- with .groupsHeader }}
- name: MOODWATCH_DASHBOARD_AUTH_PROXY_GROUPS_HEADER
  value: {{ . | quote }}
{{- end }}
- name: MOODWATCH_DASHBOARD_AUTH_PROXY_IPS
  value: {{ join "," .trustedCIDRs | quote }}
- name: MOODWATCH_DASHBOARD_REVIEWER_GROUPS
  value: {{ join "," (.reviewerGroups | default list) | quote }}
- name: MOODWATCH_DASHBOARD_ADMIN_GROUPS
  value: {{ join "," (.adminGroups | default list) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- probes */}}

{{/* Args: dict "probe" <probe values> "port" <port name> */}}
{{- define "moodwatch.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | default 0 }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* topologySpreadConstraints with the component's selector filled in where omitted. */}}
{{- define "moodwatch.topologySpread" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "moodwatch.componentSelectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml)) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* ---------------------------------------------------------------- worker Deployment */}}

{{/*
One worker Deployment (analyzer, aggregator, dashboard).
Args: dict "ctx" $ "component" "analyzer" "values" .Values.analyzer "keda" <bool: KEDA owns replicas>
*/}}
{{- define "moodwatch.workerDeployment" -}}
{{- $ctx := .ctx }}
{{- $v := .values }}
{{- $w := $ctx.Values.workers }}
{{- $probes := mergeOverwrite (deepCopy $w.probes) (deepCopy ($v.probes | default dict)) }}
{{- $podAnnotations := merge (deepCopy ($v.podAnnotations | default dict)) (deepCopy ($w.podAnnotations | default dict)) }}
{{- $podLabels := merge (deepCopy ($v.podLabels | default dict)) (deepCopy ($w.podLabels | default dict)) }}
{{- $nodeSelector := $v.nodeSelector | default $w.nodeSelector }}
{{- $tolerations := $v.tolerations | default $w.tolerations }}
{{- $affinity := $v.affinity | default $w.affinity }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "moodwatch.componentName" . }}
  labels:
    {{- include "moodwatch.componentLabels" . | nindent 4 }}
spec:
  {{- if not .keda }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "moodwatch.componentSelectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "moodwatch.componentSelectorLabels" . | nindent 8 }}
        {{- with $podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/settings: {{ include "moodwatch.settingsData" $ctx | sha256sum }}
        {{- with $podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "moodwatch.serviceAccountName" $ctx }}
      automountServiceAccountToken: false
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $w.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "moodwatch.workerImage" $ctx | quote }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          command:
            {{- toYaml $v.command | nindent 12 }}
          {{- with $v.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $w.metricsPort }}
              protocol: TCP
            {{- if eq .component "dashboard" }}
            - name: http
              containerPort: {{ $v.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "moodwatch.componentName" (dict "ctx" $ctx "component" "settings") }}
          {{- $secretEnv := include "moodwatch.secretEnv" . | trim }}
          {{- if or $secretEnv $v.env $w.extraEnv (eq .component "dashboard") }}
          env:
            {{- if eq .component "dashboard" }}
            - name: MOODWATCH_DASHBOARD_HOST
              value: "0.0.0.0"
            - name: MOODWATCH_DASHBOARD_PORT
              value: {{ $v.port | toString | quote }}
            {{- include "moodwatch.dashboardEnv" . | nindent 12 }}
            {{- end }}
            {{- range $k := keys ($v.env | default dict) | sortAlpha }}
            - name: {{ $k }}
              value: {{ include "moodwatch.envString" (index $v.env $k) | quote }}
            {{- end }}
            {{- with $secretEnv }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $w.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          startupProbe:
            {{- include "moodwatch.httpProbe" (dict "probe" $probes.startup "port" "metrics") | nindent 12 }}
          livenessProbe:
            {{- include "moodwatch.httpProbe" (dict "probe" $probes.liveness "port" "metrics") | nindent 12 }}
          readinessProbe:
            {{- include "moodwatch.httpProbe" (dict "probe" $probes.readiness "port" "metrics") | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $w.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $ctx.Values.tls.kafkaCA.secretName }}
            - name: kafka-ca
              mountPath: /etc/moodwatch/tls/kafka
              readOnly: true
            {{- end }}
            {{- if $ctx.Values.tls.elasticsearchCA.secretName }}
            - name: elasticsearch-ca
              mountPath: /etc/moodwatch/tls/elasticsearch
              readOnly: true
            {{- end }}
            {{- with $w.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $w.tmpSizeLimit }}
        {{- with $ctx.Values.tls.kafkaCA }}
        {{- if .secretName }}
        - name: kafka-ca
          secret:
            secretName: {{ .secretName }}
            items:
              - key: {{ .key }}
                path: ca.crt
        {{- end }}
        {{- end }}
        {{- with $ctx.Values.tls.elasticsearchCA }}
        {{- if .secretName }}
        - name: elasticsearch-ca
          secret:
            secretName: {{ .secretName }}
            items:
              - key: {{ .key }}
                path: ca.crt
        {{- end }}
        {{- end }}
        {{- with $w.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- include "moodwatch.topologySpread" (dict "ctx" $ctx "component" $.component "constraints" .) | nindent 8 }}
      {{- end }}
{{- end }}

{{/* PodDisruptionBudget. Args: dict "ctx" $ "component" "analyzer" "pdb" <pdb values> */}}
{{- define "moodwatch.pdb" -}}
{{- if .pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "moodwatch.componentName" . }}
  labels:
    {{- include "moodwatch.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "moodwatch.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* Service of a worker: the metrics port, plus http for the dashboard. */}}
{{- define "moodwatch.workerService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "moodwatch.componentName" . }}
  labels:
    {{- include "moodwatch.componentLabels" . | nindent 4 }}
    moodwatch.io/job: moodwatch-{{ .component }}
    moodwatch.io/scrape: worker
  {{- with .values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .values.service.type | default "ClusterIP" }}
  selector:
    {{- include "moodwatch.componentSelectorLabels" . | nindent 4 }}
  ports:
    {{- if eq .component "dashboard" }}
    - name: http
      port: {{ .values.service.port }}
      targetPort: http
      protocol: TCP
    {{- end }}
    - name: metrics
      port: {{ .ctx.Values.workers.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end }}
