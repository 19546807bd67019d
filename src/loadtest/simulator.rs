//! The CardTrader simulator as a child process of this binary, so its memory and CPU are not counted as
//! the replica's. Dropping it kills the child, so an error anywhere leaves no simulator behind.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use tokio::process::{Child, Command};

/// Requests in flight while the per-token statistics are collected.
const STATS_CONCURRENCY: usize = 16;

/// A running `brx-sync simulator` child.
#[derive(Debug)]
pub(super) struct SimulatorProcess {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
}

/// What the simulator saw from every seeded token together.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SimStats {
    pub(super) requests: u64,
    pub(super) rejected_429: u64,
}

impl SimulatorProcess {
    /// Starts the simulator with `sellers` seeded sellers of `products` each; returns once it answers.
    pub(super) async fn start(sellers: u32, products: u64) -> anyhow::Result<Self> {
        let addr = free_local_addr()?;
        let exe = std::env::current_exe().context("locating the brx-sync binary")?;
        let child = Command::new(exe)
            .arg("simulator")
            .args(["--addr", &addr.to_string()])
            .args(["--sellers", &sellers.to_string()])
            .args(["--products-per-seller", &products.to_string()])
            .env("BRX_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulator child process")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut simulator = Self { child, addr, http };
        simulator.wait_until_answering().await?;
        Ok(simulator)
    }

    /// The base URL the replica's CardTrader client uses.
    pub(super) fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// The child's peak resident set, in KiB.
    pub(super) fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        super::measure::proc_status_kib(&pid.to_string(), "VmHWM")
    }

    /// Requests and 429 answers summed over tokens `sim-token-1..=sellers`.
    pub(super) async fn stats(&self, sellers: u32) -> anyhow::Result<SimStats> {
        let mut per_token = futures::stream::iter(1..=sellers)
            .map(|n| self.token_stats(n))
            .buffer_unordered(STATS_CONCURRENCY);
        let mut total = SimStats::default();
        while let Some(stats) = per_token.next().await {
            let stats = stats?;
            total.requests += stats.requests;
            total.rejected_429 += stats.rejected_429;
        }
        Ok(total)
    }

    /// Kills the child and reaps it.
    pub(super) async fn stop(mut self) {
        if let Err(err) = self.child.kill().await {
            tracing::warn!(error = %err, "could not kill the simulator child");
        }
    }

    async fn token_stats(&self, seller: u32) -> anyhow::Result<SimStats> {
        let url = format!("http://{}/_sim/stats?token=sim-token-{seller}", self.addr);
        let body: serde_json::Value = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let field = |name: &str| body.get(name).and_then(serde_json::Value::as_u64);
        Ok(SimStats {
            requests: field("total").unwrap_or(0),
            rejected_429: field("rejected_429").unwrap_or(0),
        })
    }

    /// Polls `GET /info` as seller 1 until it answers 200; fails if the child exits or 30 s pass.
    async fn wait_until_answering(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let info = format!("{}/info", self.base_url());
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the simulator exited at start-up ({status})");
            }
            let answer = self.http.get(&info).bearer_auth("sim-token-1").send().await;
            if matches!(&answer, Ok(response) if response.status().is_success()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the simulator did not answer GET /info within 30 s: {answer:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A loopback address with a port that was free a moment ago (the child binds it right after).
fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
