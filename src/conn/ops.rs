//! Operations on the database file as a whole, for the people who run the service: an online
//! backup and an integrity check. [`Db`](crate::Db) exposes them; the WAL's checkpoints are in
//! the sibling module `checkpoint`.
//!
//! # Why `VACUUM INTO` for backups
//!
//! SQLite has two ways to copy a live database: the online backup API
//! (`sqlite3_backup_*`) and `VACUUM INTO`. sqlx exposes no backup API, and reaching it would
//! take `unsafe` FFI (the crate forbids it) or a second SQLite binding. `VACUUM INTO` is one
//! checked statement, and it runs on a read-only connection inside one read transaction: the
//! copy is exactly the snapshot that transaction sees, and in WAL mode writers do not wait for
//! it at all. Measured on a 1M-row file against rusqlite's backup API in the bench harness
//! (`--backup`); see the guide's backups chapter for the figures.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnection;

use crate::error::{Error, Result};

/// Claims `path` for a backup: creates it, empty, failing if anything already exists there.
///
/// `create_new` is one atomic `open(O_CREAT | O_EXCL)`, so a file that appears between a check
/// and the copy cannot be overwritten: an existing path is refused and left untouched.
/// `VACUUM INTO` accepts an existing *empty* file, which is what this leaves for it.
pub(crate) fn claim_backup_path(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|err| {
        Error::invalid(format!(
            "the backup path {} cannot be resolved: {err}",
            path.display()
        ))
    })?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&absolute)
    {
        Ok(_) => Ok(absolute),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Err(Error::invalid(format!(
            "{} already exists; a backup never overwrites a file, choose a new path",
            absolute.display()
        ))),
        Err(err) if err.kind() == ErrorKind::StorageFull => Err(Error::DiskFull),
        Err(err) => Err(Error::Io(format!(
            "cannot create the backup file {}: {err}",
            absolute.display()
        ))),
    }
}

/// Copies the database that `conn` reads into the empty file at `target` (claimed by
/// [`claim_backup_path`]), then makes the copy durable. On failure the partial copy is removed,
/// so a path either holds a complete backup or nothing this call made.
pub(crate) async fn backup_into(conn: &mut SqliteConnection, target: &Path) -> Result<()> {
    let result = copy_and_sync(conn, target).await;
    if result.is_err() {
        // The file is ours (claimed empty); a partial copy must not pass for a backup.
        let _ = std::fs::remove_file(target);
    }
    result
}

async fn copy_and_sync(conn: &mut SqliteConnection, target: &Path) -> Result<()> {
    let name = target.to_str().ok_or_else(|| {
        Error::invalid(format!(
            "the backup path {} is not valid UTF-8, which SQLite needs for a file name",
            target.display()
        ))
    })?;
    // One statement, one read transaction: the copy is the snapshot that transaction sees.
    // The path is absolute (`claim_backup_path`), so SQLite never reads it as a `file:` URI.
    sqlx::query!("VACUUM INTO ?", name).execute(conn).await?;
    // VACUUM INTO writes the copy without syncing it; an Ok promises the backup is stored, so
    // sync the file, then its directory (which holds the new name).
    sync(target)?;
    if let Some(dir) = target.parent() {
        sync(dir)?;
    }
    Ok(())
}

fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|err| match err.kind() {
            ErrorKind::StorageFull => Error::DiskFull,
            _ => Error::Io(format!("cannot sync {}: {err}", path.display())),
        })
}

/// What `PRAGMA integrity_check` finds wrong in the database `conn` reads: empty when the file
/// is sound (SQLite then answers one row, `ok`).
pub(crate) async fn integrity_problems(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    // The default limit: at most 100 problems are reported, enough to act on.
    let rows = sqlx::query_scalar!(r#"PRAGMA integrity_check"#)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .flatten()
        .filter(|row| row != "ok")
        .collect())
}
