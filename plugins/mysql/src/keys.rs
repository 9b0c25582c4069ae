//! The readings table's unique keys: which of them are the reading's, which one a warning 1062
//! (Duplicate entry) names, and, where that cannot settle it, whether the rows a statement was
//! given are in the table. I/O: the queries of [`unique_keys`] and [`missing`].

use gateway_sdk::Reading;
use mysql_async::prelude::*;

/// A unique key of the readings table, as the schema check found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueKey {
    /// Its name (`PRIMARY` for the primary key).
    pub name: String,
    /// Whether it holds id and device, whole, and no other column but sensor, name, unit and
    /// time_us (what a reading always has): a row it refuses has the id and the device of a
    /// row stored, and is that reading, stored already (a re-delivery). (An id is unique only
    /// within its device: a key without the device, or without the id, refuses new readings
    /// too.)
    pub on_reading: bool,
}

/// The unique keys of the table (`?`), each with whether it is on the reading: id and device,
/// whole, and maybe sensor, name, unit, time_us (a re-delivery has them all the same; a table
/// partitioned on one of them must have it in every unique key). A key part that is an
/// expression (MySQL 8's functional key parts) has no COLUMN_NAME, and one on a prefix of a
/// column a SUB_PART: such a key is not on the reading.
const UNIQUE_KEYS: &str = "SELECT INDEX_NAME, \
     SUM(COLUMN_NAME IS NULL OR SUB_PART IS NOT NULL \
         OR LOWER(COLUMN_NAME) NOT IN ('id', 'device', 'sensor', 'name', 'unit', 'time_us')) = 0 \
     AND SUM(LOWER(COLUMN_NAME) = 'id') = 1 AND SUM(LOWER(COLUMN_NAME) = 'device') = 1 \
     FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 GROUP BY INDEX_NAME";

/// The unique keys of `table`, from `information_schema`.
pub async fn unique_keys(
    c: &mut mysql_async::Conn,
    table: &str,
) -> Result<Vec<UniqueKey>, mysql_async::Error> {
    let rows: Vec<(String, bool)> = c.exec(UNIQUE_KEYS, (table,)).await?;
    Ok(rows
        .into_iter()
        .map(|(name, on_reading)| UniqueKey { name, on_reading })
        .collect())
}

/// The key of `keys` (all the unique keys of `table`) that the message of a warning 1062
/// names, or `None` when it names none of them, or could be read as naming more than one.
///
/// The message ends `for key 'NAME'` (MariaDB, MySQL before 8.0.19) or `for key
/// 'TABLE.NAME'` (MySQL since), the name as it was defined, quotes and dots unescaped. It is
/// read from its end, which the key makes: the entry before it (`Duplicate entry '...'`, the
/// duplicate values, a device's name among them) could itself hold `for key '...'`. Key names
/// compare without regard to case, as the server compares them. A message in another language
/// (`lc_messages`), or one that gives the key's number, names none.
pub fn duplicate_key<'k>(
    message: &str,
    table: &str,
    keys: &'k [UniqueKey],
) -> Option<&'k UniqueKey> {
    let mut named = keys.iter().filter(|k| names(message, table, &k.name));
    match (named.next(), named.next()) {
        (Some(k), None) => Some(k),
        _ => None,
    }
}

/// Whether `message` ends `for key 'NAME'` or `for key 'TABLE.NAME'`, for `name`.
fn names(message: &str, table: &str, name: &str) -> bool {
    const LEAD: &str = " for key '";
    let Some(before) = message
        .strip_suffix('\'')
        .and_then(|m| strip_suffix_ignore_case(m, name))
    else {
        return false;
    };
    before.ends_with(LEAD)
        || before
            .strip_suffix('.')
            .and_then(|b| strip_suffix_ignore_case(b, table))
            .is_some_and(|b| b.ends_with(LEAD))
}

/// `s` without `suffix` at its end, compared without regard to ASCII case.
fn strip_suffix_ignore_case<'s>(s: &'s str, suffix: &str) -> Option<&'s str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let end = s.get(cut..)?;
    end.eq_ignore_ascii_case(suffix).then(|| &s[..cut])
}

/// How many of `readings` (the rows of one INSERT) the table has no row for with the same id,
/// device and time. Asked in the INSERT's transaction, after it: a row it stored counts, and
/// one it skipped counts only if it is there (stored before, or by another writer meanwhile).
/// A plain read, not a locking one (which MySQL before 8.0.22 lets only a user with DELETE,
/// UPDATE or LOCK TABLES make, and TiDB refuses): the transaction's first plain read sees the
/// table as it is after the INSERT; a later one (another statement's, in a batch of several)
/// sees it as the first did, so that a row another writer stored since counts as missing,
/// and the batch is refused rather than a reading lost. Each reading is looked up by all three
/// columns, among which are the reading key's: one index lookup each.
pub async fn missing(
    tx: &mut mysql_async::Transaction<'_>,
    table: &str,
    readings: &[Reading],
) -> Result<u64, mysql_async::Error> {
    use mysql_async::Value as V;
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&Reading> = readings
        .iter()
        .filter(|r| seen.insert((r.id.0, r.device.as_str(), r.time.0)))
        .collect();
    if distinct.is_empty() {
        return Ok(0);
    }
    let terms = vec!["(id = ? AND device = ? AND time_us = ?)"; distinct.len()].join(" OR ");
    let params: Vec<V> = distinct
        .iter()
        .flat_map(|r| {
            [
                V::Bytes(r.id.0.to_vec()),
                V::Bytes(r.device.as_bytes().to_vec()),
                V::Int(r.time.0),
            ]
        })
        .collect();
    let found: Option<u64> = tx
        .exec_first(
            format!("SELECT COUNT(*) FROM `{table}` WHERE {terms}"),
            mysql_async::Params::Positional(params),
        )
        .await?;
    let wanted = distinct.len() as u64;
    Ok(wanted - found.unwrap_or(0).min(wanted))
}
