//! The service's one typed configuration: every setting is a flag and a `BRX_*` environment variable,
//! validated once, in `App::build`. Nothing else in the crate reads the environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, error::ContextKind};

use secrecy::SecretString;

/// Exit code for a configuration error (`EX_CONFIG` would be 78; sysexits' `EX_USAGE`, 64, is what
/// operators of this service expect from any bad setting).
pub const EXIT_CONFIG: i32 = 64;

/// The real CardTrader API, the default endpoint.
pub const CARDTRADER_API: &str = "https://api.cardtrader.com/api/v2";

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Command line of the `brx-sync` binary.
#[derive(Debug, Parser)]
#[command(name = "brx-sync", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
}

/// The subcommands of `brx-sync`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve gRPC, the webhook listener and the admin listener (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a caller JWT signed with BRX_JWT_HS256_SECRET, for grpcurl and local testing.
    Token(TokenArgs),
    /// Move sellers over from the Python service's database: their CardTrader tokens (re-encrypted),
    /// webhook secrets and inventories, then a full sync each. Safe to run again.
    ImportLegacy(ImportLegacyArgs),
}

/// Arguments of `brx-sync import-legacy`.
#[derive(Debug, Clone, Args)]
pub struct ImportLegacyArgs {
    /// PostgreSQL URL of the Python service's database. It is only read (every transaction on it
    /// is read-only), never written.
    #[arg(long = "from", env = "BRX_LEGACY_DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub from: SecretString,
    /// The Python service's FERNET_KEY (URL-safe base64 of 32 bytes). Give it through the
    /// environment: a flag's value shows in the process list.
    #[arg(long, env = "BRX_LEGACY_FERNET_KEY", value_parser = secret, hide_env_values = true)]
    pub fernet_key: SecretString,
    /// Decide and report everything, write nothing (CardTrader is still asked with --verify).
    #[arg(long)]
    pub dry_run: bool,
    /// Only these sellers (comma-separated user UUIDs), to move a few first.
    #[arg(long, value_delimiter = ',')]
    pub sellers: Vec<uuid::Uuid>,
    /// Check each token with CardTrader's /info (within the seller's rate limit) before storing
    /// it: a token CardTrader refuses is stored as TOKEN_INVALID and no sync is queued.
    #[arg(long)]
    pub verify: bool,
    /// Also write the report (every seller, every skipped row and why) as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Sellers moved at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

/// Arguments of `brx-sync token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Seller the token may act for (a user UUID). Omit for a service-role token.
    #[arg(long)]
    pub sub: Option<uuid::Uuid>,
    /// Token lifetime.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when a terminal is attached.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What sits between the service and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PgPooler {
    /// Nothing, or a pooler in session mode: a connection is one server session.
    #[default]
    None,
    /// A transaction-mode pooler (PgBouncer `pool_mode = transaction`): each transaction may run on
    /// another server connection, so nothing may rely on session state.
    Transaction,
}

/// Every setting, in sections, each handed to the code that needs it.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub cardtrader: CardTraderConfig,
    #[command(flatten)]
    pub jobs: JobsConfig,
    #[command(flatten)]
    pub sync: SyncConfig,
    #[command(flatten)]
    pub catalog: CatalogConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

