//! The Kubernetes manifests against the binary they deploy: every setting they name exists, every
//! setting a production replica needs is there, and probes and scraping use the admin listener.

use clap::CommandFactory;

/// `KEY` of each `  KEY: value` line (comments included: an operator uncommenting one gets a real setting).
fn keys_of(manifest: &str) -> Vec<String> {
    std::fs::read_to_string(format!("k8s/{manifest}"))
        .unwrap()
        .lines()
        .map(|line| line.trim_start().trim_start_matches("# "))
        .filter_map(|line| line.split_once(':').map(|(key, _)| key.trim()))
        .filter(|key| key.starts_with("BRX_") || key.starts_with("OTEL_"))
        .map(str::to_owned)
        .collect()
}

fn settings_of_the_binary() -> Vec<String> {
    brx_sync::config::Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_setting_the_manifests_name_is_one_the_binary_reads() {
    let known = settings_of_the_binary();
    for manifest in ["configmap.yaml", "secret.template.yaml"] {
        for key in keys_of(manifest) {
            assert!(
                known.contains(&key),
                "k8s/{manifest} sets {key}, which brx-sync does not read"
            );
        }
    }
}

#[test]
fn the_manifests_carry_every_setting_a_production_replica_needs() {
    let mut present = keys_of("configmap.yaml");
    present.extend(keys_of("secret.template.yaml"));
    for needed in [
        "BRX_DATABASE_URL",
        "BRX_DATABASE_DIRECT_URL",
        "BRX_PG_POOLER",
        "BRX_MYSQL_URL",
        "BRX_REDIS_URL",
        "BRX_JWT_HS256_SECRET",
        "BRX_ENCRYPTION_KEYS",
        "BRX_CARDTRADER_BASE_URL",
        "BRX_GRPC_ADDR",
        "BRX_HTTP_ADDR",
        "BRX_ADMIN_ADDR",
        "BRX_GRPC_KEEPALIVE_INTERVAL",
        "BRX_GRPC_MAX_CONNECTION_AGE",
    ] {
        assert!(
            present.iter().any(|key| key == needed),
            "k8s/ lacks {needed}"
        );
    }
    let configmap = std::fs::read_to_string("k8s/configmap.yaml").unwrap();
    assert!(
        configmap.contains(r#"BRX_CARDTRADER_BASE_URL: "https://api.cardtrader.com/api/v2""#),
        "the deployed replicas call the real CardTrader"
    );
}

#[test]
fn probes_and_scraping_use_the_admin_port_and_only_webhooks_are_public() {
    let deployment = std::fs::read_to_string("k8s/deployment.yaml").unwrap();
    let configmap = std::fs::read_to_string("k8s/configmap.yaml").unwrap();
    assert!(configmap.contains(r#"BRX_ADMIN_ADDR: "0.0.0.0:9091""#));
    assert!(deployment.contains(r#"prometheus.io/port: "9091""#));
    assert!(deployment.contains("containerPort: 9091"));
    let liveness = deployment.split("livenessProbe:").nth(1).unwrap();
    assert!(
        liveness
            .lines()
            .take(4)
            .any(|line| line.trim() == "port: admin")
    );

    let ingress = std::fs::read_to_string("k8s/ingress.yaml").unwrap();
    let paths: Vec<_> = ingress
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- path: "))
        .collect();
    assert_eq!(
        paths,
        ["/webhooks/cardtrader/"],
        "the Ingress routes webhooks and nothing else"
    );
    let services = std::fs::read_to_string("k8s/service.yaml").unwrap();
    assert!(
        !services.contains("9091"),
        "no Service exposes the admin port"
    );
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(format!("k8s/{name}")).unwrap()
}

/// The value of the first `KEY: value` line of a manifest, without quotes or a trailing comment.
fn value_in(name: &str, key: &str) -> String {
    manifest(name)
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix(key)?.strip_prefix(':'))
        .map(|value| {
            value
                .split(" #")
                .next()
                .unwrap()
                .trim()
                .trim_matches('"')
                .to_owned()
        })
        .next()
        .unwrap_or_else(|| panic!("k8s/{name} lacks {key}"))
}

fn number_in(name: &str, key: &str) -> u32 {
    let value = value_in(name, key);
    value.parse().unwrap_or_else(|_| {
        panic!("k8s/{name}: {key} is {value}, not a number this test can check")
    })
}

/// `key = value` lines of the pgbouncer.ini that k8s/pgbouncer.yaml's ConfigMap holds.
fn pgbouncer_ini() -> Vec<(String, String)> {
    let text = manifest("pgbouncer.yaml");
    let mut lines = text
        .lines()
        .skip_while(|line| line.trim() != "pgbouncer.ini: |");
    let header = lines
        .next()
        .expect("k8s/pgbouncer.yaml holds a pgbouncer.ini");
    let indent = header.len() - header.trim_start().len();
    lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() > indent)
        .map(str::trim)
        .filter(|line| !line.starts_with([';', '#', '[']))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn ini_value<'a>(ini: &'a [(String, String)], key: &str) -> &'a str {
    ini.iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("k8s/pgbouncer.yaml's pgbouncer.ini lacks {key}"))
}

fn ini_number(ini: &[(String, String)], key: &str) -> u32 {
    ini_value(ini, key)
        .parse()
        .unwrap_or_else(|_| panic!("pgbouncer.ini: {key} is not a number"))
}

/// PostgreSQL's default `max_connections` less `superuser_reserved_connections` (100 - 3): what the
/// README's connection budget assumes. A server allowing more makes room; this stays the floor.
const POSTGRES_CONNECTIONS_FOR_CLIENTS: u32 = 100 - 3;

#[test]
fn pgbouncer_pools_per_transaction_and_the_connection_budget_adds_up() {
    let ini = pgbouncer_ini();
    assert_eq!(ini_value(&ini, "pool_mode"), "transaction");
    assert_eq!(
        value_in("configmap.yaml", "BRX_PG_POOLER"),
        "transaction",
        "behind a transaction pooler the replicas must keep each statement on one server connection"
    );
    assert!(
        ini_value(&ini, "ignore_startup_parameters")
            .split(',')
            .any(|parameter| parameter.trim() == "extra_float_digits"),
        "sqlx sends extra_float_digits at start-up; PgBouncer refuses the connection unless ignored"
    );

    // Clients: every brx-sync pod at the autoscaler's ceiling plus the one a rollout adds, each with
    // its whole pool and its health-check connection. The Service spreads connections at random and
    // one PgBouncer pod gets them all while the other restarts, so each must admit all of them.
    let pods = number_in("hpa.yaml", "maxReplicas") + number_in("deployment.yaml", "maxSurge");
    let per_pod = number_in("configmap.yaml", "BRX_PG_MAX_CONNECTIONS") + 1;
    let max_client_conn = ini_number(&ini, "max_client_conn");
    assert!(
        max_client_conn >= pods * per_pod,
        "max_client_conn {max_client_conn} < {pods} pods x {per_pod} connections"
    );

    // Servers: each PgBouncer pod's pool (default plus reserve, capped by max_db_connections), the
    // pods including one more while PgBouncer itself rolls, and one direct connection per brx-sync
    // pod (its migration check, past the pooler), within what PostgreSQL lets clients open.
    let pool = (ini_number(&ini, "default_pool_size") + ini_number(&ini, "reserve_pool_size"))
        .min(ini_number(&ini, "max_db_connections"));
    let pgbouncers =
        number_in("pgbouncer.yaml", "replicas") + number_in("pgbouncer.yaml", "maxSurge");
    let server_connections = pgbouncers * pool + pods;
    assert!(
        server_connections <= POSTGRES_CONNECTIONS_FOR_CLIENTS,
        "{pgbouncers} PgBouncer pods x {pool} + {pods} direct = {server_connections} PostgreSQL \
         connections > {POSTGRES_CONNECTIONS_FOR_CLIENTS}"
    );
}

#[test]
fn replicas_serve_through_pgbouncer_and_migrate_past_it() {
    let ini = pgbouncer_ini();
    let port = ini_value(&ini, "listen_port");
    assert!(
        manifest("pgbouncer.yaml")
            .lines()
            .any(|line| line.trim() == format!("port: {port}")),
        "the Service brx-sync-pgbouncer listens on PgBouncer's port"
    );

    let url = value_in("secret.template.yaml", "BRX_DATABASE_URL");
    assert!(
        url.contains(&format!("@brx-sync-pgbouncer:{port}/")),
        "BRX_DATABASE_URL goes through PgBouncer: {url}"
    );
    let direct = value_in("secret.template.yaml", "BRX_DATABASE_DIRECT_URL");
    let (host, server_port) = direct
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .and_then(|(server, _)| server.split_once(':'))
        .expect("BRX_DATABASE_DIRECT_URL names a host and a port");
    let database = url.rsplit('/').next().unwrap();
    assert_eq!(
        direct.rsplit('/').next().unwrap(),
        database,
        "both URLs name the same database"
    );
    let target = ini_value(&ini, database);
    let parameters: Vec<_> = target.split_whitespace().collect();
    assert!(
        parameters.contains(&format!("host={host}").as_str())
            && parameters.contains(&format!("port={server_port}").as_str()),
        "PgBouncer's {database} ({target}) is the server BRX_DATABASE_DIRECT_URL names ({host}:{server_port})"
    );
}
