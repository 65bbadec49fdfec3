//! Images in our namespace, and the leases that keep half-made things from being collected
//! (I/O; the pure parts are in [`super::image`]).
//!
//! An image is usable when our namespace has its record, its blobs and its unpacked layers (the
//! snapshot at the top chain id). Missing pieces are made from what the node has: a record in
//! our namespace, else the same name in `k8s.io` (kubelet's pulls). Blobs are copied into our
//! namespace (streamed through the socket; the store keeps one file per digest, so the disk
//! holds them once), and the layers are unpacked per layer (`Snapshots.Prepare` → `Diff.Apply` → `Snapshots.Commit`
//! at the chain id). Everything happens under a lease, and GC labels (manifest → config and
//! layers, config → top snapshot) keep the result alive once the lease is gone.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image, Info,
    InfoRequest, ListRequest as ListLeasesRequest, ReadContentRequest, UpdateRequest as UpdateContentRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::{Descriptor as PbDescriptor, Mount};
use containerd_client::Client;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::image::{self, Descriptor, ImageConfig};
use super::{not_found, random_id, req, rpc_err, ContainerdRuntime, MANAGED_BY};
use crate::{RuntimeError, LABEL_MANAGED_BY};

/// How long a lease outlives a crashed start (a start takes seconds).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// `YYYY-MM-DDTHH:MM:SSZ` of a time (what containerd's `gc.expire` label takes).
pub fn rfc3339_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Largest manifest, index or config we read (they are small JSON documents).
const MAX_METADATA_BYTES: i64 = 4 << 20;

/// A resolved, unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyImage {
    /// The name as stored in our namespace.
    pub name: String,
    pub config: ImageConfig,
    /// The committed snapshot the sidecar's rootfs is prepared on.
    pub top_chain_id: String,
}

/// A lease of ours; delete it with [`ContainerdRuntime::end_lease`] on every path.
#[derive(Debug)]
pub struct Lease(pub String);

impl ContainerdRuntime {
    /// Creates a lease in our namespace. It expires after [`LEASE_TTL`] (containerd's GC then
    /// drops it), so a start a crashed agent left half done is collected without anyone
    /// deleting leases that might belong to a running start.
    pub async fn lease(&self) -> Result<Lease, RuntimeError> {
        let id = format!("traffic-agent-{}", &random_id()?[..16]);
        let mut l = Client::from(self.channel()).leases();
        l.create(req(
            CreateLeaseRequest {
                id: id.clone(),
                labels: HashMap::from([
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    (
                        "containerd.io/gc.expire".to_string(),
                        rfc3339_utc(std::time::SystemTime::now() + LEASE_TTL),
                    ),
                ]),
            },
            self.ns(),
            None,
        ))
        .await
        .map_err(|e| rpc_err("create lease", e))?;
        Ok(Lease(id))
    }

    /// Deletes a lease (what it held becomes collectable unless referenced); logs failures.
    pub async fn end_lease(&self, lease: Lease) {
        let mut l = Client::from(self.channel()).leases();
        if let Err(e) = l
            .delete(req(
                DeleteLeaseRequest {
                    id: lease.0.clone(),
                    sync: false,
                },
                self.ns(),
                None,
            ))
            .await
        {
            if !not_found(&e) {
                warn!(lease = %lease.0, error = %e.message(), "could not delete lease");
            }
        }
    }

    /// Leases of ours in our namespace (a crashed agent's, or leaks).
    pub async fn our_leases(&self) -> Result<Vec<String>, RuntimeError> {
        let mut l = Client::from(self.channel()).leases();
        let r = l
            .list(req(
                ListLeasesRequest {
                    filters: vec![format!("labels.\"{LABEL_MANAGED_BY}\"==\"{MANAGED_BY}\"")],
                },
                self.ns(),
                None,
            ))
            .await
            .map_err(|e| rpc_err("list leases", e))?;
        Ok(r.into_inner().leases.into_iter().map(|l| l.id).collect())
    }

    async fn image_record(&self, ns: &str, name: &str) -> Result<Option<Image>, RuntimeError> {
        let mut i = Client::from(self.channel()).images();
        for candidate in image::normalized_names(name) {
            match i
                .get(req(
                    GetImageRequest {
                        name: candidate.clone(),
                    },
                    ns,
                    None,
                ))
                .await
            {
                Ok(r) => {
                    if let Some(img) = r.into_inner().image {
                        return Ok(Some(img));
                    }
                }
                Err(s) if not_found(&s) => {}
                Err(s) => return Err(rpc_err(&format!("get image {candidate} in {ns}"), s)),
            }
        }
        Ok(None)
    }

