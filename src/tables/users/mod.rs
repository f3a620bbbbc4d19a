//! The `users` table: its data types, [`UserRepo`], and all of its SQL.

use std::future::Future;

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::paging::{self, Keyed};
use crate::conn::{Backend, Handle};
use crate::error::Result;
use crate::kit::{self, direct_column, json_rows};
use crate::limits::{check_email, check_name};
use crate::trace::traced;

#[cfg(feature = "postgres")]
mod postgres;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Unique email address (unique without regard to ASCII case).
    pub email: String,
    /// Display name.
    pub name: String,
    /// When the row was inserted (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A user to insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// An email address: `local@domain.tld`, at most 254 characters.
    pub email: String,
    /// Not blank, at most [`MAX_NAME_CHARS`](crate::limits::MAX_NAME_CHARS) characters.
    pub name: String,
}

impl Keyed for User {
    fn key(&self) -> i64 {
        self.id
    }
}

impl NewUser {
    /// A user with this email and name.
    pub fn new(email: impl Into<String>, name: impl Into<String>) -> Self {
        NewUser {
            email: email.into(),
            name: name.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        check_email(&self.email)?;
        check_name("user name", &self.name)
    }
}

/// A partial update: `None` fields keep their stored value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserPatch {
    /// New email.
    pub email: Option<String>,
    /// New name.
    pub name: Option<String>,
}

/// Users: checked CRUD, a one-statement batch insert, and a constant-memory stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, Error, NewUser};
/// let users = Db::in_memory().await?.users();
/// let id = users.create(&NewUser::new("ann@example.com", "Ann")).await?;
/// assert_eq!(users.get_by_email("ann@example.com").await?.unwrap().id, id);
/// let again = users.create(&NewUser::new("ann@example.com", "Another Ann")).await;
/// assert!(matches!(again, Err(Error::Duplicate { constraint }) if constraint == "users.email"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct UserRepo {
    handle: Handle,
}

impl UserRepo {
    /// The repository on `handle`: a [`Db`](crate::Db)\'s, a [`Tx`](crate::Tx)\'s, or any
    /// [`Handle`] a service holds.
    pub fn new(handle: Handle) -> Self {
        UserRepo { handle }
    }

