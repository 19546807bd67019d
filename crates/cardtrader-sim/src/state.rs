//! Shared simulator state. Each seller's inventory, limiter and account sit behind their own
//! `std::sync::Mutex`, so 1,000 sellers syncing at once rarely contend; no lock is held across an
//! await, and no code path holds two seller locks at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Faults, SimSeller, SimulatorConfig,
    commerce::{Cart, OrderBook},
    hash::mix3,
    inventory::{Generator, Inventory},
    jobs::Jobs,
    rate_limit::{Limits, Meter},
};

/// Locks `m`, ignoring poisoning: a panicked handler leaves simulator data usable enough for tests.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A buyer-side account: cart and the switches tests flip.
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub(crate) on_vacation: bool,
    pub(crate) no_payment_method: bool,
    pub(crate) cart: Cart,
}

/// One simulated CardTrader user.
#[derive(Debug)]
pub(crate) struct Seller {
    pub(crate) number: u32,
    pub(crate) info: SimSeller,
    pub(crate) inventory: Mutex<Inventory>,
    pub(crate) meter: Mutex<Meter>,
    pub(crate) account: Mutex<Account>,
}

impl Seller {
    fn new(seed: u64, number: u32, products: u64) -> Self {
        let secret: String = (0..4)
            .map(|i| format!("{:016x}", mix3(seed, u64::from(number), i)))
            .collect();
        let info = SimSeller {
            token: format!("sim-token-{number}"),
            user_id: 100_000 + i64::from(number),
            app_id: 500_000 + i64::from(number),
            username: format!("sim-seller-{number}"),
            shared_secret: secret,
        };
        let inventory = Mutex::new(Inventory::new(Generator::new(seed, number, products)));
        Self {
            number,
            info,
            inventory,
            meter: Mutex::default(),
            account: Mutex::default(),
        }
    }

    /// The `user` object of marketplace listings.
    pub(crate) fn user_json(&self) -> Value {
        let n = self.number;
        let country = ["IT", "US", "DE", "FR", "ES"][(n % 5) as usize];
        json!({"id": self.info.user_id, "username": self.info.username,
            "country_code": country,
            "user_type": if n.is_multiple_of(3) { "pro" } else { "normal" },
            "can_sell_via_hub": n % 2 == 1, "can_sell_sealed_with_ct_zero": false,
            "too_many_request_for_cancel_as_seller": false,
            "max_sellable_in24h_quantity": if n.is_multiple_of(4) { Value::Null } else { json!(50) },
            "one_day_ready": n.is_multiple_of(2)})
    }

    /// `{id, username}`, the short user shape of carts and orders.
    pub(crate) fn short_json(&self) -> Value {
        json!({"id": self.info.user_id, "username": self.info.username})
    }

    /// Whether the seller is on vacation (its products cannot be bought).
    pub(crate) fn on_vacation(&self) -> bool {
        lock(&self.account).on_vacation
    }
}

#[derive(Debug, Default)]
struct Sellers {
    by_number: Vec<Arc<Seller>>,
    by_token: HashMap<String, Arc<Seller>>,
    by_username: HashMap<String, Arc<Seller>>,
}

/// Everything the simulator knows.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) config: SimulatorConfig,
    faults: RwLock<Faults>,
    burst_left: AtomicU32,
    /// Faults left before the rates stop, when `max_faulted` is set.
    faulted_left: AtomicU32,
    sellers: RwLock<Sellers>,
    /// Whether export rows carry the undocumented `expansion` object; switchable while running.
    export_expansion: AtomicBool,
    pub(crate) jobs: Jobs,
    pub(crate) orders: Mutex<OrderBook>,
    /// Cancelled at shutdown; long sleeps (hangs, jobs) give up on it.
    pub(crate) cancel: CancellationToken,
}

impl SimState {
    /// State with the configured sellers seeded.
    pub(crate) fn new(config: SimulatorConfig) -> Arc<Self> {
        let state = Arc::new(Self {
            faults: RwLock::new(Faults::default()),
            burst_left: AtomicU32::new(0),
            faulted_left: AtomicU32::new(0),
            sellers: RwLock::default(),
            export_expansion: AtomicBool::new(config.export_expansion),
            jobs: Jobs::default(),
            orders: Mutex::default(),
            cancel: CancellationToken::new(),
            config,
        });
        state.set_faults(state.config.faults.clone());
        for _ in 0..state.config.sellers {
            state.add_seller(state.config.products_per_seller);
        }
        state
    }

    /// Adds a seller with the next number and `products` generated products.
    pub(crate) fn add_seller(&self, products: u64) -> Arc<Seller> {
        let mut sellers = self.sellers.write().unwrap_or_else(PoisonError::into_inner);
        let number = u32::try_from(sellers.by_number.len() + 1).unwrap_or(u32::MAX);
        let seller = Arc::new(Seller::new(self.config.seed, number, products));
        sellers.by_number.push(seller.clone());
        sellers
            .by_token
            .insert(seller.info.token.clone(), seller.clone());
        sellers
            .by_username
            .insert(seller.info.username.clone(), seller.clone());
        seller
    }

    fn read<R>(&self, f: impl FnOnce(&Sellers) -> R) -> R {
        f(&self.sellers.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The seller behind a bearer token.
    pub(crate) fn by_token(&self, token: &str) -> Option<Arc<Seller>> {
        self.read(|s| s.by_token.get(token).cloned())
    }

    /// Seller number `n` (1-based).
    pub(crate) fn by_number(&self, n: u32) -> Option<Arc<Seller>> {
        self.read(|s| s.by_number.get((n as usize).checked_sub(1)?).cloned())
    }

    /// The seller with this username.
    pub(crate) fn by_username(&self, username: &str) -> Option<Arc<Seller>> {
        self.read(|s| s.by_username.get(username).cloned())
    }

    /// Every seller, in number order.
    pub(crate) fn all(&self) -> Vec<Arc<Seller>> {
        self.read(|s| s.by_number.clone())
    }

    /// Current faults; `burst_429` is what is left of the burst.
    pub(crate) fn faults(&self) -> Faults {
        let mut faults = self
            .faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        faults.burst_429 = self.burst_left.load(Ordering::Relaxed);
        faults
    }

    /// Replaces the faults; `burst_429` starts a new burst.
    pub(crate) fn set_faults(&self, faults: Faults) {
        self.burst_left.store(faults.burst_429, Ordering::Relaxed);
        self.faulted_left
            .store(faults.max_faulted, Ordering::Relaxed);
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// Whether a fault rolled for a request may be applied: always without `max_faulted`, else
    /// while any of the allowance is left (taking one).
    pub(crate) fn take_fault(&self, faults: &Faults) -> bool {
        faults.max_faulted == 0
            || self
                .faulted_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Takes one request out of the injected 429 burst, if any is left.
    pub(crate) fn take_burst(&self) -> bool {
        self.burst_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether export rows carry the undocumented `expansion` object.
    pub(crate) fn exports_expansion(&self) -> bool {
        self.export_expansion.load(Ordering::Relaxed)
    }

    /// Adds (or removes) the undocumented `expansion` object of export rows from now on.
    pub(crate) fn set_export_expansion(&self, on: bool) {
        self.export_expansion.store(on, Ordering::Relaxed);
    }

    /// The configured rate limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            general_per_10s: self.config.general_per_10s,
            marketplace_per_second: self.config.marketplace_per_second,
            jobs_per_second: self.config.jobs_per_second,
        }
    }
}
