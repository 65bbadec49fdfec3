//! The parts of an image we need (pure): which manifest of an index is ours, its config
//! (entrypoint, env, the layers' diff ids) and the snapshot chain ids the layers unpack to.
//!
//! Docker schema 2 and OCI media types are both accepted: `docker save | ctr import` (and kubelet
//! pulls of Docker Hub images) store Docker media types, registries increasingly OCI ones.

use sha2::{Digest as _, Sha256};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("{what} is not valid JSON: {detail}")]
    Json { what: String, detail: String },
    #[error("image index has no manifest for {os}/{arch}")]
    NoPlatform { os: String, arch: String },
    #[error("unsupported image media type {0:?}")]
    MediaType(String),
    #[error("image has {layers} layers but its config lists {diff_ids} diff ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("malformed digest {0:?}")]
    Digest(String),
}

/// A content descriptor (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What the runtime spec takes from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub diff_ids: Vec<String>,
}

#[derive(serde::Deserialize)]
struct RawConfigFile {
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn json<'a, T: serde::Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Json {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// Whether a media type is an index (multi-platform list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// The Go architecture name of this host (what image platforms use).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The manifest of an index for `linux/<arch>`; a descriptor without a platform counts as ours
/// (single-platform indexes written by `docker save`/`ctr import` have none).
pub fn pick_manifest(index_json: &[u8], arch: &str) -> Result<Descriptor, ImageError> {
    let index: Index = json("image index", index_json)?;
    index
        .manifests
        .iter()
        .find(|d| {
            is_manifest(&d.media_type)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            index
                .manifests
                .iter()
                .find(|d| is_manifest(&d.media_type) && d.platform.is_none())
        })
        .cloned()
        .ok_or_else(|| ImageError::NoPlatform {
            os: "linux".into(),
            arch: arch.into(),
        })
}

pub fn parse_manifest(manifest_json: &[u8]) -> Result<Manifest, ImageError> {
    json("image manifest", manifest_json)
}

pub fn parse_config(config_json: &[u8]) -> Result<ImageConfig, ImageError> {
    let raw: RawConfigFile = json("image config", config_json)?;
    let c = raw.config;
    Ok(ImageConfig {
        entrypoint: c.as_ref().and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
        cmd: c.as_ref().and_then(|c| c.cmd.clone()).unwrap_or_default(),
        env: c.as_ref().and_then(|c| c.env.clone()).unwrap_or_default(),
        working_dir: c.and_then(|c| c.working_dir).filter(|w| !w.is_empty()),
        diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
    })
}

fn check_digest(d: &str) -> Result<(), ImageError> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(ImageError::Digest(d.to_string())),
    }
}

/// The snapshot chain ids of the layers (the key each unpacked layer is committed under):
/// `chain(0) = diff_id(0)`, `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Result<Vec<String>, ImageError> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        check_digest(d)?;
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let sum = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex(&sum))
            }
        };
        out.push(next);
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Whether `name` is an image reference we may look up: no whitespace or control characters
/// (it goes into filters and RPCs), non-empty, not absurdly long.
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 512 && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The names containerd may store an image under: `busybox:1` is
/// `docker.io/library/busybox:1`, `traffic-e2e/envoy:1` is `docker.io/traffic-e2e/envoy:1`
/// (`ctr import` and the CRI normalize this way); a name with a registry host stays as it is.
pub fn normalized_names(name: &str) -> Vec<String> {
    let first = name.split('/').next().unwrap_or_default();
    let has_host = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut names = vec![name.to_string()];
    if !has_host {
        let with_repo = if name.contains('/') {
            format!("docker.io/{name}")
        } else {
            format!("docker.io/library/{name}")
        };
        names.push(with_repo);
    }
    // A name without a tag or digest means `:latest`.
    let last = name.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        let tagged: Vec<String> = names.iter().map(|n| format!("{n}:latest")).collect();
        names.extend(tagged);
    }
    names
}