/// How the replica listens, bounds its RPCs and streams, and shuts down.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server (gRPC, webhook and admin HTTP, limits, shutdown)")]
pub struct ServerConfig {
    /// gRPC listen address.
    #[arg(
        long,
        env = "BRX_GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub grpc_addr: SocketAddr,
    /// Public HTTP listener: CardTrader's webhooks (`/webhooks/cardtrader/{user_id}`) and nothing else.
    #[arg(
        long,
        env = "BRX_HTTP_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Admin HTTP listener, for the cluster only: /metrics, /livez, /readyz.
    #[arg(
        long,
        env = "BRX_ADMIN_ADDR",
        default_value = "127.0.0.1:9091",
        global = true
    )]
    pub admin_addr: SocketAddr,
    /// HTTP/2 ping interval on idle gRPC connections: finds dead clients behind NATs and proxies.
    #[arg(long, env = "BRX_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub grpc_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "BRX_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub grpc_keepalive_timeout: Duration,
    /// A gRPC connection this old is asked to go away (GOAWAY), so clients reconnect and spread
    /// onto replicas added since; 0s keeps connections for ever.
    #[arg(long, env = "BRX_GRPC_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub grpc_max_connection_age: Duration,
    /// After the GOAWAY, how long calls still running on the old connection get to finish.
    #[arg(long, env = "BRX_GRPC_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub grpc_max_connection_age_grace: Duration,
    /// Per-RPC deadline; a shorter `grpc-timeout` sent by the caller wins.
    #[arg(long, env = "BRX_RPC_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub rpc_timeout: Duration,
    /// RPCs handled at once; past it, RPCs are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = "BRX_RPC_CONCURRENCY_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rpc_concurrency_limit: u32,
    /// Hint sent with shed RPCs in `retry-after-ms` metadata.
    #[arg(long, env = "BRX_RPC_SHED_RETRY_AFTER", default_value = "200ms", value_parser = humantime::parse_duration, global = true)]
    pub rpc_shed_retry_after: Duration,
    /// Server streams (WatchSync, WatchPurchase) open at once on this replica; beyond, new ones are
    /// refused with RESOURCE_EXHAUSTED and `retry-after-ms`.
    #[arg(long, env = "BRX_MAX_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_streams: u32,
    /// Server streams one caller (a token's `sub`; every caller is one when auth is off) may have
    /// open at once on this replica.
    #[arg(long, env = "BRX_MAX_STREAMS_PER_CALLER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_streams_per_caller: u32,
    /// Longest life of a server stream: it then ends with UNAVAILABLE and `retry-after-ms`, and the
    /// caller watches again (also how streams end at shutdown).
    #[arg(long, env = "BRX_STREAM_MAX_LIFETIME", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub stream_max_lifetime: Duration,
    /// How often an open stream re-reads what it watches when no change notice came: the backstop
    /// for notices lost while Redis is unreachable.
    #[arg(long, env = "BRX_STREAM_RECHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub stream_recheck_interval: Duration,
    /// After SIGTERM, how long health says NOT_SERVING while RPCs are still accepted, so load
    /// balancers stop routing here first.
    #[arg(long, env = "BRX_SHUTDOWN_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_drain_delay: Duration,
    /// After the drain delay, how long in-flight RPCs and jobs get to finish before the process exits.
    #[arg(long, env = "BRX_SHUTDOWN_GRACE_PERIOD", default_value = "25s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace_period: Duration,
}

/// How callers authenticate, and the keys sellers' tokens are encrypted with.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Callers and secrets")]
pub struct AuthConfig {
    /// Development mode, for local experiments only: `serve` starts without encryption keys or a JWT
    /// key, and BRX_AUTH_DISABLED is allowed. Off, a replica refuses to start unprotected.
    #[arg(long, env = "BRX_DEV_MODE", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub dev_mode: bool,
    /// Turn caller authentication off. Needs BRX_DEV_MODE; a warning is logged at start-up.
    #[arg(long, env = "BRX_AUTH_DISABLED", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub auth_disabled: bool,
    /// HS256 secret that caller JWTs are signed with, at least 32 bytes (`openssl rand -base64 48`).
    #[arg(long, env = "BRX_JWT_HS256_SECRET", value_parser = secret, hide_env_values = true, global = true)]
    pub jwt_hs256_secret: Option<SecretString>,
    /// PEM file with the RS256 public key that caller JWTs are signed with (instead of HS256).
    #[arg(long, env = "BRX_JWT_RS256_PUBLIC_KEY_PATH", global = true)]
    pub jwt_rs256_public_key_path: Option<PathBuf>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "BRX_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "BRX_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Value of the `role` claim that lets a caller act for every seller.
    #[arg(
        long,
        env = "BRX_JWT_SERVICE_ROLE",
        default_value = "service",
        global = true
    )]
    pub jwt_service_role: String,
    /// AES-256-GCM keys for CardTrader tokens at rest, as `id:base64key` separated by commas; the first
    /// encrypts, all decrypt (rotation). Generate a key with `openssl rand -base64 32`.
    #[arg(long, env = "BRX_ENCRYPTION_KEYS", value_parser = secret, hide_env_values = true, global = true)]
    pub encryption_keys: Option<SecretString>,
}

