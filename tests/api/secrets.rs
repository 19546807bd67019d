//! Secrets seen from outside the process: the binary's `--help` and every log line of a replica that
//! ran with real-looking secrets in its environment never show a secret's value.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use brx_sync::pb::v1::GetStatsRequest;

use crate::helpers::{ServeProcess, authorized, drop_database};

const BINARY: &str = env!("CARGO_BIN_EXE_brx-sync");

/// Values no output may contain. Each is long and unusual enough not to appear by chance.
const JWT_SECRET: &str = "jwt-secret-value-must-never-be-printed-4f1c9a";
const ENCRYPTION_KEY: &str = "bm90LXByaW50ZWQtZW5jcnlwdGlvbi1rZXktMzJieXQ=";
const DATABASE_PASSWORD: &str = "pg-password-never-printed-77aa";
const MYSQL_PASSWORD: &str = "mysql-password-never-printed-88bb";
const REDIS_PASSWORD: &str = "redis-password-never-printed-99cc";
/// The Python service's Fernet key and its database's password (`import-legacy`).
const FERNET_KEY: &str = "bGVnYWN5LWZlcm5ldC1rZXktbmV2ZXItcHJpbnRlZCE=";
const LEGACY_PASSWORD: &str = "legacy-password-never-printed-11dd";

fn secret_values() -> [&'static str; 7] {
    [
        JWT_SECRET,
        ENCRYPTION_KEY,
        DATABASE_PASSWORD,
        MYSQL_PASSWORD,
        REDIS_PASSWORD,
        FERNET_KEY,
        LEGACY_PASSWORD,
    ]
}

fn assert_shows_no_secret(what: &str, output: &str) {
    for secret in secret_values() {
        assert!(
            !output.contains(secret),
            "{what} shows the secret {secret}:\n{output}"
        );
    }
}

/// The environment of a replica whose every secret is set.
fn secret_env(database: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BRX_JWT_HS256_SECRET", JWT_SECRET.to_owned()),
        ("BRX_ENCRYPTION_KEYS", format!("k1:{ENCRYPTION_KEY}")),
        (
            "BRX_DATABASE_URL",
            // Local PostgreSQL trusts loopback, so the password is sent and ignored.
            format!("postgres://postgres:{DATABASE_PASSWORD}@127.0.0.1:5432/{database}"),
        ),
        (
            "BRX_MYSQL_URL",
            // Refused by MariaDB: the catalogue pool's failures are logged, and must not leak it.
            format!("mysql://root:{MYSQL_PASSWORD}@127.0.0.1:3306/brx_catalog"),
        ),
        (
            "BRX_REDIS_URL",
            // Refused by a Redis without passwords: the same for Redis's errors.
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"),
        ),
        ("BRX_LEGACY_FERNET_KEY", FERNET_KEY.to_owned()),
        (
            "BRX_LEGACY_DATABASE_URL",
            format!("postgres://reader:{LEGACY_PASSWORD}@127.0.0.1:5432/cardsync"),
        ),
    ]
}

#[test]
fn help_lists_every_secret_setting_but_never_its_value() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["-h"],
        &["import-legacy", "--help"],
    ] {
        let output = Command::new(BINARY)
            .args(args)
            .env_clear()
            .envs(secret_env("brx_sync"))
            .stdin(Stdio::null())
            .output()
            .unwrap();

        assert!(output.status.success(), "{args:?}: {output:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for setting in [
            "BRX_JWT_HS256_SECRET",
            "BRX_ENCRYPTION_KEYS",
            "BRX_DATABASE_URL",
            "BRX_MYSQL_URL",
            "BRX_REDIS_URL",
        ] {
            assert!(help.contains(setting), "{args:?} documents {setting}");
        }
        if args[0] == "import-legacy" {
            for setting in ["BRX_LEGACY_FERNET_KEY", "BRX_LEGACY_DATABASE_URL"] {
                assert!(help.contains(setting), "{args:?} documents {setting}");
            }
        }
        assert_shows_no_secret(&format!("{args:?}"), &help);
        assert_shows_no_secret(
            &format!("{args:?} (stderr)"),
            &String::from_utf8_lossy(&output.stderr),
        );
    }
}

#[test]
fn a_refused_short_secret_is_named_but_not_shown() {
    let short = "short-secret-xyz";
    let output = Command::new(BINARY)
        .env_clear()
        .env("BRX_JWT_HS256_SECRET", short)
        .env("BRX_ENCRYPTION_KEYS", format!("k1:{ENCRYPTION_KEY}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BRX_JWT_HS256_SECRET"), "{stderr}");
    assert!(!stderr.contains(short), "{stderr}");
}

#[tokio::test]
async fn a_replica_s_logs_never_show_a_secret_even_at_debug_level() {
    let database = format!("brx_test_{}", uuid::Uuid::new_v4().simple());
    let env = secret_env(&database);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("BRX_LOG_FORMAT", "json"), ("BRX_LOG", "debug")]);
    let mut process = ServeProcess::spawn(&env);
    // Read the logs as they come: a full pipe would block the replica's logging, and with it the replica.
    let mut stdout = process.child.stdout.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut logs)
            .await
            .unwrap();
        logs
    });
    process.wait_until_ready().await;

    // A caller with a forged token, one with a good token, and a look at the metrics: the paths
    // that log a caller's failure, the auth layer's success, and the side port.
    let channel = process.channel().await;
    let mut admin = brx_sync::pb::v1::admin_service_client::AdminServiceClient::new(channel);
    let forged = brx_sync::api::auth::mint_token(
        "not-the-secret-but-long-enough-to-sign-with",
        None,
        "service",
        Duration::from_secs(60),
    )
    .unwrap();
    let refused = admin
        .get_stats(authorized(GetStatsRequest {}, &forged))
        .await;
    assert!(refused.is_err());
    let good =
        brx_sync::api::auth::mint_token(JWT_SECRET, None, "service", Duration::from_secs(60))
            .unwrap();
    admin
        .get_stats(authorized(GetStatsRequest {}, &good))
        .await
        .expect("a good token is served");
    let metrics = reqwest::get(format!("http://{}/metrics", process.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_shows_no_secret("/metrics", &metrics);

    process.sigterm();
    tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    let logs = logs.await.unwrap();

    assert!(
        logs.contains("brx-sync stopped"),
        "the logs were read: {logs}"
    );
    assert!(
        logs.lines().count() > 10,
        "debug logging ran: {} lines",
        logs.lines().count()
    );
    assert_shows_no_secret("the replica's logs", &logs);
    drop_database(&database);
}
