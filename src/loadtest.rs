//! `brx-sync loadtest`: many sellers' full syncs started at once against the simulator, on one
//! replica, with throughput, job latency, peak RSS and PostgreSQL connections reported.

/// Arguments of `brx-sync loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Sellers synced at once.
    #[arg(long, default_value_t = 1_000)]
    pub sellers: u32,
    /// Products per seller.
    #[arg(long, default_value_t = 1_000)]
    pub products: u64,
}

/// Runs the load test and prints its report.
pub async fn run(_config: crate::config::Config, _args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::bail!("loadtest is being written")
}
