//! Test certificates, generated per test run (no key of these is ever committed). Also used by
//! the control plane's tests (`#[path]`-included), so it needs nothing but rcgen.

/// A self-signed ECDSA P-256 certificate for `hosts`, valid from `from` to `to` (unix seconds),
/// and its private key, both PEM. Generated per test: no key is ever committed for these.
pub fn test_cert(hosts: &[&str], from: u64, to: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("rcgen");
    let mut params = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .expect("rcgen");
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + std::time::Duration::from_secs(from);
    params.not_after = epoch + std::time::Duration::from_secs(to);
    let cert = params.self_signed(&key).expect("rcgen");
    (cert.pem(), key.serialize_pem())
}

/// Seconds since the epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("rcgen")
        .as_secs()
}
