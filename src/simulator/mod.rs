//! A faithful CardTrader API v2 simulator (see ../shared/CARDTRADER.md §7), used by tests, the demo and
//! load tests in place of the real marketplace.

use std::net::SocketAddr;

/// Arguments of `brx-sync simulator`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
}

/// Runs the simulator until SIGTERM/SIGINT.
pub async fn run(args: SimulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet (asked to listen on {})", args.addr)
}
