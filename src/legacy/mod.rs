//! `brx-sync import-legacy`: moving a shop over from the Python service it replaces, without its
//! sellers connecting again.
//!
//! A run reads the old database ([`source`], read-only), opens every selected seller's Fernet token
//! first ([`tokens`]: a wrong key stops the run here, before anything is written), then moves the
//! sellers a few at a time. For each: the account (asking CardTrader's `/info` with `--verify`, or
//! when the old service never learnt the webhook secret), the old inventory rows that can be keyed
//! by CardTrader product id ([`rows`]), their prints from the catalogue, and one transaction that
//! stores the account (secrets sealed with our keyring), copies the rows, queues a full sync and
//! records the seller in the ledger ([`ledger`]). The sync then reconciles the carried rows with
//! CardTrader the normal way, sweeping the stale ones. A seller in the ledger is never moved
//! again, so a second run changes nothing and an interrupted one resumes where it stopped.

mod ledger;
mod progress;
mod report;
mod rows;
mod source;
mod tokens;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::ProgressBar;
use secrecy::SecretString;
use uuid::Uuid;

pub use progress::ProgressMode;
pub use report::{ImportReport, Outcome, SellerReport, Summary};
pub use rows::{SkipReason, SkippedRow};
pub use source::{LegacyDb, PendingEdit, SourceError};
pub use tokens::{KeyError, LegacyKey};

use self::{progress::Progress, source::LegacySeller, tokens::LegacyToken};
use crate::{
    accounts::{AccountError, AccountStatus, Accounts, ImportedAccount},
    app,
    blueprints::{BlueprintCatalog, Resolution},
    config::{Config, ConfigError, ImportLegacyArgs},
    domain::{BlueprintId, UserId},
    inventory::{self, CarriedItem},
    jobs::{self, JobKind, NewJob, QueueLimit},
    metrics::Metrics,
    storage::{Pg, Storage, migrations_applied},
};

/// How long one seller's catalogue lookup may take before its rows are stored with prints unknown
/// (and remapped once the catalogue answers), as a sync would store them.
const CATALOG_BUDGET: Duration = Duration::from_secs(30);

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Decide and report, write nothing.
    pub dry_run: bool,
    /// Check each token with CardTrader's `/info` first.
    pub verify: bool,
    /// Only these sellers; every seller when empty.
    pub sellers: Vec<Uuid>,
    /// Sellers moved at once.
    pub concurrency: usize,
    /// How progress is shown.
    pub progress: ProgressMode,
}