/// The PostgreSQL, MySQL and Redis pools and their supervision.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Storage (PostgreSQL, MySQL, Redis)")]
pub struct StorageConfig {
    /// PostgreSQL, the source of truth.
    #[arg(long, env = "BRX_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/brx_sync",
          value_parser = secret, hide_default_value = false, hide_env_values = true, global = true)]
    pub database_url: SecretString,
    /// PostgreSQL itself when BRX_DATABASE_URL goes through a pooler: migrations and creating the
    /// database use it (sqlx's migrations hold a session advisory lock). Defaults to BRX_DATABASE_URL.
    #[arg(long, env = "BRX_DATABASE_DIRECT_URL", value_parser = secret, hide_env_values = true, global = true)]
    pub database_direct_url: Option<SecretString>,
    /// `transaction` when BRX_DATABASE_URL is a transaction-mode pooler such as PgBouncer: every
    /// statement then stays on one server connection (see README, "Connection budget and PgBouncer").
    #[arg(long, env = "BRX_PG_POOLER", value_enum, default_value_t = PgPooler::None, global = true)]
    pub pg_pooler: PgPooler,
    /// Largest number of open PostgreSQL connections.
    #[arg(long, env = "BRX_PG_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub pg_max_connections: u32,
    /// How long a caller waits for a PostgreSQL connection before failing.
    #[arg(long, env = "BRX_PG_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub pg_acquire_timeout: Duration,
    /// Apply pending migrations when `serve` starts.
    #[arg(long, env = "BRX_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate_on_start: bool,
    /// MySQL/MariaDB blueprint catalogue (read-only).
    #[arg(long, env = "BRX_MYSQL_URL", default_value = "mysql://root@127.0.0.1:3306/brx_catalog",
          value_parser = secret, hide_env_values = true, global = true)]
    pub mysql_url: SecretString,
    /// Largest number of open MySQL connections.
    #[arg(long, env = "BRX_MYSQL_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub mysql_max_connections: u32,
    /// Redis: caches, rate-limit buckets, wake-up hints. Losing it loses no data.
    #[arg(long, env = "BRX_REDIS_URL", default_value = "redis://127.0.0.1:6379/0", value_parser = secret, hide_env_values = true, global = true)]
    pub redis_url: SecretString,
    /// Largest number of open Redis connections.
    #[arg(long, env = "BRX_REDIS_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub redis_max_connections: u32,
    /// How long a caller waits for a Redis connection before failing.
    #[arg(long, env = "BRX_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key this service writes, so several deployments can share one Redis.
    #[arg(
        long,
        env = "BRX_REDIS_KEY_PREFIX",
        default_value = "brx:",
        global = true
    )]
    pub redis_key_prefix: String,
    /// How often pools and migrations are checked for readiness.
    #[arg(long, env = "BRX_HEALTH_CHECK_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub health_check_interval: Duration,
    /// Longest wait between two connection attempts of a pool that is down.
    #[arg(long, env = "BRX_RECONNECT_MAX_DELAY", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub reconnect_max_delay: Duration,
}

/// The CardTrader client: endpoint, timeouts, retries, per-seller rate limits, breaker.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "CardTrader client")]
pub struct CardTraderConfig {
    /// CardTrader API base URL. Tests, the demo and the load tests point it at the simulator.
    #[arg(
        long,
        env = "BRX_CARDTRADER_BASE_URL",
        default_value = CARDTRADER_API,
        global = true
    )]
    pub base_url: String,
    /// Connect timeout for CardTrader calls.
    #[arg(long, env = "BRX_CARDTRADER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// Timeout of one ordinary CardTrader request.
    #[arg(long, env = "BRX_CARDTRADER_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,
    /// The longest one CardTrader call of a job may take: rate-limit wait, request and retries.
    /// BRX_JOB_LEASE must be at least 1.5 times this, so a job whose lease cannot be renewed is
    /// stopped with its last call ended before anyone can take the job over.
    #[arg(long, env = "BRX_CARDTRADER_CALL_BUDGET", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub call_budget: Duration,
    /// Timeout of `/products/export`, which CardTrader asks clients to give 120-180 s.
    #[arg(long, env = "BRX_CARDTRADER_EXPORT_TIMEOUT", default_value = "180s", value_parser = humantime::parse_duration, global = true)]
    pub export_timeout: Duration,
    /// Attempts of an idempotent CardTrader call (first try included) on 429, 5xx and timeouts.
    #[arg(long, env = "BRX_CARDTRADER_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10), global = true)]
    pub attempts: u32,
    /// CardTrader's limit on all calls of one token, per 10 s.
    #[arg(long, env = "BRX_RATE_GENERAL_PER_10S", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rate_general_per_10s: u32,
    /// CardTrader's limit on /marketplace/products per second (the docs say both 1 and 10; 1 is safe).
    #[arg(long, env = "BRX_RATE_MARKETPLACE_PER_SECOND", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rate_marketplace_per_second: u32,
    /// CardTrader's limit on /jobs/:uuid per second.
    #[arg(long, env = "BRX_RATE_JOBS_PER_SECOND", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rate_jobs_per_second: u32,
    /// Share of each limit left unused as a safety margin (0.0-0.5).
    #[arg(
        long,
        env = "BRX_RATE_SAFETY_MARGIN",
        default_value_t = 0.1,
        global = true
    )]
    pub rate_safety_margin: f64,
    /// Share of each bucket that bulk work may not take, kept for interactive calls (0.0-0.9).
    #[arg(
        long,
        env = "BRX_RATE_INTERACTIVE_RESERVE",
        default_value_t = 0.2,
        global = true
    )]
    pub rate_interactive_reserve: f64,
    /// Replicas expected to share the limits; with Redis down each replica takes rate / this.
    #[arg(long, env = "BRX_EXPECTED_REPLICAS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub expected_replicas: u32,
    /// Consecutive CardTrader failures (5xx, timeouts) that open the circuit breaker.
    #[arg(long, env = "BRX_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub breaker_failures: u32,
    /// How long an open breaker fails calls fast before letting one probe through.
    #[arg(long, env = "BRX_BREAKER_OPEN_FOR", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub breaker_open_for: Duration,
    /// Longest product object of `/products/export` a sync accepts, in bytes; a longer one fails
    /// the sync naming this setting (nothing is swept), so one malformed or giant product cannot make
    /// the parser buffer without bound. A product is ~1 KiB; 4 KiB to 64 MiB.
    #[arg(long, env = "BRX_SYNC_MAX_PRODUCT_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(4_096..=67_108_864), global = true)]
    pub max_product_bytes: u32,
}

