//! `cardtrader-sim`: serves the simulator until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;

/// A faithful CardTrader API v2 simulator on a local port.
#[derive(Debug, Parser)]
#[command(name = "cardtrader-sim", version, about)]
struct Cli {
    #[command(flatten)]
    args: cardtrader_sim::SimulatorArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRX_SIM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cardtrader_sim::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cardtrader-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}
