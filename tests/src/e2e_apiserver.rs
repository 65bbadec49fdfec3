//! Stopping and starting the test cluster's kube-apiserver for the API-outage scenario.
//!
//! The e2e kit (`/work/shared/e2e`) starts every daemon as `setsid nohup bash -c 'echo $$ >
//! <pid file>; exec <daemon> <args>'` with its log appended to `$STATE/logs/<name>.log` and its pid
//! in `$STATE/pids/<name>.pid`. [`ApiServer::stop`] remembers the running apiserver's command line
//! and environment (which carries the kit's owner mark) from `/proc`, stops it with SIGTERM, and
//! [`Stopped::start`] starts the same command the kit's way, so `cluster-down.sh` finds and stops
//! it as its own.
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::e2e::wait_until;

/// The kit's state directory (`TRAFFIC_E2E_STATE`).
pub const STATE: &str = "/run/traffic-e2e";

fn nul_split(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The running kube-apiserver of the kit.
pub struct ApiServer {
    pidfile: PathBuf,
    log: PathBuf,
}

/// A stopped kube-apiserver, with what it takes to start it again. Dropped without
/// [`Stopped::start`] (a test that failed meanwhile), it starts the apiserver itself: the cluster
/// is never left without one.
pub struct Stopped(Option<Launch>);

struct Launch {
    pidfile: PathBuf,
    log: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl ApiServer {
    pub fn of_kit() -> Self {
        let state = Path::new(STATE);
        Self {
            pidfile: state.join("pids/kube-apiserver.pid"),
            log: state.join("logs/kube-apiserver.log"),
        }
    }

    pub fn pid(&self) -> anyhow::Result<i32> {
        std::fs::read_to_string(&self.pidfile)
            .with_context(|| format!("read {}", self.pidfile.display()))?
            .trim()
            .parse()
            .context("kube-apiserver pid file")
    }

    /// SIGTERM, and SIGKILL after 10 s (a terminating apiserver refuses connections at once but
    /// may take minutes to end its watches); returns once the process is gone.
    pub fn stop(&self) -> anyhow::Result<Stopped> {
        let pid = self.pid()?;
        let argv = nul_split(&std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let env = nul_split(&std::fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        anyhow::ensure!(
            argv.first().is_some_and(|a| a.ends_with("kube-apiserver")),
            "pid {pid} is not kube-apiserver: {argv:?}"
        );
        let gone = || Ok((!Path::new(&format!("/proc/{pid}")).exists()).then_some(()));
        let target = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(target, nix::sys::signal::SIGTERM)
            .with_context(|| format!("kill -TERM {pid}"))?;
        let stopped = Stopped(Some(Launch {
            pidfile: self.pidfile.clone(),
            log: self.log.clone(),
            argv,
            env,
        }));
        if wait_until(
            "kube-apiserver to exit",
            Duration::from_secs(10),
            Duration::from_millis(50),
            gone,
        )
        .is_err()
        {
            nix::sys::signal::kill(target, nix::sys::signal::SIGKILL)
                .with_context(|| format!("kill -KILL {pid}"))?;
            wait_until(
                "kube-apiserver to die",
                Duration::from_secs(10),
                Duration::from_millis(50),
                gone,
            )?;
        }
        Ok(stopped)
    }
}

impl Stopped {
    /// Starts the same kube-apiserver again, the kit's way (own session, pid file, appended log).
    pub fn start(mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(l) => l.start(),
            None => Ok(()),
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            if let Err(e) = l.start() {
                eprintln!("cannot start kube-apiserver again: {e:#} (run cluster-up.sh)");
            }
        }
    }
}

impl Launch {
    fn start(self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let _ = std::fs::remove_file(&self.pidfile);
        let mut cmd = Command::new("setsid");
        cmd.args(["bash", "-c", "echo $$ > \"$0\"; exec \"$@\""])
            .arg(&self.pidfile)
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().context("start kube-apiserver")?;
        // setsid forks when it is a group leader: reap the wrapper without waiting for the daemon.
        std::thread::spawn(move || child.wait());
        wait_until(
            "the kube-apiserver pid file",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(self.pidfile.exists().then_some(())),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cmdline_and_environ_split_on_nul_bytes() {
        assert_eq!(
            nul_split(b"/bin/kube-apiserver\0--etcd-servers=x\0\0"),
            vec!["/bin/kube-apiserver", "--etcd-servers=x"]
        );
        assert!(nul_split(b"").is_empty());
    }
}
