//! [`Backend`]: the connection a [`Conn`](super::Conn) lends, by database kind.

use sqlx::sqlite::SqliteConnection;

/// The connection a [`Conn`](super::Conn) lends, by backend: a repository matches on it to run the statements
/// written (and checked at compile time) for that backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Backend, Db};
/// let db = Db::in_memory().await?;
/// let mut conn = db.handle().reader().await?;
/// let count = match conn.backend()? {
///     Backend::Sqlite(sqlite) => {
///         sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
///             .fetch_one(sqlite)
///             .await?
///     }
///     // With the `postgres` feature: the same statement, checked in a crate whose
///     // development database is PostgreSQL.
///     #[allow(unreachable_patterns)]
///     _ => unreachable!("a Db opened on a SQLite file"),
/// };
/// assert_eq!(count, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Backend<'c> {
    /// A SQLite connection.
    Sqlite(&'c mut SqliteConnection),
    /// A PostgreSQL connection (cargo feature `postgres`).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    Postgres(&'c mut sqlx::PgConnection),
}
