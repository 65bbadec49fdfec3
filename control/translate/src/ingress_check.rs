//! Ingress hosts and paths checked against what Envoy accepts where they end up (pure).
//!
//! All Ingresses share one RouteConfiguration and one HTTPS listener on the gateway, so a single
//! value Envoy rejects there would cost every Ingress its routes. The rules:
//! - a path becomes `RouteMatch.path` or `RouteMatch.path_separated_prefix`, and the latter must
//!   match `^[^?#]+[^?#/]$` (its `validate.rules`). The API server takes `/a?b` for a `Prefix`
//!   path. Paths must also start with `/` (Kubernetes requires it for `Exact` and `Prefix`; an
//!   `ImplementationSpecific` path without it could never match) and hold no control characters.
//! - a host becomes `VirtualHost.domains` (unique across virtual hosts once lowercased, a single
//!   `*`) and `FilterChainMatch.server_names` (wildcards only as a whole first label, `*.a.b`).
//!   Kubernetes' own grammar for Ingress hosts (a lowercase DNS-1123 subdomain, optionally with
//!   `*.` in front) satisfies both, so it is the rule, after lowercasing (model files are
//!   forgiven upper case).

/// Why an Ingress host or path is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressValueError {
    #[error(
        "a host must be a DNS name (lowercase letters, digits, '-' and '.'), optionally starting with '*.'"
    )]
    BadHost,
    #[error("a path must start with '/'")]
    RelativePath,
    #[error("a path must not contain '?', '#', spaces or control characters")]
    BadPathCharacter,
}

/// The host as Envoy gets it (lowercase), or why it is not served.
pub fn check_host(host: &str) -> Result<String, IngressValueError> {
    let host = host.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() <= 253 && name.split('.').all(label_ok) {
        Ok(host)
    } else {
        Err(IngressValueError::BadHost)
    }
}

/// Whether `path` can be an Ingress route path.
pub fn check_path(path: &str) -> Result<(), IngressValueError> {
    if !path.starts_with('/') {
        return Err(IngressValueError::RelativePath);
    }
    if path
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(IngressValueError::BadPathCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_the_kubernetes_grammar_after_lowercasing() {
        for (host, want) in [
            ("bookinfo.example.com", "bookinfo.example.com"),
            ("*.example.com", "*.example.com"),
            ("Foo.Example.COM", "foo.example.com"),
            ("a", "a"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(check_host(host).as_deref(), Ok(want), "{host}");
        }
        for host in [
            "",
            "*",
            "*foo.com",
            "foo.*.com",
            "foo.*",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b",
            "a\r\nb",
            "a:80",
            ".a.com",
        ] {
            assert_eq!(check_host(host), Err(IngressValueError::BadHost), "{host:?}");
        }
        assert!(check_host(&"a".repeat(64)).is_err());
        assert!(check_host(&format!("{}.com", vec!["a".repeat(63); 4].join("."))).is_err());
    }

    #[test]
    fn paths_start_with_a_slash_and_carry_no_query_fragment_or_control_characters() {
        for ok in ["/", "/a", "/a/b/", "/static/css/a.css", "/%2F", "/a;b", "/ä"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_path("a"), Err(IngressValueError::RelativePath));
        assert_eq!(check_path(""), Err(IngressValueError::RelativePath));
        for bad in ["/a?b", "/a#b", "/a b", "/a\nb", "/a\0", "/?"] {
            assert_eq!(
                check_path(bad),
                Err(IngressValueError::BadPathCharacter),
                "{bad:?}"
            );
        }
    }
}