/// Why a run stopped before moving anyone.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The Fernet key is malformed or opens none of the tokens.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The old database cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Our database lacks tables the import writes.
    #[error("the brx-sync database is not migrated: run `brx-sync migrate` first")]
    NotMigrated,
    /// Our database cannot be read.
    #[error("reading the brx-sync database failed: {0}")]
    Database(#[from] sqlx::Error),
    /// Accounts cannot be read.
    #[error("reading the brx-sync accounts failed: {0}")]
    Accounts(#[from] AccountError),
}

/// Moves sellers from the old database into ours.
#[derive(Debug, Clone)]
pub struct Importer {
    pg: Pg,
    accounts: Accounts,
    catalog: BlueprintCatalog,
    /// How long one seller's `/info` may take, retries and the rate-limit wait included.
    verify_budget: Duration,
}

/// One seller to move, with what the run already knows of them.
struct Candidate {
    seller: LegacySeller,
    token: LegacyToken,
    pending_edits: Vec<PendingEdit>,
    moved_at: Option<DateTime<Utc>>,
    existing: Option<AccountStatus>,
}

impl Importer {
    /// An importer over the pools `config` describes (returned too, to close them after), with the
    /// CardTrader client, rate limiter, keyring and catalogue a replica would build. Needs
    /// `BRX_ENCRYPTION_KEYS`: tokens are never stored unencrypted.
    pub fn from_config(config: &Config) -> anyhow::Result<(Self, Storage)> {
        config.validate_settings()?;
        let keys = config
            .auth
            .encryption_keys
            .as_ref()
            .ok_or_else(|| ConfigError {
                setting: "BRX_ENCRYPTION_KEYS",
                reason: "required: the import stores sellers' CardTrader tokens encrypted with it"
                    .into(),
            })?;
        let keyring = app::parse_keyring(keys)?;
        let storage = Storage::connect_lazy(&config.storage)?;
        let (accounts, catalog) =
            app::accounts_and_catalog(config, &storage, Some(keyring), &Metrics::new()?)?;
        let importer = Self::new(
            storage.pg.clone(),
            accounts,
            catalog,
            config.cardtrader.call_budget,
        );
        Ok((importer, storage))
    }

    /// An importer writing to `pg`, sealing secrets and asking CardTrader through `accounts`,
    /// mapping prints through `catalog`, giving each `/info` `verify_budget`.
    pub fn new(
        pg: Pg,
        accounts: Accounts,
        catalog: BlueprintCatalog,
        verify_budget: Duration,
    ) -> Self {
        Self {
            pg,
            accounts,
            catalog,
            verify_budget,
        }
    }

    /// Runs an import from `legacy`, whose tokens `key` opens.
    pub async fn import(
        &self,
        legacy: &LegacyDb,
        key: &LegacyKey,
        options: &ImportOptions,
    ) -> Result<ImportReport, ImportError> {
        let started_at = Utc::now();
        if !migrations_applied(&self.pg).await? {
            return Err(ImportError::NotMigrated);
        }
        let sellers = legacy.sellers(&options.sellers).await?;
        let mut not_found: Vec<Uuid> = options
            .sellers
            .iter()
            .filter(|wanted| !sellers.iter().any(|seller| seller.user_id == **wanted))
            .copied()
            .collect();
        not_found.sort();
        not_found.dedup();
        // Every token before any write: a wrong key must leave both databases as they were.
        let tokens = key.open_all(&sellers)?;
        let mut pending_by_seller: HashMap<Uuid, Vec<PendingEdit>> = HashMap::new();
        let mut pending_without_seller = Vec::new();
        for edit in legacy.pending_edits().await? {
            match edit.user_id {
                Some(user_id) => pending_by_seller.entry(user_id).or_default().push(edit),
                None => pending_without_seller.push(edit),
            }
        }
        let ids: Vec<Uuid> = sellers.iter().map(|seller| seller.user_id).collect();
        let moved = ledger::moved_at(&self.pg, &ids).await?;
        let users: Vec<UserId> = ids
            .iter()
            .filter_map(|id| UserId::from_uuid(*id).ok())
            .collect();
        let existing = self.accounts.statuses(&users).await?;
        let candidates: Vec<Candidate> = sellers
            .into_iter()
            .zip(tokens)
            .map(|(seller, token)| {
                let user_id = seller.user_id;
                Candidate {
                    pending_edits: pending_by_seller.remove(&user_id).unwrap_or_default(),
                    moved_at: moved.get(&user_id).copied(),
                    existing: UserId::from_uuid(user_id)
                        .ok()
                        .and_then(|user| existing.get(&user).copied()),
                    seller,
                    token,
                }
            })
            .collect();

        let progress = Progress::new(candidates.len() as u64, options.progress);
        let rows_carried = AtomicU64::new(0);
        let reports: Vec<SellerReport> = futures::stream::iter(candidates)
            .map(|candidate| async {
                let bar = progress.seller(candidate.seller.user_id);
                let report = self.move_seller(legacy, candidate, options, &bar).await;
                let so_far = rows_carried.fetch_add(report.rows_carried, Ordering::Relaxed)
                    + report.rows_carried;
                progress.seller_done(bar, &report, so_far);
                report
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        progress.finish();
        Ok(ImportReport::new(
            options.dry_run,
            options.verify,
            started_at,
            reports,
            not_found,
            pending_without_seller,
        ))
    }

    /// Moves one seller; never fails as a whole: what went wrong is the seller's outcome.
    async fn move_seller(
        &self,
        legacy: &LegacyDb,
        candidate: Candidate,
        options: &ImportOptions,
        bar: &ProgressBar,
    ) -> SellerReport {
        let Candidate {
            seller,
            token,
            pending_edits,
            moved_at,
            existing,
        } = candidate;
        let mut report = SellerReport::new(
            seller.user_id,
            seller.sync_status.clone(),
            seller.last_error.clone(),
        );
        report.pending_edits = pending_edits;
        if let Some(moved_at) = moved_at {
            report.moved_at = Some(moved_at);
            report.outcome = Outcome::AlreadyMoved;
            return report;
        }
        let Ok(user_id) = UserId::from_uuid(seller.user_id) else {
            return report.ended(Outcome::Skipped, "the nil UUID is not a seller id");
        };
        if let Some(status) = existing {
            let reason = format!(
                "already has an account here ({}), connected since the old service ran: left as it is",
                status_word(status)
            );
            return report.ended(Outcome::Skipped, reason);
        }
        let account = match self
            .account_of(user_id, &seller, token, options.verify, &mut report)
            .await
        {
            Ok(account) => account,
            Err(Ended(outcome, reason)) => return report.ended(outcome, reason),
        };
        let items = match self
            .carried_items(legacy, seller.user_id, &mut report)
            .await
        {
            Ok(items) => items,
            Err(error) => return report.ended(Outcome::Failed, error.to_string()),
        };
        Progress::seller_rows(bar, items.len() as u64);
        report.outcome = match account.status {
            AccountStatus::Connected => Outcome::Moved,
            AccountStatus::TokenInvalid => Outcome::TokenInvalid,
            AccountStatus::Disconnected => Outcome::Disconnected,
        };
        if options.dry_run {
            bar.set_position(items.len() as u64);
            return report;
        }
        bar.set_message("writing");
        match self.write(&account, &items, &mut report, bar).await {
            Ok(Written::Done) => report,
            Ok(Written::AccountExists) => report.ended(
                Outcome::Skipped,
                "an account was connected here while the import ran: left as it is",
            ),
            Ok(Written::RecordedMeanwhile) => {
                report.outcome = Outcome::AlreadyMoved;
                report
            }
            Err(AccountError::CardTraderAccountTaken) => report.ended(
                Outcome::Skipped,
                "the token's CardTrader account is already connected to another seller here",
            ),
            Err(error) => report.ended(Outcome::Failed, format!("writing: {error}")),
        }
    }

    /// The account the seller gets, asking CardTrader's `/info` when verifying or when the old
    /// service never learnt the webhook secret (a connected account needs it).
    async fn account_of(
        &self,
        user_id: UserId,
        seller: &LegacySeller,
        token: LegacyToken,
        verify: bool,
        report: &mut SellerReport,
    ) -> Result<ImportedAccount, Ended> {
        let mut account = ImportedAccount {
            user_id,
            status: AccountStatus::Disconnected,
            token: None,
            shared_secret: None,
            cardtrader_user_id: None,
            cardtrader_app_id: None,
        };
        let token = match token {
            LegacyToken::Token(token) => token,
            LegacyToken::Disconnected => return Ok(account),
            LegacyToken::Unreadable => {
                return Err(Ended(
                    Outcome::Skipped,
                    "the token does not decrypt with the key (a damaged row?): the seller must call \
                     ConnectAccount"
                        .into(),
                ));
            }
        };
        let old_secret = seller
            .webhook_secret
            .as_deref()
            .map(str::trim)
            .filter(|secret| !secret.is_empty());
        account.shared_secret = old_secret.map(|secret| SecretString::from(secret.to_owned()));
        account.token = Some(token.clone());
        if !verify && old_secret.is_some() {
            account.status = AccountStatus::Connected;
            return Ok(account);
        }
        if old_secret.is_none() {
            report
                .notes
                .push("the old database has no webhook secret: CardTrader's /info gave it".into());
        }
        match self
            .accounts
            .check_token(user_id, &token, self.verify_budget)
            .await
        {
            Ok(info) => {
                if old_secret.is_some_and(|old| old != info.shared_secret) {
                    report.notes.push(
                        "the old webhook secret differs from CardTrader's: CardTrader's is stored"
                            .into(),
                    );
                }
                account.status = AccountStatus::Connected;
                account.shared_secret = Some(SecretString::from(info.shared_secret));
                account.cardtrader_user_id = info.user_id;
                account.cardtrader_app_id = Some(info.id);
                Ok(account)
            }
            Err(AccountError::TokenRejected) => {
                report.reason = Some(
                    "CardTrader refused the token: the seller must call ConnectAccount".into(),
                );
                account.status = AccountStatus::TokenInvalid;
                Ok(account)
            }
            Err(error) => Err(Ended(
                Outcome::Failed,
                format!("checking the token with CardTrader: {error}"),
            )),
        }
    }

    /// The seller's old rows that can be keyed, mapped to prints; the others go in the report.
    async fn carried_items(
        &self,
        legacy: &LegacyDb,
        user_id: Uuid,
        report: &mut SellerReport,
    ) -> Result<Vec<CarriedItem>, SourceError> {
        let sorted = rows::sort_rows(legacy.items_of(user_id).await?);
        for skipped in &sorted.skipped {
            *report.rows_skipped.entry(skipped.reason).or_default() += 1;
        }
        report.skipped_rows = sorted.skipped;
        let blueprints: Vec<i64> = sorted
            .keyed
            .iter()
            .map(|row| i64::from(row.item.blueprint_id))
            .collect();
        let ids: Vec<BlueprintId> = blueprints
            .iter()
            .filter_map(|id| BlueprintId::new(*id).ok())
            .collect();
        let prints = self
            .catalog
            .resolve_many(&ids, Instant::now() + CATALOG_BUDGET)
            .await;
        let expansions = self.catalog.known_expansions(&blueprints).await;
        let items: Vec<CarriedItem> = sorted
            .keyed
            .into_iter()
            .map(|row| {
                let blueprint_id = i64::from(row.item.blueprint_id);
                let resolution = BlueprintId::new(blueprint_id)
                    .ok()
                    .and_then(|id| prints.get(&id));
                let print = match resolution {
                    Some(Resolution::Mapped(print)) => Some((print.print_id, print.table.clone())),
                    _ => None,
                };
                CarriedItem {
                    product_id: row.product_id,
                    blueprint_id,
                    expansion_id: expansions.get(&blueprint_id).copied(),
                    print,
                    print_unknown: matches!(resolution, Some(Resolution::Unknown)),
                    quantity: row.item.quantity,
                    price_cents: i64::from(row.item.price_cents),
                    // CardTrader's properties_hash is an object; anything else the old rows hold
                    // (NULL, a stray array) is stored empty until the sync brings CardTrader's.
                    properties: match row.item.properties {
                        Some(object @ serde_json::Value::Object(_)) => object,
                        _ => serde_json::Value::Object(Default::default()),
                    },
                    description: row.item.description,
                    user_data_field: row.item.user_data_field,
                    graded: row.item.graded,
                }
            })
            .collect();
        report.rows_carried = items.len() as u64;
        report.rows_mapped = items.iter().filter(|item| item.print.is_some()).count() as u64;
        Ok(items)
    }

    /// The seller's one transaction: account, rows, full sync (for a connected account) and the
    /// ledger row that says the seller is done.
    async fn write(
        &self,
        account: &ImportedAccount,
        items: &[CarriedItem],
        report: &mut SellerReport,
        bar: &ProgressBar,
    ) -> Result<Written, AccountError> {
        let user_id = account.user_id;
        let mut tx = self.pg.begin().await?;
        if !self.accounts.insert_imported_in(&mut tx, account).await? {
            return Ok(Written::AccountExists);
        }
        inventory::copy_carried_in(&mut tx, user_id, items, |rows| bar.inc(rows as u64)).await?;
        let mut sync_job_id = None;
        if account.status == AccountStatus::Connected {
            let sync = NewJob::new(user_id, JobKind::SyncFull);
            let queued = jobs::store::enqueue_in(&mut tx, &sync, QueueLimit::Unbounded)
                .await
                .map_err(|err| AccountError::Internal(err.into()))?;
            sync_job_id = Some(queued.job().id);
        }
        let status = status_word(account.status);
        if !ledger::record_in(&mut tx, report, status, sync_job_id).await? {
            return Ok(Written::RecordedMeanwhile);
        }
        tx.commit().await?;
        report.sync_job_id = sync_job_id;
        Ok(Written::Done)
    }
}

/// How a seller's write ended, short of an error.
enum Written {
    /// Everything committed.
    Done,
    /// The seller got an account here since the run looked: nothing written.
    AccountExists,
    /// A concurrent run moved the seller first: nothing written.
    RecordedMeanwhile,
}

/// A seller's move ended early, with this outcome and reason.
struct Ended(Outcome, String);

/// The account status as stored (and as the ledger records it).
fn status_word(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Connected => "connected",
        AccountStatus::TokenInvalid => "token_invalid",
        AccountStatus::Disconnected => "disconnected",
    }
}

/// Some sellers could not be moved this time (CardTrader or a database unavailable): the run did
/// what it could; running the same command again retries them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} sellers could not be moved this time (see the report): run the same command again to \
     retry them; the sellers already moved are left as they are"
)]
pub struct Incomplete {
    /// Sellers that failed.
    pub failed: u64,
}

