{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "recsys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "recsys.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "recsys.torchserve.fullname" -}}{{ include "recsys.fullname" . }}-torchserve{{- end -}}
{{- define "recsys.gateway.fullname" -}}{{ include "recsys.fullname" . }}-gateway{{- end -}}

{{/* The handler's own request body limit, bytes: core.validation.MAX_BODY_BYTES (the gateway
refuses larger bodies itself). torchserve.maxRequestSize must stay above it; tests/helm/test_body_limit.py
keeps the two numbers equal. */}}
{{- define "recsys.handlerBodyLimit" -}}4194304{{- end -}}

{{- define "recsys.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "recsys.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The gateway's own ServiceAccount when log shipping names an IAM role (IRSA): only the
gateway may write the logs' bucket, only TorchServe's fetch step read the archives. */}}
{{- define "recsys.gateway.ownServiceAccount" -}}
{{- if and .Values.gateway.logs.shipping.enabled .Values.gateway.logs.shipping.roleArn -}}true{{- end -}}
{{- end -}}

{{- define "recsys.gateway.serviceAccountName" -}}
{{- if include "recsys.gateway.ownServiceAccount" . -}}
{{- include "recsys.gateway.fullname" . -}}
{{- else -}}
{{- include "recsys.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/* Labels: selectors are the name, the instance and the component, nothing that changes on an
upgrade (a Deployment's selector is immutable). */}}
{{- define "recsys.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recsys
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "recsys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "recsys.componentLabels" -}}
{{ include "recsys.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: `repository@sha256:...` when a digest is given (immutable: what was
tested is what runs, whatever the tag now points at), else `repository:tag`. */}}
{{- define "recsys.imageRef" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end -}}

{{- define "recsys.image" -}}
{{ include "recsys.imageRef" .Values.image }}
{{- end -}}

{{/* Models ---------------------------------------------------------------------------- */}}
{{- define "recsys.marName" -}}
{{ .name }}-v{{ .version }}.mar
{{- end -}}

{{/* Workers per version: the number given, or the CPU limit in whole cores (at least 1).
TorchServe's own default is the node's CPU count, which ignores the container's limit. */}}
{{- define "recsys.workersPerVersion" -}}
{{- $w := .Values.torchserve.workersPerVersion -}}
{{- if eq (toString $w) "auto" -}}
{{- $limits := .Values.torchserve.resources.limits | default dict -}}
{{- if not (hasKey $limits "cpu") -}}
{{- fail "torchserve.workersPerVersion is auto but torchserve.resources.limits.cpu is not set: set a CPU limit (the workers are sized from it) or a number of workers" -}}
{{- end -}}
{{- $cpu := toString (get $limits "cpu") -}}
{{- $cores := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $cores = div (atoi (trimSuffix "m" $cpu)) 1000 -}}
{{- else -}}
{{- $cores = int (floor (float64 $cpu)) -}}
{{- end -}}
{{- max 1 $cores -}}
{{- else -}}
{{- int $w -}}
{{- end -}}
{{- end -}}

{{/* config.properties: the one TorchServe configuration, rendered from values. The image's
entry point (archives/container.py, command `torchserve`) replaces model_store and
metrics_config with its own paths and, since load_models is set, registers nothing itself;
TorchServe restores model_snapshot: every listed version with these workers, batch size, batch
delay and timeout. (A snapshot's settings win over the archive's model-config.yaml; the
`models=` key would not, and its defaultVersion is ignored at start, pytorch/serve #2744.) */}}
{{- define "recsys.configProperties" -}}
{{- $ts := .Values.torchserve -}}
{{- $workers := include "recsys.workersPerVersion" . | atoi -}}
{{- $name := .Values.modelName -}}
{{- $control := "" -}}
{{- range .Values.experiment.variants -}}
{{- if eq .name $.Values.experiment.control }}{{ $control = toString .model_version }}{{ end -}}
{{- end -}}
{{- $versions := dict -}}
{{- $files := list -}}
{{- range .Values.models -}}
{{- $v := toString .version -}}
{{- $mar := include "recsys.marName" (dict "name" $name "version" $v) -}}
{{- $files = append $files $mar -}}
{{- $_ := set $versions $v (dict "defaultVersion" (eq $v $control) "marName" $mar "minWorkers" $workers "maxWorkers" $workers "batchSize" (int $ts.batchSize) "maxBatchDelay" (int $ts.maxBatchDelayMs) "responseTimeout" (int $ts.responseTimeoutSeconds)) -}}
{{- end -}}
# Rendered by the recsys Helm chart from its values (torchserve.*, models). A change rolls the
# TorchServe pods (checksum/config annotation).
inference_address=http://{{ $ts.bindAddress }}:{{ $ts.ports.inference }}
management_address=http://{{ $ts.bindAddress }}:{{ $ts.ports.management }}
metrics_address=http://{{ $ts.bindAddress }}:{{ $ts.ports.metrics }}
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
# Token auth off inside the cluster: TorchServe makes fresh keys at every start, so replicas
# behind one Service cannot share one; the NetworkPolicy admits only the gateway to inference.
disable_token_authorization=true
enable_model_api={{ $ts.enableModelApi }}
# POST /models?url= may fetch only from these (TorchServe's default: any file or http(s) URL):
# an archive on the chart's model volume (/models; no slash, no %-escape, so no way out of it),
# then torchserve.allowedUrls. A plain archive name in the model store is no URL and needs none.
# Java regexes, comma-separated; backslashes doubled for the properties format.
allowed_urls={{ prepend $ts.allowedUrls "file:///models/[A-Za-z0-9_-][A-Za-z0-9_.-]*[.]mar" | join "," | replace "\\" "\\\\" }}
metrics_mode=prometheus
max_request_size={{ int $ts.maxRequestSize }}
max_response_size={{ int $ts.maxResponseSize }}
default_response_timeout={{ int $ts.responseTimeoutSeconds }}
default_workers_per_model={{ $workers }}
job_queue_size={{ int $ts.jobQueueSize }}
install_py_dep_per_model=false
{{- range $k, $v := $ts.extraProperties }}
{{ $k }}={{ $v }}
{{- end }}
load_models={{ join "," $files }}
model_snapshot={{ dict "name" "startup.cfg" "modelCount" (len .Values.models) "models" (dict $name $versions) | toJson }}
{{ end -}}

{{/* Checks that a schema cannot express. Every problem is collected, then one `fail` names
them all: a values file with three mistakes is fixed in one round, not three. Each message
names the value to fix. */}}
{{- define "recsys.validate" -}}
{{- $errors := list -}}
{{- $name := .Values.modelName -}}
{{- $versions := list -}}
{{- range $i, $m := .Values.models -}}
{{- $v := toString $m.version -}}
{{- if has $v $versions -}}
{{- $errors = append $errors (printf "models[%d]: version %q is listed twice" $i $v) -}}
{{- end -}}
{{- $versions = append $versions $v -}}
{{- if eq $.Values.modelStore.source "s3" -}}
{{- if not (and $m.uri $m.sha256) -}}
{{- $errors = append $errors (printf "models[%d] (version %s): modelStore.source is s3, so uri and sha256 are required" $i $v) -}}
{{- else -}}
{{- $want := include "recsys.marName" (dict "name" $name "version" $v) -}}
{{- if ne (base $m.uri) $want -}}
{{- $errors = append $errors (printf "models[%d]: %s must name the archive %s (<modelName>-v<version>.mar: TorchServe registers archives by file name)" $i $m.uri $want) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.modelStore.source "volume") (not .Values.modelStore.volume) -}}
{{- $errors = append $errors "modelStore.source is volume but modelStore.volume is empty: give a volume source, e.g. {persistentVolumeClaim: {claimName: recsys-archives}}" -}}
{{- end -}}
{{- $exp := .Values.experiment -}}
{{- $names := list -}}
{{- range $i, $var := $exp.variants -}}
{{- if has $var.name $names -}}
{{- $errors = append $errors (printf "experiment.variants[%d]: variant name %q is used twice" $i $var.name) -}}
{{- end -}}
{{- $names = append $names $var.name -}}
{{- if not (has (toString $var.model_version) $versions) -}}
{{- $errors = append $errors (printf "experiment.variants[%d] (%s): model_version %s is not in models (listed: %s); TorchServe would not hold it" $i $var.name (toString $var.model_version) (join ", " $versions)) -}}
{{- end -}}
{{- end -}}
{{- if not (has $exp.control $names) -}}
{{- $errors = append $errors (printf "experiment.control %q is not one of the variants (%s)" $exp.control (join ", " $names)) -}}
{{- end -}}
{{- $auth := .Values.gateway.auth -}}
{{- if and (not $auth.existingSecret) (not $auth.keyHashes) -}}
{{- $errors = append $errors "gateway.auth: set existingSecret (a Secret with keys.json and pseudonym_secret) or keyHashes; see docs/kubernetes.md" -}}
{{- end -}}
{{- if and $auth.existingSecret $auth.keyHashes -}}
{{- $errors = append $errors "gateway.auth: set existingSecret or keyHashes, not both" -}}
{{- end -}}
{{- $ts := .Values.torchserve -}}
{{- $need := add $ts.preStopSleepSeconds $ts.drainTimeoutSeconds $ts.stopTimeoutSeconds 5 -}}
{{- if lt (int $ts.terminationGracePeriodSeconds) (int $need) -}}
{{- $errors = append $errors (printf "torchserve.terminationGracePeriodSeconds %d is shorter than preStopSleepSeconds + drainTimeoutSeconds + stopTimeoutSeconds + 5 = %d: the pod would be killed while draining" (int $ts.terminationGracePeriodSeconds) (int $need)) -}}
{{- end -}}
{{- $gw := .Values.gateway -}}
{{- if lt (int $gw.terminationGracePeriodSeconds) (int (add $gw.preStopSleepSeconds 15)) -}}
{{- $errors = append $errors (printf "gateway.terminationGracePeriodSeconds %d is shorter than preStopSleepSeconds + 15 (the gateway's 10 s drain and its log flush)" (int $gw.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- range $k, $_ := $ts.extraProperties -}}
{{- if has $k (list "inference_address" "management_address" "metrics_address" "grpc_inference_address" "grpc_management_address" "disable_token_authorization" "load_models" "model_snapshot" "models" "model_store" "metrics_config" "allowed_urls" "enable_model_api") -}}
{{- $errors = append $errors (printf "torchserve.extraProperties.%s is set by the chart (ports, addresses, token auth, the model list, the model API and its allowed URLs): use the chart's own values" $k) -}}
{{- end -}}
{{- end -}}
{{- $bodyLimit := include "recsys.handlerBodyLimit" . | int -}}
{{- if le (int $ts.maxRequestSize) $bodyLimit -}}
{{- $errors = append $errors (printf "torchserve.maxRequestSize must be above %d, the handler's own body limit: the largest valid request (up to about 3.9 MB) must reach the handler, and a body over the handler's limit must get its JSON 413" $bodyLimit) -}}
{{- end -}}
{{- $errors = concat $errors (include "recsys.validateLogs" . | fromYamlArray) -}}
{{- if $errors -}}
{{- fail (printf "\n%d problem(s) in the values:\n- %s" (len $errors) (join "\n- " $errors)) -}}
{{- end -}}
{{- end -}}

{{/* Bytes of a Kubernetes quantity (2Gi, 1500Mi, 2G, 1073741824); empty when unparseable. */}}
{{- define "recsys.quantityBytes" -}}
{{- $q := toString . -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $num := regexFind "^[0-9]+([.][0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- if and $num (hasKey $units $suffix) -}}
{{- mulf (float64 $num) (get $units $suffix) | int64 -}}
{{- end -}}
{{- end -}}

{{/* Seconds the gateway has from SIGTERM to exit (GATEWAY_SHUTDOWN_GRACE_S): the grace period
counts from the preStop hook, so what is left after the preStop sleep, less a 3 s margin for the
process to exit before the kubelet's SIGKILL. */}}
{{- define "recsys.gateway.shutdownGraceSeconds" -}}
{{- $gw := .Values.gateway -}}
{{- sub (int $gw.terminationGracePeriodSeconds) (add (int $gw.preStopSleepSeconds) 3) | max 1 -}}
{{- end -}}

{{/* The run folder's volume source. Helm merges a values file into the defaults, so a
`persistentVolumeClaim` given there arrives next to the default `emptyDir`: the one given wins. */}}
{{- define "recsys.gateway.logVolume" -}}
{{- $vol := .Values.gateway.logs.volume | default dict -}}
{{- if gt (len $vol) 1 -}}
{{- $vol = omit $vol "emptyDir" -}}
{{- end -}}
{{- toYaml $vol -}}
{{- end -}}

{{/* Exposure and event logs (the A/B report's only input): shipped to S3, or explicitly
declared ephemeral; the local retention cap fits in the volume. A YAML list of problems. */}}
{{- define "recsys.validateLogs" -}}
{{- $errors := list -}}
{{- $logs := .Values.gateway.logs -}}
{{- $ship := $logs.shipping -}}
{{- if and $ship.enabled (not $ship.s3Uri) -}}
{{- $errors = append $errors "gateway.logs.shipping.enabled is true but gateway.logs.shipping.s3Uri is empty: give s3://bucket/prefix" -}}
{{- end -}}
{{- if and (not $ship.enabled) (not $logs.ephemeral) -}}
{{- $errors = append $errors "gateway.logs.ephemeral is false but gateway.logs.shipping.enabled is false: without shipping the exposure and event logs (the A/B report's input) die with the pod and are cut by the retention cap; enable shipping (gateway.logs.shipping.s3Uri, IRSA) or set gateway.logs.ephemeral: true to accept losing them" -}}
{{- end -}}
{{- $size := dig "emptyDir" "sizeLimit" "" (include "recsys.gateway.logVolume" . | fromYaml) -}}
{{- if $size -}}
{{- $limit := include "recsys.quantityBytes" $size -}}
{{- $reserve := 268435456 -}}
{{- if not $limit -}}
{{- $errors = append $errors (printf "gateway.logs.volume.emptyDir.sizeLimit %q is not a quantity the chart can read (e.g. 2Gi)" (toString $size)) -}}
{{- else if gt (add (int64 $logs.retainBytes) $reserve) (int64 $limit) -}}
{{- $errors = append $errors (printf "gateway.logs.retainBytes %d + 256Mi (the open files of both logs, 64 MiB each, and the run folder) exceeds gateway.logs.volume.emptyDir.sizeLimit %s (%d bytes): the kubelet would evict the pod before the retention cap deletes anything" (int64 $logs.retainBytes) (toString $size) (int64 $limit)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $errors -}}
{{- end -}}

{{/* The pod-spec parts both Deployments share. */}}
{{- define "recsys.podCommon" -}}
serviceAccountName: {{ .serviceAccountName | default (include "recsys.serviceAccountName" .ctx) }}
automountServiceAccountToken: false
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.topologySpread }}
topologySpreadConstraints:
  {{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "recsys.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* An exec probe running archives/probe.py inside the container (loopback: NetworkPolicy does
not apply, no curl needed). */}}
{{- define "recsys.probe" -}}
exec:
  command:
    {{- toYaml (concat (list "python" "-m" "archives.probe") .command) | nindent 4 }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{- define "recsys.clientHost" -}}
{{- if or (eq . "0.0.0.0") (eq . "::") -}}127.0.0.1{{- else -}}{{ . }}{{- end -}}
{{- end -}}
