//! Command-line options. Each flag can also come from the environment (`TRAFFIC_CONTROL_<FLAG>`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use traffic_translate::translate::{Collector, Options, OutboundPolicy, TlsDelivery};

#[derive(Debug, Parser)]
#[command(
    name = "traffic-control",
    about = "xDS control plane: Kubernetes objects + traffic.* labels -> Envoy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ADS (state-of-the-world and delta) and the metrics/health endpoints.
    Serve(Box<ServeArgs>),
    /// Print the resources one node receives, translated from a model file (offline; nothing is
    /// asked of a running server).
    Config(ConfigArgs),
    /// Validate Istio objects (VirtualService, DestinationRule, ServiceEntry, Gateway) in
    /// manifests offline, as the control plane does: one line per problem,
    /// `<code> <severity> <kind>/<ns>/<name> <field path>: <message>`; exit status 1 on errors.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AnalyzeArgs {
    /// Manifest files (multi-document YAML or JSON) or directories of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the ADS gRPC server.
    #[arg(long, env = "TRAFFIC_CONTROL_XDS_ADDR", default_value = "0.0.0.0:15010")]
    pub xds_addr: SocketAddr,
    /// Address of the HTTP server for /metrics and /healthz.
    #[arg(long, env = "TRAFFIC_CONTROL_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
    /// A static mesh model, re-read when it changes: a model file (YAML, see
    /// control/translate/examples/bookinfo.yaml), or plain Kubernetes manifests (one or more
    /// multi-document YAML files or directories; objects as `kubectl get -o yaml` prints them).
    /// Repeat the flag or list several paths. Without it the model comes from Kubernetes.
    #[arg(long, env = "TRAFFIC_CONTROL_MODEL", num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// With Kubernetes as the source: watch only this namespace (default: all).
    #[arg(long, env = "TRAFFIC_CONTROL_NAMESPACE")]
    pub namespace: Option<String>,
    /// With Kubernetes as the source: this instance's name on the Events it writes.
    #[arg(long, env = "POD_NAME", default_value = "traffic-control")]
    pub pod_name: String,
    /// Quiet period after a model change before translating (milliseconds).
    #[arg(long, env = "TRAFFIC_CONTROL_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// How often the model file is checked for changes (milliseconds).
    #[arg(long, env = "TRAFFIC_CONTROL_MODEL_POLL_MS", default_value_t = 250)]
    pub model_poll_ms: u64,
    #[command(flatten)]
    pub translate: TranslateArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Authentication of xDS clients: on by default (the chart's sidecars, gateway and agent present
/// tokens and verify the CA); `--xds-auth=false --xds-tls=false` for development without a cluster.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Serve an ADS stream only to a client presenting a ServiceAccount token (audience
    /// `traffic-control`, bound to its pod) whose pod is the node it asks for. Needs a Kubernetes
    /// API server (TokenReview). `--xds-auth=false` serves anyone (development only).
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_XDS_AUTH",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub xds_auth: bool,
    /// Service accounts (`namespace/name`, comma-separated) that may be the gateway
    /// (`traffic-ingress`) and receive secrets.
    #[arg(long, env = "TRAFFIC_CONTROL_GATEWAY_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub gateway_service_accounts: Vec<traffic_xds_auth::ServiceAccountRef>,
    /// Require the connection to come from the token's pod's IP (defence in depth).
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_XDS_AUTH_PEER_CHECK",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub xds_auth_peer_check: bool,
    /// Longest time a reviewed token is trusted without asking the API server again (seconds).
    #[arg(long, env = "TRAFFIC_CONTROL_TOKEN_CACHE_SECS", default_value_t = 300)]
    pub token_cache_secs: u64,
    /// Serve ADS over TLS, with a certificate issued at start from the xDS CA (see
    /// `--xds-ca-dir`, `--xds-ca-name`). `--xds-tls=false`: plaintext (development only).
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_XDS_TLS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub xds_tls: bool,
    /// Names (DNS or IP, comma-separated) the xDS certificate is valid for: what clients dial.
    #[arg(long, env = "TRAFFIC_CONTROL_XDS_TLS_NAMES", value_delimiter = ',')]
    pub xds_tls_names: Vec<String>,
    /// A user-provided CA: a directory with `ca.crt` and `ca.key` (a mounted Secret). Without
    /// it the CA is kept in the Secret `--xds-ca-name` of the control plane's namespace (created
    /// on first start) and its certificate published in the ConfigMap of the same name.
    #[arg(long, env = "TRAFFIC_CONTROL_XDS_CA_DIR")]
    pub xds_ca_dir: Option<std::path::PathBuf>,
    /// Name of the Secret and the ConfigMap holding the xDS CA.
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_XDS_CA_NAME",
        default_value = "traffic-control-ca"
    )]
    pub xds_ca_name: String,
    /// The control plane's own namespace (for the CA Secret and ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "traffic-system")]
    pub own_namespace: String,
}

