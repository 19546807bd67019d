//! Whether this replica should receive traffic: the one flag behind grpc health, `/readyz` and the
//! `brx_serving` gauge. Written by the storage supervisor and by shutdown; read everywhere else.

use std::sync::Arc;

use tokio::sync::watch;

/// What readiness is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadyState {
    /// PostgreSQL answers and every migration this build knows is applied.
    pub database_ready: bool,
    /// Shutdown has begun: stay up for in-flight work but take no new traffic.
    pub draining: bool,
}

impl ReadyState {
    /// SERVING only with the source of truth reachable and no shutdown under way.
    pub fn serving(&self) -> bool {
        self.database_ready && !self.draining
    }
}

/// Shared handle on the readiness flag; clones see the same state.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<watch::Sender<ReadyState>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Starts not ready: nothing has been checked yet.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(ReadyState::default())),
        }
    }

    /// Records the outcome of a database check; wakes watchers only on change.
    pub fn set_database_ready(&self, ready: bool) {
        self.state.send_if_modified(|state| {
            let changed = state.database_ready != ready;
            state.database_ready = ready;
            changed
        });
    }

    /// Marks the replica as shutting down; irreversible.
    pub fn start_draining(&self) {
        self.state
            .send_if_modified(|state| !std::mem::replace(&mut state.draining, true));
    }

    /// The current state.
    pub fn current(&self) -> ReadyState {
        *self.state.borrow()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<ReadyState> {
        self.state.subscribe()
    }
}