/// `brx-sync import-legacy`: runs an import as the command line asks, prints the summary table and
/// writes the JSON report. Settings that cannot work (no encryption keys, a malformed or wrong
/// Fernet key) are a [`ConfigError`]; sellers left to retry an [`Incomplete`].
pub async fn run_command(config: &Config, args: &ImportLegacyArgs) -> anyhow::Result<ImportReport> {
    let key_error = |error: KeyError| ConfigError {
        setting: "BRX_LEGACY_FERNET_KEY",
        reason: error.to_string(),
    };
    let key = LegacyKey::parse(&args.fernet_key).map_err(key_error)?;
    let (importer, storage) = Importer::from_config(config)?;
    let legacy = LegacyDb::connect(&args.from).await?;
    let options = ImportOptions {
        dry_run: args.dry_run,
        verify: args.verify,
        sellers: args.sellers.clone(),
        concurrency: usize::from(args.concurrency),
        progress: ProgressMode::Auto,
    };
    let imported = importer.import(&legacy, &key, &options).await;
    legacy.close().await;
    storage.close().await;
    let report = imported.map_err(|error| match error {
        ImportError::Key(key) => anyhow::Error::from(key_error(key)),
        other => other.into(),
    })?;
    print!("{}", report.table());
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        println!("  report written to {}", path.display());
    }
    if report.summary.failed > 0 {
        return Err(Incomplete {
            failed: report.summary.failed,
        }
        .into());
    }
    Ok(report)
}
