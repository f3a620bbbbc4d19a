//! What the bookkeeping table says was applied, for connecting without migrating (a role that
//! may not run DDL) while still refusing a database whose schema is not this release's.

use sqlx::PgConnection;

/// One migration recorded in `_sqlrepo_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The migration's version (its file name's number).
    pub version: i64,
    /// The SHA-384 of the SQL that ran, as sqlx recorded it.
    pub checksum: Vec<u8>,
    /// False when it failed part-way.
    pub success: bool,
}

/// Every migration recorded as applied, by version. A database that was never migrated has no
/// such table: that is an error (42P01), which sqlrepo reports as a schema problem.
pub async fn recorded(conn: &mut PgConnection) -> sqlx::Result<Vec<Recorded>> {
    sqlx::query_as!(
        Recorded,
        r#"SELECT version, checksum, success
           FROM _sqlrepo_migrations
           ORDER BY version"#
    )
    .fetch_all(conn)
    .await
}