/// Checks that a manifest and a config agree on the number of layers.
pub fn check_layers(manifest: &Manifest, config: &ImageConfig) -> Result<(), ImageError> {
    if manifest.layers.len() != config.diff_ids.len() {
        return Err(ImageError::LayerCount {
            layers: manifest.layers.len(),
            diff_ids: config.diff_ids.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn chain_ids_start_at_the_first_diff_id_and_hash_each_parent_with_the_next() {
        let ids = chain_ids(&[d(1), d(2)]).unwrap();
        assert_eq!(ids[0], d(1));
        assert_eq!(ids[1], digest_of(format!("{} {}", d(1), d(2)).as_bytes()));
        assert_eq!(chain_ids(&[]).unwrap(), Vec::<String>::new());
        assert!(chain_ids(&["sha256:xyz".to_string()]).is_err());
        assert!(chain_ids(&[format!("md5:{}", "0".repeat(64))]).is_err());
    }

    #[test]
    fn the_digest_of_known_bytes_matches_sha256sum() {
        assert_eq!(
            digest_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_index_yields_the_linux_manifest_of_our_arch_or_the_one_without_platform() {
        let index = format!(
            r#"{{"manifests": [
              {{"mediaType": "{MEDIA_OCI_MANIFEST}", "digest": "{}", "size": 1, "platform": {{"os": "linux", "architecture": "arm64"}}}},
              {{"mediaType": "{MEDIA_OCI_MANIFEST}", "digest": "{}", "size": 2, "platform": {{"os": "linux", "architecture": "amd64"}}}}
            ]}}"#,
            d(1),
            d(2)
        );
        assert_eq!(pick_manifest(index.as_bytes(), "amd64").unwrap().digest, d(2));
        assert!(matches!(
            pick_manifest(index.as_bytes(), "s390x"),
            Err(ImageError::NoPlatform { .. })
        ));
        let plain = format!(
            r#"{{"manifests": [{{"mediaType": "{MEDIA_DOCKER_MANIFEST}", "digest": "{}", "size": 3}}]}}"#,
            d(3)
        );
        assert_eq!(pick_manifest(plain.as_bytes(), "s390x").unwrap().digest, d(3));
    }

    #[test]
    fn a_config_gives_entrypoint_env_workdir_and_diff_ids() {
        let cfg = format!(
            r#"{{"config": {{"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["envoy"], "Env": ["PATH=/bin"], "WorkingDir": "/srv"}},
               "rootfs": {{"type": "layers", "diff_ids": ["{}"]}}}}"#,
            d(9)
        );
        let c = parse_config(cfg.as_bytes()).unwrap();
        assert_eq!(c.entrypoint, vec!["/docker-entrypoint.sh"]);
        assert_eq!(c.cmd, vec!["envoy"]);
        assert_eq!(c.env, vec!["PATH=/bin"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.diff_ids, vec![d(9)]);
        let bare = parse_config(br#"{"rootfs": {"diff_ids": []}}"#).unwrap();
        assert_eq!(bare, ImageConfig::default());
        assert!(parse_config(b"[").is_err());
    }

    #[test]
    fn a_manifest_must_have_as_many_layers_as_the_config_has_diff_ids() {
        let m = parse_manifest(
            format!(
                r#"{{"config": {{"digest": "{}"}}, "layers": [{{"digest": "{}"}}, {{"digest": "{}"}}]}}"#,
                d(1),
                d(2),
                d(3)
            )
            .as_bytes(),
        )
        .unwrap();
        let c = ImageConfig {
            diff_ids: vec![d(4)],
            ..Default::default()
        };
        assert_eq!(
            check_layers(&m, &c),
            Err(ImageError::LayerCount {
                layers: 2,
                diff_ids: 1
            })
        );
    }

    #[test]
    fn short_image_names_are_also_looked_up_under_docker_io() {
        assert_eq!(
            normalized_names("traffic-e2e/envoy:1.39.3"),
            vec!["traffic-e2e/envoy:1.39.3", "docker.io/traffic-e2e/envoy:1.39.3"]
        );
        assert_eq!(
            normalized_names("busybox"),
            vec![
                "busybox",
                "docker.io/library/busybox",
                "busybox:latest",
                "docker.io/library/busybox:latest"
            ]
        );
        assert_eq!(
            normalized_names("registry.local:5000/envoy:1"),
            vec!["registry.local:5000/envoy:1"]
        );
        assert!(valid_image_name("docker.io/envoyproxy/envoy:v1.31"));
        assert!(!valid_image_name("envoy\n"));
        assert!(!valid_image_name(""));
    }
}