/// The durable job workers: leases, lanes, fairness, queue bounds.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Jobs")]
pub struct JobsConfig {
    /// Bulk jobs (full syncs, remaps) run at once by this replica; 0 runs none (an API-only replica).
    #[arg(long, env = "BRX_BULK_CONCURRENCY", default_value_t = 8, global = true)]
    pub bulk_concurrency: u32,
    /// Interactive jobs (targeted syncs, pushes, purchases) run at once by this replica; 0 runs none.
    #[arg(
        long,
        env = "BRX_INTERACTIVE_CONCURRENCY",
        default_value_t = 32,
        global = true
    )]
    pub interactive_concurrency: u32,
    /// How long a purchase may spend taking stock on CardTrader before it is undone instead.
    #[arg(long, env = "BRX_PURCHASE_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub purchase_deadline: Duration,
    /// Job lease; a replica that dies has its jobs taken over after this long.
    #[arg(long, env = "BRX_JOB_LEASE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub lease: Duration,
    /// How often idle workers look for due jobs.
    #[arg(long, env = "BRX_JOB_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub poll_interval: Duration,
    /// Queued jobs per lane past which StartSync answers RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "BRX_MAX_QUEUE_DEPTH", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..), global = true)]
    pub max_queue_depth: i64,
    /// A queued job gains one priority point for each such wait, so old jobs are not starved.
    #[arg(long, env = "BRX_JOB_AGING", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub aging: Duration,
    /// A queued job ranks as if due this much later for each job its seller already runs in the
    /// lane or has due ahead of it: sellers take turns, yet a long wait outranks a newer seller's job.
    #[arg(long, env = "BRX_JOB_TURN_COST", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub turn_cost: Duration,
    /// How often the push re-queuer looks for pending edits whose push job gave up or was lost
    /// (one replica at a time does it).
    #[arg(long, env = "BRX_PUSH_REQUEUE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub push_requeue_interval: Duration,
}

/// Bulk sync: chunking, writers, the scheduler and remaps.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sync")]
pub struct SyncConfig {
    /// Products per sync chunk transaction.
    #[arg(long, env = "BRX_SYNC_CHUNK_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000), global = true)]
    pub chunk_size: u32,
    /// Statement timeout of each sync chunk transaction.
    #[arg(long, env = "BRX_SYNC_STATEMENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub statement_timeout: Duration,
    /// Chunks of one sync in flight at once (mapping one while another is written); 0 picks 1 on a
    /// machine of 2 cores or fewer (a second chunk there only slows RPCs) and 2 above.
    #[arg(long, env = "BRX_SYNC_CHUNKS_IN_FLIGHT", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16), global = true)]
    pub chunks_in_flight: u32,
    /// Chunk transactions open at once across every sync of this replica; must stay below
    /// BRX_PG_MAX_CONNECTIONS so RPCs and job bookkeeping always find a connection.
    #[arg(long, env = "BRX_SYNC_DB_WRITERS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub db_writers: u32,
    /// The scheduler queues a full sync for a connected account whose last sync is older than this.
    #[arg(long, env = "BRX_SYNC_STALE_AFTER", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub stale_after: Duration,
    /// How often the scheduler looks for stale accounts (one replica at a time does it).
    #[arg(long, env = "BRX_SCHEDULER_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub scheduler_interval: Duration,
    /// How often each replica looks for rows stored while the catalogue could not be asked and, with
    /// MySQL up, queues their sellers' remap; MySQL coming back triggers a look at once.
    #[arg(long, env = "BRX_REMAP_UNKNOWN_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub remap_unknown_interval: Duration,
}

