{{/* Chart name, overridable. */}}
{{- define "tm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name prefix of every object; kept short enough for "-prometheus" suffixes (63 chars). */}}
{{- define "tm.fullname" -}}
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

{{/* Labels on every object; call with (dict "ctx" $ "component" "agent"). */}}
{{- define "tm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "tm.selectorLabels" . }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "agent"). */}}
{{- define "tm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference; call with (dict "image" .Values.agent.image "ctx" $). */}}
{{- define "tm.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "tm.envoyImage" -}}
{{- printf "%s:%s" .Values.envoy.image.repository .Values.envoy.image.tag -}}
{{- end -}}

{{/* The control plane Service's name. */}}
{{- define "tm.controlName" -}}
{{- printf "%s-control" (include "tm.fullname" .) -}}
{{- end -}}

{{/* DNS name of the control plane Service, resolvable from every pod. */}}
{{- define "tm.controlHost" -}}
{{- printf "%s.%s.svc.%s" (include "tm.controlName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* host:port the sidecars and the gateway dial for ADS. */}}
{{- define "tm.controlPlaneAddress" -}}
{{- if .Values.agent.controlPlaneAddress -}}
{{- .Values.agent.controlPlaneAddress -}}
{{- else -}}
{{- printf "%s:%d" (include "tm.controlHost" .) (int .Values.control.xdsPort) -}}
{{- end -}}
{{- end -}}

{{/* The Zipkin collector host:port handed to the control plane, or empty. */}}
{{- define "tm.zipkinAddress" -}}
{{- if .Values.control.zipkinAddress -}}
{{- .Values.control.zipkinAddress -}}
{{- else if .Values.monitor.enabled -}}
{{- printf "%s.%s.svc.%s:%d" .Values.monitor.zipkin.serviceName .Release.Namespace .Values.clusterDomain (int .Values.monitor.zipkin.port) -}}
{{- end -}}
{{- end -}}


{{/* The ingress gateway's Envoy bootstrap: node id traffic-ingress, ADS to the control plane. */}}
{{/* The host part of the control plane address: the name its xDS certificate must carry. */}}
{{- define "tm.controlPlaneHost" -}}
{{- regexReplaceAll ":[0-9]+$" (include "tm.controlPlaneAddress" .) "" | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/* Plaintext or unauthenticated xDS only as an explicit development choice. */}}
{{- define "tm.xdsCheck" -}}
{{- if and (not (and .Values.xds.auth .Values.xds.tls)) (not .Values.xds.insecureDevelopment) -}}
{{- fail "xds.auth=false or xds.tls=false lets any pod read every proxy's configuration and the gateway's private keys: set xds.insecureDevelopment=true to allow it (development only)" -}}
{{- end -}}
{{- end -}}

{{/* Where the gateway's xDS credentials (projected token, its SDS file, the CA) appear. */}}
{{- define "tm.gatewayXdsDir" -}}/var/run/traffic-xds{{- end -}}

{{- define "tm.ingressBootstrap" -}}
{{- $addr := include "tm.controlPlaneAddress" . }}
{{- $host := regexReplaceAll ":[0-9]+$" $addr "" | trimPrefix "[" | trimSuffix "]" }}
{{- $port := regexFind "[0-9]+$" $addr }}
{{- $isIP := or (regexMatch "^[0-9.]+$" $host) (contains ":" $host) }}
node:
  id: traffic-ingress
  cluster: traffic-ingress
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{ .Values.envoy.adminPort }}}
dynamic_resources:
  ads_config:
    api_type: {{ ternary "DELTA_GRPC" "GRPC" (eq .Values.envoy.adsApi "delta") }}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - envoy_grpc: {cluster_name: xds_cluster}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
    - name: xds_cluster
      type: {{ ternary "STATIC" "STRICT_DNS" $isIP }}
      connect_timeout: 5s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
          {{- if .Values.xds.auth }}
          # The projected ServiceAccount token (audience traffic-control) as `authorization:
          # Bearer <token>` on the ADS stream. The SDS file names the token file; the kubelet
          # renews the token by swapping the volume's ..data link, a move Envoy watches for,
          # so it re-reads both and the next ADS stream presents the new token.
          http_filters:
            - name: envoy.filters.http.credential_injector
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
                overwrite: true
                credential:
                  name: envoy.http.injected_credentials.generic
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                    header_value_prefix: "Bearer "
                    credential:
                      name: xds-token
                      sds_config:
                        path_config_source:
                          path: {{ include "tm.gatewayXdsDir" . }}/xds-token-sds.yaml
                          watched_directory: {path: {{ include "tm.gatewayXdsDir" . }}}
            - name: envoy.filters.http.upstream_codec
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
          {{- end }}
      {{- if .Values.xds.tls }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          {{- if not $isIP }}
          sni: {{ $host | quote }}
          {{- end }}
          common_tls_context:
            alpn_protocols: [h2]
            validation_context:
              trusted_ca: {filename: {{ include "tm.gatewayXdsDir" . }}/ca.crt}
              match_typed_subject_alt_names:
                - san_type: {{ ternary "IP_ADDRESS" "DNS" $isIP }}
                  matcher: {exact: {{ $host | quote }}}
      {{- end }}
      load_assignment:
        cluster_name: xds_cluster
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {address: {{ $host | quote }}, port_value: {{ $port }}}
{{- end -}}

{{/* Prometheus configuration (monitor.enabled). */}}
{{- define "tm.prometheusConfig" -}}
global:
  scrape_interval: {{ .Values.monitor.prometheus.scrapeInterval }}
scrape_configs:
  # Every Envoy: a pod whose traffic.envoy.proxy annotation names a sidecar (the agent clears it
  # when the sidecar goes), or this release's ingress gateway. One target per pod.
  - job_name: envoy
    metrics_path: /stats/prometheus
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels:
          - __meta_kubernetes_pod_annotation_traffic_envoy_proxy
          - __meta_kubernetes_pod_label_app_kubernetes_io_instance
          - __meta_kubernetes_pod_label_app_kubernetes_io_component
        regex: '.+;.*;.*|.*;{{ .Release.Name }};ingress-gateway'
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
      - source_labels: [__meta_kubernetes_pod_ip]
        regex: '(.+)'
        target_label: __address__
        replacement: '${1}:{{ .Values.envoy.statsPort }}'
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
  # traffic-manager itself: the agents' and the control plane's /metrics.
  - job_name: traffic-manager
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names: [{{ .Release.Namespace | quote }}]
    relabel_configs:
      - source_labels:
          - __meta_kubernetes_pod_label_app_kubernetes_io_instance
          - __meta_kubernetes_pod_label_app_kubernetes_io_component
          - __meta_kubernetes_pod_container_port_name
        regex: '{{ .Release.Name }};(agent;metrics|control;http)'
        action: keep
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
        target_label: component
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
{{- end -}}

{{/* The gateway pods' labels: the selector labels plus ingress.podLabels (Istio Gateways select on them). */}}
{{- define "tm.ingressPodLabels" -}}
{{ include "tm.selectorLabels" (dict "ctx" . "component" "ingress-gateway") }}
{{- with .Values.ingress.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The same labels as k=v,k=v for the control plane's --ingress-labels. */}}
{{- define "tm.ingressPodLabelList" -}}
{{- $pairs := list -}}
{{- range $k, $v := (include "tm.ingressPodLabels" . | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