    async fn read_blob(&self, ns: &str, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut c = Client::from(self.channel()).content();
        let info = c
            .info(req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                ns,
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("content info {digest}"), e))?
            .into_inner()
            .info
            .unwrap_or_default();
        if info.size > MAX_METADATA_BYTES {
            return Err(RuntimeError::Runtime(format!(
                "blob {digest} is too large ({} bytes)",
                info.size
            )));
        }
        let mut stream = c
            .read(req(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                ns,
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("read {digest}"), e))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend(chunk.map_err(|e| rpc_err(&format!("read {digest}"), e))?.data);
        }
        if image::digest_of(&out) != digest {
            return Err(RuntimeError::Runtime(format!(
                "blob {digest} does not match its digest"
            )));
        }
        Ok(out)
    }

    async fn has_blob(&self, ns: &str, digest: &str) -> Result<bool, RuntimeError> {
        let mut c = Client::from(self.channel()).content();
        match c
            .info(req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                ns,
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(rpc_err(&format!("content info {digest}"), e)),
        }
    }

    /// Makes a blob of namespace `from` part of ours. containerd 1.6's content service opens
    /// its writer before it sees the expected digest, so the bytes are streamed through (the
    /// content store keeps one file per digest: nothing is stored twice).
    async fn copy_blob(&self, d: &Descriptor, from: &str, lease: &Lease) -> Result<(), RuntimeError> {
        if self.has_blob(self.ns(), &d.digest).await? {
            return Ok(());
        }
        let mut c = Client::from(self.channel()).content();
        let source = c
            .read(req(
                ReadContentRequest {
                    digest: d.digest.clone(),
                    offset: 0,
                    size: 0,
                },
                from,
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("read {}", d.digest), e))?
            .into_inner();
        let write_ref = format!("traffic-agent-{}", d.digest);
        let chunk_ref = write_ref.clone();
        // A read error ends the data early: the commit's digest check then fails the copy.
        let chunks = source
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .map(move |chunk| WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: chunk_ref.clone(),
                total: 0,
                expected: String::new(),
                offset: chunk.offset,
                data: chunk.data,
                labels: HashMap::new(),
            });
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: write_ref,
            total: d.size,
            expected: d.digest.clone(),
            // At the end: a commit at offset 0 would truncate what was written.
            offset: d.size,
            data: Vec::new(),
            labels: HashMap::new(),
        };
        let stream = chunks.chain(futures_util::stream::iter([commit]));
        let result = match c.write(req(stream, self.ns(), Some(&lease.0))).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                let mut last = Ok(());
                while let Some(m) = s.next().await {
                    if let Err(e) = m {
                        last = Err(e);
                        break;
                    }
                }
                last
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(rpc_err(&format!("copy blob {} from {from}", d.digest), s)),
        }
    }

    /// Sets GC labels on a blob of ours.
    async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<(), RuntimeError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let mut c = Client::from(self.channel()).content();
        c.update(req(
            UpdateContentRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            self.ns(),
            None,
        ))
        .await
        .map_err(|e| rpc_err(&format!("label blob {digest}"), e))?;
        Ok(())
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let mut s = Client::from(self.channel()).snapshots();
        match s
            .stat(req(
                StatSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                },
                self.ns(),
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(rpc_err(&format!("stat snapshot {key}"), e)),
        }
    }

    /// Prepares an active snapshot `key` on `parent` and returns its mounts.
    pub(crate) async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        lease: &Lease,
    ) -> Result<Vec<Mount>, RuntimeError> {
        let mut s = Client::from(self.channel()).snapshots();
        let r = s
            .prepare(req(
                PrepareSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                self.ns(),
                Some(&lease.0),
            ))
            .await
            .map_err(|e| rpc_err(&format!("prepare snapshot {key}"), e))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes snapshot `key`; a missing one is fine.
    pub(crate) async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        let mut s = Client::from(self.channel()).snapshots();
        match s
            .remove(req(
                RemoveSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                },
                self.ns(),
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(rpc_err(&format!("remove snapshot {key}"), e)),
        }
    }

    /// Unpacks one layer onto `parent` and commits it as `chain_id`.
    async fn unpack_layer(
        &self,
        layer: &Descriptor,
        parent: &str,
        chain_id: &str,
        lease: &Lease,
    ) -> Result<(), RuntimeError> {
        let key = format!("extract-{}-{chain_id}", &random_id()?[..12]);
        let mounts = self.prepare_snapshot(&key, parent, lease).await?;
        let applied = Client::from(self.channel())
            .diff()
            .apply(req(
                ApplyRequest {
                    diff: Some(PbDescriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                self.ns(),
                Some(&lease.0),
            ))
            .await;
        if let Err(e) = applied {
            let _ = self.remove_snapshot(&key).await;
            return Err(rpc_err(&format!("apply layer {}", layer.digest), e));
        }
        let mut s = Client::from(self.channel()).snapshots();
        let committed = s
            .commit(req(
                CommitSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    name: chain_id.to_string(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                self.ns(),
                Some(&lease.0),
            ))
            .await;
        match committed {
            Ok(_) => Ok(()),
            // Someone unpacked the same layer meanwhile.
            Err(e) if e.code() == Code::AlreadyExists => self.remove_snapshot(&key).await,
            Err(e) => {
                let _ = self.remove_snapshot(&key).await;
                Err(rpc_err(&format!("commit snapshot {chain_id}"), e))
            }
        }
    }

    /// The image `name` ready in our namespace, made so from what the node has (see the
    /// module docs). Everything it creates is held by `lease` until it is labelled for GC.
    pub async fn ensure_image(&self, name: &str, lease: &Lease) -> Result<ReadyImage, RuntimeError> {
        if !image::valid_image_name(name) {
            return Err(RuntimeError::Runtime(format!("invalid image name {name:?}")));
        }
        let (record, source_ns) = match self.image_record(self.ns(), name).await? {
            Some(r) => (r, self.ns().to_string()),
            None => match self.image_record(&self.config.cri_namespace, name).await? {
                Some(r) => (r, self.config.cri_namespace.clone()),
                None => {
                    return Err(RuntimeError::Runtime(format!(
                        "image {name} is not on the node (neither in containerd namespace {} nor {}); \
                         containerd has no pull API before 1.7: pre-pull it (e.g. `ctr -n {} images pull {name}`)",
                        self.ns(),
                        self.config.cri_namespace,
                        self.ns()
                    )))
                }
            },
        };
        let target = record
            .target
            .clone()
            .ok_or_else(|| RuntimeError::Runtime(format!("image {} has no target", record.name)))?;
        let target = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            platform: None,
        };
        let adopting = source_ns != self.ns();
        let mut blobs = vec![target.clone()];
        let manifest_desc = if image::is_index(&target.media_type) {
            let index = self.read_blob(&source_ns, &target.digest).await?;
            let m = image::pick_manifest(&index, image::host_arch())
                .map_err(|e| RuntimeError::Runtime(e.to_string()))?;
            blobs.push(m.clone());
            m
        } else if image::is_manifest(&target.media_type) {
            target.clone()
        } else {
            return Err(RuntimeError::Runtime(format!(
                "image {name}: unsupported media type {:?}",
                target.media_type
            )));
        };
        let bad = |e: image::ImageError| RuntimeError::Runtime(format!("image {name}: {e}"));
        let manifest =
            image::parse_manifest(&self.read_blob(&source_ns, &manifest_desc.digest).await?).map_err(bad)?;
        let config =
            image::parse_config(&self.read_blob(&source_ns, &manifest.config.digest).await?).map_err(bad)?;
        image::check_layers(&manifest, &config).map_err(bad)?;
        let chain = image::chain_ids(&config.diff_ids).map_err(bad)?;
        let top = chain
            .last()
            .cloned()
            .ok_or_else(|| RuntimeError::Runtime(format!("image {name} has no layers")))?;
        if !adopting && self.snapshot_exists(&top).await? {
            return Ok(ReadyImage {
                name: record.name,
                config,
                top_chain_id: top,
            });
        }
        info!(image = %record.name, from = %source_ns, layers = manifest.layers.len(), "making the sidecar image ready in our namespace");
        blobs.push(manifest.config.clone());
        blobs.extend(manifest.layers.iter().cloned());
        if manifest_desc.digest != target.digest {
            blobs.push(manifest_desc.clone());
        }
        for b in &blobs {
            self.copy_blob(b, &source_ns, lease).await?;
        }
        let mut parent = String::new();
        for (layer, chain_id) in manifest.layers.iter().zip(&chain) {
            if !self.snapshot_exists(chain_id).await? {
                debug!(layer = %layer.digest, %chain_id, "unpacking layer");
                self.unpack_layer(layer, &parent, chain_id, lease).await?;
            }
            parent = chain_id.clone();
        }
        // GC references: manifest → config and layers, config → the unpacked chain; an index
        // → the manifest.
        let mut m_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            m_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        self.label_blob(&manifest_desc.digest, m_labels).await?;
        self.label_blob(
            &manifest.config.digest,
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{}", self.config.snapshotter),
                top.clone(),
            )]),
        )
        .await?;
        if manifest_desc.digest != target.digest {
            self.label_blob(
                &target.digest,
                HashMap::from([(
                    "containerd.io/gc.ref.content.m.0".to_string(),
                    manifest_desc.digest.clone(),
                )]),
            )
            .await?;
        }
        if adopting {
            self.create_image_record(&record, lease).await?;
        }
        Ok(ReadyImage {
            name: record.name,
            config,
            top_chain_id: top,
        })
    }

    async fn create_image_record(&self, source: &Image, lease: &Lease) -> Result<(), RuntimeError> {
        let mut i = Client::from(self.channel()).images();
        let image = Image {
            name: source.name.clone(),
            labels: HashMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())]),
            target: source.target.clone(),
            created_at: None,
            updated_at: None,
        };
        match i
            .create(req(
                CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                },
                self.ns(),
                Some(&lease.0),
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(rpc_err(&format!("create image {}", source.name), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn lease_expiry_times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_796_416_496)),
            "2026-12-04T20:34:56Z"
        );
    }
}
