//! TLS Secrets checked before the ingress gateway uses them (pure).
//!
//! The API server accepts a `kubernetes.io/tls` Secret whose PEM does not parse, whose key
//! belongs to another certificate, or whose certificate has expired. Envoy rejects the first two
//! (`Failed to load certificate chain`, `KEY_VALUES_MISMATCH`) and with them the whole HTTPS
//! listener, so one bad Secret stopped HTTPS for every Ingress (issue 9); an expired certificate
//! is loaded but every client refuses it. [`check`] finds all three so translation can leave out
//! only the hosts that use the Secret and report it.
//!
//! The rules match what Envoy 1.39 loads (tried with `envoy --mode validate`): RSA keys of 2048
//! bits or more, ECDSA and Ed25519. The key is loaded with rustls' ring provider, which takes RSA
//! 2048..8192 bits, ECDSA P-256 and P-384, and Ed25519: a P-521 or larger RSA key is refused here
//! although Envoy would serve it (reported as an unsupported key, never a NACK).

use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate expiring within this window gets a Warning (and is still served).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why a TLS Secret cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt: certificate #{index} does not parse: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("tls.key holds no usable PEM private key: {reason}")]
    BadKey { reason: String },
    #[error(
        "tls.key is not a supported private key ({reason}); the gateway serves RSA (2048 to 8192 \
         bits), ECDSA P-256/P-384 and Ed25519 keys"
    )]
    UnsupportedKey { reason: String },
    #[error("tls.key does not belong to the certificate in tls.crt")]
    KeyMismatch,
    #[error("the certificate expired on {not_after}")]
    Expired { not_after: String },
}

/// A Secret that can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSecret {
    /// When the first certificate of the chain expires, as text (`Jan  1 00:00:00 2027 +00:00`).
    pub not_after: String,
    /// Expires within [`EXPIRY_WARNING`] of the check.
    pub expires_soon: bool,
}

/// Checks a PEM certificate chain and private key at time `now`: every certificate parses, the
/// key parses and is the first certificate's, and no certificate of the chain has expired.
pub fn check(cert_pem: &str, key_pem: &str, now: SystemTime) -> Result<CheckedSecret, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .enumerate()
        .map(|(index, c)| {
            c.map_err(|e| TlsError::BadCertificate {
                index,
                reason: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let warn_unix = now_unix.saturating_add(EXPIRY_WARNING.as_secs() as i64);
    let mut leaf_spki: Option<Vec<u8>> = None;
    let mut earliest: Option<(i64, String)> = None;
    for (index, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            index,
            reason: e.to_string(),
        })?;
        let not_after = cert.validity().not_after;
        if earliest.as_ref().is_none_or(|(t, _)| not_after.timestamp() < *t) {
            earliest = Some((not_after.timestamp(), not_after.to_string()));
        }
        if index == 0 {
            leaf_spki = Some(cert.public_key().raw.to_vec());
        }
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey {
        reason: e.to_string(),
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::UnsupportedKey {
            reason: e.to_string(),
        })?;
    let key_spki = signing_key.public_key().ok_or_else(|| TlsError::UnsupportedKey {
        reason: "its public key is unknown".into(),
    })?;
    if leaf_spki.as_deref() != Some(key_spki.as_ref()) {
        return Err(TlsError::KeyMismatch);
    }
    let (not_after_unix, not_after) = earliest.ok_or(TlsError::NoCertificate)?;
    if not_after_unix < now_unix {
        return Err(TlsError::Expired { not_after });
    }
    Ok(CheckedSecret {
        not_after,
        expires_soon: not_after_unix < warn_unix,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const DAY: i64 = 24 * 3600;

    /// A self-signed certificate for `host` valid from `from` to `to` (unix seconds), and its key.
    fn cert(host: &str, from: i64, to: i64, alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_offset(from);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_offset(to);
        let c = params.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    fn time_offset(secs: i64) -> Duration {
        Duration::from_secs(secs.max(0) as u64)
    }

    fn at(unix: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + time_offset(unix)
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_valid_secret_passes_with_its_expiry() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (c, k) = cert("a.example.com", NOW - DAY, NOW + 90 * DAY, alg);
            let checked = check(&c, &k, at(NOW)).unwrap();
            assert!(!checked.expires_soon);
            assert!(checked.not_after.contains("2027"), "{}", checked.not_after);
        }
    }

    #[test]
    fn garbage_pem_is_no_certificate_or_a_bad_one() {
        let (c, k) = cert(
            "a.example.com",
            NOW - DAY,
            NOW + 90 * DAY,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert_eq!(
            check("not a certificate", &k, at(NOW)),
            Err(TlsError::NoCertificate)
        );
        assert_eq!(check("", &k, at(NOW)), Err(TlsError::NoCertificate));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check(bad_base64, &k, at(NOW)),
            Err(TlsError::BadCertificate { index: 0, .. })
        ));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            check(not_der, &k, at(NOW)),
            Err(TlsError::BadCertificate { index: 0, .. })
        ));
        let chain = format!("{c}{not_der}");
        assert!(matches!(
            check(&chain, &k, at(NOW)),
            Err(TlsError::BadCertificate { index: 1, .. })
        ));
        assert!(matches!(
            check(&c, "garbage", at(NOW)),
            Err(TlsError::BadKey { .. })
        ));
        let bad_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            check(&c, bad_key, at(NOW)),
            Err(TlsError::UnsupportedKey { .. })
        ));
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let (c, _) = cert(
            "a.example.com",
            NOW - DAY,
            NOW + 90 * DAY,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        let (_, other) = cert(
            "a.example.com",
            NOW - DAY,
            NOW + 90 * DAY,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert_eq!(check(&c, &other, at(NOW)), Err(TlsError::KeyMismatch));
        let (_, ed) = cert("a.example.com", NOW - DAY, NOW + 90 * DAY, &rcgen::PKCS_ED25519);
        assert_eq!(check(&c, &ed, at(NOW)), Err(TlsError::KeyMismatch));
    }

    #[test]
    fn expired_fails_and_expiring_within_14_days_warns() {
        let (c, k) = cert(
            "a.example.com",
            NOW - 90 * DAY,
            NOW - 1,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert!(matches!(check(&c, &k, at(NOW)), Err(TlsError::Expired { .. })));
        let (c, k) = cert(
            "a.example.com",
            NOW - DAY,
            NOW + 13 * DAY,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert!(check(&c, &k, at(NOW)).unwrap().expires_soon);
        let (c, k) = cert(
            "a.example.com",
            NOW - DAY,
            NOW + 15 * DAY,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert!(!check(&c, &k, at(NOW)).unwrap().expires_soon);
    }
}
