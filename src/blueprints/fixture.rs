//! A catalogue for machines that have none: the schema of the shop's print tables and a deterministic
//! seed whose prints cover the simulator's blueprint ids (`brx-sync catalog seed --prints N`). Used by
//! the demo, the tests and the benchmarks; production points `BRX_MYSQL_URL` at the real catalogue.

use std::fmt::Write;

use mysql_async::prelude::Queryable;

use secrecy::{ExposeSecret, SecretString};

use crate::config::CatalogConfig;

/// Rows per INSERT while seeding.
const SEED_BATCH: i64 = 5_000;
/// Print ids start here, so they never look like blueprint ids in a log.
pub const PRINT_ID_BASE: i64 = 1_000_000;

/// The table (index into the configured list) holding blueprint `id`'s print: 70% in the first table
/// (single cards), 10% in each of the next ones.
pub fn table_index_of(blueprint_id: i64, tables: usize) -> usize {
    let slot = (blueprint_id % 10) as usize;
    if slot < 7 || tables < 2 {
        0
    } else {
        (slot - 6).min(tables - 1)
    }
}

/// The print id the seed gives blueprint `id`.
pub fn print_id_of(blueprint_id: i64) -> i64 {
    PRINT_ID_BASE + blueprint_id
}

/// Creates the database and tables if needed, empties them, and inserts prints for blueprints
/// `1..=prints`, spread over the configured tables.
pub async fn seed(
    mysql_url: &SecretString,
    catalog: &CatalogConfig,
    prints: i64,
) -> anyhow::Result<()> {
    crate::storage::ensure_catalog_database(mysql_url).await?;
    let url = mysql_url.expose_secret().to_owned();
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let (id, blueprint) = (&catalog.id_column, &catalog.blueprint_column);
    for table in &catalog.tables {
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (\
                `{id}` BIGINT NOT NULL PRIMARY KEY, \
                `{blueprint}` BIGINT NULL, \
                `name` VARCHAR(200) NOT NULL, \
                KEY `{table}_{blueprint}_idx` (`{blueprint}`))"
        ))
        .await?;
        conn.query_drop(format!("TRUNCATE TABLE `{table}`")).await?;
    }
    let tables = &catalog.tables;
    let mut start = 1;
    while start <= prints {
        let end = (start + SEED_BATCH - 1).min(prints);
        for (index, table) in tables.iter().enumerate() {
            let mut values = String::new();
            for blueprint_id in (start..=end).filter(|&b| table_index_of(b, tables.len()) == index)
            {
                let separator = if values.is_empty() { "" } else { "," };
                let _ = write!(
                    values,
                    "{separator}({}, {blueprint_id}, 'Print of blueprint {blueprint_id}')",
                    print_id_of(blueprint_id)
                );
            }
            if !values.is_empty() {
                conn.query_drop(format!(
                    "INSERT INTO `{table}` (`{id}`, `{blueprint}`, `name`) VALUES {values}"
                ))
                .await?;
            }
        }
        start = end + 1;
    }
    conn.disconnect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_prints_are_single_cards_and_every_table_gets_some() {
        let counts = (1..=1000).fold([0; 4], |mut counts, id| {
            counts[table_index_of(id, 4)] += 1;
            counts
        });
        assert_eq!(counts, [700, 100, 100, 100]);
    }

    #[test]
    fn with_one_table_everything_goes_there() {
        assert!((1..100).all(|id| table_index_of(id, 1) == 0));
    }
}
