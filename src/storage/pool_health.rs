//! The last known state of each pool, as the supervisor saw it, for GetStats, metrics and the work
//! that waits for a pool to come back.

use std::sync::Mutex;

use tokio::sync::watch;

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// PostgreSQL.
    Postgres = 0,
    /// MySQL catalogue.
    Mysql = 1,
    /// Redis.
    Redis = 2,
}

impl PoolKind {
    /// Every pool, in the order stats report them.
    pub const ALL: [PoolKind; 3] = [PoolKind::Postgres, PoolKind::Mysql, PoolKind::Redis];

    /// Name used in stats, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Postgres => "postgres",
            PoolKind::Mysql => "mysql",
            PoolKind::Redis => "redis",
        }
    }
}

/// Connectivity as last checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolState {
    /// No check has succeeded yet.
    #[default]
    Connecting,
    /// The last check succeeded.
    Up,
    /// A check succeeded once, the last one failed.
    Down,
}

/// Everything GetStats says about one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Pool name.
    pub kind: PoolKind,
    /// Connectivity.
    pub state: PoolState,
    /// Configured maximum of open connections.
    pub max_size: u32,
    /// Open connections.
    pub size: u32,
    /// Open and idle.
    pub idle: u32,
    /// Checked out.
    pub in_use: u32,
    /// Callers waiting for a connection, where the driver tells.
    pub waiting: u32,
    /// Failed checks since the last success.
    pub consecutive_failures: u32,
    /// The last check's error, empty when up.
    pub last_error: String,
}

#[derive(Debug, Default)]
pub(super) struct PoolHealth {
    record: Mutex<HealthRecord>,
    /// How many times the pool came (back) up, for work that waits on a recovery.
    ups: watch::Sender<u64>,
}

#[derive(Debug, Default, Clone)]
struct HealthRecord {
    state: PoolState,
    consecutive_failures: u32,
    last_error: String,
}

impl PoolHealth {
    /// Records a successful check; returns true when the pool just came (back) up.
    pub(super) fn record_success(&self) -> bool {
        let mut record = self.lock();
        let was_up = record.state == PoolState::Up;
        *record = HealthRecord {
            state: PoolState::Up,
            ..HealthRecord::default()
        };
        if !was_up {
            self.ups.send_modify(|ups| *ups += 1);
        }
        !was_up
    }

    /// The state as last checked.
    pub(super) fn state(&self) -> PoolState {
        self.lock().state
    }

    /// A receiver that wakes each time the pool comes (back) up.
    pub(super) fn watch_up(&self) -> watch::Receiver<u64> {
        self.ups.subscribe()
    }

    /// Records a failed check; returns whether the pool just went down, and the failures in a row.
    pub(super) fn record_failure(&self, error: String) -> (bool, u32) {
        let mut record = self.lock();
        let was_up = record.state == PoolState::Up;
        if was_up {
            record.state = PoolState::Down;
        }
        record.consecutive_failures = record.consecutive_failures.saturating_add(1);
        record.last_error = error;
        (was_up, record.consecutive_failures)
    }

    pub(super) fn fill(&self, snapshot: &mut PoolSnapshot) {
        let record = self.lock().clone();
        snapshot.state = record.state;
        snapshot.consecutive_failures = record.consecutive_failures;
        snapshot.last_error = record.last_error;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        // A panic while holding this lock leaves a plain record behind, still valid to read.
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PoolSnapshot {
    pub(super) fn usage(kind: PoolKind, max_size: u32, size: u32, idle: u32, waiting: u32) -> Self {
        Self {
            kind,
            state: PoolState::Connecting,
            max_size,
            size,
            idle,
            in_use: size.saturating_sub(idle),
            waiting,
            consecutive_failures: 0,
            last_error: String::new(),
        }
    }
}
