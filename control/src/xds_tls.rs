//! TLS on the xDS port: a CA of the control plane's (created on first start and kept in a
//! Secret, or provided by the user as files), a server certificate issued from it at every start,
//! and the CA certificate published in a ConfigMap for sidecars, the gateway and proxyless
//! clients to verify the control plane with.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// Key of the CA certificate in the Secret and the ConfigMap (and its file name).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA private key in the Secret (and its file name).
pub const CA_KEY_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("the CA store failed: {0}")]
    Store(String),
    #[error("the stored CA is incomplete or invalid: {0}")]
    Invalid(String),
}

/// A CA: certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA (ECDSA P-256, ten years).
    pub fn generate() -> Result<Ca, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "traffic-control xDS CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `names` (DNS names or IP literals), signed by this CA.
    pub fn issue_server(&self, names: &[String]) -> Result<ServerCert, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| TlsError::Invalid(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(|e| TlsError::Invalid(e.to_string()))?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "traffic-control");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TlsError>> + Send + 'a>>;

/// Where the CA is kept and published.
pub trait CaStore: Send + Sync {
    fn load(&self) -> StoreFuture<'_, Option<Ca>>;
    /// Stores a new CA; `Ok(false)` when one was stored meanwhile (another replica won).
    fn save<'a>(&'a self, ca: &'a Ca) -> StoreFuture<'a, bool>;
    /// Publishes the CA certificate for clients.
    fn publish<'a>(&'a self, cert_pem: &'a str) -> StoreFuture<'a, ()>;
}

/// The CA to use: the stored one, or a new one stored (the stored one if another replica stored
/// first); its certificate published.
pub async fn ensure_ca(store: &dyn CaStore) -> Result<Ca, TlsError> {
    let ca = match store.load().await? {
        Some(ca) => ca,
        None => {
            let ca = Ca::generate()?;
            if store.save(&ca).await? {
                tracing::info!("created the xDS CA");
                ca
            } else {
                store
                    .load()
                    .await?
                    .ok_or_else(|| TlsError::Store("the CA vanished after a conflict".into()))?
            }
        }
    };
    store.publish(&ca.cert_pem).await?;
    Ok(ca)
}

/// A CA the user provides as `ca.crt` and `ca.key` in a directory (a mounted Secret); publishing
/// is the user's business.
pub struct DirCaStore(pub PathBuf);

impl CaStore for DirCaStore {
    fn load(&self) -> StoreFuture<'_, Option<Ca>> {
        Box::pin(async move {
            let read = |name: &str| {
                std::fs::read_to_string(self.0.join(name))
                    .map_err(|e| TlsError::Invalid(format!("{}: {e}", self.0.join(name).display())))
            };
            Ok(Some(Ca {
                cert_pem: read(CA_CERT_KEY)?,
                key_pem: read(CA_KEY_KEY)?,
            }))
        })
    }

    fn save<'a>(&'a self, _ca: &'a Ca) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(TlsError::Store("a user-provided CA is never replaced".into())) })
    }

    fn publish<'a>(&'a self, _cert_pem: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The CA in a Secret of the control plane's namespace, its certificate in a ConfigMap of the
/// same name. RBAC: `get`/`create` on that Secret, `get`/`create`/`update` on that ConfigMap.
pub struct KubeCaStore {
    pub client: kube::Client,
    pub namespace: String,
    pub name: String,
}

fn kube_err(e: kube::Error) -> TlsError {
    TlsError::Store(e.to_string())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl CaStore for KubeCaStore {
    fn load(&self) -> StoreFuture<'_, Option<Ca>> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let secret = match api.get(&self.name).await {
                Ok(s) => s,
                Err(e) if is_status(&e, 404) => return Ok(None),
                Err(e) => return Err(kube_err(e)),
            };
            let data = secret.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .ok_or_else(|| TlsError::Invalid(format!("Secret {} has no {k}", self.name)))
            };
            Ok(Some(Ca {
                cert_pem: field(CA_CERT_KEY)?,
                key_pem: field(CA_KEY_KEY)?,
            }))
        })
    }

    fn save<'a>(&'a self, ca: &'a Ca) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": self.name, "labels": {"app.kubernetes.io/component": "control"}},
                "type": "Opaque",
                "stringData": {CA_CERT_KEY: ca.cert_pem, CA_KEY_KEY: ca.key_pem},
            }))
            .map_err(|e| TlsError::Store(e.to_string()))?;
            match api.create(&kube::api::PostParams::default(), &secret).await {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(e) => Err(kube_err(e)),
            }
        })
    }

    fn publish<'a>(&'a self, cert_pem: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let mut cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": self.name, "labels": {"app.kubernetes.io/component": "control"}},
                "data": {CA_CERT_KEY: cert_pem},
            }))
            .map_err(|e| TlsError::Store(e.to_string()))?;
            match api.get(&self.name).await {
                Ok(existing) => {
                    if existing
                        .data
                        .as_ref()
                        .and_then(|d| d.get(CA_CERT_KEY))
                        .map(String::as_str)
                        == Some(cert_pem)
                    {
                        return Ok(());
                    }
                    cm.metadata.resource_version = existing.metadata.resource_version;
                    api.replace(&self.name, &kube::api::PostParams::default(), &cm)
                        .await
                        .map_err(kube_err)?;
                }
                Err(e) if is_status(&e, 404) => {
                    api.create(&kube::api::PostParams::default(), &cm)
                        .await
                        .map_err(kube_err)?;
                }
                Err(e) => return Err(kube_err(e)),
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct MemStore {
        ca: Mutex<Option<Ca>>,
        published: Mutex<Vec<String>>,
        /// Another replica stores this CA right before our save.
        racer: Option<Ca>,
    }

    impl CaStore for MemStore {
        fn load(&self) -> StoreFuture<'_, Option<Ca>> {
            Box::pin(async move {
                Ok(self
                    .ca
                    .lock()
                    .map_err(|_| TlsError::Store("lock".into()))?
                    .clone())
            })
        }
        fn save<'a>(&'a self, ca: &'a Ca) -> StoreFuture<'a, bool> {
            Box::pin(async move {
                let mut slot = self.ca.lock().map_err(|_| TlsError::Store("lock".into()))?;
                if let Some(r) = &self.racer {
                    *slot = Some(r.clone());
                    return Ok(false);
                }
                *slot = Some(ca.clone());
                Ok(true)
            })
        }
        fn publish<'a>(&'a self, cert_pem: &'a str) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                self.published
                    .lock()
                    .map_err(|_| TlsError::Store("lock".into()))?
                    .push(cert_pem.to_string());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn the_ca_is_created_once_kept_and_published_and_a_racing_replicas_ca_wins() {
        let store = MemStore::default();
        let first = ensure_ca(&store).await.expect("first");
        let again = ensure_ca(&store).await.expect("again");
        assert_eq!(first, again, "a restart keeps the CA");
        assert_eq!(store.published.lock().expect("lock").len(), 2);
        assert!(first.cert_pem.contains("BEGIN CERTIFICATE"));

        let theirs = Ca::generate().expect("ca");
        let racing = MemStore {
            racer: Some(theirs.clone()),
            ..MemStore::default()
        };
        assert_eq!(ensure_ca(&racing).await.expect("race"), theirs);
    }

    #[test]
    fn a_server_certificate_is_issued_by_the_ca_for_the_names() {
        let ca = Ca::generate().expect("ca");
        let server = ca
            .issue_server(&["traffic-control.traffic-system.svc".into(), "127.0.0.1".into()])
            .expect("issue");
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        assert_ne!(server.cert_pem, ca.cert_pem);
    }
}
