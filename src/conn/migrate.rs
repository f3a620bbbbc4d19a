//! sqlrepo's own migrations: [`MIGRATOR`], recorded in their own bookkeeping table
//! (`_sqlrepo_migrations`) so that a service's migrator keeps sqlx's default one to itself;
//! adopting a file migrated by sqlrepo 0.1.0; and applying them safely when several processes
//! open one file at once.

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migration, Migrator};
use sqlx::sqlite::SqliteConnection;

use crate::error::{Error, Result};

/// sqlrepo's migrations (`migrations/` in this crate), embedded at compile time and recorded in
/// the bookkeeping table `_sqlrepo_migrations` (set by `[migrate] table-name` in this crate's
/// `sqlx.toml`, which `sqlx::migrate!()` and sqlx-cli both read).
///
/// A service's own `sqlx::migrate!()` records its migrations in sqlx's default
/// `_sqlx_migrations`, so the two run on one file in either order, as often as you like, and
/// neither refuses the other's. [`Db::open`](crate::Db::open) runs this migrator (and adopts a
/// file migrated by sqlrepo 0.1.0, see [`Db::migrate`](crate::Db::migrate)); running it yourself
/// is for tools, such as a test that builds a database step by step:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx::Connection;
/// let dir = tempfile::tempdir()?;
/// let url = format!("sqlite://{}?mode=rwc", dir.path().join("tool.db").display());
/// let mut conn = sqlx::SqliteConnection::connect(&url).await?;
/// sqlrepo::MIGRATOR.run(&mut conn).await?;
/// assert_eq!(sqlrepo::MIGRATOR.table_name, "_sqlrepo_migrations");
/// # Ok(()) }
/// ```
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies the pending migrations, if any, in one `BEGIN IMMEDIATE` transaction, after adopting
/// the bookkeeping of a file migrated by sqlrepo 0.1.0 (see [`adopt`]) in the same transaction.
///
/// sqlx's migrator takes no lock on SQLite, so two processes opening a fresh file at once
/// would both apply migration 1; holding the write lock from the start makes the second wait
/// (up to the busy timeout), then find nothing left to do. Each migration runs in a savepoint
/// inside it. A file that is already current is only checked, without the write lock, so it
/// opens while another process is writing.
pub(crate) async fn migrate_on(conn: &mut SqliteConnection) -> Result<()> {
    if all_applied(conn).await && !has_rows_to_adopt(conn).await? {
        // Nothing to apply: this only checks the applied ones against ours.
        MIGRATOR.run_direct(None, &mut *conn, false).await?;
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // Under the write lock, so of several processes adopting one file at once, the first moves
    // the rows and the others find none left.
    adopt(&mut tx).await?;
    MIGRATOR.run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies a service's migrator on SQLite as [`migrate_on`] applies ours: the pending
/// migrations in one `BEGIN IMMEDIATE` transaction (each in a savepoint inside it), so of
/// several processes starting at once one applies them and the others wait, then find nothing
/// to do; a current file is only checked, without the write lock.
///
/// A pending migration marked `-- no-transaction` cannot run inside a transaction (that is why
/// it is marked): then the migrator runs as sqlx runs it, each migration by itself, without
/// the lock across processes.
pub(crate) async fn migrate_service_on(
    conn: &mut SqliteConnection,
    migrator: &Migrator,
) -> Result<()> {
    let pending = pending(conn, migrator).await;
    if pending.is_empty() || pending.iter().any(|migration| migration.no_tx) {
        migrator
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(service_error)?;
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    migrator
        .run_direct(None, &mut *tx, false)
        .await
        .map_err(service_error)?;
    tx.commit().await?;
    Ok(())
}

/// Applies a service's migrator on PostgreSQL: sqlx's own run, each migration in its
/// transaction, serialized across processes by sqlx's advisory lock.
#[cfg(feature = "postgres")]
pub(crate) async fn migrate_service_postgres(
    conn: &mut sqlx::PgConnection,
    migrator: &Migrator,
) -> Result<()> {
    let run = migrator.run_direct(None, &mut *conn, false).await;
    if run.is_err() && migrator.locking {
        // sqlx returns before its unlock when a migration fails, and the advisory lock is the
        // session's: a rollback keeps it, so every later run (from any connection) would wait
        // for it until the lock timeout. Best effort: the migration's error is the one to tell.
        use sqlx::migrate::Migrate;
        let _unlocked = conn.unlock().await;
    }
    run.map_err(service_error)
}

/// A service's migration error, said of the service's migrations: the classifier's sentences
/// for [`MigrateError`] speak of sqlrepo's own (a newer sqlrepo release, say).
fn service_error(err: MigrateError) -> Error {
    match err {
        MigrateError::VersionMissing(version) => Error::Schema(format!(
            "the database has the service's migration {version} applied, which this migrator \
             does not know: a newer build of the service migrated it"
        )),
        MigrateError::VersionMismatch(version) => Error::Schema(format!(
            "the service's migration {version} differs from the one applied to this database: \
             it was edited after it ran"
        )),
        MigrateError::Dirty(version) => Error::Schema(format!(
            "the service's migration {version} failed part-way on an earlier run; repair the \
             database by hand"
        )),
        // A lock keeps its meaning (Busy, retry); the migration's own SQL refused is a schema
        // problem, named by its version.
        MigrateError::ExecuteMigration(err, version) => match Error::from(err) {
            Error::Database(err) => Error::Schema(format!(
                "the service's migration {version} could not be applied: {err}"
            )),
            other => other,
        },
        other => other.into(),
    }
}

/// The up migrations of `migrator` not recorded as applied (all of them when its table is
/// missing).
async fn pending<'m>(conn: &mut SqliteConnection, migrator: &'m Migrator) -> Vec<&'m Migration> {
    use sqlx::migrate::Migrate;
    let applied = conn
        .list_applied_migrations(&migrator.table_name)
        .await
        .unwrap_or_default();
    migrator
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .filter(|migration| !applied.iter().any(|done| done.version == migration.version))
        .collect()
}

/// Whether every migration of this release is recorded as applied (a missing table: no).
async fn all_applied(conn: &mut SqliteConnection) -> bool {
    pending(conn, &MIGRATOR).await.is_empty()
}

/// This release's up migrations.
fn up_migrations() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
}