/// The blueprint catalogue (MySQL) and its caches, and the expansion index.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Blueprint catalogue")]
pub struct CatalogConfig {
    /// How long a caller waits for a MySQL connection before its lookups are answered "unknown".
    #[arg(long, env = "BRX_MYSQL_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub mysql_acquire_timeout: Duration,
    /// Catalogue tables holding prints, in lookup order; each has an id and a blueprint column.
    #[arg(
        long,
        env = "BRX_CATALOG_TABLES",
        default_value = "cards_prints,op_prints,pk_prints,sealed_products",
        value_delimiter = ',',
        global = true
    )]
    pub tables: Vec<String>,
    /// Column of the print id in every catalogue table.
    #[arg(
        long,
        env = "BRX_CATALOG_ID_COLUMN",
        default_value = "id",
        global = true
    )]
    pub id_column: String,
    /// Column holding the CardTrader blueprint id in every catalogue table.
    #[arg(
        long,
        env = "BRX_CATALOG_BLUEPRINT_COLUMN",
        default_value = "cardtrader_id",
        global = true
    )]
    pub blueprint_column: String,
    /// Most ids in one MySQL `IN (…)` list; larger lookups are split.
    #[arg(long, env = "BRX_CATALOG_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=50_000), global = true)]
    pub batch_size: u32,
    /// Entries of the in-process (L1) blueprint cache.
    #[arg(
        long,
        env = "BRX_CATALOG_L1_CAPACITY",
        default_value_t = 200_000,
        global = true
    )]
    pub l1_capacity: u64,
    /// Lifetime of an L1 entry; bounds how stale another replica's L1 is after an invalidation.
    #[arg(long, env = "BRX_CATALOG_L1_TTL", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub l1_ttl: Duration,
    /// Lifetime of a mapping cached in Redis (±10% jitter).
    #[arg(long, env = "BRX_CATALOG_POSITIVE_TTL", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub positive_ttl: Duration,
    /// Lifetime of an "unmapped" answer cached in Redis (±10% jitter), so new prints show up soon.
    #[arg(long, env = "BRX_CATALOG_NEGATIVE_TTL", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub negative_ttl: Duration,
    /// Longest one catalogue query may run before its ids are answered "unknown"; a hung catalogue
    /// (a lock held by a schema change, a stalled server) then costs each lookup this, not its deadline.
    #[arg(long, env = "BRX_CATALOG_QUERY_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub query_timeout: Duration,
    /// Learn the expansion of blueprints the shared index does not know yet from CardTrader during
    /// syncs (one `/blueprints/export` per expansion of the seller not indexed yet); off, a product's
    /// expansion comes only from the export or what the index already holds.
    #[arg(long, env = "BRX_EXPANSION_LEARN", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub expansion_learn: bool,
    /// Lifetime of a blueprint → expansion entry of the index in Redis and in-process (a blueprint
    /// never changes expansion; the lifetime only lets unused entries go).
    #[arg(long, env = "BRX_EXPANSION_INDEX_TTL", default_value = "30days", value_parser = humantime::parse_duration, global = true)]
    pub expansion_index_ttl: Duration,
    /// An expansion whose blueprints were read longer ago than this is read again when a product's
    /// blueprint is missing from the index (CardTrader adds blueprints to recent expansions).
    #[arg(long, env = "BRX_EXPANSION_REFRESH_AFTER", default_value = "6h", value_parser = humantime::parse_duration, global = true)]
    pub expansion_refresh_after: Duration,
}

/// How long ended rows are kept, and how they are deleted.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionConfig {
    /// How often each replica refreshes the table-size gauges and tries a retention round (one
    /// replica at a time runs it); the first round runs one interval after start.
    #[arg(long, env = "BRX_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_interval, global = true)]
    pub interval: Duration,
    /// Rows one retention statement deletes at most, so a large backlog never holds long locks.
    #[arg(long, env = "BRX_RETENTION_BATCH", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000), global = true)]
    pub batch: u32,
    /// Jobs that ended (succeeded, failed, cancelled) longer ago than this are deleted; queued,
    /// running and dead jobs never are, nor each seller's latest ended sync. At least 1h.
    #[arg(long, env = "BRX_RETENTION_JOBS", default_value = "30days", value_parser = parse_retention, global = true)]
    pub jobs: Duration,
    /// Completed or failed purchases that ended longer ago than this lose their step log and the
    /// CardTrader snapshots of their lines; the purchase and its lines stay (idempotent replays,
    /// history). Purchases in requires_attention keep everything. At least 1h.
    #[arg(long, env = "BRX_RETENTION_PURCHASES", default_value = "30days", value_parser = parse_retention, global = true)]
    pub purchases: Duration,
    /// Webhook events applied longer ago than this are deleted (unapplied ones never). At least 1h.
    #[arg(long, env = "BRX_RETENTION_WEBHOOKS", default_value = "30days", value_parser = parse_retention, global = true)]
    pub webhooks: Duration,
    /// A webhook order record (what makes a later delivery of the order move stock at most once)
    /// is deleted once no delivery of the order came for this long and none waits to be applied.
    /// Never shorter than BRX_RETENTION_WEBHOOKS in effect. At least 1h.
    #[arg(long, env = "BRX_RETENTION_WEBHOOK_ORDERS", default_value = "365days", value_parser = parse_retention, global = true)]
    pub webhook_orders: Duration,
}

/// Logging and OpenTelemetry export.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs and traces")]
pub struct TelemetryConfig {
    /// Log format.
    #[arg(long, env = "BRX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "BRX_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// OTLP/gRPC collector for traces; export is off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// Service name on exported traces.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "brx-sync",
        global = true
    )]
    pub otel_service_name: String,
}

