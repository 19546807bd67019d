//! Mirrors [`Readiness`] onto `grpc.health.v1` for the whole server ("") and each of our services.

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{metrics::Metrics, readiness::Readiness};

/// Keeps the health service in step with readiness.
#[derive(Debug, Clone)]
pub struct HealthBridge {
    reporter: HealthReporter,
    readiness: Readiness,
    metrics: Metrics,
    services: Vec<&'static str>,
}

impl HealthBridge {
    pub(crate) fn new(
        reporter: HealthReporter,
        readiness: Readiness,
        metrics: Metrics,
        services: Vec<&'static str>,
    ) -> Self {
        Self {
            reporter,
            readiness,
            metrics,
            services,
        }
    }

    /// Publishes the current readiness now; shutdown calls this so NOT_SERVING is visible before
    /// anything stops.
    pub async fn sync(&self) {
        let serving = self.readiness.current().serving();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.metrics.serving.set(i64::from(serving));
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Follows readiness changes for as long as the process runs.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut changes = self.readiness.subscribe();
        loop {
            changes.borrow_and_update();
            self.sync().await;
            if changes.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}