/// A row of sqlx's default bookkeeping table, `_sqlx_migrations`.
struct SqlxDefaultRow {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
}

/// Whether sqlx's default bookkeeping table holds a row for one of our versions (a file
/// migrated by sqlrepo 0.1.0, not adopted yet).
async fn has_rows_to_adopt(conn: &mut SqliteConnection) -> Result<bool> {
    Ok(!rows_to_adopt(conn).await?.is_empty())
}

/// The rows of `_sqlx_migrations` whose versions are ours, each with our migration of that
/// version; none when the table does not exist. Other rows are the service's own migrations.
///
/// The statements are checked against the development database, which holds
/// `_sqlx_migrations` as sqlx itself creates it (see the guide's migrations chapter, "Changing the schema").
async fn rows_to_adopt(
    conn: &mut SqliteConnection,
) -> Result<Vec<(SqlxDefaultRow, &'static Migration)>> {
    let exists = sqlx::query_scalar!(
        r#"
        SELECT COUNT(*) AS "count!: i64"
        FROM sqlite_master
        WHERE type = 'table'
          AND name = '_sqlx_migrations'
        "#
    )
    .fetch_one(&mut *conn)
    .await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as!(
        SqlxDefaultRow,
        r#"
        SELECT version AS "version!: i64",
               checksum,
               success AS "success: bool"
        FROM _sqlx_migrations
        ORDER BY version
        "#
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let ours = up_migrations().find(|migration| migration.version == row.version)?;
            Some((row, ours))
        })
        .collect())
}

/// Moves our rows from `_sqlx_migrations` (where sqlrepo 0.1.0 recorded its migrations, in
/// sqlx's default table) to `_sqlrepo_migrations`, keeping their description, time and
/// checksum. The service's rows in `_sqlx_migrations` stay, and so does the table itself (a
/// service's migrator would only create it again).
///
/// Runs inside the caller's transaction, so the rows move all together or not at all. A row of
/// ours that failed part-way, or whose checksum differs from this release's migration of that
/// version (the migration was edited after it ran, or the row tampered with), is refused, as
/// the migrator refuses one in our own table: nothing moves.
async fn adopt(conn: &mut SqliteConnection) -> Result<()> {
    let rows = rows_to_adopt(conn).await?;
    if rows.is_empty() {
        return Ok(());
    }
    for (row, ours) in &rows {
        if !row.success {
            return Err(MigrateError::Dirty(row.version).into());
        }
        if row.checksum.as_slice() != &*ours.checksum {
            return Err(MigrateError::VersionMismatch(row.version).into());
        }
    }
    {
        use sqlx::migrate::Migrate;
        conn.ensure_migrations_table(&MIGRATOR.table_name).await?;
    }
    // Two statements for every adopted version (their JSON list read by `json_each`). A
    // version already in our table (both tables written by hand) keeps the row there; the
    // migrator then checks it.
    let versions: Vec<i64> = rows.iter().map(|(row, _)| row.version).collect();
    let versions = serde_json::to_string(&versions)
        .map_err(|err| Error::invalid(format!("not JSON: {err}")))?;
    sqlx::query!(
        r#"
        INSERT INTO _sqlrepo_migrations
            (version, description, installed_on, success, checksum, execution_time)
        SELECT version, description, installed_on, success, checksum, execution_time
        FROM _sqlx_migrations
        WHERE version IN (SELECT value FROM json_each(?1))
        ON CONFLICT (version) DO NOTHING
        "#,
        versions
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"
        DELETE FROM _sqlx_migrations
        WHERE version IN (SELECT value FROM json_each(?1))
        "#,
        versions
    )
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        target: "sqlrepo",
        migrations = rows.len(),
        "adopted the migrations sqlrepo 0.1.0 recorded in _sqlx_migrations"
    );
    Ok(())
}
