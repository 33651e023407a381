//! Real `skeelo-workers` processes for the tests and the benchmark that need one (to
//! kill it, read its CPU and memory, or grep its logs): started against a [`World`],
//! ready when `/readyz` says so, and stopped when dropped, however the caller ends.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::World;

/// A worker process. Dropping it sends SIGTERM, then SIGKILL after ten seconds.
pub struct WorkerProcess {
    child: Child,
    /// Where its `/metrics`, `/healthz` and `/readyz` listen.
    pub port: u16,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl WorkerProcess {
    /// Starts `binary` for `world` (its broker, database and simulator, the demo
    /// credentials), with `env` added or overriding, and waits until it is ready.
    pub async fn start(
        binary: &Path,
        world: &World,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> anyhow::Result<WorkerProcess> {
        let mut worker = WorkerProcess::spawn(binary, world, env, stderr).await?;
        worker.wait_for("/readyz", Duration::from_secs(60)).await?;
        Ok(worker)
    }

    /// Starts it like [`WorkerProcess::start`], but returns once `/healthz` answers:
    /// the process is up, though its broker or database may be away.
    pub async fn spawn(
        binary: &Path,
        world: &World,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> anyhow::Result<WorkerProcess> {
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .envs(world.env())
            .env("SKEELO_RATE_PER_SECOND", "unlimited")
            .env("SKEELO_REPAIR_INTERVAL", "off")
            .env("SKEELO_SELF_HEAL_INTERVAL", "off")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut worker = WorkerProcess { child, port };
        worker.wait_for("/healthz", Duration::from_secs(30)).await?;
        Ok(worker)
    }

    async fn wait_for(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the worker exited before {path} answered: {status}");
            }
            if Instant::now() > deadline {
                bail!("{path} never answered");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and how it exited (SIGKILL after ten seconds: then it did not exit
    /// by itself, and the status says killed).
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Events it has handled so far, from its own `skeelo_events_total`.
    pub async fn handled(&self) -> anyhow::Result<f64> {
        events_handled(self.port).await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
    }
}

/// The sum of `skeelo_events_total` at a worker's `/metrics`. Bounded: a worker that
/// stopped answering (every thread of it stuck) fails the read, and the waits below
/// end at their limit instead of hanging the test.
pub async fn events_handled(port: u16) -> anyhow::Result<f64> {
    // Shared by every test of a binary, each on a runtime of its own: it keeps no
    // connection, since a pooled one belongs to the runtime that opened it.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    });
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("skeelo_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until the workers on `ports` together handled `n` events; how long it took
/// (to within 20 ms: their metrics are read that often).
pub async fn wait_handled(ports: &[u16], n: usize, limit: Duration) -> anyhow::Result<Duration> {
    wait_handled_every(ports, n, limit, Duration::from_millis(20)).await
}

/// [`wait_handled`], reading the metrics every `every`: rendering them costs a worker
/// CPU, and where timing is measured elsewhere (the partner's own record of its
/// calls) a worker scraped 50 times a second is not the worker being measured.
pub async fn wait_handled_every(
    ports: &[u16],
    n: usize,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut total = 0.0;
        for p in ports {
            total += events_handled(*p).await.unwrap_or(0.0);
        }
        if total >= n as f64 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("only {total} of {n} events handled in {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}
