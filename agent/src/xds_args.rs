//! Flags of the sidecars' authentication to the control plane (`run`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use traffic_agent::xds_token::files::{TokenFiles, TOKEN_FILE};
use traffic_agent::xds_token::source::KubeTokenSource;
use traffic_agent::xds_token::{TokenConfig, TokenManager};
use traffic_kube_source::events::EventSink;
use traffic_sidecar::bootstrap::{BootstrapOptions, XdsAuth};
use traffic_sidecar::TOKEN_DIR_IN_CONTAINER;

use traffic_agent::desired::PROXY_UID;

#[derive(Debug, Clone, Args)]
pub struct XdsAuthArgs {
    /// Give every sidecar a ServiceAccount token of its pod (TokenRequest, audience
    /// `traffic-control`), renewed before it expires, to present on its ADS stream. Off only for
    /// a control plane that does not authenticate (development).
    #[arg(long, env = "TRAFFIC_AGENT_XDS_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub xds_auth: bool,
    /// Host directory of the token files (one directory per pod, mounted read-only into its
    /// sidecar). The agent must see it at the same path as the container runtime.
    #[arg(
        long,
        env = "TRAFFIC_AGENT_XDS_TOKEN_DIR",
        default_value = "/run/traffic-manager/xds-tokens"
    )]
    pub xds_token_dir: PathBuf,
    /// Lifetime of the tokens asked for (seconds; the API's minimum is 600). Renewed at 80 %.
    #[arg(long, env = "TRAFFIC_AGENT_XDS_TOKEN_SECONDS", default_value_t = 3600)]
    pub xds_token_seconds: u64,
    /// Renew every token after this many seconds at the latest (tests force renewals with it).
    #[arg(long, env = "TRAFFIC_AGENT_XDS_TOKEN_RENEW_SECONDS")]
    pub xds_token_renew_seconds: Option<u64>,
    /// TLS to the control plane: the CA certificate it must chain to (PEM; the control plane's
    /// ConfigMap `traffic-control-ca`, mounted). Without it the sidecars speak plaintext.
    #[arg(long, env = "TRAFFIC_AGENT_XDS_CA_FILE")]
    pub xds_ca_file: Option<PathBuf>,
    /// The name the control plane's certificate must carry (default: the host of
    /// `--control-plane`).
    #[arg(long, env = "TRAFFIC_AGENT_XDS_SERVER_NAME")]
    pub xds_server_name: Option<String>,
}

impl XdsAuthArgs {
    /// Sets the bootstrap's token options; returns the token manager (and `None` without auth).
    pub fn tokens(
        &self,
        bootstrap: &mut BootstrapOptions,
        client: &kube::Client,
        events: Arc<dyn EventSink>,
        namespace: Option<String>,
    ) -> anyhow::Result<Option<Arc<TokenManager>>> {
        if !self.xds_auth {
            return Ok(None);
        }
        anyhow::ensure!(
            self.xds_token_seconds >= 600,
            "--xds-token-seconds must be at least 600 (the TokenRequest API's minimum)"
        );
        bootstrap.auth = Some(XdsAuth {
            token_sds_path: format!("{TOKEN_DIR_IN_CONTAINER}/{TOKEN_FILE}"),
        });
        let manager = TokenManager::new(
            Arc::new(KubeTokenSource {
                client: client.clone(),
            }),
            TokenFiles {
                root: self.xds_token_dir.clone(),
                owner: Some(PROXY_UID),
            },
            TokenConfig {
                lifetime: Duration::from_secs(self.xds_token_seconds),
                renew_every: self.xds_token_renew_seconds.map(Duration::from_secs),
            },
            events,
            namespace,
        );
        Ok(Some(Arc::new(manager)))
    }

    /// The CA file and server name for TLS, when set.
    pub fn tls(&self, control_plane: &str) -> Option<(PathBuf, String)> {
        let ca = self.xds_ca_file.clone()?;
        let name = self.xds_server_name.clone().unwrap_or_else(|| {
            let host = control_plane
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(control_plane);
            host.trim_start_matches('[').trim_end_matches(']').to_string()
        });
        Some((ca, name))
    }
}
