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
