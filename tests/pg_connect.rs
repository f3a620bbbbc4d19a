//! Connecting to PostgreSQL as production does it (cargo feature `postgres`): secrets kept out
//! of `Debug`, errors and spans; a missing database refused by default; a server that never
//! answers bounded by `connect_timeout`; pool sizes from `DbOptions`; and a role with DML
//! rights only, connecting with migrations off or verified.
//!
//! These need a PostgreSQL server (`SQLREPO_PG_URL`, and `SQLREPO_PG_REPLICA_URL` for the
//! replicated `Debug`): ignored by default, and run with `-- --include-ignored`, where a
//! missing server fails them.
#![cfg(feature = "postgres")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::{Backend, PgDatabase, pg, with_database};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, NewItem};
use sqlx::{Connection, PgConnection};

/// Stands for a password in the URLs below; the servers of `.ci/pg-cluster` trust loopback,
/// so it is sent and ignored.
const PASSWORD: &str = "hunter2-Zq9x";

/// A fresh database on the primary (and, with `replica`, its URL on the replica); fails
/// instead of skipping when no server is configured.
async fn database(replica: bool) -> PgDatabase {
    for var in ["SQLREPO_PG_URL"]
        .into_iter()
        .chain(replica.then_some("SQLREPO_PG_REPLICA_URL"))
    {
        assert!(
            std::env::var(var).is_ok(),
            "{var} is not set: start a cluster with .ci/pg-cluster start DIR PORT and export what it prints"
        );
    }
    let kind = if replica {
        Backend::Replicated
    } else {
        Backend::Postgres
    };
    pg::create(kind).await.expect("a PostgreSQL test database")
}

/// The same URL with `user:PASSWORD@` as its credentials.
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://postgres:{PASSWORD}@{host}")
}

/// Text written by `tracing`'s formatter, for the whole test.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a service might write: a span over a function taking the `Db`, with every argument.
#[tracing::instrument(level = "info")]
async fn handler(db: &Db, id: i64) -> sqlrepo::Result<Option<sqlrepo::Item>> {
    db.items().get(id).await
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs a PostgreSQL primary and replica (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn no_debug_error_or_span_shows_the_password() {
    let database = database(true).await;
    let primary = with_password(&database.url);
    let replica = with_password(database.replica_url.as_ref().unwrap());
    assert!(primary.contains(PASSWORD));

    let written = Written::default();
    let writer = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let db = Db::connect_replicated(&primary, &[&replica]).await.unwrap();
    let shown = format!("{db:?}");
    let port = primary
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let name = primary.rsplit('/').next().unwrap();
    for part in ["127.0.0.1", port, name, "postgres"] {
        assert!(shown.contains(part), "{part} missing from {shown}");
    }
    assert!(!shown.contains(PASSWORD), "Debug of a Db: {shown}");
    assert!(!format!("{:?}", db.handle()).contains(PASSWORD));
    assert!(!format!("{:?}", db.items()).contains(PASSWORD));

    let id = db
        .items()
        .create(&NewItem::new("lamp", json!({})))
        .await
        .unwrap();
    assert!(handler(&db, id).await.unwrap().is_some());
    db.close().await;

    // Failures with the password in the URL: a server that refuses, a URL that does not
    // parse, a scheme sqlrepo does not know, a database that does not exist.
    let refused = with_password("postgres://127.0.0.1:27209/nothing_here");
    let unparsable = format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/db");
    let unknown_scheme = format!("mysql://postgres:{PASSWORD}@127.0.0.1/db");
    let missing = format!("{primary}_missing");
    let quick = || DbOptions::default().connect_timeout(Duration::from_secs(2));
    for url in [&refused, &unparsable, &unknown_scheme, &missing] {
        let err = Db::connect_with(url, quick()).await.unwrap_err();
        tracing::error!(error = ?err, "connect failed: {err}");
        let (display, debug) = (err.to_string(), format!("{err:?}"));
        assert!(
            !display.contains(PASSWORD) && !debug.contains(PASSWORD),
            "{url}: {display} / {debug}"
        );
    }
    let err = Db::connect_replicated_with(&primary, &[&unparsable], quick())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(PASSWORD), "{err:?}");

    let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
    // The capture works: the service's span and its `db` argument were written.
    assert!(
        text.contains("handler") && text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("connect failed"), "{text}");
    assert!(
        !text.contains(PASSWORD),
        "a span or event carries the password:\n{text}"
    );
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_server_that_never_answers_fails_connect_within_the_timeout() {
    // A listening socket nobody serves: the kernel accepts the TCP connection, and the
    // startup message is never answered (as a hung server or a stuck proxy).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/db",
        silent.local_addr().unwrap().port()
    );
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = Db::connect_with(&url, DbOptions::default().connect_timeout(timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("within"), "{err}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "connect gave up after {took:?}, the timeout being {timeout:?}"
    );
    drop(silent);
}

/// Sessions open on `database`, counted from a connection of the test's own.
async fn sessions_on(admin_url: &str, database: &str) -> i64 {
    // Counted from another database: the session of the count before ends a moment after its
    // `close`, and on `database` itself it was counted as one of the pool's.
    let mut conn = PgConnection::connect(&with_database(admin_url, "postgres"))
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a PostgreSQL server (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn the_primary_pool_size_comes_from_the_options() {
    let database = database(false).await;
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    for (size, callers) in [(2usize, 24), (6, 24)] {
        // The sessions of the round before end a moment after `close`.
        let started = Instant::now();
        while sessions_on(&database.url, &name).await > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sessions linger"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let db = Db::connect_with(
            &database.url,
            DbOptions::default().primary_connections(size),
        )
        .await
        .unwrap();
        let id = db
            .items()
            .create(&NewItem::new(format!("lamp-{size}"), json!({})))
            .await
            .unwrap();
        // Many callers at once, each holding its connection a while (a transaction that
        // sleeps on the server), so every connection the pool may make is made.
        let calls: Vec<_> = (0..callers)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move {
                    let tx = db.begin().await?;
                    let mut conn = tx.handle().writer().await?;
                    sqlx::query("SELECT pg_sleep(0.05)")
                        .execute(conn.postgres()?)
                        .await?;
                    drop(conn);
                    tx.items().get(id).await?;
                    tx.commit().await
                })
            })
            .collect();
        let mut most = 0;
        let started = Instant::now();
        while calls.iter().any(|call| !call.is_finished()) {
            most = most.max(sessions_on(&database.url, &name).await);
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the callers never finished"
            );
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert!(most <= size as i64, "{most} sessions with a pool of {size}");
        assert!(
            most >= size as i64 - 1,
            "only {most} sessions with a pool of {size}"
        );
        db.close().await;
    }
}