impl ServeArgs {
    pub fn model_poll(&self) -> Duration {
        Duration::from_millis(self.model_poll_ms)
    }

    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The node: `<pod>.<namespace>`, or `traffic-ingress`.
    #[arg(long)]
    pub node_id: String,
    /// The mesh model: a model file, or Kubernetes manifests (files or directories), as for
    /// `serve --model`.
    #[arg(long, env = "TRAFFIC_CONTROL_MODEL", required = true, num_args = 1..)]
    pub model: Vec<PathBuf>,
    /// Only this type (listener, route, cluster, endpoint, secret).
    #[arg(long = "type")]
    pub only: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::node_config::Format,
    #[command(flatten)]
    pub translate: TranslateArgs,
}

/// `block` / `passthrough`, or Istio's `meshConfig.outboundTrafficPolicy.mode` names
/// `REGISTRY_ONLY` / `ALLOW_ANY` for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutboundPolicyArg {
    #[value(alias = "registry_only", alias = "registry-only")]
    Block,
    #[value(alias = "allow_any", alias = "allow-any")]
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    Inline,
    Sds,
}

/// Translation knobs that are not labels (chart values).
#[derive(Debug, Clone, Args)]
pub struct TranslateArgs {
    /// Port of the sidecar's outbound listener (where redirected connections arrive).
    #[arg(long, env = "TRAFFIC_CONTROL_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the per-sidecar listener exposing /stats/prometheus; 0 = none.
    #[arg(long, env = "TRAFFIC_CONTROL_STATS_PORT", default_value_t = 8900)]
    pub stats_port: u16,
    /// Envoy's admin port on 127.0.0.1 (target of the stats listener).
    #[arg(long, env = "TRAFFIC_CONTROL_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,
    /// Zipkin collector `host:port`; tracing labels have no effect without it.
    #[arg(long, env = "TRAFFIC_CONTROL_ZIPKIN")]
    pub zipkin: Option<Collector>,
    /// What an enabled pod's connection to a destination nobody declared (a port with no
    /// protocol, an address that is no Service's, an HTTP host no ServiceEntry names) does:
    /// `block` (= Istio's REGISTRY_ONLY) or `passthrough` (= ALLOW_ANY). A model file's
    /// `outboundTrafficPolicy.mode` wins over it.
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_OUTBOUND_POLICY",
        value_enum,
        ignore_case = true,
        default_value = "block"
    )]
    pub outbound_policy: OutboundPolicyArg,
    #[arg(long, env = "TRAFFIC_CONTROL_INGRESS_HTTP_PORT", default_value_t = 8080)]
    pub ingress_http_port: u16,
    #[arg(long, env = "TRAFFIC_CONTROL_INGRESS_HTTPS_PORT", default_value_t = 8443)]
    pub ingress_https_port: u16,
    /// How the ingress gateway gets certificates.
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_INGRESS_TLS",
        value_enum,
        default_value = "inline"
    )]
    pub ingress_tls: TlsArg,
    /// Pod labels of the ingress gateway (`k=v,k=v`): an Istio Gateway applies to it when its
    /// `selector` is a subset. The chart passes its gateway pods' labels.
    #[arg(
        long,
        env = "TRAFFIC_CONTROL_INGRESS_LABELS",
        default_value = "app=traffic-ingress,istio=ingressgateway",
        value_parser = parse_labels
    )]
    pub ingress_labels: Labels,
}

/// `k=v` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(pub std::collections::BTreeMap<String, String>);

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if k.trim().is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(Labels(out))
}

