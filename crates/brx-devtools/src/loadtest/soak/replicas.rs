//! The replicas under test: separate processes (`brx-devtools replica`, the service's `serve` with its
//! settings from the environment), each on fixed ports so that a restarted replica is found where
//! the killed one was. Killed with SIGKILL, drained with SIGTERM, started again.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::loadtest::{measure, simulator::free_local_addr};

/// Longest a started replica may take to answer SERVING.
const SERVING_WITHIN: Duration = Duration::from_secs(60);

/// One replica slot: its ports, its process while it runs, what it used at most.
#[derive(Debug)]
pub(super) struct Replica {
    pub(super) name: String,
    pub(super) grpc: SocketAddr,
    pub(super) http: SocketAddr,
    pub(super) admin: SocketAddr,
    child: Option<Child>,
    /// Highest peak RSS of any process that ran in this slot, KiB.
    pub(super) peak_rss_kib: u64,
}

/// Every replica slot, and the environment each process starts with.
#[derive(Debug)]
pub(super) struct Replicas {
    pub(super) slots: Vec<Replica>,
    env: BTreeMap<String, String>,
    /// A gRPC channel per slot, reconnecting on its own after a restart.
    pub(super) channels: Vec<Channel>,
}

impl Replicas {
    /// Starts `count` replicas with `env` and waits until each is SERVING.
    pub(super) async fn start(count: usize, env: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut slots = Vec::with_capacity(count);
        for index in 0..count {
            slots.push(Replica {
                name: format!("replica-{index}"),
                grpc: free_local_addr()?,
                http: free_local_addr()?,
                admin: free_local_addr()?,
                child: None,
                peak_rss_kib: 0,
            });
        }
        let mut replicas = Self {
            slots,
            env,
            channels: Vec::new(),
        };
        for index in 0..count {
            replicas.spawn(index)?;
        }
        for index in 0..count {
            replicas.wait_serving(index).await?;
            let channel = Channel::from_shared(format!("http://{}", replicas.slots[index].grpc))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            replicas.channels.push(channel);
        }
        Ok(replicas)
    }

    /// Starts the process of slot `index`.
    pub(super) fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the brx-devtools binary")?;
        let slot = &mut self.slots[index];
        let child = Command::new(exe)
            .arg("replica")
            .envs(&self.env)
            .env("BRX_GRPC_ADDR", slot.grpc.to_string())
            .env("BRX_HTTP_ADDR", slot.http.to_string())
            .env("BRX_ADMIN_ADDR", slot.admin.to_string())
            // Its jobs' `lease_owner` starts with this, so the soak can see whose leases are whose.
            .env("HOSTNAME", &slot.name)
            // Logs (at `--replica-log`) go where the soak's own output goes.
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", slot.name))?;
        slot.child = Some(child);
        Ok(())
    }

    /// Waits until slot `index` answers SERVING (its process may not listen yet); how long that took.
    pub(super) async fn wait_serving(&self, index: usize) -> anyhow::Result<Duration> {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
        let started = Instant::now();
        let channel = Channel::from_shared(format!("http://{}", self.slots[index].grpc))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let mut health = HealthClient::new(channel);
        loop {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(answer) = health.check(request).await
                && answer.into_inner().status() == ServingStatus::Serving
            {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < SERVING_WITHIN,
                "{} not SERVING within {SERVING_WITHIN:?}",
                self.slots[index].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: the process ends mid-whatever, holding leases and half-sent calls.
    pub(super) async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.sample_rss();
        if let Some(mut child) = self.slots[index].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the process to drain and exit; how long that took.
    pub(super) async fn drain(&mut self, index: usize) -> anyhow::Result<Duration> {
        self.sample_rss();
        let started = Instant::now();
        let Some(mut child) = self.slots[index].child.take() else {
            return Ok(Duration::ZERO);
        };
        let pid = child.id().context("the replica has no pid")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let exited = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("the replica did not exit within 60 s of SIGTERM")??;
        anyhow::ensure!(
            exited.success(),
            "{} exited with {exited} after SIGTERM",
            self.slots[index].name
        );
        Ok(started.elapsed())
    }

    /// Records each running process's peak RSS into its slot.
    pub(super) fn sample_rss(&mut self) {
        for slot in &mut self.slots {
            let peak = slot
                .child
                .as_ref()
                .and_then(Child::id)
                .and_then(|pid| measure::proc_status_kib(&pid.to_string(), "VmHWM"));
            slot.peak_rss_kib = slot.peak_rss_kib.max(peak.unwrap_or(0));
        }
    }

    /// Whether slot `index` has a process now.
    pub(super) fn is_running(&self, index: usize) -> bool {
        self.slots[index].child.is_some()
    }

    /// SIGTERM to every replica, waiting for each to drain.
    pub(super) async fn stop_all(&mut self) -> anyhow::Result<()> {
        for index in 0..self.slots.len() {
            self.drain(index).await?;
        }
        Ok(())
    }
}
