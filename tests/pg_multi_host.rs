//! `Db::connect` with libpq's multi-host strings (cargo feature `postgres`): the roles of the
//! hosts are discovered, not configured. Writes go to the host that is primary wherever it is
//! listed, the standbys beside it serve reads under the read-your-writes promise, a list with
//! no primary is a clear `Unavailable` naming the hosts tried, and a malformed list is a
//! `Config` error naming the part, with nothing created anywhere.
//!
//! These need the PostgreSQL pair of `.ci/pg-cluster` (`SQLREPO_PG_URL`,
//! `SQLREPO_PG_REPLICA_URL`): ignored by default, run with `-- --include-ignored`, where a
//! missing server fails them.
#![cfg(feature = "postgres")]

mod common;

use common::backend::{Backend, PgDatabase, pg};
use serde_json::json;
use sqlrepo::{Db, Error, NewItem};
use sqlx::{Connection, PgConnection};

/// A port nothing listens on (the CI pair uses two ports far from it): a host that is down.
const DOWN: &str = "127.0.0.1:1";

/// A fresh database on the primary, present on the replica too; without `SQLREPO_PG_URL` and
/// `SQLREPO_PG_REPLICA_URL` the test fails, saying how to start a cluster (`pg::create`).
async fn database() -> PgDatabase {
    pg::create(Backend::Replicated)
        .await
        .expect("a PostgreSQL test database")
}

/// `host:port` and the database name of a one-host URL `postgres://user@host:port/name`.
fn parts(url: &str) -> (String, String) {
    let rest = url.split_once('@').unwrap().1;
    let (host, name) = rest.split_once('/').unwrap();
    (host.to_owned(), name.to_owned())
}

/// The multi-host URL of `hosts` for database `name`.
fn listing(hosts: &[&str], name: &str, attrs: &str) -> String {
    format!(
        "postgres://postgres@{}/{name}?target_session_attrs={attrs}&connect_timeout=2",
        hosts.join(",")
    )
}

/// Items stored on the primary, asked of it directly.
async fn items_on(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn writes_go_to_the_primary_wherever_it_is_listed_and_the_standby_serves_reads() {
    let database = database().await;
    let (primary, name) = parts(&database.url);
    let replica_url = database.replica_url.clone().unwrap();
    let (replica, _) = parts(&replica_url);

    let mut stored = 0;
    // The standby first (a naive client would write to it and fail), a host that is down
    // among them, and both session kinds a writer might ask for.
    for (hosts, attrs) in [
        (vec![replica.as_str(), primary.as_str()], "read-write"),
        (vec![DOWN, replica.as_str(), primary.as_str()], "primary"),
        (vec![primary.as_str(), replica.as_str()], "any"),
        (vec![replica.as_str(), primary.as_str()], "prefer-standby"),
    ] {
        let url = listing(&hosts, &name, attrs);
        let db = Db::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("connect {url}: {err}"));
        let id = db
            .items()
            .create(&NewItem::new(
                format!("lamp {attrs}"),
                json!({"attrs": attrs}),
            ))
            .await
            .unwrap_or_else(|err| panic!("a write through {url}: {err}"));
        stored += 1;
        assert_eq!(items_on(&database.url).await, stored, "{url}");
        // Read-your-writes: the item is seen at once, whoever answers.
        let item = db
            .items()
            .get(id)
            .await
            .unwrap()
            .expect("the item just made");
        assert_eq!(item.data, json!({"attrs": attrs}));
        db.close().await;
    }

    // Once the standby has replayed every write, reads go to it: it was found in the list,
    // not named as a replica.
    let db = Db::connect(&listing(&[&replica, &primary], &name, "read-write"))
        .await
        .unwrap();
    let shown = format!("{db:?}");
    let port = replica.rsplit(':').next().unwrap();
    assert!(
        shown.contains(&format!("port: {port}")),
        "the standby is not among the Db's replicas: {shown}"
    );
    let id = db
        .items()
        .create(&NewItem::new("desk", json!({})))
        .await
        .unwrap();
    // The standby's replay position is learnt in the background after a read or two, so
    // read for a while (each read still sees the item, wherever it is answered).
    let before = pg::item_scans(&replica_url).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut served = 0;
    while served == 0 && std::time::Instant::now() < deadline {
        for _ in 0..20 {
            assert_eq!(db.items().get(id).await.unwrap().unwrap().name, "desk");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        served = pg::item_scans(&replica_url).await - before;
    }
    assert!(
        served > 0,
        "the standby found in the list answered no get in 10 s"
    );
    db.close().await;
}

#[tokio::test]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn a_list_without_a_primary_is_unavailable_naming_the_hosts_tried() {
    let database = database().await;
    let (_, name) = parts(&database.url);
    let (replica, _) = parts(database.replica_url.as_deref().unwrap());
    for attrs in ["read-write", "any", "standby"] {
        let url = listing(&[DOWN, &replica], &name, attrs);
        let err = Db::connect(&url).await.expect_err("no primary in the list");
        let Error::Unavailable(message) = &err else {
            panic!("expected Unavailable for {url}, got {err:?}");
        };
        assert!(err.is_retryable(), "{err:?}");
        for host in [DOWN, replica.as_str()] {
            assert!(message.contains(host), "{host} not named in {message:?}");
        }
    }
    // Nothing was written anywhere: the database is as `pg::create` made it (not migrated).
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'items'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a failed connect migrated the database");
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn a_malformed_list_is_a_config_error_naming_the_part() {
    let database = database().await;
    let (primary, name) = parts(&database.url);
    for (url, part) in [
        (
            format!("postgres://postgres@{primary},127.0.0.1:notaport/{name}"),
            "notaport",
        ),
        (
            format!("postgres://postgres@{primary}/{name}?target_session_attrs=sometimes"),
            "sometimes",
        ),
        (
            format!("host=127.0.0.1,127.0.0.2,127.0.0.3 port=1,2 dbname={name}"),
            "port",
        ),
    ] {
        let err = Db::connect(&url).await.expect_err("a malformed list");
        let Error::Config(message) = &err else {
            panic!("expected Config for {url}, got {err:?}");
        };
        assert!(message.contains(part), "{part:?} not named in {message:?}");
    }
}

#[tokio::test]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn the_key_value_form_connects_too() {
    let database = database().await;
    let (primary, name) = parts(&database.url);
    let (replica, _) = parts(database.replica_url.as_deref().unwrap());
    let split = |host: &str| {
        let (name, port) = host.rsplit_once(':').unwrap();
        (name.to_owned(), port.to_owned())
    };
    let ((rh, rp), (ph, pp)) = (split(&replica), split(&primary));
    let url = format!(
        "host={rh},{ph} port={rp},{pp} user=postgres dbname={name} target_session_attrs=read-write connect_timeout=2"
    );
    let db = Db::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    db.items()
        .create(&NewItem::new("chair", json!({})))
        .await
        .unwrap();
    assert_eq!(items_on(&database.url).await, 1);
    db.close().await;
}

#[tokio::test]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn a_standby_named_alone_is_a_config_error_that_says_so() {
    let database = database().await;
    let replica_url = database.replica_url.clone().unwrap();
    let (replica, _) = parts(&replica_url);
    let err = Db::connect(&replica_url)
        .await
        .expect_err("a Db on a standby");
    let Error::Config(message) = &err else {
        panic!("expected Config, got {err:?}");
    };
    for part in [
        "standby",
        "primary",
        "target_session_attrs",
        replica.as_str(),
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
}
