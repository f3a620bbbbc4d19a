//! The `users` table's statements on PostgreSQL: one function per statement, rows as plain
//! values, errors left as `sqlx::Error` for sqlrepo to classify.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// A `users` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// `users.id`.
    pub id: i64,
    /// `users.email`, as stored.
    pub email: String,
    /// `users.name`.
    pub name: String,
    /// `users.created_at`.
    pub created_at: OffsetDateTime,
}

/// Inserts a user and returns the id (`fetch_one` reads to the end of the statement, its
/// commit included: see `items::insert_one`).
pub async fn insert_one(conn: &mut PgConnection, email: &str, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO users (email, name)
        VALUES ($1, $2)
        RETURNING id
        "#,
        email,
        name,
    )
    .fetch_one(conn)
    .await
}

/// The user with this id.
pub async fn select_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"
        SELECT id, email, name, created_at
        FROM users
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// The user with this email, compared without regard to ASCII case (as SQLite's `NOCASE`):
/// `lower(email COLLATE "C")` is what the unique index `users_email_unique` holds, so this is
/// one probe of it.
pub async fn select_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"
        SELECT id, email, name, created_at
        FROM users
        WHERE lower(email COLLATE "C") = lower($1 COLLATE "C")
        "#,
        email,
    )
    .fetch_optional(conn)
    .await
}

/// A keyset page: at most `limit` users with ids from `from_id` up, in id order. A user row is
/// small (email and name are bounded by CHECKs), so rows alone bound the page.
pub async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"
        SELECT id, email, name, created_at
        FROM users
        WHERE id >= $1
        ORDER BY id
        LIMIT $2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Applies a patch (`None`: keep); `true` when the user existed and a value really changed.
/// `IS DISTINCT FROM` compares text exactly, so changing only the case of an email is a change.
pub async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    email: Option<&str>,
    name: Option<&str>,
) -> sqlx::Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE users
        SET email = coalesce($2, email),
            name = coalesce($3, name)
        WHERE id = $1
          AND (email IS DISTINCT FROM coalesce($2, email)
               OR name IS DISTINCT FROM coalesce($3, name))
        "#,
        id,
        email,
        name,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Deletes a user; `true` when they existed. A user with orders or accounts fails a foreign key
/// (SQLSTATE 23503) and nothing is deleted.
pub async fn delete_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<bool> {
    let result = sqlx::query!("DELETE FROM users WHERE id = $1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Inserts the users given as two parallel arrays in one statement, all or nothing, ids in
/// array order; `UNNEST` of arrays measured faster than `jsonb_to_recordset` (see
/// [`items::insert_batch`](crate::items::insert_batch)).
pub async fn insert_batch(
    conn: &mut PgConnection,
    emails: &[String],
    names: &[String],
) -> sqlx::Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO users (email, name)
        SELECT email, name
        FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS batch (email, name, position)
        ORDER BY position
        "#,
        emails,
        names,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The users with these ids, in id order (unknown ids skipped, repeated ones given once).
pub async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"
        SELECT id, email, name, created_at
        FROM users
        WHERE id = ANY($1)
        ORDER BY id
        "#,
        ids,
    )
    .fetch_all(conn)
    .await
}

/// How many users there are.
pub async fn count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM users"#)
        .fetch_one(conn)
        .await
}
