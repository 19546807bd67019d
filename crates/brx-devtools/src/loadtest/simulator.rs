//! The CardTrader simulator as a child process of this binary, so its memory and CPU are not counted as
//! the replica's. Dropping it kills the child, so an error anywhere leaves no simulator behind.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use tokio::process::{Child, Command};

use cardtrader_sim::Faults;

/// Requests in flight while the per-token statistics are collected.
const STATS_CONCURRENCY: usize = 16;

/// A running `brx-sync simulator` child.
#[derive(Debug)]
pub(super) struct SimulatorProcess {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
}

/// What the simulator saw from every seeded token together (or from one).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SimStats {
    pub(super) requests: u64,
    pub(super) rejected_429: u64,
    /// Most requests one token sent in any 10-second window since the start.
    pub(super) peak_in_10s: u64,
}

/// A product as the simulator's `/products/export` lists it; the fields the load test reads.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(super) struct SimProduct {
    pub(super) id: i64,
    pub(super) blueprint_id: i64,
    pub(super) quantity: i64,
    pub(super) price_cents: i64,
}

impl SimulatorProcess {
    /// Starts the simulator with `sellers` seeded sellers of `products` each; returns once it answers.
    pub(super) async fn start(sellers: u32, products: u64) -> anyhow::Result<Self> {
        let addr = free_local_addr()?;
        let exe = std::env::current_exe().context("locating the brx-devtools binary")?;
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
        let mut total = SimStats::default();
        for stats in self.stats_per_token(sellers).await? {
            total.requests += stats.requests;
            total.rejected_429 += stats.rejected_429;
            total.peak_in_10s = total.peak_in_10s.max(stats.peak_in_10s);
        }
        Ok(total)
    }

    /// The statistics of tokens `sim-token-1..=sellers`, in token order.
    pub(super) async fn stats_per_token(&self, sellers: u32) -> anyhow::Result<Vec<SimStats>> {
        futures::stream::iter(1..=sellers)
            .map(|n| self.token_stats(n))
            .buffered(STATS_CONCURRENCY)
            .try_collect()
            .await
    }

    /// A cheap handle on the simulator's HTTP API, for tasks of their own.
    pub(super) fn api(&self) -> SimulatorApi {
        SimulatorApi {
            http: self.http.clone(),
            addr: self.addr,
        }
    }

    /// Kills the child and reaps it.
    pub(super) async fn stop(mut self) {
        if let Err(err) = self.child.kill().await {
            tracing::warn!(error = %err, "could not kill the simulator child");
        }
    }

    async fn token_stats(&self, seller: u32) -> anyhow::Result<SimStats> {
        let url = format!("http://{}/_sim/stats?token={}", self.addr, token(seller));
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
            peak_in_10s: field("max_general_in_any_10s").unwrap_or(0),
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
            let answer = self.http.get(&info).bearer_auth(token(1)).send().await;
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

/// The simulator's API and admin routes, as the purchases scenario drives them; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct SimulatorApi {
    http: reqwest::Client,
    addr: SocketAddr,
}

impl SimulatorApi {
    fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// Seller `seller`'s products through the API (rate-limited like any client), all of them or
    /// those of one blueprint.
    pub(super) async fn export(
        &self,
        seller: u32,
        blueprint: Option<i64>,
    ) -> anyhow::Result<Vec<SimProduct>> {
        let mut url = format!("{}/products/export", self.base_url());
        if let Some(blueprint) = blueprint {
            url.push_str(&format!("?blueprint_id={blueprint}"));
        }
        let answer = self.http.get(url).bearer_auth(token(seller)).send().await?;
        Ok(answer.error_for_status()?.json().await?)
    }

    /// `POST /products/:id/increment` as seller `seller`, through the API.
    pub(super) async fn increment(
        &self,
        seller: u32,
        product: i64,
        delta: i64,
    ) -> anyhow::Result<()> {
        let url = format!("{}/products/{product}/increment", self.base_url());
        self.http
            .post(url)
            .bearer_auth(token(seller))
            .json(&serde_json::json!({ "delta_quantity": delta }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Sets a product's quantity behind every client's back (admin route; ≤ 0 deletes it).
    pub(super) async fn set_quantity(
        &self,
        seller: u32,
        product: i64,
        quantity: i64,
    ) -> anyhow::Result<()> {
        let change = serde_json::json!({ "quantity": quantity });
        self.patch_product(seller, product, change).await
    }

    /// Adds `delta` to a product's quantity behind every client's back, atomically (admin route):
    /// a sale elsewhere on CardTrader is `-1`.
    pub(super) async fn adjust_quantity(
        &self,
        seller: u32,
        product: i64,
        delta: i64,
    ) -> anyhow::Result<()> {
        let change = serde_json::json!({ "delta": delta });
        self.patch_product(seller, product, change).await
    }

    async fn patch_product(
        &self,
        seller: u32,
        product: i64,
        change: serde_json::Value,
    ) -> anyhow::Result<()> {
        let url = format!(
            "http://{}/_sim/sellers/{}/products/{product}",
            self.addr,
            token(seller)
        );
        self.http
            .patch(url)
            .json(&change)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The secret CardTrader signs seller `seller`'s webhooks with, as its `GET /info` shows it.
    pub(super) async fn shared_secret(&self, seller: u32) -> anyhow::Result<String> {
        let info: serde_json::Value = self
            .http
            .get(format!("{}/info", self.base_url()))
            .bearer_auth(token(seller))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        info["shared_secret"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("GET /info of {} has no shared_secret", token(seller)))
    }

    /// Replaces the injected faults.
    pub(super) async fn set_faults(&self, faults: &Faults) -> anyhow::Result<()> {
        let url = format!("http://{}/_sim/faults", self.addr);
        self.http
            .put(url)
            .json(faults)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// The bearer token of seeded seller `seller`.
fn token(seller: u32) -> String {
    format!("sim-token-{seller}")
}

/// A loopback address with a port that was free a moment ago (the child binds it right after).
pub(super) fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
