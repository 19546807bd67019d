//! The process's stop signal: the first SIGTERM or SIGINT starts a graceful shutdown, a second one
//! exits at once; and [`AnswerBy`], how a handler that waits on work knows to answer now.

/// Exit code when a second signal cuts a graceful shutdown short (128 + SIGINT, as shells report it).
const EXIT_FORCED: i32 = 130;

/// Resolves on the first SIGTERM/SIGINT and arms a handler that exits on the next.
pub async fn signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received; a second signal exits at once");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting without waiting");
        std::process::exit(EXIT_FORCED);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler fails only when the runtime has no signal driver, a start-up bug.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// When a handler that answers with what it has (a purchase or a create still in progress) stops
/// waiting: at its deadline, or at once when the server starts draining, so a drain never waits
/// on a long poll whose work another replica will finish anyway.
#[derive(Debug, Clone)]
pub struct AnswerBy {
    at: tokio::time::Instant,
    draining: tokio_util::sync::CancellationToken,
}

impl AnswerBy {
    /// At `at`, or when `draining` is cancelled, whichever comes first.
    pub fn new(at: tokio::time::Instant, draining: tokio_util::sync::CancellationToken) -> Self {
        Self { at, draining }
    }

    /// The deadline, drain aside.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// True once the deadline has passed or the drain has begun.
    pub fn is_due(&self) -> bool {
        tokio::time::Instant::now() >= self.at || self.draining.is_cancelled()
    }

    /// Resolves when the answer is due.
    pub async fn due(&self) {
        tokio::select! {
            () = tokio::time::sleep_until(self.at) => {}
            () = self.draining.cancelled() => {}
        }
    }
}
