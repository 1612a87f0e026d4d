{{/* Names, labels and the pieces every modelroll pod shares. */}}

{{- define "modelroll.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelroll.fullname" -}}
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

{{/* Name of one component's resources: (dict "root" $ "component" "router"). */}}
{{- define "modelroll.componentName" -}}
{{- printf "%s-%s" (include "modelroll.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "modelroll.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelroll.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelroll
{{- end -}}

{{- define "modelroll.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelroll.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "router"). */}}
{{- define "modelroll.componentLabels" -}}
{{ include "modelroll.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelroll.componentSelectorLabels" -}}
{{ include "modelroll.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelroll.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelroll.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "modelroll.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "modelroll.secretName" -}}
{{- default (include "modelroll.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "modelroll.artifactsClaimName" -}}
{{- default (printf "%s-artifacts" (include "modelroll.fullname" .)) .Values.artifacts.persistence.existingClaim -}}
{{- end -}}

{{/* In-chart PostgreSQL / Redis: the names charts/postgresql and charts/redis give their resources. */}}
{{- define "modelroll.postgresql.host" -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelroll.postgresql.secretName" -}}
{{- default (include "modelroll.postgresql.host" .) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{- define "modelroll.redis.host" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelroll.redis.secretName" -}}
{{- default (include "modelroll.redis.host" .) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* Where the database and Redis URLs come from; fails with the value to set when nowhere. */}}
{{- define "modelroll.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.existingSecret) (not .Values.externalDatabase.url) -}}
{{- fail "modelroll needs a PostgreSQL database: set postgresql.enabled=true (in-chart), externalDatabase.url=postgresql+psycopg://user:pass@host:5432/db, or existingSecret (a Secret with key secretKeys.databaseUrl)" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.existingSecret) (not .Values.externalRedis.url) -}}
{{- fail "modelroll needs Redis in distributed mode: set redis.enabled=true (in-chart), externalRedis.url=redis://:pass@host:6379/0, or existingSecret (a Secret with key secretKeys.redisUrl)" -}}
{{- end -}}
{{- if and .Values.router.autoscaling.enabled (gt (int .Values.router.autoscaling.minReplicas) (int .Values.router.autoscaling.maxReplicas)) -}}
{{- fail (printf "router.autoscaling.minReplicas (%v) must not exceed router.autoscaling.maxReplicas (%v)" .Values.router.autoscaling.minReplicas .Values.router.autoscaling.maxReplicas) -}}
{{- end -}}
{{- $routers := .Values.router.autoscaling.enabled | ternary .Values.router.autoscaling.minReplicas .Values.router.replicas -}}
{{- range $name, $replicas := dict "router" $routers "controller" .Values.controller.replicas -}}
{{- $pdb := (index $.Values $name).pdb -}}
{{- if and $pdb.enabled (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int $replicas)) -}}
{{- fail (printf "%s.pdb.minAvailable (%v) leaves no %s pod to evict with %v replicas: node drains would wait forever; lower it or set %s.pdb.enabled=false" $name $pdb.minAvailable $name $replicas $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Environment of every modelroll container. Passwords of the in-chart databases come
from their own Secrets and are spliced into the URLs with Kubernetes $(VAR) expansion,
so a generated password never has to be known when the chart renders.
*/}}
{{/*
MODELROLL_DATABASE_URL: (dict "root" $ "secret" <Secret holding the external URL>).
The in-chart PostgreSQL's password comes from its own Secret and is spliced into the
URL with Kubernetes $(VAR) expansion, so a generated password never has to be known
when the chart renders.
*/}}
{{- define "modelroll.databaseEnv" -}}
{{- $v := .root.Values -}}
{{- if $v.postgresql.enabled -}}
- name: POSTGRESQL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "modelroll.postgresql.secretName" .root }}
      key: password
- name: MODELROLL_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(POSTGRESQL_PASSWORD)@%s:5432/%s" $v.postgresql.auth.username (include "modelroll.postgresql.host" .root) $v.postgresql.auth.database | quote }}
{{- else -}}
- name: MODELROLL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.databaseUrl }}
{{- end -}}
{{- end -}}

{{/* Environment of every modelroll service container (settings come from the ConfigMap). */}}
{{- define "modelroll.env" -}}
{{- $secret := include "modelroll.secretName" . -}}
{{ include "modelroll.databaseEnv" (dict "root" . "secret" $secret) }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "modelroll.redis.secretName" . }}
      key: password
- name: MODELROLL_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "modelroll.redis.host" .) | quote }}
{{- else }}
- name: MODELROLL_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.redisUrl }}
{{- end }}
- name: MODELROLL_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.adminToken }}
      optional: {{ not (empty .Values.existingSecret) }}
- name: MODELROLL_WEBHOOK_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.webhookUrl }}
      optional: true
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Writable places on a read-only root filesystem, and the shared artifacts. */}}
{{- define "modelroll.volumeMounts" -}}
- name: home
  mountPath: /home/modelroll
- name: tmp
  mountPath: /tmp
- name: artifacts
  mountPath: /var/lib/modelroll/artifacts
{{- end -}}

{{- define "modelroll.volumes" -}}
- name: home
  emptyDir:
    sizeLimit: {{ .Values.scratch.homeSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
- name: artifacts
{{- if .Values.artifacts.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "modelroll.artifactsClaimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* Checksums that roll the pods when their settings change. */}}
{{- define "modelroll.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Scheduling of one component: (dict "root" $ "component" "router" "values" .Values.router). */}}
{{- define "modelroll.scheduling" -}}
{{- $v := .values -}}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if ne $v.antiAffinity "none" }}
affinity:
  podAntiAffinity:
{{- if eq $v.antiAffinity "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "modelroll.componentSelectorLabels" . | nindent 12 }}
{{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "modelroll.componentSelectorLabels" . | nindent 14 }}
{{- end }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Pod-level fields every modelroll pod shares. */}}
{{- define "modelroll.podCommon" -}}
serviceAccountName: {{ include "modelroll.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* One probe: (dict "path" "/healthz" "port" "http" "timing" .Values.router.probes.liveness). */}}
{{- define "modelroll.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{ toYaml .timing }}
{{- end -}}

{{/* The status pages' address for links in notifications: config.publicUrl, else the controller ingress's first
host, else the controller Service inside the cluster. */}}
{{- define "modelroll.publicUrl" -}}
{{- if .Values.config.publicUrl -}}
{{- .Values.config.publicUrl -}}
{{- else if and .Values.controller.ingress.enabled .Values.controller.ingress.hosts -}}
{{- $scheme := ternary "http" "https" (empty .Values.controller.ingress.tls) -}}
{{- printf "%s://%s" $scheme (first .Values.controller.ingress.hosts) -}}
{{- else -}}
{{- printf "http://%s:%v" (include "modelroll.componentName" (dict "root" . "component" "controller")) .Values.controller.service.port -}}
{{- end -}}
{{- end -}}
