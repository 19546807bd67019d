//! The real `brx-sync serve` binary as a child process, for what only a process can show: signals,
//! exit codes, telemetry flushed at exit.

use std::process::Stdio;

use tokio::process::{Child, Command};

/// A `brx-sync serve` child with free ports and its own database (dropped with it).
pub(crate) struct ServeProcess {
    pub(crate) child: Child,
    pub(crate) grpc_addr: String,
    pub(crate) admin_addr: String,
    database: String,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JWT secret and an encryption key, the protections `serve` refuses to start without.
pub(crate) const PROTECTED_ENV: [(&str, &str); 2] = [
    (
        "BRX_JWT_HS256_SECRET",
        "process-test-secret-0123456789abcdefghijklmnop",
    ),
    (
        "BRX_ENCRYPTION_KEYS",
        "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ),
];

impl ServeProcess {
    /// Starts the binary with a clean environment, the protections, and `env`; stdout is captured, stderr dropped.
    pub(crate) fn spawn(env: &[(&str, &str)]) -> Self {
        super::init_process();
        let grpc_addr = format!("127.0.0.1:{}", free_port());
        let http_addr = format!("127.0.0.1:{}", free_port());
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let database = format!("brx_test_{}", uuid::Uuid::new_v4().simple());
        let child = Command::new(env!("CARGO_BIN_EXE_brx-sync"))
            .arg("serve")
            .env_clear()
            .env("BRX_GRPC_ADDR", &grpc_addr)
            .env("BRX_HTTP_ADDR", &http_addr)
            .env("BRX_ADMIN_ADDR", &admin_addr)
            .env(
                "BRX_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{database}"),
            )
            .env("BRX_HEALTH_CHECK_INTERVAL", "200ms")
            .envs(PROTECTED_ENV)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            child,
            grpc_addr,
            admin_addr,
            database,
        }
    }

    /// Waits up to 20 s for `/readyz` to answer 200.
    pub(crate) async fn wait_until_ready(&self) {
        let readyz = format!("http://{}/readyz", self.admin_addr);
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(&readyz).await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the process never became ready");
    }

    /// A gRPC channel to the process.
    pub(crate) async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends SIGTERM, as the kubelet does.
    pub(crate) fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        super::drop_database(&self.database);
    }
}
