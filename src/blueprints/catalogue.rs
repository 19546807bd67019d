//! The MySQL level: one `UNION ALL` over the catalogue tables per batch of ids, on a pooled connection
//! whose checkout is bounded (mysql_async's `get_conn` would otherwise wait forever on an exhausted pool),
//! and so is each query (`BRX_CATALOG_QUERY_TIMEOUT`: a lock or a stalled server must not hold every
//! caller until its deadline).

use std::{collections::HashMap, fmt::Write, time::Instant};

use mysql_async::prelude::Queryable;

use super::{Inner, PrintRef, Resolution};
use crate::domain::BlueprintId;

impl Inner {
    /// Mapped or unmapped for every id; all unknown when MySQL cannot be reached in time.
    pub(super) async fn query_catalogue(
        &self,
        ids: &[BlueprintId],
        deadline: Instant,
    ) -> HashMap<BlueprintId, Resolution> {
        let unknown = || {
            ids.iter()
                .map(|&id| (id, Resolution::Unknown))
                .collect::<HashMap<_, _>>()
        };
        let checkout_deadline = deadline.min(Instant::now() + self.settings.acquire_timeout);
        let conn = tokio::time::timeout_at(checkout_deadline.into(), self.mysql.get_conn()).await;
        let mut conn = match conn {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                tracing::warn!(%error, ids = ids.len(), "catalogue unreachable: answering unknown");
                self.count("unknown", ids.len());
                return unknown();
            }
            Err(_) => {
                tracing::warn!(
                    ids = ids.len(),
                    acquire_timeout_ms = u64::try_from(self.settings.acquire_timeout.as_millis())
                        .unwrap_or(u64::MAX),
                    "no MySQL catalogue connection within BRX_MYSQL_ACQUIRE_TIMEOUT (the catalogue hangs \
                     or every connection is busy): answering unknown; those rows are remapped once it answers"
                );
                self.count("unknown", ids.len());
                return unknown();
            }
        };
        let mut answers = HashMap::with_capacity(ids.len());
        let mut chunks = ids.chunks(self.settings.batch_size);
        for chunk in chunks.by_ref() {
            let started = Instant::now();
            let query_deadline = deadline.min(started + self.settings.query_timeout);
            let rows = tokio::time::timeout_at(
                query_deadline.into(),
                conn.query::<(i64, i64, usize), _>(self.lookup_sql(chunk)),
            )
            .await;
            self.metrics
                .catalog_query_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.catalog_batch_size.observe(chunk.len() as f64);
            self.metrics.catalog_queries.inc();
            let failure = match rows {
                Ok(Ok(rows)) => {
                    answers.extend(self.interpret(chunk, rows));
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer in time".to_owned(),
            };
            tracing::warn!(%failure, ids = chunk.len(), "catalogue query failed: answering unknown");
            answers.extend(chunk.iter().map(|&id| (id, Resolution::Unknown)));
            // The connection is mid-query or broken: the rest are not asked on it.
            break;
        }
        answers.extend(chunks.flatten().map(|&id| (id, Resolution::Unknown)));
        let unknown_count = answers
            .values()
            .filter(|r| **r == Resolution::Unknown)
            .count();
        self.count("mysql", answers.len() - unknown_count);
        self.count("unknown", unknown_count);
        answers
    }

    /// `SELECT blueprint, id, <table index> FROM t1 WHERE blueprint IN (…) UNION ALL …`. The ids are
    /// integers formatted here and table/column names were checked as plain identifiers by the config,
    /// so the text query cannot be injected; it also avoids a prepared statement per IN-list length.
    fn lookup_sql(&self, ids: &[BlueprintId]) -> String {
        let mut list = String::with_capacity(ids.len() * 8);
        for (n, id) in ids.iter().enumerate() {
            let separator = if n == 0 { "" } else { "," };
            let _ = write!(list, "{separator}{id}");
        }
        let (id_column, blueprint_column) =
            (&self.settings.id_column, &self.settings.blueprint_column);
        self.settings
            .tables
            .iter()
            .enumerate()
            .map(|(index, table)| {
                format!("SELECT `{blueprint_column}`, `{id_column}`, {index} FROM `{table}` WHERE `{blueprint_column}` IN ({list})")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    }

    /// The first table (in configured order) that has a print wins; ids with no row are unmapped.
    fn interpret(
        &self,
        ids: &[BlueprintId],
        rows: Vec<(i64, i64, usize)>,
    ) -> HashMap<BlueprintId, Resolution> {
        let mut best: HashMap<i64, (usize, i64)> = HashMap::new();
        for (blueprint, print_id, table_index) in rows {
            let entry = best.entry(blueprint).or_insert((table_index, print_id));
            if table_index < entry.0 || (table_index == entry.0 && print_id < entry.1) {
                *entry = (table_index, print_id);
            }
        }
        ids.iter()
            .map(|&id| {
                let resolution = match best.get(&id.get()) {
                    Some(&(table_index, print_id)) => Resolution::Mapped(PrintRef {
                        print_id,
                        table: self.settings.tables[table_index].clone(),
                    }),
                    None => Resolution::Unmapped,
                };
                (id, resolution)
            })
            .collect()
    }
}
