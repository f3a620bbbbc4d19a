//! Users on PostgreSQL: calls the statements of `sqlrepo_postgres::users` and turns their rows
//! and errors into sqlrepo's types. Validation happened before any of this, shared with SQLite.

use sqlrepo_postgres::users as sql;
use sqlx::PgConnection;

use super::User;
use crate::error::{Error, Result};

fn user(row: sql::UserRow) -> User {
    User {
        id: row.id,
        email: row.email,
        name: row.name,
        created_at: row.created_at,
    }
}

pub(super) async fn insert_one(conn: &mut PgConnection, email: &str, name: &str) -> Result<i64> {
    Ok(sql::insert_one(conn, email, name).await?)
}

pub(super) async fn select_one(conn: &mut PgConnection, id: i64) -> Result<Option<User>> {
    Ok(sql::select_one(conn, id).await?.map(user))
}

pub(super) async fn select_by_email(conn: &mut PgConnection, email: &str) -> Result<Option<User>> {
    Ok(sql::select_by_email(conn, email).await?.map(user))
}

pub(super) async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> Result<Vec<User>> {
    Ok(sql::select_page(conn, from_id, limit)
        .await?
        .into_iter()
        .map(user)
        .collect())
}

pub(super) async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    email: Option<&str>,
    name: Option<&str>,
) -> Result<bool> {
    Ok(sql::update_one(conn, id, email, name).await?)
}

pub(super) async fn delete_one(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sql::delete_one(conn, id).await?)
}

/// The batch, validated and written before the call as SQLite's JSON (`[[email, name], ...]`),
/// as the two column arrays of one `INSERT … UNNEST`.
pub(super) async fn insert_batch(conn: &mut PgConnection, rows_json: &str) -> Result<u64> {
    let rows: Vec<(String, String)> = serde_json::from_str(rows_json)
        .map_err(|err| Error::invalid(format!("not JSON: {err}")))?;
    let (emails, names): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    Ok(sql::insert_batch(conn, &emails, &names).await?)
}

pub(super) async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<User>> {
    Ok(sql::select_many(conn, ids)
        .await?
        .into_iter()
        .map(user)
        .collect())
}

pub(super) async fn count(conn: &mut PgConnection) -> Result<i64> {
    Ok(sql::count(conn).await?)
}
