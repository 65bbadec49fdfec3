//! The operator commands on containerd (`traffic-agent proxies | logs | exec`).
//!
//! Logs are the sidecar's log file (the shim writes stdout and stderr into it, interleaved, so
//! both go to `out`). Exec runs a process in the sidecar through `Tasks.Exec` with two FIFOs
//! the agent makes in the sidecar's directory (the shim opens them by host path).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, StartRequest, WaitRequest};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::Client;
use oci_spec::runtime::{ProcessBuilder, UserBuilder};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::spec::no_capabilities;
use super::task::PROCESS_TYPE_URL;
use super::{random_id, req, rpc_err, ContainerdRuntime};
use crate::operator::{resolve_prefix, OperatorError, ProxyRow};
use crate::{ContainerRuntime, RuntimeError, Sidecar};

/// The last `n` lines of `text` (all of it without `n`).
pub fn last_lines(text: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return text };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 {
        return &[];
    }
    text
}

fn runtime_io(what: &str, e: std::io::Error) -> OperatorError {
    OperatorError::Runtime(RuntimeError::Runtime(format!("{what}: {e}")))
}

impl ContainerdRuntime {
    /// The one sidecar whose id starts with `prefix`.
    pub async fn resolve(&self, prefix: &str) -> Result<Sidecar, OperatorError> {
        let all = self.sidecars().await?;
        Ok(resolve_prefix(&all, prefix)?.clone())
    }

    /// Rows of `traffic-agent proxies` (without the redirect mode).
    pub async fn proxies(&self) -> Result<Vec<ProxyRow>, RuntimeError> {
        Ok(self.sidecars().await?.iter().map(ProxyRow::from).collect())
    }

    /// Copies a sidecar's log to `out`; with `follow` until its task stops.
    pub async fn logs<O>(
        &self,
        id_prefix: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut O,
    ) -> Result<(), OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
    {
        let s = self.resolve(id_prefix).await?;
        let path = self.log_path(&s.container_id);
        let text = std::fs::read(&path).map_err(|e| runtime_io(&path.display().to_string(), e))?;
        out.write_all(last_lines(&text, tail))
            .await
            .map_err(OperatorError::Output)?;
        let mut offset = text.len() as u64;
        if !follow {
            return out.flush().await.map_err(OperatorError::Output);
        }
        loop {
            let running = self
                .task(self.ns(), &s.container_id)
                .await?
                .is_some_and(|t| TaskStatus::try_from(t.status) == Ok(TaskStatus::Running));
            let more = read_from(&path, offset).map_err(|e| runtime_io(&path.display().to_string(), e))?;
            offset += more.len() as u64;
            out.write_all(&more).await.map_err(OperatorError::Output)?;
            out.flush().await.map_err(OperatorError::Output)?;
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.flush().await.map_err(OperatorError::Output)
    }

    /// Runs `cmd` in a sidecar (as its user, no TTY, no stdin), copies its output to `out`/`err`
    /// and returns its exit code.
    pub async fn exec<O, E>(
        &self,
        id_prefix: &str,
        cmd: &[String],
        out: &mut O,
        err: &mut E,
    ) -> Result<i64, OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        let s = self.resolve(id_prefix).await?;
        let id = s.container_id.clone();
        let c = self
            .container(self.ns(), &id)
            .await?
            .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} vanished")))?;
        // The exec'd process runs as the sidecar's own user, with its env and no capabilities.
        let base: oci_spec::runtime::Spec = c
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} has no readable spec")))?;
        let (uid, env) = base
            .process()
            .as_ref()
            .map(|p| (p.user().uid(), p.env().clone().unwrap_or_default()))
            .unwrap_or((0, Vec::new()));
        let mut process = ProcessBuilder::default()
            .user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(uid)
                    .build()
                    .map_err(oci_err)?,
            )
            .args(cmd.to_vec())
            .env(env)
            .cwd("/")
            .capabilities(no_capabilities())
            .no_new_privileges(true)
            .build()
            .map_err(oci_err)?;
        process.set_rlimits(None);
        let process = serde_json::to_vec(&process).map_err(|e| RuntimeError::Runtime(e.to_string()))?;
        let exec_id = format!("exec-{}", &random_id()?[..12]);
        let dir = self.sidecar_dir(&id);
        let fifos = [
            dir.join(format!("{exec_id}.out")),
            dir.join(format!("{exec_id}.err")),
        ];
        for f in &fifos {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| RuntimeError::Runtime(format!("mkfifo {}: {e}", f.display())))?;
        }
        let result = self
            .exec_with_fifos(&id, &exec_id, process, &fifos, out, err)
            .await;
        for f in &fifos {
            let _ = std::fs::remove_file(f);
        }
        result
    }

    async fn exec_with_fifos<O, E>(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        fifos: &[PathBuf; 2],
        out: &mut O,
        err: &mut E,
    ) -> Result<i64, OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(16);
        let readers: Vec<_> = fifos
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.clone();
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || drain_fifo(&f, i, tx))
            })
            .collect();
        drop(tx);
        let mut t = Client::from(self.channel()).tasks();
        let started = async {
            t.exec(req(
                ExecProcessRequest {
                    container_id: id.to_string(),
                    stdin: String::new(),
                    stdout: fifos[0].display().to_string(),
                    stderr: fifos[1].display().to_string(),
                    terminal: false,
                    spec: Some(prost_types::Any {
                        type_url: PROCESS_TYPE_URL.into(),
                        value: process,
                    }),
                    exec_id: exec_id.to_string(),
                },
                self.ns(),
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("exec in {id}"), e))?;
            t.start(req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                self.ns(),
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("start exec in {id}"), e))?;
            Ok::<_, RuntimeError>(())
        }
        .await;
        if let Err(e) = started {
            // Unblock readers still waiting for a writer that will never come.
            for f in fifos {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(f);
            }
            self.delete_exec(id, exec_id).await;
            for r in readers {
                let _ = r.await;
            }
            return Err(e.into());
        }
        while let Some((i, chunk)) = rx.recv().await {
            let w: &mut (dyn AsyncWrite + Unpin + Send) = if i == 0 { &mut *out } else { &mut *err };
            w.write_all(&chunk).await.map_err(OperatorError::Output)?;
        }
        out.flush().await.map_err(OperatorError::Output)?;
        err.flush().await.map_err(OperatorError::Output)?;
        let waited = t
            .wait(req(
                WaitRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                self.ns(),
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("wait exec in {id}"), e));
        self.delete_exec(id, exec_id).await;
        Ok(i64::from(waited?.into_inner().exit_status))
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        let mut t = Client::from(self.channel()).tasks();
        let _ = t
            .delete_process(req(
                DeleteProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                self.ns(),
                None,
            ))
            .await;
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

/// Opens a FIFO for reading (blocks until the shim opens its end) and sends what comes until EOF.
fn drain_fifo(path: &Path, stream: usize, tx: tokio::sync::mpsc::Sender<(usize, Vec<u8>)>) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.blocking_send((stream, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn oci_err(e: oci_spec::OciSpecError) -> RuntimeError {
    RuntimeError::Runtime(format!("exec process spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_a_log_are_cut_at_line_boundaries() {
        let log = b"a\nb\nc\n";
        assert_eq!(last_lines(log, Some(2)), b"b\nc\n");
        assert_eq!(last_lines(log, Some(5)), log);
        assert_eq!(last_lines(log, None), log);
        assert_eq!(last_lines(log, Some(0)), b"");
        assert_eq!(last_lines(b"a\nb", Some(1)), b"b");
    }
}
