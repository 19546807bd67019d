//! The CardTrader client against the simulator: quirks parsed, failures classified, 429s and the
//! breaker handled, and two replicas sharing one seller's limit without ever exceeding it.

use std::time::{Duration, Instant};

use brx_sync::{
    config::Config,
    marketplace::{
        BreakerState, CallOptions, ExportFilter, MarketplaceClient, MarketplaceError, Seller,
        types::NewProduct,
    },
    metrics::Metrics,
    rate_limit::{Limits, RateLimiter, Scope},
    storage::Storage,
};
use cardtrader_sim::{Faults, SimulatorConfig, SimulatorHandle};
use secrecy::SecretString;

use crate::helpers::{init_process, test_config, wait_for, wait_until};

struct Setup {
    simulator: SimulatorHandle,
    config: Config,
}

async fn setup(adjust: impl FnOnce(&mut Config)) -> Setup {
    init_process();
    let simulator =
        SimulatorHandle::start(SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let (mut config, _) = test_config();
    config.cardtrader.base_url = simulator.base_url();
    adjust(&mut config);
    Setup { simulator, config }
}

impl Setup {
    fn client(&self) -> (MarketplaceClient, Metrics) {
        let storage = Storage::connect_lazy(&self.config.storage).unwrap();
        let metrics = Metrics::new().unwrap();
        let limiter = RateLimiter::new(
            storage.redis,
            &self.config.storage.redis_key_prefix,
            Limits::from_config(&self.config.cardtrader),
            metrics.clone(),
        );
        (
            MarketplaceClient::new(&self.config.cardtrader, limiter, metrics.clone()).unwrap(),
            metrics,
        )
    }
}

fn options() -> CallOptions {
    CallOptions::interactive(Duration::from_secs(5))
}

#[tokio::test]
async fn info_games_and_the_marketplace_map_parse_from_the_simulator() {
    let setup = setup(|_| {}).await;
    let (client, _) = setup.client();
    let token = SecretString::from(setup.simulator.token(1));
    let seller = Seller {
        key: "seller-1",
        token: &token,
    };

    let info = client.info(seller, options()).await.unwrap();
    let games = client.games(seller, options()).await.unwrap();
    let products = client
        .export_products(seller, options(), ExportFilter::All)
        .await
        .unwrap();
    let blueprint = products[0].blueprint_id;
    let offers = client
        .marketplace_products(seller, options(), blueprint)
        .await
        .unwrap();

    assert_eq!(
        Some(info.user_id.unwrap()),
        setup
            .simulator
            .seller(&setup.simulator.token(1))
            .map(|s| s.user_id)
    );
    assert!(games.iter().any(|game| game.id == 1));
    assert_eq!(
        products.len() as u64,
        setup.simulator.inventory_len(&setup.simulator.token(1))
    );
    let cheapest = &offers[&blueprint];
    assert!(cheapest.len() <= 25);
    assert!(
        cheapest
            .windows(2)
            .all(|pair| pair[0].price.cents <= pair[1].price.cents),
        "cheapest first"
    );
}

#[tokio::test]
async fn create_merges_and_increment_to_zero_deletes() {
    let setup = setup(|_| {}).await;
    let (client, _) = setup.client();
    let token = SecretString::from(setup.simulator.token(2));
    let seller = Seller {
        key: "seller-2",
        token: &token,
    };
    let new = NewProduct {
        blueprint_id: 77,
        price: 1.5,
        quantity: 2,
        description: None,
        user_data_field: Some("brx-test".into()),
        properties: None,
        graded: None,
    };

    let first = client
        .create_product(seller, options(), &new)
        .await
        .unwrap();
    let merged = client
        .create_product(seller, options(), &new)
        .await
        .unwrap();
    let gone = client
        .increment_product(seller, options(), first.id, -4)
        .await
        .unwrap();

    assert_eq!(merged.id, first.id, "an identical create merges");
    assert_eq!(merged.quantity, 4);
    assert_eq!(gone, None, "reaching 0 deletes the product");
    assert_eq!(
        setup.simulator.product(&setup.simulator.token(2), first.id),
        None
    );
    let missing = client
        .increment_product(seller, options(), first.id, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, MarketplaceError::NotFound { .. }),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_bad_token_is_unauthorized() {
    let setup = setup(|_| {}).await;
    let (client, _) = setup.client();
    let token = SecretString::from("nope".to_owned());

    let error = client
        .info(
            Seller {
                key: "x",
                token: &token,
            },
            options(),
        )
        .await
        .unwrap_err();

    assert_eq!(error, MarketplaceError::Unauthorized);
}

#[tokio::test]
async fn an_html_error_page_is_unavailable_with_its_message() {
    let setup = setup(|config| config.cardtrader.attempts = 1).await;
    setup.simulator.set_faults(Faults {
        html_error_rate: 1.0,
        ..Faults::default()
    });
    let (client, _) = setup.client();
    let token = SecretString::from(setup.simulator.token(1));

    let error = client
        .info(
            Seller {
                key: "html",
                token: &token,
            },
            options(),
        )
        .await
        .unwrap_err();

    assert!(
        matches!(error, MarketplaceError::Unavailable { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_429_penalizes_the_seller_and_a_short_deadline_gets_rate_limited_without_hammering() {
    let setup = setup(|_| {}).await;
    setup.simulator.set_faults(Faults {
        burst_429: 1,
        ..Faults::default()
    });
    let (client, metrics) = setup.client();
    let token_text = setup.simulator.token(1);
    let token = SecretString::from(token_text.clone());

    let error = client
        .info(
            Seller {
                key: "limited",
                token: &token,
            },
            CallOptions::interactive(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();

    assert!(
        matches!(error, MarketplaceError::RateLimited { .. }),
        "{error:?}"
    );
    assert_eq!(metrics.cardtrader_429.with_label_values(&["info"]).get(), 1);
    assert_eq!(
        metrics
            .rate_limit_penalties
            .with_label_values(&["general"])
            .get(),
        1
    );
    let stats = setup.simulator.stats(&token_text);
    assert_eq!(
        stats.total, 1,
        "no retry went out during the penalty window"
    );
}

#[tokio::test]
async fn five_xx_answers_open_the_breaker_which_fails_fast_and_recovers_through_a_probe() {
    let setup = setup(|config| {
        config.cardtrader.breaker_failures = 3;
        config.cardtrader.attempts = 1;
        config.cardtrader.breaker_open_for = Duration::from_millis(300);
    })
    .await;
    setup.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::default()
    });
    let (client, metrics) = setup.client();
    let token_text = setup.simulator.token(1);
    let token = SecretString::from(token_text.clone());
    let seller = Seller {
        key: "breaker",
        token: &token,
    };

    for _ in 0..3 {
        client.info(seller, options()).await.unwrap_err();
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let before = setup.simulator.stats(&token_text).total;
    let fast = client.info(seller, options()).await.unwrap_err();
    assert!(matches!(fast, MarketplaceError::Unavailable { .. }));
    assert_eq!(
        setup.simulator.stats(&token_text).total,
        before,
        "an open breaker sends nothing"
    );
    assert_eq!(metrics.breaker_state.get(), 2);

    setup.simulator.set_faults(Faults::default());
    // Calls keep failing fast until the pause is over; the first one let through is the probe.
    wait_for(
        "the breaker to let a probe through",
        Duration::from_secs(10),
        || async {
            match client.info(seller, options()).await {
                Err(MarketplaceError::Unavailable { .. }) => Err("failing fast"),
                answer => Ok(answer.unwrap()),
            }
        },
    )
    .await;

    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(
        setup.simulator.stats(&token_text).total,
        before + 1,
        "the open breaker sent nothing but the probe"
    );
}

#[tokio::test]
async fn a_4xx_does_not_open_the_breaker() {
    let setup = setup(|config| config.cardtrader.breaker_failures = 2).await;
    let (client, _) = setup.client();
    let token = SecretString::from("nope".to_owned());

    for _ in 0..5 {
        client
            .info(
                Seller {
                    key: "4xx",
                    token: &token,
                },
                options(),
            )
            .await
            .unwrap_err();
    }

    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_timed_out_create_is_not_retried_because_its_outcome_is_unknown() {
    let setup =
        setup(|config| config.cardtrader.request_timeout = Duration::from_millis(500)).await;
    setup.simulator.set_faults(Faults {
        timeout_rate: 1.0,
        ..Faults::default()
    });
    let (client, _) = setup.client();
    let token_text = setup.simulator.token(3);
    let token = SecretString::from(token_text.clone());
    let new = NewProduct {
        blueprint_id: 5,
        price: 1.0,
        quantity: 1,
        description: None,
        user_data_field: None,
        properties: None,
        graded: None,
    };

    let error = client
        .create_product(
            Seller {
                key: "timeout",
                token: &token,
            },
            options(),
            &new,
        )
        .await
        .unwrap_err();

    assert_eq!(error, MarketplaceError::Timeout);
    assert_eq!(
        setup.simulator.stats(&token_text).total,
        1,
        "a non-idempotent call goes out once"
    );
}

#[tokio::test]
async fn a_timed_out_read_is_retried() {
    let setup =
        setup(|config| config.cardtrader.request_timeout = Duration::from_millis(300)).await;
    setup.simulator.set_faults(Faults {
        timeout_rate: 1.0,
        ..Faults::default()
    });
    let (client, _) = setup.client();
    let token_text = setup.simulator.token(3);
    let token = SecretString::from(token_text.clone());

    let error = client
        .info(
            Seller {
                key: "read-timeout",
                token: &token,
            },
            options(),
        )
        .await
        .unwrap_err();

    assert_eq!(error, MarketplaceError::Timeout);
    assert_eq!(
        setup.simulator.stats(&token_text).total,
        3,
        "BRX_CARDTRADER_ATTEMPTS = 3"
    );
}

/// Two "replicas" (two clients, two Redis pools, one key prefix) hammer one seller for 12 s.
#[tokio::test]
async fn two_replicas_hammering_one_seller_never_exceed_200_calls_in_any_10_seconds() {
    let setup = setup(|_| {}).await;
    let token_text = setup.simulator.token(1);
    let quiet_text = setup.simulator.token(2);
    let stop_at = Instant::now() + Duration::from_secs(12);
    let mut workers = Vec::new();
    for _replica in 0..2 {
        let (client, _) = setup.client();
        for _ in 0..8 {
            let client = client.clone();
            let token = SecretString::from(token_text.clone());
            workers.push(tokio::spawn(async move {
                let mut ok = 0u32;
                while Instant::now() < stop_at {
                    let seller = Seller {
                        key: "hammered",
                        token: &token,
                    };
                    if client
                        .info(seller, CallOptions::bulk(Duration::from_secs(2)))
                        .await
                        .is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            }));
        }
    }
    // Meanwhile another seller's calls go straight through: their bucket is their own. Once the
    // hammered seller has sent more than a full bucket, its callers are waiting on its refills.
    let full_bucket = Limits::from_config(&setup.config.cardtrader)
        .params(Scope::General)
        .capacity as u64;
    wait_until(
        "the hammered seller to spend its burst",
        Duration::from_secs(10),
        || async { setup.simulator.stats(&token_text).total > full_bucket },
    )
    .await;
    let (quiet_client, _) = setup.client();
    let quiet = SecretString::from(quiet_text.clone());
    let started = Instant::now();
    for _ in 0..10 {
        quiet_client
            .info(
                Seller {
                    key: "quiet",
                    token: &quiet,
                },
                CallOptions::bulk(Duration::from_secs(5)),
            )
            .await
            .unwrap();
    }
    let quiet_took = started.elapsed();
    let mut succeeded = 0;
    for worker in workers {
        succeeded += worker.await.unwrap();
    }

    let stats = setup.simulator.stats(&token_text);
    assert_eq!(
        stats.rejected_429, 0,
        "CardTrader never had to refuse a call"
    );
    assert!(
        stats.max_general_in_any_10s <= 200,
        "{} calls in one 10 s window",
        stats.max_general_in_any_10s
    );
    assert!(
        succeeded >= 150,
        "the limit is used, not starved: {succeeded} calls"
    );
    assert!(
        quiet_took < Duration::from_secs(2),
        "the other seller waited on the hammered one: {quiet_took:?}"
    );
}

#[tokio::test]
async fn a_large_export_streams_every_product_exactly_once() {
    use futures::StreamExt;
    let setup = setup(|_| {}).await;
    let seller = setup.simulator.add_seller(50_000);
    let (client, _) = setup.client();
    let token = SecretString::from(seller.token.clone());

    let stream = client
        .export_stream(
            Seller {
                key: "big",
                token: &token,
            },
            options(),
            ExportFilter::All,
        )
        .await
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(product) = stream.next().await {
        assert!(ids.insert(product.unwrap().id), "a product came twice");
    }

    assert_eq!(
        ids.len() as u64,
        setup.simulator.inventory_len(&seller.token)
    );
    assert_eq!(ids.len(), 50_000);
}

#[tokio::test]
async fn an_export_answered_with_an_html_page_is_unavailable() {
    let setup = setup(|config| config.cardtrader.attempts = 1).await;
    setup.simulator.set_faults(Faults {
        html_error_rate: 1.0,
        ..Faults::default()
    });
    let (client, _) = setup.client();
    let token = SecretString::from(setup.simulator.token(1));

    let opened = client
        .export_stream(
            Seller {
                key: "html-export",
                token: &token,
            },
            options(),
            ExportFilter::All,
        )
        .await;

    assert!(matches!(opened, Err(MarketplaceError::Unavailable { .. })));
}
