//! The operator CLI's view of Docker sidecars: `proxies`, `logs` and `exec` resolve a sidecar by
//! id prefix and copy its output; `tail` gives the last lines for error details.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{runtime_err, DockerRuntime};
use crate::operator::{resolve_prefix, OperatorError, ProxyRow};
use crate::{ContainerRuntime, RuntimeError, Sidecar};

impl DockerRuntime {
    /// The last lines of a container's output (for error details).
    pub(super) async fn tail(&self, id: &str, lines: usize) -> String {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let _ = self.copy_logs(id, opts, &mut out, &mut err).await;
        out.extend_from_slice(&err);
        String::from_utf8_lossy(&out).trim_end().to_string()
    }

    async fn copy_logs<O, E>(
        &self,
        id: &str,
        opts: LogsOptions,
        out: &mut O,
        err: &mut E,
    ) -> Result<(), OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        let mut stream = self.docker.logs(id, Some(opts));
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| runtime_err(&format!("logs {id}"), e))?;
            write_output(item, out, err).await?;
        }
        out.flush().await.map_err(OperatorError::Output)?;
        err.flush().await.map_err(OperatorError::Output)?;
        Ok(())
    }

    /// The one sidecar whose id starts with `prefix`.
    pub async fn resolve(&self, prefix: &str) -> Result<Sidecar, OperatorError> {
        let all = self.sidecars().await?;
        Ok(resolve_prefix(&all, prefix)?.clone())
    }

    /// Rows of `traffic-agent proxies` (without the redirect mode).
    pub async fn proxies(&self) -> Result<Vec<ProxyRow>, RuntimeError> {
        Ok(self.sidecars().await?.iter().map(ProxyRow::from).collect())
    }

    /// Copies a sidecar's output (Envoy logs to stderr) to `out`/`err`; with `follow` until the
    /// container stops. `tail`: only the last lines.
    pub async fn logs<O, E>(
        &self,
        id_prefix: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut O,
        err: &mut E,
    ) -> Result<(), OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        let s = self.resolve(id_prefix).await?;
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        self.copy_logs(&s.container_id, opts, out, err).await
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
        let id = &s.container_id;
        let created = self
            .docker
            .create_exec(
                id,
                ExecConfig {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| runtime_err(&format!("exec in {id}"), e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| runtime_err(&format!("exec in {id}"), e))?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(item) = output.next().await {
                let item = item.map_err(|e| runtime_err(&format!("exec in {id}"), e))?;
                write_output(item, out, err).await?;
            }
        }
        out.flush().await.map_err(OperatorError::Output)?;
        err.flush().await.map_err(OperatorError::Output)?;
        // The exit code is set a moment after the output stream ends.
        for _ in 0..50 {
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|e| runtime_err(&format!("exec in {id}"), e))?;
            if inspected.running != Some(true) {
                if let Some(code) = inspected.exit_code {
                    return Ok(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::Runtime(format!("exec in {id}: no exit code")).into())
    }
}

async fn write_output<O, E>(item: LogOutput, out: &mut O, err: &mut E) -> Result<(), OperatorError>
where
    O: AsyncWrite + Unpin + Send,
    E: AsyncWrite + Unpin + Send,
{
    match item {
        LogOutput::StdErr { message } => err.write_all(&message).await,
        LogOutput::StdOut { message } | LogOutput::Console { message } => out.write_all(&message).await,
        LogOutput::StdIn { .. } => Ok(()),
    }
    .map_err(OperatorError::Output)
}
