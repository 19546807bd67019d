//! The process's stop signal: the first SIGTERM or SIGINT starts a graceful shutdown, a second one
//! exits at once.

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
