//! The token files on the host: `<root>/<namespace>/<pod uid>/xds-token.yaml`, one directory
//! per pod, mounted read-only into its sidecar. A token is written to a temporary file in the
//! same directory and renamed over the old one, so the sidecar's Envoy (which watches the
//! directory) only ever reads a whole file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use traffic_sidecar::bootstrap::token_sds;
use traffic_sidecar::PodRef;

/// The token file's name in a pod's directory (JSON, which Envoy reads as YAML).
pub const TOKEN_FILE: &str = "xds-token.yaml";
const TEMP_FILE: &str = ".xds-token.yaml.tmp";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not usable as a directory name")]
    Name(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A name from the API used as a path component: no separators, no dot names.
fn component(s: &str) -> Result<&str, FilesError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    ok.then_some(s).ok_or_else(|| FilesError::Name(s.to_string()))
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct TokenFiles {
    pub root: PathBuf,
    /// The sidecar's uid: owner of the directory and the file (mode 0500/0400); `None` leaves
    /// them to the agent's user with modes 0755/0644 (tests without root).
    pub owner: Option<u32>,
}

impl TokenFiles {
    /// The pod's directory (what the sidecar mounts).
    pub fn dir(&self, pod: &PodRef) -> Result<PathBuf, FilesError> {
        Ok(self
            .root
            .join(component(&pod.namespace)?)
            .join(component(&pod.uid)?))
    }

    /// Writes (or replaces) the pod's token file; returns the pod's directory.
    pub fn write(&self, pod: &PodRef, token: &str) -> Result<PathBuf, FilesError> {
        let dir = self.dir(pod)?;
        let (dir_mode, file_mode) = if self.owner.is_some() {
            (0o500, 0o400)
        } else {
            (0o755, 0o644)
        };
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(io(parent))?;
        }
        match fs::DirBuilder::new().mode(dir_mode).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode)).map_err(io(&dir))?;
        let temp = dir.join(TEMP_FILE);
        let _ = fs::remove_file(&temp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .open(&temp)
            .map_err(io(&temp))?;
        f.write_all(token_sds(token).as_bytes()).map_err(io(&temp))?;
        f.sync_all().map_err(io(&temp))?;
        drop(f);
        if let Some(uid) = self.owner {
            std::os::unix::fs::chown(&temp, Some(uid), Some(uid)).map_err(io(&temp))?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).map_err(io(&dir))?;
        }
        let file = dir.join(TOKEN_FILE);
        fs::rename(&temp, &file).map_err(io(&file))?;
        Ok(dir)
    }

    /// Removes the pod's directory; an absent one is fine.
    pub fn remove(&self, pod: &PodRef) -> Result<(), FilesError> {
        let dir = self.dir(pod)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    /// Pod uids with a directory under `namespace` (to remove those of pods that are gone).
    pub fn pods_in(&self, namespace: &str) -> Vec<String> {
        let Ok(ns) = component(namespace) else {
            return vec![];
        };
        let Ok(entries) = fs::read_dir(self.root.join(ns)) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Namespaces with a directory.
    pub fn namespaces(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn pod(uid: &str) -> PodRef {
        PodRef {
            uid: uid.into(),
            namespace: "shop".into(),
            name: "web-0".into(),
        }
    }

    fn temp_root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xds-token-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_token_is_replaced_by_rename_and_removed_with_its_directory() {
        let root = temp_root("rename");
        let files = TokenFiles {
            root: root.clone(),
            owner: None,
        };
        let dir = files.write(&pod("u1"), "one").unwrap();
        assert_eq!(dir, root.join("shop/u1"));
        let file = dir.join(TOKEN_FILE);
        let first_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&file).unwrap());
        assert!(fs::read_to_string(&file).unwrap().contains("Bearer one"));

        files.write(&pod("u1"), "two").unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.contains("Bearer two") && !text.contains("Bearer one"));
        // A new file (rename), not the old one rewritten in place; no temporary left behind.
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&file).unwrap()),
            first_inode
        );
        assert!(!dir.join(TEMP_FILE).exists());
        assert_eq!(files.pods_in("shop"), vec!["u1".to_string()]);
        assert_eq!(files.namespaces(), vec!["shop".to_string()]);

        files.remove(&pod("u1")).unwrap();
        assert!(!dir.exists());
        files.remove(&pod("u1")).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn with_an_owner_only_the_sidecar_user_may_read_the_token() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let root = temp_root("owner");
        let files = TokenFiles {
            root: root.clone(),
            owner: Some(1337),
        };
        let dir = files.write(&pod("u2"), "t").unwrap();
        let meta = |p: &Path| fs::metadata(p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta(&dir).uid(), meta(&dir).mode() & 0o777), (1337, 0o500));
        let f = dir.join(TOKEN_FILE);
        assert_eq!((meta(&f).uid(), meta(&f).mode() & 0o777), (1337, 0o400));
        // Renewal into a 0500 directory works (the agent is root).
        files.write(&pod("u2"), "t2").unwrap();
        assert!(fs::read_to_string(&f).unwrap().contains("Bearer t2"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_that_would_escape_the_root_are_refused() {
        let files = TokenFiles {
            root: temp_root("names"),
            owner: None,
        };
        for uid in ["..", "a/b", "", "."] {
            assert!(
                matches!(files.dir(&pod(uid)), Err(FilesError::Name(_))),
                "{uid:?}"
            );
        }
    }
}
