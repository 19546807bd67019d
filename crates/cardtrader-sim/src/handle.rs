//! [`SimulatorHandle`]: starts the simulator in-process (port 0 welcome) and gives tests direct access
//! to its state — faults, statistics, inventories, webhooks.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::task::JoinHandle;

use super::{
    Faults, SimSeller, SimulatorConfig, TokenStats, admin, ops, routes,
    state::{SimState, lock},
    webhook,
};

/// How long shutdown waits for in-flight requests (a hung fault would otherwise hold it 60 s).
const DRAIN: Duration = Duration::from_secs(2);

/// A running simulator.
#[derive(Debug)]
pub struct SimulatorHandle {
    state: Arc<SimState>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// Binds `addr` (port 0 picks a free port) and serves the simulator in the background.
    pub async fn start(config: SimulatorConfig, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the simulator to {addr}"))?;
        let addr = listener.local_addr()?;
        let state = SimState::new(config);
        let app = routes::api(state.clone()).merge(admin::router(state.clone()));
        let stop = state.cancel.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "the simulator stopped serving");
            }
        });
        Ok(Self {
            state,
            addr,
            server: Some(server),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api/v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// Token of seeded seller `seller_number` (1-based): `sim-token-{n}`.
    pub fn token(&self, seller_number: u32) -> String {
        format!("sim-token-{seller_number}")
    }

    /// Adds a seller with a fresh token and a deterministic inventory of `products`.
    pub fn add_seller(&self, products: u64) -> SimSeller {
        self.state.add_seller(products).info.clone()
    }

    /// The seller behind `token`.
    pub fn seller(&self, token: &str) -> Option<SimSeller> {
        self.state.by_token(token).map(|s| s.info.clone())
    }

    /// Replaces the active faults (`burst_429` starts a new burst).
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// The active faults; `burst_429` is what is left of the burst.
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// Requests received from `token` so far (zeros for an unknown token).
    pub fn stats(&self, token: &str) -> TokenStats {
        self.state
            .by_token(token)
            .map(|s| lock(&s.meter).stats())
            .unwrap_or_default()
    }

    /// Product `product_id` of `token`'s seller in export shape; `None` if deleted or unknown.
    pub fn product(&self, token: &str, product_id: i64) -> Option<serde_json::Value> {
        let seller = self.state.by_token(token)?;
        let product = lock(&seller.inventory).get(product_id)?;
        Some(product.export_json(seller.info.user_id, self.state.exports_expansion()))
    }

    /// Adds (or, the default, leaves out) the undocumented `expansion` object of export rows from
    /// now on, so both client paths can be tested.
    pub fn set_export_expansion(&self, on: bool) {
        self.state.set_export_expansion(on);
    }

    /// Changes a quantity behind the client's back; ≤ 0 deletes the product. Unknown ids are ignored.
    pub fn set_quantity(&self, token: &str, product_id: i64, quantity: i64) {
        if let Some(seller) = self.state.by_token(token) {
            // An unknown id is a no-op by contract: there is nothing to change behind anyone's back.
            let _ = ops::set_quantity(&mut lock(&seller.inventory), product_id, quantity);
        }
    }

    /// Products `token`'s seller currently holds.
    pub fn inventory_len(&self, token: &str) -> u64 {
        self.state
            .by_token(token)
            .map_or(0, |s| lock(&s.inventory).len())
    }

    /// Puts `token`'s seller on (or back from) vacation: its products cannot be added to carts.
    pub fn set_on_vacation(&self, token: &str, on_vacation: bool) {
        if let Some(seller) = self.state.by_token(token) {
            lock(&seller.account).on_vacation = on_vacation;
        }
    }

    /// Removes (or restores) `token`'s payment method: purchases then fail with `validation_error`.
    pub fn set_payment_method(&self, token: &str, has_payment_method: bool) {
        if let Some(seller) = self.state.by_token(token) {
            lock(&seller.account).no_payment_method = !has_payment_method;
        }
    }

    /// POSTs `body` to `url` signed with `token`'s shared secret (`Signature` header); returns the status.
    pub async fn emit_webhook(
        &self,
        url: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<u16> {
        let seller = self
            .seller(token)
            .with_context(|| format!("unknown simulator token {token}"))?;
        webhook::emit(url, &seller.shared_secret, &body).await
    }

    /// Stops serving: in-flight requests get a short grace period, hung ones are cut.
    pub async fn shutdown(mut self) {
        self.state.cancel.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(DRAIN, &mut server).await.is_err()
        {
            tracing::warn!(
                "simulator connections still open after the grace period; aborting them"
            );
            server.abort();
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` must not leave a server (and its hung requests) behind.
        self.state.cancel.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
