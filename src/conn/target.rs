//! What a database URL names (`Db::connect`): a SQLite file, a private temporary database, or a
//! PostgreSQL server.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `sqlite://path` or `sqlite:path` (query parameters are not used).
    SqliteFile(PathBuf),
    /// `sqlite::memory:`.
    SqliteMemory,
    /// `postgres://…` or `postgresql://…`, kept whole for the driver.
    Postgres(String),
}

impl Target {
    /// Reads a URL by its scheme.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres(url.to_owned()));
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            return Err(Error::Config(format!(
                "unsupported database URL {url:?}: use sqlite://path/app.db or postgres://…"
            )));
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split_once('?').map_or(rest, |(path, _)| path);
        match path {
            ":memory:" => Ok(Target::SqliteMemory),
            "" => Err(Error::Config(format!(
                "the database URL {url:?} names no file: use sqlite://path/app.db"
            ))),
            path => Ok(Target::SqliteFile(PathBuf::from(path))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_the_backend() {
        assert_eq!(
            Target::parse("sqlite://data/app.db").unwrap(),
            Target::SqliteFile("data/app.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:app.db?mode=rwc").unwrap(),
            Target::SqliteFile("app.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///tmp/app.db").unwrap(),
            Target::SqliteFile("/tmp/app.db".into())
        );
        assert_eq!(
            Target::parse("sqlite::memory:").unwrap(),
            Target::SqliteMemory
        );
        assert_eq!(
            Target::parse("postgres://u@h:5432/db").unwrap(),
            Target::Postgres("postgres://u@h:5432/db".into())
        );
        assert!(matches!(
            Target::parse("mysql://h/db"),
            Err(Error::Config(_))
        ));
        assert!(matches!(Target::parse("sqlite://"), Err(Error::Config(_))));
    }
}