/// A setting that parsed but does not make sense, named by its environment variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    /// The environment variable that names the setting.
    pub setting: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl Cli {
    /// Parses flags and environment (what clap can check on its own: types and ranges). `Err`
    /// carries the one line to print; help and version requests are printed and exit 0 inside.
    /// Combinations of settings are checked by [`Config::validate`], which `App::build` calls.
    pub fn load() -> Result<Self, String> {
        let cli = Self::try_parse().map_err(|err| match err.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                err.exit()
            }
            _ => describe_clap_error(&err),
        })?;
        Ok(cli)
    }
}

impl Config {
    /// The defaults, as `brx-sync` with no flags would see them if no `BRX_*` variable were set.
    /// Tests start from this and change fields; they never set environment variables.
    pub fn defaults() -> Self {
        // Only argument-free parsing of our own definitions can fail here, which a unit test rules out.
        let cli = Cli::try_parse_from(["brx-sync"]);
        cli.expect("the built-in defaults parse").config
    }

    /// Checks what clap cannot: combinations of settings and files they point at.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate()?;
        self.validate_settings()
    }

    /// [`Self::validate`] without the caller-authentication checks, for commands that serve no
    /// callers (`import-legacy`).
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        if self.storage.migrate_on_start {
            self.storage.migration_url()?;
        }
        if self.auth.jwt_hs256_secret.is_some() && self.auth.jwt_rs256_public_key_path.is_some() {
            return Err(ConfigError {
                setting: "BRX_JWT_HS256_SECRET",
                reason: "set either it or BRX_JWT_RS256_PUBLIC_KEY_PATH, not both".into(),
            });
        }
        if let Some(path) = &self.auth.jwt_rs256_public_key_path {
            let pem = std::fs::read(path).map_err(|err| ConfigError {
                setting: "BRX_JWT_RS256_PUBLIC_KEY_PATH",
                reason: format!("cannot read {}: {err}", path.display()),
            })?;
            jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map_err(|err| ConfigError {
                setting: "BRX_JWT_RS256_PUBLIC_KEY_PATH",
                reason: format!("not an RSA public key in PEM form: {err}"),
            })?;
        }
        if !(0.0..=0.5).contains(&self.cardtrader.rate_safety_margin) {
            return Err(ConfigError {
                setting: "BRX_RATE_SAFETY_MARGIN",
                reason: "must be between 0.0 and 0.5".into(),
            });
        }
        if !(0.0..=0.9).contains(&self.cardtrader.rate_interactive_reserve) {
            return Err(ConfigError {
                setting: "BRX_RATE_INTERACTIVE_RESERVE",
                reason: "must be between 0.0 and 0.9".into(),
            });
        }
        if reqwest::Url::parse(&self.cardtrader.base_url).is_err() {
            return Err(ConfigError {
                setting: "BRX_CARDTRADER_BASE_URL",
                reason: format!("'{}' is not a URL", self.cardtrader.base_url),
            });
        }
        let identifiers = self
            .catalog
            .tables
            .iter()
            .chain([&self.catalog.id_column, &self.catalog.blueprint_column]);
        for name in identifiers {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError {
                    setting: "BRX_CATALOG_TABLES",
                    reason: format!("'{name}' is not a plain SQL identifier (letters, digits, _)"),
                });
            }
        }
        // A replica with no job slots (API only) runs no sync, so its writer budget is moot.
        let runs_jobs = self.jobs.bulk_concurrency > 0 || self.jobs.interactive_concurrency > 0;
        if runs_jobs && self.sync.db_writers >= self.storage.pg_max_connections {
            return Err(ConfigError {
                setting: "BRX_SYNC_DB_WRITERS",
                reason: format!(
                    "must be below BRX_PG_MAX_CONNECTIONS ({}) so other work always finds a connection",
                    self.storage.pg_max_connections
                ),
            });
        }
        if self.cardtrader.request_timeout > self.cardtrader.call_budget {
            return Err(ConfigError {
                setting: "BRX_CARDTRADER_REQUEST_TIMEOUT",
                reason: format!(
                    "{:?} is longer than BRX_CARDTRADER_CALL_BUDGET ({:?}), which bounds a whole call",
                    self.cardtrader.request_timeout, self.cardtrader.call_budget
                ),
            });
        }
        if self.jobs.lease.as_secs_f64() < self.cardtrader.call_budget.as_secs_f64() * 1.5 {
            return Err(ConfigError {
                setting: "BRX_JOB_LEASE",
                reason: format!(
                    "{:?} must be at least 1.5 times BRX_CARDTRADER_CALL_BUDGET ({:?}): a job that \
                     cannot renew its lease is stopped one call budget before the lease runs out, \
                     and needs a heartbeat (a third of the lease) before that",
                    self.jobs.lease, self.cardtrader.call_budget
                ),
            });
        }
        if self.jobs.push_requeue_interval.is_zero() {
            return Err(ConfigError {
                setting: "BRX_PUSH_REQUEUE_INTERVAL",
                reason: "must be longer than zero".into(),
            });
        }
        if self.jobs.aging.is_zero() {
            return Err(ConfigError {
                setting: "BRX_JOB_AGING",
                reason: "must be longer than zero".into(),
            });
        }
        for (setting, value) in [
            ("BRX_STREAM_MAX_LIFETIME", self.server.stream_max_lifetime),
            (
                "BRX_STREAM_RECHECK_INTERVAL",
                self.server.stream_recheck_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError {
                    setting,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        if self.storage.redis_key_prefix.is_empty() {
            return Err(ConfigError {
                setting: "BRX_REDIS_KEY_PREFIX",
                reason: "must not be empty: keys of other applications could collide".into(),
            });
        }
        Ok(())
    }
}

impl StorageConfig {
    /// The URL migrations and database creation use: straight to PostgreSQL. Through a transaction
    /// pooler sqlx's migration lock (a session advisory lock) would be taken on one server
    /// connection and released on another, so a direct URL is required there.
    pub fn migration_url(&self) -> Result<&SecretString, ConfigError> {
        match (&self.database_direct_url, self.pg_pooler) {
            (Some(direct), _) => Ok(direct),
            (None, PgPooler::None) => Ok(&self.database_url),
            (None, PgPooler::Transaction) => Err(ConfigError {
                setting: "BRX_DATABASE_DIRECT_URL",
                reason: "required with BRX_PG_POOLER=transaction to run migrations: sqlx's \
                         migration lock is a session advisory lock, which a transaction pooler \
                         cannot keep (or set BRX_MIGRATE_ON_START=false and migrate elsewhere)"
                    .into(),
            }),
        }
    }
}

impl AuthConfig {
    /// A replica serves only protected unless BRX_DEV_MODE says it is a developer's.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.jwt_hs256_secret {
            let length = secrecy::ExposeSecret::expose_secret(secret).len();
            if length < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError {
                    setting: "BRX_JWT_HS256_SECRET",
                    reason: format!(
                        "{length} bytes is too short to sign tokens safely: use at least \
                         {MIN_HS256_SECRET_BYTES} (e.g. `openssl rand -base64 48`)"
                    ),
                });
            }
        }
        if self.dev_mode {
            return Ok(());
        }
        let dev_hint = "(BRX_DEV_MODE=true allows it for local experiments)";
        if self.auth_disabled {
            return Err(ConfigError {
                setting: "BRX_AUTH_DISABLED",
                reason: format!(
                    "turning caller authentication off is refused in production {dev_hint}"
                ),
            });
        }
        if self.jwt_hs256_secret.is_none() && self.jwt_rs256_public_key_path.is_none() {
            return Err(ConfigError {
                setting: "BRX_JWT_HS256_SECRET",
                reason: format!(
                    "no key to verify callers' tokens: set it or BRX_JWT_RS256_PUBLIC_KEY_PATH {dev_hint}"
                ),
            });
        }
        if self.encryption_keys.is_none() {
            return Err(ConfigError {
                setting: "BRX_ENCRYPTION_KEYS",
                reason: format!(
                    "required to store sellers' CardTrader tokens encrypted: set `k1:<key>` with a \
                     key from `openssl rand -base64 32` {dev_hint}"
                ),
            });
        }
        Ok(())
    }
}