impl TranslateArgs {
    pub fn options(&self) -> Options {
        Options {
            outbound_policy: match self.outbound_policy {
                OutboundPolicyArg::Block => OutboundPolicy::Block,
                OutboundPolicyArg::Passthrough => OutboundPolicy::Passthrough,
            },
            outbound_port: self.outbound_port,
            stats_port: (self.stats_port != 0).then_some(self.stats_port),
            admin_port: self.admin_port,
            zipkin: self.zipkin.clone(),
            ingress_http_port: self.ingress_http_port,
            ingress_https_port: self.ingress_https_port,
            ingress_tls: match self.ingress_tls {
                TlsArg::Inline => TlsDelivery::Inline,
                TlsArg::Sds => TlsDelivery::Sds,
            },
            ingress_labels: self.ingress_labels.0.clone(),
            ..Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_match_the_documented_ports() {
        let cli = Cli::try_parse_from(["traffic-control", "serve", "--model", "m.yaml"]).expect("parse");
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert_eq!(s.xds_addr.port(), 15010);
        assert_eq!(s.debounce(), Duration::from_millis(100));
        // Authenticated TLS unless explicitly turned off.
        assert!(s.auth.xds_auth && s.auth.xds_tls);
        for (args, auth, tls) in [
            (&["--xds-auth=false", "--xds-tls=false"][..], false, false),
            (&["--xds-auth", "--xds-tls"][..], true, true),
            (&["--xds-tls", "false"][..], true, false),
        ] {
            let mut argv = vec!["traffic-control", "serve", "--model", "m.yaml"];
            argv.extend_from_slice(args);
            let Command::Serve(s) = Cli::try_parse_from(argv).expect("parse").command else {
                panic!("serve")
            };
            assert_eq!((s.auth.xds_auth, s.auth.xds_tls), (auth, tls), "{args:?}");
        }
        let o = s.translate.options();
        assert_eq!(
            (o.outbound_port, o.stats_port, o.admin_port),
            (15001, Some(8900), 15000)
        );
        assert_eq!(
            o.ingress_labels,
            traffic_translate::translate::default_ingress_labels()
        );
    }

    #[test]
    fn ingress_labels_are_key_value_pairs() {
        assert_eq!(
            parse_labels("istio=ingressgateway, app=gw").map(|l| l.0.len()),
            Ok(2)
        );
        assert!(parse_labels("istio").is_err());
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn the_outbound_policy_takes_istio_mode_names_too() {
        for (value, policy) in [
            ("block", OutboundPolicy::Block),
            ("passthrough", OutboundPolicy::Passthrough),
            ("REGISTRY_ONLY", OutboundPolicy::Block),
            ("ALLOW_ANY", OutboundPolicy::Passthrough),
            ("allow-any", OutboundPolicy::Passthrough),
        ] {
            let cli = Cli::try_parse_from([
                "traffic-control",
                "serve",
                "--model",
                "m.yaml",
                "--outbound-policy",
                value,
            ])
            .expect("parse");
            let Command::Serve(s) = cli.command else {
                panic!("serve")
            };
            assert_eq!(s.translate.options().outbound_policy, policy, "{value}");
        }
        let cli = Cli::try_parse_from(["traffic-control", "serve", "--model", "m.yaml"]).expect("parse");
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            s.translate.options().outbound_policy,
            OutboundPolicy::Block,
            "default"
        );
        assert!(Cli::try_parse_from([
            "traffic-control",
            "serve",
            "--model",
            "m.yaml",
            "--outbound-policy",
            "sometimes"
        ])
        .is_err());
    }

    #[test]
    fn a_zero_stats_port_means_no_stats_listener_and_zipkin_is_parsed() {
        let cli = Cli::try_parse_from([
            "traffic-control",
            "config",
            "--node-id",
            "a.default",
            "--model",
            "m.yaml",
            "--stats-port",
            "0",
            "--zipkin",
            "127.0.0.1:9411",
        ])
        .expect("parse");
        let Command::Config(c) = cli.command else {
            panic!("config")
        };
        let o = c.translate.options();
        assert_eq!(o.stats_port, None);
        assert_eq!(o.zipkin.map(|z| z.port), Some(9411));
    }
}
