//! The Grafana dashboard and the PrometheusRule alerts in `k8s/monitoring/` name only metrics the
//! service exports: after a demo-sized run (a sync through a CardTrader 429, a purchase, a webhook
//! delivery, an operator's GetStats), every metric they name is in `/metrics`.

use std::collections::BTreeSet;

use brx_sync::pb::v1::SyncState;
use cardtrader_sim::Faults;

use crate::helpers::{PurchaseRig, sync_to_end};

/// Every `brx_…` metric named in `text`, histogram series reduced to their family.
fn metrics_named_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("brx_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric families `/metrics` exports (from its `# TYPE` lines).
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_after_a_demo_sized_run() {
    // The app's own workers run the sync and the purchase, so their metrics land in its registry.
    let shop = PurchaseRig::with(1, 40, |config| config.jobs.bulk_concurrency = 1).await;
    let app = &shop.rig.app;
    app.simulator.set_faults(Faults {
        burst_429: 1,
        ..Faults::default()
    });
    let synced = sync_to_end(app, shop.user, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    let item = shop.stocked(1, 1).await[0];
    shop.buy("dashboard-1", &[(item, 1)]).await.unwrap();
    let delivery = reqwest::Client::new()
        .post(format!(
            "http://{}/webhooks/cardtrader/{}",
            app.http_addr, shop.user
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        delivery.status(),
        401,
        "an unsigned delivery is refused, and counted"
    );
    app.get_stats(Some(&app.service_token())).await.unwrap();

    let (status, exposition) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let exported = exported(&exposition);
    for file in [
        "k8s/monitoring/grafana-dashboard.json",
        "k8s/monitoring/prometheus-rule.yaml",
    ] {
        let named = metrics_named_in(&std::fs::read_to_string(file).unwrap());
        assert!(named.len() >= 5, "{file} names metrics: {named:?}");
        let missing: Vec<_> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the service does not export: {missing:?}"
        );
    }
}
