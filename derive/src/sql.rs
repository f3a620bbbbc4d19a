//! The SQL text of every generated statement. Each becomes the literal of a `sqlx::query!`
//! in the service's crate, so sqlx checks it there against the service's schema (or its
//! `.sqlx/` data): a column the table lacks, or a type the field cannot hold, fails the build.

use quote::ToTokens;

use crate::table::{Column, Role, Table};

/// The canonical "now" of sqlrepo's timestamp convention (`sqlrepo::kit::NOW_SQL`).
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// `col AS "col!"`: nullability from the field (`!` not null, `?` an `Option`), the type
/// inferred from the column (so it is checked against the field), or the field's own with
/// `as_field_type`.
fn select_column(column: &Column) -> String {
    let name = column.ident.to_string();
    let marker = if column.inner.is_some() { '?' } else { '!' };
    if column.as_field_type {
        let ty = column.inner.as_ref().unwrap_or(&column.ty);
        let ty = ty.to_token_stream().to_string();
        format!("{name} AS \"{name}{marker}: {ty}\"")
    } else {
        format!("{name} AS \"{name}{marker}\"")
    }
}

fn select_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(select_column)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns an insert writes: the data columns, then the timestamps.
fn insert_columns(table: &Table) -> String {
    table
        .data()
        .chain(table.created())
        .map(|c| c.ident.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT … VALUES (?1, …, now)`, the data columns bound in field order.
pub fn insert_one(table: &Table) -> String {
    let values: Vec<String> = table
        .data()
        .enumerate()
        .map(|(i, _)| format!("?{}", i + 1))
        .chain(table.created().map(|_| NOW.to_owned()))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name,
        insert_columns(table),
        values.join(", ")
    )
}

/// One JSON array of rows, `[[a, b], …]`, expanded by `jsonb_each` (each row's `value` stays in
/// SQLite's parsed form, which the `->>` read without parsing it again): one statement however
/// many rows, atomic by itself; `ORDER BY key` gives ids in slice order.
pub fn insert_batch(table: &Table) -> String {
    let values: Vec<String> = table
        .data()
        .enumerate()
        .map(|(i, _)| format!("value ->> {i}"))
        .chain(table.created().map(|_| NOW.to_owned()))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM jsonb_each(?1) ORDER BY key",
        table.name,
        insert_columns(table),
        values.join(", ")
    )
}

pub fn select_one(table: &Table) -> String {
    format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        select_list(table),
        table.name,
        table.id().ident
    )
}

pub fn select_many(table: &Table) -> String {
    let id = &table.id().ident;
    format!(
        "SELECT {} FROM {} WHERE {id} IN (SELECT value FROM json_each(?1)) ORDER BY {id}",
        select_list(table),
        table.name,
    )
}

/// One page from key `?1` on, at most `?2` rows, each with an estimate of its size
/// (`octet_length` of every column, and 8 bytes a column) for the page's byte budget.
pub fn select_page(table: &Table) -> String {
    let id = &table.id().ident;
    let sizes: Vec<String> = table
        .columns
        .iter()
        .filter(|c| c.role != Role::Id)
        .map(|c| format!("coalesce(octet_length({}), 0)", c.ident))
        .collect();
    format!(
        "SELECT {}, ({} + {}) AS \"row_bytes!: i64\" FROM {} WHERE {id} >= ?1 ORDER BY {id} LIMIT ?2",
        select_list(table),
        sizes.join(" + "),
        8 * table.columns.len(),
        table.name,
    )
}

/// `UPDATE … SET col = CASE WHEN ?flag THEN ?value ELSE col END, …`: column `k` of the patch
/// (0-based) binds its flag (whether the patch sets it) as `?(2k+1)` and its value as
/// `?(2k+2)`; the id is the last parameter. Only a row where some set value differs from the
/// stored one is touched, so the rows changed say whether anything changed.
pub fn update(table: &Table) -> String {
    let data: Vec<&Column> = table.data().collect();
    let sets: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(k, c)| {
            format!(
                "{col} = CASE WHEN ?{f} THEN ?{v} ELSE {col} END",
                col = c.ident,
                f = 2 * k + 1,
                v = 2 * k + 2
            )
        })
        .collect();
    let changed: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(k, c)| format!("(?{} AND {} IS NOT ?{})", 2 * k + 1, c.ident, 2 * k + 2))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {} = ?{} AND ({})",
        table.name,
        sets.join(", "),
        table.id().ident,
        2 * data.len() + 1,
        changed.join(" OR ")
    )
}

pub fn delete(table: &Table) -> String {
    format!("DELETE FROM {} WHERE {} = ?1", table.name, table.id().ident)
}

pub fn count(table: &Table) -> String {
    format!("SELECT count(*) AS \"count!: i64\" FROM {}", table.name)
}