/// The shortest retention accepted: a finished job is still watched and read right after it ends,
/// and a redelivered webhook arrives within minutes.
const MIN_RETENTION: Duration = Duration::from_secs(3_600);

/// Parses a retention setting (`30days`, `12h`…): a duration of at least an hour.
pub fn parse_retention(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if duration < MIN_RETENTION {
        return Err(format!(
            "must be at least {}: what is younger is still read",
            humantime::format_duration(MIN_RETENTION)
        ));
    }
    Ok(duration)
}

/// Parses the retention interval: a duration longer than zero.
pub fn parse_interval(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// Turns clap's multi-line report into one line that names the environment variable as well as the flag.
fn describe_clap_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first_line = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim();
    let first_line = first_line.strip_prefix("error: ").unwrap_or(first_line);
    let env_name = err
        .get(ContextKind::InvalidArg)
        .map(|arg| arg.to_string())
        .and_then(|arg| env_of_flag(&arg));
    match env_name {
        Some(env) => format!("invalid configuration: {env}: {first_line}"),
        None => format!("invalid configuration: {first_line}"),
    }
}

/// Maps `--grpc-addr <GRPC_ADDR>` to `BRX_GRPC_ADDR`.
fn env_of_flag(flag: &str) -> Option<String> {
    let long = flag.trim_start_matches("--").split([' ', '=']).next()?;
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?;
    arg.get_env().map(|env| env.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// The defaults plus the two secrets production needs.
    fn protected() -> Config {
        let mut config = Config::defaults();
        config.auth.jwt_hs256_secret = Some(SecretString::from("s".repeat(MIN_HS256_SECRET_BYTES)));
        config.auth.encryption_keys = Some(SecretString::from("k1:key".to_owned()));
        config
    }

    #[test]
    fn the_built_in_defaults_parse_talk_to_cardtrader_and_refuse_to_serve_unprotected() {
        let config = Config::defaults();
        assert_eq!(config.cardtrader.base_url, CARDTRADER_API);
        assert!(!config.auth.auth_disabled && !config.auth.dev_mode);
        assert_eq!(
            config.validate().unwrap_err().setting,
            "BRX_JWT_HS256_SECRET"
        );
        assert!(protected().validate().is_ok());
    }

    #[test]
    fn behind_a_transaction_pooler_migrations_need_a_direct_url() {
        let mut config = protected();
        config.storage.pg_pooler = PgPooler::Transaction;
        assert_eq!(
            config.validate().unwrap_err().setting,
            "BRX_DATABASE_DIRECT_URL"
        );

        config.storage.migrate_on_start = false;
        assert!(config.validate().is_ok(), "migrated elsewhere");

        config.storage.migrate_on_start = true;
        let direct = SecretString::from("postgres://postgres@db:5432/brx_sync".to_owned());
        config.storage.database_direct_url = Some(direct);
        assert!(config.validate().is_ok());
        assert_eq!(
            config.storage.migration_url().unwrap().expose_secret(),
            "postgres://postgres@db:5432/brx_sync"
        );
        assert_eq!(
            protected().storage.migration_url().unwrap().expose_secret(),
            protected().storage.database_url.expose_secret(),
            "without a pooler, migrations use BRX_DATABASE_URL"
        );
    }

    #[test]
    fn without_dev_mode_each_missing_protection_is_named() {
        let mut config = protected();
        config.auth.encryption_keys = None;
        assert_eq!(
            config.validate().unwrap_err().setting,
            "BRX_ENCRYPTION_KEYS"
        );

        let mut config = protected();
        config.auth.auth_disabled = true;
        assert_eq!(config.validate().unwrap_err().setting, "BRX_AUTH_DISABLED");

        let mut config = Config::defaults();
        config.auth.dev_mode = true;
        config.auth.auth_disabled = true;
        assert!(config.validate().is_ok(), "dev mode allows all three");
    }

    #[test]
    fn a_short_hs256_secret_is_refused_even_in_dev_mode() {
        let mut config = protected();
        config.auth.dev_mode = true;
        config.auth.jwt_hs256_secret =
            Some(SecretString::from("s".repeat(MIN_HS256_SECRET_BYTES - 1)));
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting, "BRX_JWT_HS256_SECRET");
        assert!(
            !err.reason.contains("sss"),
            "the reason never shows the secret"
        );
    }

    #[test]
    fn help_never_shows_a_secret_from_the_environment() {
        let help = Cli::command().render_long_help().to_string();
        for env in [
            "BRX_JWT_HS256_SECRET",
            "BRX_ENCRYPTION_KEYS",
            "BRX_DATABASE_URL",
            "BRX_MYSQL_URL",
            "BRX_REDIS_URL",
        ] {
            assert!(help.contains(env), "{env} is documented");
        }
        let hidden: Vec<_> = Cli::command()
            .get_arguments()
            .filter(|arg| arg.is_hide_env_values_set())
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        for env in [
            "BRX_JWT_HS256_SECRET",
            "BRX_ENCRYPTION_KEYS",
            "BRX_DATABASE_URL",
            "BRX_MYSQL_URL",
            "BRX_REDIS_URL",
        ] {
            assert!(
                hidden.iter().any(|name| name == env),
                "{env} hides its value"
            );
        }
    }

    #[test]
    fn a_bad_value_is_reported_with_its_environment_variable() {
        let err = Cli::try_parse_from(["brx-sync", "--grpc-addr", "nonsense"]).unwrap_err();
        let line = describe_clap_error(&err);
        assert!(line.contains("BRX_GRPC_ADDR"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_retention_under_an_hour_is_refused() {
        assert_eq!(
            parse_retention("30days").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_retention("1h").unwrap(), MIN_RETENTION);
        assert!(parse_retention("59m").is_err());
        assert!(parse_retention("soon").is_err());
    }

    #[test]
    fn a_zero_interval_is_refused() {
        assert!(parse_interval("0s").is_err());
        assert_eq!(parse_interval("10m").unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn the_writer_budget_must_leave_a_connection_only_where_jobs_run() {
        let mut config = protected();
        config.storage.pg_max_connections = 1;
        config.sync.db_writers = 1;
        assert_eq!(
            config.validate().unwrap_err().setting,
            "BRX_SYNC_DB_WRITERS"
        );
        config.jobs.bulk_concurrency = 0;
        config.jobs.interactive_concurrency = 0;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn two_jwt_keys_are_refused() {
        let mut config = protected();
        config.auth.jwt_rs256_public_key_path = Some("/nonexistent".into());
        assert_eq!(
            config.validate().unwrap_err().setting,
            "BRX_JWT_HS256_SECRET"
        );
    }
}
