//! The `brx-sync` binary: parse configuration, start telemetry, run the chosen subcommand.

use std::process::ExitCode;

use brx_sync::{
    App,
    api::auth,
    config::{CatalogCommand, Cli, Command, EXIT_CONFIG},
    shutdown, telemetry,
};
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> ExitCode {
    // reqwest, the OTLP exporter and TLS all share rustls; pick its crypto provider once, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("{line}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let mut cli = cli;
    let reports = matches!(cli.command, Some(Command::Demo | Command::Loadtest(_)));
    if reports && cli.config.log_filter == "info" {
        // The demo's and load test's own lines are the output; the service's logs stay to warnings.
        cli.config.log_filter = "warn".into();
    }
    let telemetry = match telemetry::init(&cli.config) {
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
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "brx-sync failed");
            eprintln!("brx-sync: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = App::build(cli.config).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Command::Migrate => brx_sync::app::migrate(&cli.config).await,
        Command::Demo => brx_sync::demo::run(cli.config).await,
        Command::Catalog(CatalogCommand::Seed { prints }) => {
            brx_sync::blueprints::fixture::seed(&cli.config, prints).await?;
            println!(
                "catalogue seeded: {prints} prints across {}",
                cli.config.catalog_tables.join(", ")
            );
            Ok(())
        }
        Command::Simulator(args) => brx_sync::simulator::run(args).await,
        Command::Loadtest(args) => brx_sync::loadtest::run(cli.config, args).await,
        Command::Token(args) => {
            let secret = cli.config.jwt_hs256_secret.ok_or_else(|| {
                anyhow::anyhow!("BRX_JWT_HS256_SECRET must be set to mint a token")
            })?;
            let subject = args
                .sub
                .map(brx_sync::domain::UserId::from_uuid)
                .transpose()?;
            let token = auth::mint_token(
                secret.expose_secret(),
                subject,
                &cli.config.jwt_service_role,
                args.ttl,
            )?;
            println!("{token}");
            Ok(())
        }
    }
}