    /// Inserts a user and returns the id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a malformed email or blank name;
    /// [`Error::Duplicate`](crate::Error::Duplicate) (`users.email`) when the email is taken.
    pub fn create(&self, new: &NewUser) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        let user = new.validate().map(|()| new.clone());
        traced("users", "create", async move {
            let user = user?;
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => insert_one(c, &user.email, &user.name).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::insert_one(c, &user.email, &user.name).await,
            }
        })
    }

    /// The user with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<User>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("users", "get", async move {
            let direct = handle.read_direct(|conn| select_one_direct(conn, id)).await;
            if let Some(found) = direct {
                return Ok(found);
            }
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_one(c, id).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_one(c, id).await,
                    }
                })
                .await
        })
    }

    /// The users with these ids, in id order; unknown ids are skipped and repeated ids given
    /// once. One statement (the ids travel as one JSON array), so one consistent read.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for more than
    /// [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) ids, before the database is touched;
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn get_many(&self, ids: &[i64]) -> impl Future<Output = Result<Vec<User>>> + Send + use<> {
        let handle = self.handle.clone();
        let ids = crate::kit::check_batch("get_many", ids.len()).map(|()| ids.to_vec());
        traced("users", "get_many", async move {
            let ids = ids?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let ids = &ids;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_many(c, &crate::kit::json_text(ids)?).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_many(c, ids).await,
                    }
                })
                .await
        })
    }

    /// How many users there are.
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("users", "count", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => count(c).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::count(c).await,
                    }
                })
                .await
        })
    }

    /// The user with this email (compared without regard to ASCII case), or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn get_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<User>>> + Send + use<> {
        let handle = self.handle.clone();
        let email = email.to_owned();
        traced("users", "get_by_email", async move {
            // Borrowed by each attempt (a read may run again on the primary).
            let email = &email;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_by_email(c, email).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_by_email(c, email).await,
                    }
                })
                .await
        })
    }

    /// Applies a patch; `true` when the user existed and a value really changed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a malformed email or blank name;
    /// [`Error::Duplicate`](crate::Error::Duplicate) (`users.email`) when the new email is taken.
    pub fn update(
        &self,
        id: i64,
        patch: &UserPatch,
    ) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        let patch = validate_patch(patch).map(|()| patch.clone());
        traced("users", "update", async move {
            let patch = patch?;
            if patch.email.is_none() && patch.name.is_none() {
                return Ok(false);
            }
            let mut conn = handle.writer().await?;
            let (email, name) = (patch.email.as_deref(), patch.name.as_deref());
            match conn.backend()? {
                Backend::Sqlite(c) => update_one(c, id, email, name).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::update_one(c, id, email, name).await,
            }
        })
    }

    /// Deletes a user; `true` when they existed.
    ///
    /// # Errors
    /// [`Error::ForeignKey`](crate::Error::ForeignKey) when the user still has orders or accounts
    /// (nothing is deleted).
    pub fn delete(&self, id: i64) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        traced("users", "delete", async move {
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => delete_one(c, id).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::delete_one(c, id).await,
            }
        })
    }

    /// Inserts every user in one statement, all or nothing; returns the rows inserted.
    /// At most [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) per call; `&[]` is `Ok(0)`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for an invalid user (naming its
    /// position) or an oversized batch; [`Error::Duplicate`](crate::Error::Duplicate)
    /// (`users.email`) when any email is taken or repeated. Nothing is written either way.
    pub fn insert_many(
        &self,
        users: &[NewUser],
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let rows = batch_text(users);
        traced("users", "insert_many", async move {
            let Some(rows) = rows? else {
                return Ok(0);
            };
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => insert_batch(c, &rows).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::insert_batch(c, &rows).await,
            }
        })
    }

    /// Every user in id order, in keyset pages, with memory that does not grow with the table.
    pub fn stream(&self) -> impl Stream<Item = Result<User>> + Send + use<> {
        paging::by_rows(
            self.handle.clone(),
            "users",
            |mut conn, from, limit| async move {
                match conn.backend()? {
                    Backend::Sqlite(c) => select_page(c, from, limit).await,
                    #[cfg(feature = "postgres")]
                    Backend::Postgres(c) => postgres::select_page(c, from, limit).await,
                }
            },
        )
    }
}

fn validate_patch(patch: &UserPatch) -> Result<()> {
    if let Some(email) = &patch.email {
        check_email(email)?;
    }
    if let Some(name) = &patch.name {
        check_name("user name", name)?;
    }
    Ok(())
}

/// The users as the JSON array `insert_batch` reads, `[[email, name], ...]`; `None` for none.
fn batch_text(users: &[NewUser]) -> Result<Option<String>> {
    json_rows("user", users, NewUser::validate, |u| (&*u.email, &*u.name))
}

async fn insert_one(conn: &mut SqliteConnection, email: &str, name: &str) -> Result<i64> {
    // `execute` steps the statement to its end, where an autocommit write commits, so a
    // failed commit (a full disk, a lock) is an error here. `INSERT … RETURNING` read with
    // `fetch_one` stops after the row and sqlx drops the commit's result at the reset.
    let result = sqlx::query!(
        r#"
        INSERT INTO users (email, name)
        VALUES (?1, ?2)
        "#,
        email,
        name,
    )
    .execute(conn)
    .await?;
    Ok(result.last_insert_rowid())
}

/// The point get, checked by `query_as!`: the worker-thread path runs it, the direct path
/// ([`select_one_direct`]) runs its text.
fn select_one_query(
    id: i64,
) -> sqlx::query::Map<
    'static,
    sqlx::Sqlite,
    impl FnMut(sqlx::sqlite::SqliteRow) -> sqlx::Result<User> + Send,
    sqlx::sqlite::SqliteArguments,
