//! The `brx-sync` binary: parse configuration, start telemetry, run the chosen subcommand.

use std::process::ExitCode;

use brx_sync::{
    App,
    api::auth,
    config::{Cli, Command, ConfigError, EXIT_CONFIG},
    shutdown, telemetry,
};
use secrecy::ExposeSecret;

/// sysexits' EX_TEMPFAIL: `import-legacy` left sellers to retry; the same command again resumes.
const EXIT_TEMPFAIL: u8 = 75;

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
        Err(err) if err.is::<brx_sync::legacy::Incomplete>() => {
            eprintln!("brx-sync: {err}");
            ExitCode::from(EXIT_TEMPFAIL)
        }
        Err(err) if err.is::<ConfigError>() => {
            // One line naming the setting, as clap's own refusals are.
            eprintln!("{err}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
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
        Command::Migrate => brx_sync::app::migrate(&cli.config.storage).await,
        Command::ImportLegacy(args) => brx_sync::legacy::run_command(&cli.config, &args)
            .await
            .map(drop),
        Command::Token(args) => {
            let secret = cli.config.auth.jwt_hs256_secret.as_ref().ok_or_else(|| {
                anyhow::anyhow!("BRX_JWT_HS256_SECRET must be set to mint a token")
            })?;
            let subject = args
                .sub
                .map(brx_sync::domain::UserId::from_uuid)
                .transpose()?;
            let auth = &cli.config.auth;
            let mut claims = auth::claims_for(subject, &auth.jwt_service_role, args.ttl);
            // A token the configured replica accepts: it checks these when they are set.
            claims.iss = auth.jwt_issuer.clone();
            claims.aud = auth.jwt_audience.clone();
            let token = auth::sign(secret.expose_secret(), &claims)?;
            println!("{token}");
            Ok(())
        }
    }
}
