//! sqlrepo's own migrations: [`MIGRATOR`], and applying them safely when several processes open
//! one file at once.

use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

use crate::error::Result;

/// sqlrepo's migrations (`migrations/` in this crate), embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies the pending migrations, if any, in one `BEGIN IMMEDIATE` transaction.
///
/// sqlx's migrator takes no lock on SQLite, so two processes opening a fresh file at once
/// would both apply migration 1; holding the write lock from the start makes the second wait
/// (up to the busy timeout), then find nothing left to do. Each migration runs in a savepoint
/// inside it. A file that is already current is only checked, without the write lock, so it
/// opens while another process is writing.
pub(crate) async fn migrate_on(conn: &mut SqliteConnection) -> Result<()> {
    if all_applied(conn).await {
        // Nothing to apply: this only checks the applied ones against ours.
        MIGRATOR.run_direct(None, &mut *conn, false).await?;
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    MIGRATOR.run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether every migration of this release is recorded as applied (a missing table: no).
async fn all_applied(conn: &mut SqliteConnection) -> bool {
    use sqlx::migrate::Migrate;
    let Ok(applied) = conn.list_applied_migrations(&MIGRATOR.table_name).await else {
        return false;
    };
    MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .all(|migration| applied.iter().any(|done| done.version == migration.version))
}