/// Runs statements as the server's superuser on `url`.
async fn admin(url: &str, statements: &[&str]) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_dml_only_role_connects_with_migrations_off_or_verified() {
    let database = database(false).await;
    // Migrated by the owner, as a deploy step would.
    Db::connect(&database.url).await.unwrap().close().await;
    let role = format!("dml_{}", pg::unique_name());
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    admin(
        &database.url,
        &[
            &format!("CREATE ROLE {role} LOGIN"),
            &format!("GRANT CONNECT ON DATABASE {name} TO {role}"),
            &format!("GRANT USAGE ON SCHEMA public TO {role}"),
            &format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
            ),
            &format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
            &format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"),
        ],
    )
    .await;
    let (scheme, rest) = database.url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let dml_url = format!("{scheme}://{role}@{host}");

    // The role really cannot run DDL.
    let mut conn = PgConnection::connect(&dml_url).await.unwrap();
    let ddl = sqlx::raw_sql("CREATE TABLE dml_probe (id bigint)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        ddl.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{ddl}"
    );
    conn.close().await.unwrap();

    let off = DbOptions::default().migrate(false);
    let verified = DbOptions::default().migrate(false).verify_migrations(true);
    let db = Db::connect_with(&dml_url, off.clone()).await.unwrap();
    let lamp = db
        .items()
        .create(&NewItem::new("lamp", json!({"watts": 40})))
        .await
        .unwrap();
    db.close().await;
    let db = Db::connect_with(&dml_url, verified.clone()).await.unwrap();
    assert_eq!(db.items().get(lamp).await.unwrap().unwrap().name, "lamp");
    db.items()
        .create(&NewItem::new("desk", json!({})))
        .await
        .unwrap();
    db.close().await;

    // The recorded migrations stop matching the embedded ones, three ways: each is refused
    // with Schema by verification, and the data is left as it was.
    let latest = sqlrepo_postgres::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    let edits = [
        (
            format!("UPDATE _sqlrepo_migrations SET checksum = '\\x00'::bytea WHERE version = {latest}"),
            format!("migration {latest} applied to this database differs"),
        ),
        (
            format!("DELETE FROM _sqlrepo_migrations WHERE version = {latest}"),
            format!("migration {latest} ("),
        ),
        (
            "INSERT INTO _sqlrepo_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', true, '\\x00'::bytea, 0)"
                .to_owned(),
            "migration 99990101000000".to_owned(),
        ),
    ];
    for (edit, expected) in edits {
        admin(
            &database.url,
            &[
                "CREATE TABLE IF NOT EXISTS saved_migrations AS SELECT * FROM _sqlrepo_migrations",
                &edit,
            ],
        )
        .await;
        let err = Db::connect_with(&dml_url, verified.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Schema(message) if message.contains(&expected)),
            "{edit}: {err:?}"
        );
        // Unverified, the same role still connects (the operator chose not to check).
        let db = Db::connect_with(&dml_url, off.clone()).await.unwrap();
        assert_eq!(db.items().count().await.unwrap(), 2, "{edit}");
        db.close().await;
        admin(
            &database.url,
            &[
                "DELETE FROM _sqlrepo_migrations",
                "INSERT INTO _sqlrepo_migrations SELECT * FROM saved_migrations",
            ],
        )
        .await;
        Db::connect_with(&dml_url, verified.clone())
            .await
            .unwrap()
            .close()
            .await;
    }
    // A database never migrated: Schema, saying so.
    let bare = pg::create(Backend::Postgres).await.unwrap();
    let err = Db::connect_with(&bare.url, verified).await.unwrap_err();
    assert!(
        matches!(&err, Error::Schema(message) if message.contains("no sqlrepo migrations")),
        "{err:?}"
    );
    drop(bare);

    let admin_url = with_database(&database.url, "postgres");
    drop(database);
    admin(&admin_url, &[&format!("DROP ROLE {role}")]).await;
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn every_session_asks_the_server_for_tcp_keepalive() {
    let database = database(false).await;
    let db = Db::connect(&database.url).await.unwrap();
    let mut conn = db.handle().writer().await.unwrap();
    let mut settings = Vec::new();
    for setting in [
        "SHOW tcp_keepalives_idle",
        "SHOW tcp_keepalives_interval",
        "SHOW tcp_keepalives_count",
    ] {
        let value: String = sqlx::query_scalar(setting)
            .fetch_one(conn.postgres().unwrap())
            .await
            .unwrap();
        settings.push(value);
    }
    // Over TCP (the test URLs use 127.0.0.1) the server applies them to the session's socket;
    // the kernel's default would be "0" (its two hours).
    assert_eq!(settings, ["15", "5", "3"]);
    drop(conn);
    db.close().await;
}
