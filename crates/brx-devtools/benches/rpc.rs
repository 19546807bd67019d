//! RPC overhead benchmark: one load client drives a minimal tonic echo server (the ceiling) and
//! brx-sync's own cheap RPCs (GetStats with a verified JWT, health Check) through every layer, in one
//! run, and prints throughput and latency as ratios against the echo.
//!
//! `cargo bench --bench rpc` (needs the local PostgreSQL; BENCH_SECONDS, BENCH_CONCURRENCY tune it).

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use brx_devtools::echo::{
    EchoRequest, EchoResponse,
    echo_service_client::EchoServiceClient,
    echo_service_server::{EchoService, EchoServiceServer},
};
use brx_sync::{
    App,
    api::auth::mint_token,
    config::Config,
    pb::v1::{GetStatsRequest, admin_service_client::AdminServiceClient},
};
use hdrhistogram::Histogram;
use secrecy::SecretString;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CONNECTIONS: usize = 4;
/// At least 32 bytes: `serve` refuses a shorter HS256 secret.
const SECRET: &str = "bench-secret-of-at-least-thirty-two-bytes";

struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
        }))
    }
}

#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let duration = Duration::from_secs(seconds);

    let echo_addr = start_echo().await?;
    let (app_addr, _stop) = start_app().await?;
    let token = mint_token(SECRET, None, "service", Duration::from_secs(3600))?;

    println!(
        "rpc bench: {concurrency} concurrent callers over {CONNECTIONS} HTTP/2 connections, {seconds} s per run, 2 rounds"
    );
    let mut echo_runs = Vec::new();
    let mut stats_runs = Vec::new();
    let mut health_runs = Vec::new();
    for _round in 0..2 {
        let channels = channels_for(echo_addr).await?;
        echo_runs.push(
            drive(duration, concurrency, move |i| {
                let mut client = EchoServiceClient::new(channels[i % CONNECTIONS].clone());
                async move {
                    client
                        .echo(EchoRequest {
                            message: "ping".into(),
                        })
                        .await
                        .is_ok()
                }
            })
            .await,
        );
        let channels = channels_for(app_addr).await?;
        let bearer = format!("Bearer {token}");
        stats_runs.push(
            drive(duration, concurrency, move |i| {
                let mut client = AdminServiceClient::new(channels[i % CONNECTIONS].clone());
                let mut request = Request::new(GetStatsRequest {});
                request
                    .metadata_mut()
                    .insert("authorization", bearer.parse().expect("ascii token"));
                async move { client.get_stats(request).await.is_ok() }
            })
            .await,
        );
        let channels = channels_for(app_addr).await?;
        health_runs.push(
            drive(duration, concurrency, move |i| {
                let mut client = HealthClient::new(channels[i % CONNECTIONS].clone());
                async move {
                    client
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok()
                }
            })
            .await,
        );
    }
    let echo = average(&echo_runs);
    report("echo (ceiling)", echo, None);
    report(
        "AdminService.GetStats (JWT, all layers)",
        average(&stats_runs),
        Some(echo),
    );
    report(
        "grpc.health.v1 Check (all layers)",
        average(&health_runs),
        Some(echo),
    );
    println!("targets: RPS >= 0.9x echo, p99 <= 1.5x echo");
    Ok(())
}

async fn channels_for(addr: SocketAddr) -> anyhow::Result<Arc<Vec<Channel>>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(Arc::new(channels))
}

/// Runs `concurrency` callers in a closed loop for `duration` after a one-second warm-up.
async fn drive<F, Fut>(duration: Duration, concurrency: usize, make_call: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let make_call = Arc::new(make_call);
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new(3).expect("valid precision"),
    ));
    let warm_up_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_up_until + duration;
    let mut callers = Vec::new();
    for caller in 0..concurrency {
        let make_call = make_call.clone();
        let histogram = histogram.clone();
        callers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("valid precision");
            let mut failures = 0u64;
            loop {
                let started = Instant::now();
                if started >= stop_at {
                    break;
                }
                let ok = make_call(caller).await;
                if started >= warm_up_until {
                    if ok {
                        local
                            .record(started.elapsed().as_micros() as u64)
                            .expect("in range");
                    } else {
                        failures += 1;
                    }
                }
            }
            histogram.lock().await.add(&local).expect("same bounds");
            failures
        }));
    }
    let mut failures = 0;
    for caller in callers {
        failures += caller.await.expect("caller finished");
    }
    assert_eq!(failures, 0, "calls failed during the benchmark");
    let histogram = histogram.lock().await;
    Figures {
        rps: histogram.len() as f64 / duration.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
    }
}

fn average(runs: &[Figures]) -> Figures {
    let n = runs.len() as f64;
    Figures {
        rps: runs.iter().map(|run| run.rps).sum::<f64>() / n,
        p50_us: (runs.iter().map(|run| run.p50_us as f64).sum::<f64>() / n) as u64,
        p99_us: (runs.iter().map(|run| run.p99_us as f64).sum::<f64>() / n) as u64,
    }
}

fn report(name: &str, figures: Figures, ceiling: Option<Figures>) {
    let mut line = format!(
        "{name:<42} {:>9.0} rps   p50 {:>6} us   p99 {:>6} us",
        figures.rps, figures.p50_us, figures.p99_us
    );
    if let Some(ceiling) = ceiling {
        line.push_str(&format!(
            "   -> {:.2}x echo rps, {:.2}x echo p99",
            figures.rps / ceiling.rps,
            figures.p99_us as f64 / ceiling.p99_us.max(1) as f64
        ));
    }
    println!("{line}");
}

async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

async fn start_app() -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    // A fresh bench database each run, created and migrated by the app: never stale from older builds.
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query("DROP DATABASE IF EXISTS brx_bench WITH (FORCE)")
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut config = Config::defaults();
    config.server.grpc_addr = "127.0.0.1:0".parse()?;
    config.server.http_addr = "127.0.0.1:0".parse()?;
    config.storage.database_url =
        SecretString::from("postgres://postgres@127.0.0.1:5432/brx_bench".to_owned());
    config.auth.jwt_hs256_secret = Some(SecretString::from(SECRET.to_owned()));
    // No seller is connected here: no token to encrypt, so no keys to configure.
    config.auth.dev_mode = true;
    config.telemetry.log_filter = "error".into();
    let app = App::build(config).await?;
    let addr = app.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    // Health answers SERVING once the supervisor has migrated the bench database.
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    );
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == 1 {
            return Ok((addr, stop));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("brx-sync never became SERVING")
}
