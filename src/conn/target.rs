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
        // libpq's key=value form (`host=db1,db2 dbname=app ...`), which names no scheme.
        if url.split_whitespace().any(|word| word.starts_with("host=")) {
            return Ok(Target::Postgres(url.to_owned()));
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            return Err(Error::Config(format!(
                "unsupported database URL {:?}: use sqlite://path/app.db or postgres://…",
                redacted(url)
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

/// A URL with the password (what lies between `user:` and `@`) replaced by `***`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    // The last '@' before the query string ends the credentials, even when the password holds
    // '@', ':' or '/'; redacting too much (a path holding '@') is the safe mistake.
    let rest = &url[scheme_end..];
    let query_start = rest.find('?').unwrap_or(rest.len());
    let Some(at) = rest[..query_start].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_url_keeps_everything_but_the_password() {
        assert_eq!(
            redacted("postgres://app:s3cret@db.example:5432/prod?sslmode=require"),
            "postgres://app:***@db.example:5432/prod?sslmode=require"
        );
        assert_eq!(redacted("postgres://app@db/prod"), "postgres://app@db/prod");
        assert_eq!(redacted("postgres://db/prod"), "postgres://db/prod");
        // A password holding '@' and ':' (percent-encoding is optional in practice).
        assert_eq!(
            redacted("postgres://app:p@ss:w@db/prod"),
            "postgres://app:***@db/prod"
        );
        assert_eq!(redacted("mysql://u:pw@h/d"), "mysql://u:***@h/d");
        assert_eq!(redacted("postgres://u:a/b@h/d"), "postgres://u:***@h/d");
    }

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
