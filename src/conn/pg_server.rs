//! [`PgServer`]: how to reach one PostgreSQL server, and the one place a connection to it is
//! made (the first connect of a `Db` and every reconnect of a held slot go through
//! [`PgServer::connect`]), so that every connect is bounded, gets the same session settings,
//! and no password is ever shown.

use std::fmt;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::target::redacted;
use crate::error::{Error, Result, has_sqlstate, sqlstate};

/// Server-side TCP keepalive for every session (seconds idle before the first probe, between
/// probes, probes lost before the server drops the session): a client that vanished (a killed
/// host, a cut link) gives back its backend, its locks and its connection slot within about
/// half a minute instead of the kernel's two hours. sqlx 0.9 sets no socket options of its
/// own, so the client side is bounded by sqlrepo's own time limits instead (`REPLICA_WAIT`
/// for replica reads, `connect_timeout` for connects).
const KEEPALIVE: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "15"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// One PostgreSQL server: its connect options and how long a connect may take.
///
/// Its `Debug` shows host, port, database and user, never the password (sqlx's
/// `PgConnectOptions` prints it).
#[derive(Clone)]
pub(crate) struct PgServer {
    options: PgConnectOptions,
    connect_timeout: Duration,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .field("user", &self.options.get_username())
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a connect failed, before classification: the first connect of a `Db` treats a missing
/// database on its own (see `PgConnections::connect`).
pub(crate) enum ConnectFailure {
    /// No connection within the timeout (a server that does not answer, an address that
    /// drops packets).
    TimedOut,
    /// The driver's error (refused, authentication, a missing database ...).
    Driver(sqlx::Error),
}

impl PgServer {
    /// Reads a `postgres://` URL. The error never repeats the URL (it may hold a password).
    pub(crate) fn parse(url: &str, connect_timeout: Duration) -> Result<PgServer> {
        let options: PgConnectOptions = url.parse().map_err(|_| {
            Error::Config(format!(
                "cannot read the PostgreSQL URL {}: expected postgres://user[:password]@host[:port]/database",
                redacted(url)
            ))
        })?;
        Ok(PgServer::from_options(options, connect_timeout))
    }

    /// A server whose options are already read (one host of a multi-host list).
    pub(crate) fn from_options(options: PgConnectOptions, connect_timeout: Duration) -> PgServer {
        PgServer {
            options: options.options(KEEPALIVE),
            connect_timeout,
        }
    }

    /// These options with server settings every session starts with (`options` in the
    /// startup message, so they cost no round trip): the limits of `DbOptions`.
    pub(crate) fn with_settings(mut self, settings: &[(&'static str, String)]) -> PgServer {
        self.options = self
            .options
            .options(settings.iter().map(|(name, value)| (*name, value.as_str())));
        self
    }

    /// `host:port`, as `hosts::Host::label` writes it (which host a failover search chose).
    pub(crate) fn label(&self) -> String {
        let host = self.options.get_host();
        if host.contains(':') {
            format!("[{host}]:{}", self.options.get_port())
        } else {
            format!("{host}:{}", self.options.get_port())
        }
    }

    /// How long a connect may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `host:port/database`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}:{}/{}",
            self.options.get_host(),
            self.options.get_port(),
            self.options.get_database().unwrap_or("")
        )
    }

    /// The database the URL names (the user's name when it names none, as PostgreSQL does).
    pub(crate) fn database(&self) -> &str {
        self.options
            .get_database()
            .unwrap_or(self.options.get_username())
    }

    /// A connection, within the connect timeout.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when none is made in time; [`Error::Config`] naming the database
    /// when it does not exist; otherwise the driver's error, classified.
    pub(crate) async fn connect(&self) -> Result<PgConnection> {
        self.try_connect().await.map_err(|failure| match failure {
            ConnectFailure::TimedOut => Error::Unavailable(format!(
                "no connection to the PostgreSQL server at {} within {:?}",
                self.describe(),
                self.connect_timeout
            )),
            ConnectFailure::Driver(err) if has_sqlstate(&err, sqlstate::INVALID_CATALOG_NAME) => {
                self.missing_database()
            }
            ConnectFailure::Driver(err) => err.into(),
        })
    }

    /// A connection within the connect timeout, the failure left unclassified.
    pub(crate) async fn try_connect(&self) -> std::result::Result<PgConnection, ConnectFailure> {
        match tokio::time::timeout(self.connect_timeout, self.options.connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(ConnectFailure::Driver(err)),
            Err(_) => Err(ConnectFailure::TimedOut),
        }
    }

    /// Creates the database the URL names, on the server's maintenance database (sqlx's own
    /// `CREATE DATABASE`), within the connect timeout; one created meanwhile by another process
    /// (42P04) is as good.
    pub(crate) async fn create_database(&self, url: &str) -> Result<()> {
        use sqlx::migrate::MigrateDatabase;
        match tokio::time::timeout(self.connect_timeout, sqlx::Postgres::create_database(url)).await
        {
            Err(_) => Err(Error::Unavailable(format!(
                "could not create the database {} within {:?}",
                self.describe(),
                self.connect_timeout
            ))),
            Ok(Err(err)) if !has_sqlstate(&err, sqlstate::DUPLICATE_DATABASE) => Err(err.into()),
            Ok(_) => Ok(()),
        }
    }

    /// The error for a database that does not exist.
    pub(crate) fn missing_database(&self) -> Error {
        Error::Config(format!(
            "the PostgreSQL database {:?} does not exist on {}:{}: check the URL, create it \
             (CREATE DATABASE), or set DbOptions::create_database to have sqlrepo create it",
            self.database(),
            self.options.get_host(),
            self.options.get_port()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_the_server_and_not_the_password() {
        let server = PgServer::parse(
            "postgres://app:s3cret@db.example:6543/prod",
            Duration::from_secs(1),
        )
        .unwrap();
        let shown = format!("{server:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        for part in ["db.example", "6543", "prod", "app"] {
            assert!(shown.contains(part), "{part} missing from {shown}");
        }
    }
}
