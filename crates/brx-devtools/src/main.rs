//! `brx-devtools`: the demo, the load tests, the catalogue fixture and the simulator, each with the
//! service's settings (flags and `BRX_*` variables, as `brx-sync --help` documents them).

use std::process::ExitCode;

use brx_devtools::{demo, loadtest};
use brx_sync::{
    blueprints::fixture,
    config::{Config, ConfigError, EXIT_CONFIG},
    telemetry,
};
use clap::{Parser, Subcommand};

/// brx-sync's developer tools.
#[derive(Debug, Parser)]
#[command(name = "brx-devtools", version, about)]
struct Cli {
    #[command(subcommand)]
    tool: Tool,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// The whole service on this machine, step by step.
    Demo,
    /// Load tests of the real replica against the simulator.
    Loadtest(loadtest::LoadtestArgs),
    /// The shop's catalogue fixture (MySQL).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The CardTrader simulator (as the `cardtrader-sim` binary), which the load tests run as a
    /// child process of this binary.
    Simulator(cardtrader_sim::SimulatorArgs),
    /// One replica of the service, as `brx-sync serve` runs it (settings from the environment);
    /// the soak runs several as child processes of this binary.
    Replica,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Creates the fixture's tables and fills them with prints for blueprints 1..=prints.
    Seed {
        #[arg(long, default_value_t = 300_000)]
        prints: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // reqwest and TLS share rustls; pick its crypto provider once, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cli = Cli::parse();
    if cli.config.telemetry.log_filter == "info"
        && matches!(cli.tool, Tool::Demo | Tool::Loadtest(_))
    {
        // The demo's and load test's own lines are the output; the service's logs stay to warnings.
        cli.config.telemetry.log_filter = "warn".into();
    }
    let telemetry = match telemetry::init(&cli.config.telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("invalid configuration: BRX_LOG / OTEL_EXPORTER_OTLP_ENDPOINT: {err:#}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let result = run(cli).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<ConfigError>() => {
            eprintln!("{err}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(err) => {
            eprintln!("brx-devtools: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.tool {
        Tool::Demo => demo::run(cli.config).await,
        Tool::Loadtest(args) => loadtest::run(cli.config, args).await,
        Tool::Catalog(CatalogCommand::Seed { prints }) => {
            fixture::seed(&cli.config.storage.mysql_url, &cli.config.catalog, prints).await?;
            println!(
                "catalogue seeded: {prints} prints across {}",
                cli.config.catalog.tables.join(", ")
            );
            Ok(())
        }
        Tool::Simulator(args) => cardtrader_sim::run(args).await,
        Tool::Replica => {
            let app = brx_sync::App::build(cli.config).await?;
            app.run_until_stopped(brx_sync::shutdown::signal()).await
        }
    }
}
