//! The ingress gateway's HTTPS filter chains: one per Ingress TLS entry, matched by SNI, with the
//! certificate of its Secret (checked first) inline or over SDS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket, DataSource, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
};

use super::context::{ingress_ref, Ctx};
use super::listeners::{http_connection_manager, network_filter};
use super::routes::Side;
use super::{Options, Problem, TlsDelivery, INGRESS_HTTPS_LISTENER, INGRESS_ROUTE};
use crate::envoy::{self, names, resource};
use crate::model::{Ingress, IngressTls, TlsSecret};
use crate::snapshot::{ObjectRef, Resources};
use crate::tls::{CheckedSecret, TlsError};

/// Checks TLS Secrets against the time of the translation, each once however many Ingresses and
/// Gateway servers use it.
pub(super) struct SecretChecker<'m> {
    now: std::time::SystemTime,
    verdicts: BTreeMap<(&'m str, &'m str), Result<CheckedSecret, TlsError>>,
}

impl<'m> SecretChecker<'m> {
    pub(super) fn new(opts: &Options) -> Self {
        SecretChecker {
            now: opts.now.unwrap_or_else(std::time::SystemTime::now),
            verdicts: BTreeMap::new(),
        }
    }

    /// Secret `name` in `origin`'s namespace if it exists and is usable (a warning when it
    /// expires soon); otherwise `None` with the problem reported on `origin`.
    pub(super) fn usable(
        &mut self,
        ctx: &Ctx<'m>,
        origin: &ObjectRef,
        name: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<&'m TlsSecret> {
        let Some(secret) = ctx.model.secret(&origin.namespace, name) else {
            problems.push(Problem::MissingSecret {
                ingress: origin.clone(),
                secret: name.to_string(),
            });
            return None;
        };
        let now = self.now;
        let verdict = self
            .verdicts
            .entry((&secret.namespace, &secret.name))
            .or_insert_with(|| crate::tls::check(&secret.cert_pem, &secret.key_pem, now));
        match verdict {
            Err(error) => {
                problems.push(Problem::InvalidTlsSecret {
                    ingress: origin.clone(),
                    secret: name.to_string(),
                    error: error.clone(),
                });
                return None;
            }
            Ok(checked) if checked.expires_soon => problems.push(Problem::TlsSecretExpiringSoon {
                ingress: origin.clone(),
                secret: name.to_string(),
                not_after: checked.not_after.clone(),
            }),
            Ok(_) => {}
        }
        Some(secret)
    }
}

/// HTTPS filter chains of `ingresses` (sorted by namespace/name); under [`TlsDelivery::Sds`] the
/// `Secret` resources they name are added to `secrets`. The first to claim a host (SNI name;
/// `""` for any) keeps it (Envoy rejects duplicate matches); the others get a [`Problem`].
pub(super) fn https_filter_chains<'m>(
    ctx: &Ctx<'m>,
    ingresses: &[&'m Ingress],
    checker: &mut SecretChecker<'m>,
    claimed: &mut BTreeSet<String>,
    secrets: &mut Resources,
    problems: &mut Vec<Problem>,
) -> Vec<FilterChain> {
    let opts = ctx.opts;
    let mut chains = Vec::new();
    for ing in ingresses {
        for tls in &ing.tls {
            let Some(secret) = checker.usable(ctx, &ingress_ref(ing), &tls.secret_name, problems) else {
                continue;
            };
            let Some(server_names) = claim_server_names(ing, tls, claimed, problems) else {
                continue;
            };
            let common = common_tls_context(secret, opts, secrets);
            chains.push(tls_filter_chain(
                format!("{}/{}/{}", ing.namespace, ing.name, tls.secret_name),
                server_names,
                common,
                (INGRESS_HTTPS_LISTENER, INGRESS_ROUTE),
                opts,
            ));
        }
    }
    chains
}

/// The TLS context serving `secret`'s certificate, inline or over SDS (then the `Secret`
/// resource is added to `secrets`).
pub(super) fn common_tls_context(
    secret: &TlsSecret,
    opts: &Options,
    secrets: &mut Resources,
) -> CommonTlsContext {
    let certificate = tls_certificate(secret);
    let mut common = CommonTlsContext {
        // HTTP/1.1 only: service clusters forward in the client's protocol (transparent
        // for sidecars), and an edge client's h2 would otherwise reach HTTP/1.1 backends.
        alpn_protocols: vec!["http/1.1".into()],
        ..Default::default()
    };
    match opts.ingress_tls {
        TlsDelivery::Inline => common.tls_certificates.push(certificate),
        TlsDelivery::Sds => {
            let secret_name = format!("{}/{}", secret.namespace, secret.name);
            let s = Secret {
                name: secret_name.clone(),
                r#type: Some(secret::Type::TlsCertificate(certificate)),
            };
            secrets.insert(
                secret_name.clone(),
                Arc::new(resource(
                    &secret_name,
                    &s,
                    Some(ObjectRef::new("Secret", &secret.namespace, &secret.name)),
                )),
            );
            common.tls_certificate_sds_secret_configs.push(SdsSecretConfig {
                name: secret_name,
                sds_config: Some(envoy::ads()),
            });
        }
    }
    common
}

/// The valid hosts of a TLS entry no earlier entry claimed (empty: any SNI, at most one such
/// entry); `None` when nothing is left to serve.
fn claim_server_names(
    ing: &Ingress,
    tls: &IngressTls,
    claimed: &mut BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<String>> {
    let mut server_names = Vec::new();
    for host in &tls.hosts {
        let Some(host) = super::gateway::checked_host(ing, host, problems) else {
            continue;
        };
        if claimed.insert(host.clone()) {
            server_names.push(host.clone());
        } else {
            problems.push(Problem::DuplicateTlsHost {
                ingress: ingress_ref(ing),
                host: host.clone(),
            });
        }
    }
    // An entry without hosts serves any SNI (at most one such chain).
    if tls.hosts.is_empty() {
        if !claimed.insert(String::new()) {
            problems.push(Problem::DuplicateTlsHost {
                ingress: ingress_ref(ing),
                host: "*".into(),
            });
            return None;
        }
    } else if server_names.is_empty() {
        return None;
    }
    Some(server_names)
}

fn tls_certificate(secret: &TlsSecret) -> TlsCertificate {
    TlsCertificate {
        certificate_chain: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(secret.cert_pem.clone())),
            ..Default::default()
        }),
        private_key: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(secret.key_pem.clone())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A filter chain for SNI `server_names` (empty: any) terminating TLS with `common`, its HCM
/// (stat prefix `listener`) routing with route configuration `route`.
pub(super) fn tls_filter_chain(
    name: String,
    server_names: Vec<String>,
    common: CommonTlsContext,
    (listener, route): (&str, &str),
    opts: &Options,
) -> FilterChain {
    let tls_context = DownstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    };
    FilterChain {
        name,
        filter_chain_match: Some(FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        transport_socket: Some(TransportSocket {
            name: names::TLS_TRANSPORT_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(envoy::any(
                &tls_context,
            ))),
        }),
        filters: vec![network_filter(
            names::HTTP_CONNECTION_MANAGER,
            &http_connection_manager(listener, route.into(), Side::Gateway, opts, true),
        )],
        ..Default::default()
    }
}