> {
    sqlx::query_as!(
        User,
        r#"
        SELECT id AS "id!: i64",
               email,
               name,
               created_at AS "created_at: OffsetDateTime"
        FROM users
        WHERE id = ?1
        "#,
        id,
    )
}

async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<User>> {
    Ok(select_one_query(id).fetch_optional(conn).await?)
}

/// [`select_one_query`] on a direct reader (see [`Handle::read_direct`]): `Some` only for a clean
/// answer, each column read as the checked query reads it; `None` sends the caller to the
/// ordinary read, whose answer or error stands.
fn select_one_direct(conn: &kit::Connection, id: i64) -> Option<Option<User>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(select_one_query(0)));
    kit::direct_get(conn, SQL.as_str(), id, |row| {
        Some(User {
            id: direct_column(row, 0)?,
            email: direct_column(row, 1)?,
            name: direct_column(row, 2)?,
            created_at: direct_column(row, 3)?,
        })
    })
}

async fn select_by_email(conn: &mut SqliteConnection, email: &str) -> Result<Option<User>> {
    Ok(sqlx::query_as!(
        User,
        r#"
        SELECT id AS "id!: i64",
               email,
               name,
               created_at AS "created_at: OffsetDateTime"
        FROM users
        WHERE email = ?1
        "#,
        email,
    )
    .fetch_optional(conn)
    .await?)
}

// `id >= ?1`: the first page starts at i64::MIN, so ids of zero and below are read too.
async fn select_page(conn: &mut SqliteConnection, from_id: i64, limit: i64) -> Result<Vec<User>> {
    Ok(sqlx::query_as!(
        User,
        r#"
        SELECT id AS "id!: i64",
               email,
               name,
               created_at AS "created_at: OffsetDateTime"
        FROM users
        WHERE id >= ?1
        ORDER BY id
        LIMIT ?2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

// `IS NOT` (NULL-safe) makes the row match only when a value really differs. The email
// comparison is binary here on purpose: changing only the case of an email is a change.
async fn update_one(
    conn: &mut SqliteConnection,
    id: i64,
    email: Option<&str>,
    name: Option<&str>,
) -> Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE users
        SET email = coalesce(?2, email),
            name = coalesce(?3, name)
        WHERE id = ?1
          AND (email IS NOT coalesce(?2, email) COLLATE BINARY
               OR name IS NOT coalesce(?3, name))
        "#,
        id,
        email,
        name,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

async fn delete_one(conn: &mut SqliteConnection, id: i64) -> Result<bool> {
    let result = sqlx::query!("DELETE FROM users WHERE id = ?1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

// One JSON array `[[email, name], ...]` expanded by `jsonb_each` (each row's `value` kept in
// SQLite's parsed form for the `->>` to read, as items' `insert_batch` explains): one statement
// for the batch, atomic by itself; `ORDER BY key` gives ids in slice order.
async fn insert_batch(conn: &mut SqliteConnection, rows_json: &str) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO users (email, name)
        SELECT value ->> 0, value ->> 1
        FROM jsonb_each(?1)
        ORDER BY key
        "#,
        rows_json,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

// `json_each` reads the ids of one JSON array: one statement however many ids, each a probe of
// the primary key.
async fn select_many(conn: &mut SqliteConnection, ids_json: &str) -> Result<Vec<User>> {
    Ok(sqlx::query_as!(
        User,
        r#"
        SELECT id AS "id!: i64",
               email,
               name,
               created_at AS "created_at: OffsetDateTime"
        FROM users
        WHERE id IN (SELECT value FROM json_each(?1))
        ORDER BY id
        "#,
        ids_json,
    )
    .fetch_all(conn)
    .await?)
}

async fn count(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM users"#)
            .fetch_one(conn)
            .await?,
    )
}
