//! A tour of every sqlrepo feature on a SQLite file: `cargo run --example tour`.
//!
//! It opens (creating and migrating) `tour.db` in a fresh temporary directory, or the path given
//! as the first argument, and prints each step: the line of code (`> …`), then what it returned
//! (`= …`). `RUST_LOG=sqlrepo=debug` also shows the span of each repository call.

use anyhow::{Context, ensure};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::{
    Db, Error, Handle, ItemPatch, ItemStatus, NewAccount, NewItem, NewOrder, NewUser, Transfer,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let dir = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => dir.path().join("tour.db"),
    };
    step(&format!(
        "Db::open({}) — creates the file, WAL, migrations",
        path.display()
    ));
    let db = Db::open(&path).await.context("open the tour database")?;

    items(&db).await?;
    let ann = users_and_orders(&db).await?;
    accounts(&db, ann).await?;
    concurrency(&db).await?;
    your_own_statements(&db).await?;
    errors(&db).await?;
    operations(&db, dir.path()).await?;

    step("Db::close — checkpoints the WAL and closes every connection");
    db.close().await;
    outgrowing_one_file(&path).await?;
    println!(
        "\nTour finished: every call above ran checked SQL against {}",
        path.display()
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// Prints a line of the tour's code, runs it, prints what it returned (`Debug`), and hands the
/// value on. A macro only because a function cannot see its argument's source text
/// (`stringify!`); the call itself is ordinary code, `?` and `.await` included.
macro_rules! show {
    ($call:expr) => {{
        // The text as one line: rustfmt breaks long calls, and the tokens keep those breaks.
        let code: Vec<&str> = stringify!($call).split_whitespace().collect();
        println!("> {}", code.join(" "));
        let value = $call;
        println!("= {:?}", value);
        value
    }};
}

async fn items(db: &Db) -> anyhow::Result<()> {
    let items = db.items();
    step(
        "ItemRepo::create — one checked INSERT run with `execute`, so it is stepped to its end \
         and a failed commit is its error; the id is the connection's last_insert_rowid",
    );
    let lamp = show!(
        items
            .create(&NewItem::new(
                "lamp",
                json!({"watts": 40, "colour": "brass"})
            ))
            .await?
    );

    step("ItemRepo::get");
    let item = show!(items.get(lamp).await?).context("the lamp exists")?;
    println!("as JSON: {}", serde_json::to_string(&item)?);

    step("ItemRepo::update — a typed patch, one fixed statement; absent fields keep their value");
    let patch = ItemPatch {
        data: Some(json!({"watts": 60, "colour": "brass"})),
        ..Default::default()
    };
    show!(items.update(lamp, &patch).await?);
    // The same patch again changes nothing, and says so.
    show!(items.update(lamp, &patch).await?);

    step("ItemRepo::insert_many — 10,000 rows as one JSON array, one statement, all or nothing");
    let batch: Vec<NewItem> = (0..10_000)
        .map(|i| NewItem::new(format!("bolt-{i:05}"), json!({"size_mm": i % 20})))
        .collect();
    show!(items.insert_many(&batch).await?);

    step("ItemRepo::insert_many with a duplicate at position 9,000 — nothing is written");
    let mut bad: Vec<NewItem> = (0..10_000)
        .map(|i| NewItem::new(format!("nut-{i:05}"), json!({})))
        .collect();
    bad[9_000].name = "lamp".into();
    let before = show!(items.count().await?);
    match show!(items.insert_many(&bad).await) {
        Err(Error::Duplicate { .. }) => {}
        other => anyhow::bail!("expected a duplicate, got {other:?}"),
    }
    ensure!(
        show!(items.count().await?) == before,
        "the failed batch left rows behind"
    );

    step("ItemRepo::set_status_many — counts only rows whose status really changed");
    let ids: Vec<i64> = (2..=101).collect();
    show!(items.set_status_many(&ids, ItemStatus::Archived).await?);
    // Already archived, or unknown: nothing changed, nothing counted.
    show!(
        items
            .set_status_many(&[2, 3, 999_999], ItemStatus::Archived)
            .await?
    );

    step("ItemRepo::list_by_status, get_many, count");
    show!(items.list_by_status(ItemStatus::Archived).await?.len());
    show!(items.get_many(&[1, 2, 3]).await?.len());
    show!(items.count().await?);

    step("ItemRepo::stream — every item by id, in constant memory (keyset pages)");
    let mut streamed = 0;
    let mut last_id = 0;
    let mut stream = std::pin::pin!(items.stream());
    while let Some(item) = stream.try_next().await? {
        ensure!(item.id > last_id, "stream out of order");
        last_id = item.id;
        streamed += 1;
    }
    println!("streamed {streamed} items, last id {last_id}");

    step("ItemRepo::delete");
    show!(items.delete(lamp).await?);
    show!(items.delete(lamp).await?);
    Ok(())
}

async fn users_and_orders(db: &Db) -> anyhow::Result<i64> {
    step("UserRepo::create and get_by_email (unique without regard to case)");
    let ann = show!(
        db.users()
            .create(&NewUser::new("ann@example.com", "Ann"))
            .await?
    );
    show!(
        db.users()
            .get_by_email("ANN@example.com")
            .await?
            .map(|u| u.id)
    );

    step("UserRepo::insert_many and stream");
    let users: Vec<NewUser> = (0..1_000)
        .map(|i| NewUser::new(format!("user{i}@example.com"), format!("User {i}")))
        .collect();
    show!(db.users().insert_many(&users).await?);
    let users = db.users();
    let streamed: Vec<_> = users.stream().try_collect().await?;
    println!("streamed {} users", streamed.len());

    step("OrderRepo::create, update, insert_many, recent_for_user, stats_for_user, stream");
    let first_order = db.orders().create(&NewOrder::new(ann, 1_999)).await?;
    let discount = sqlrepo::OrderPatch {
        total_cents: Some(1_799),
        ..Default::default()
    };
    show!(db.orders().update(first_order, &discount).await?);
    let orders: Vec<NewOrder> = (1..=15).map(|i| NewOrder::new(ann, i * 100)).collect();
    show!(db.orders().insert_many(&orders).await?);
    let recent = db.orders().recent_for_user(ann, 3).await?;
    println!(
        "newest 3 totals: {:?}",
        recent.iter().map(|o| o.total_cents).collect::<Vec<_>>()
    );
    show!(db.orders().stats_for_user(ann).await?);
    let streamed: Vec<_> = db.orders().stream().try_collect().await?;
    println!("streamed {} orders", streamed.len());

    step("Db::dashboard — user, 10 newest orders and stats in one statement");
    let dashboard = db.dashboard(ann).await?;
    println!(
        "{} has {} orders worth {} cents; showing {}",
        dashboard.user.name,
        dashboard.stats.count,
        dashboard.stats.total_cents,
        dashboard.recent_orders.len()
    );

    step("UserRepo::delete of a user with orders — refused, nothing deleted");
    match show!(db.users().delete(ann).await) {
        Err(Error::ForeignKey) => println!("refused: {}", Error::ForeignKey),
        other => anyhow::bail!("expected ForeignKey, got {other:?}"),
    }
    Ok(ann)
}

async fn accounts(db: &Db, ann: i64) -> anyhow::Result<()> {
    let accounts = db.accounts();
    step("AccountRepo::open and deposit (a deposit is a ledger row)");
    let wallet = accounts
        .open(&NewAccount {
            user_id: Some(ann),
            balance_cents: 10_000,
        })
        .await?;
    let shop = accounts
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await?;
    println!("wallet {wallet}, shop {shop}");
    show!(accounts.deposit(wallet, 500).await?);
    let total = show!(accounts.total_balance().await?);

    step("AccountRepo::transfer — one ledger INSERT; a trigger moves the money");
    show!(
        accounts
            .transfer(&Transfer::new(wallet, shop, 2_500))
            .await?
    );
    println!(
        "wallet {} / shop {}",
        balance(db, wallet).await?,
        balance(db, shop).await?
    );

    step("AccountRepo::get_many, count, stream — the reads every repository has");
    let both = accounts.get_many(&[shop, wallet]).await?;
    println!(
        "balances by id: {:?}",
        both.iter()
            .map(|a| (a.id, a.balance_cents))
            .collect::<Vec<_>>()
    );
    show!(accounts.count().await?);
    let streamed: Vec<_> = accounts.stream().try_collect().await?;
    println!("streamed {} accounts", streamed.len());

    step("A refused overdraft: InsufficientFunds, nothing moves");
    match show!(
        accounts
            .transfer(&Transfer::new(wallet, shop, 1_000_000))
            .await
    ) {
        Err(err @ Error::InsufficientFunds { .. }) => println!("refused: {err}"),
        other => anyhow::bail!("expected InsufficientFunds, got {other:?}"),
    }

    step(
        "A transfer to a missing account: NotFound, nothing moves (the seed destroyed money here)",
    );
    match show!(accounts.transfer(&Transfer::new(wallet, 4_242, 100)).await) {
        Err(err @ Error::NotFound { .. }) => println!("refused: {err}"),
        other => anyhow::bail!("expected NotFound, got {other:?}"),
    }

    step("A replayed idempotency key: Ok, moves nothing; same key, other amount: Duplicate");
    let pay = Transfer::new(wallet, shop, 700).with_key("invoice-42");
    show!(accounts.transfer_with_outcome(&pay).await?);
    show!(accounts.transfer_with_outcome(&pay).await?);
    println!(
        "after paying invoice-42 twice: wallet {}",
        balance(db, wallet).await?
    );
    match show!(
        accounts
            .transfer(&Transfer::new(wallet, shop, 701).with_key("invoice-42"))
            .await
    ) {
        Err(err @ Error::Duplicate { .. }) => println!("refused: {err}"),
        other => anyhow::bail!("expected Duplicate, got {other:?}"),
    }

    step("AccountRepo::transfer_batch — in order, all or nothing, one statement");
    let refund = [
        Transfer::new(shop, wallet, 200),
        Transfer::new(shop, wallet, 1_000_000),
    ];
    match show!(accounts.transfer_batch(&refund).await) {
        Err(err) => println!("batch with an overdraft at step 2 refused: {err}"),
        Ok(()) => anyhow::bail!("the overdrawing batch landed"),
    }
    accounts.transfer_batch(&refund[..1]).await?;
    println!("one-step batch landed: shop {}", balance(db, shop).await?);

    step("Db::begin — a caller-owned transaction: create an order and pay for it, or neither");
    let tx = db.begin().await?;
    let order = tx.orders().create(&NewOrder::new(ann, 50_000)).await?;
    match tx
        .accounts()
        .transfer(&Transfer::new(wallet, shop, 50_000))
        .await
    {
        Err(err) => {
            println!("payment refused ({err}); dropping the transaction rolls back order {order}");
            drop(tx);
        }
        Ok(()) => tx.commit().await?,
    }
    ensure!(
        db.orders().get(order).await?.is_none(),
        "the unpaid order survived"
    );
    let tx = db.begin().await?;
    let order = tx.orders().create(&NewOrder::new(ann, 300)).await?;
    tx.accounts()
        .transfer(&Transfer::new(wallet, shop, 300))
        .await?;
    tx.commit().await?;
    println!("order {order} and its payment committed together");

    step("AccountRepo::total_balance — money is conserved");
    let after = show!(accounts.total_balance().await?);
    println!("total before transfers {total}, after {after}");
    ensure!(total == after, "money was created or destroyed");
    Ok(())
}

async fn errors(db: &Db) -> anyhow::Result<()> {
    step("Typed errors for bad input, before the database is touched");
    for result in [
        db.items()
            .create(&NewItem::new("   ", json!({})))
            .await
            .map(|_| ()),
        db.users()
            .create(&NewUser::new("not-an-email", "X"))
            .await
            .map(|_| ()),
        db.orders().create(&NewOrder::new(1, -5)).await.map(|_| ()),
        db.accounts().transfer(&Transfer::new(1, 1, 5)).await,
    ] {
        match result {
            Err(err) => println!("{err}"),
            Ok(()) => anyhow::bail!("bad input was accepted"),
        }
    }
    Ok(())
}

/// Many callers at once: transfers queued together ride one statement (group commit), and each
/// caller still gets its own answer.
async fn concurrency(db: &Db) -> anyhow::Result<()> {
    step("16 concurrent callers — group commit, each caller keeps its own outcome");
    let accounts = db.accounts();
    let rich = accounts
        .open(&NewAccount {
            user_id: None,
            balance_cents: 1_000,
        })
        .await?;
    let poor = accounts
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await?;
    let before = accounts.total_balance().await?;
    let calls: Vec<_> = (0..16)
        .map(|n| {
            // Every fourth caller overdraws the empty account: refused alone, not with the rest.
            let t = if n % 4 == 0 {
                Transfer::new(poor, rich, 1)
            } else {
                Transfer::new(rich, poor, 10)
            };
            tokio::spawn(db.accounts().transfer(&t))
        })
        .collect();
    let (mut landed, mut refused) = (0, 0);
    for call in calls {
        match call.await? {
            Ok(()) => landed += 1,
            Err(Error::InsufficientFunds { .. }) => refused += 1,
            Err(other) => return Err(other.into()),
        }
    }
    println!("{landed} transfers landed, {refused} refused for insufficient funds");
    ensure!(
        accounts.total_balance().await? == before,
        "money moved out of the bank"
    );
    Ok(())
}

/// A service's own repository on sqlrepo's connections: the same `Handle` our repositories use,
/// a checked statement, our error variants, and a transaction shared with our repositories.
async fn your_own_statements(db: &Db) -> anyhow::Result<()> {
    step("Handle / Conn — a service's own checked statements on our connections");
    async fn count_items(handle: &Handle) -> sqlrepo::Result<i64> {
        let mut conn = handle.reader().await?;
        Ok(
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
                .fetch_one(conn.statements()?)
                .await?,
        )
    }
    println!(
        "items, counted by a service's own statement: {}",
        count_items(&db.handle()).await?
    );
    let tx = db.begin().await?;
    tx.items()
        .create(&NewItem::new("inside a tx", json!({})))
        .await?;
    println!(
        "inside a Tx the same statement sees the uncommitted row: {}",
        count_items(&tx.handle()).await?
    );
    tx.rollback().await?;
    println!("after rollback: {}", count_items(&db.handle()).await?);

    step("ItemRepo::list_by_status_page — a keyset cursor instead of every row");
    let (mut after, mut sizes) = (None, Vec::new());
    loop {
        let page = db
            .items()
            .list_by_status_page(ItemStatus::Active, after, 1_000)
            .await?;
        sizes.push(page.items.len());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    println!("active items in pages of at most 1,000: {sizes:?}");
    Ok(())
}

/// What an operator needs: an online backup, an integrity check, the WAL's figures.
async fn operations(db: &Db, dir: &std::path::Path) -> anyhow::Result<()> {
    step("Db::backup_to — a consistent copy while the database serves");
    let copy = dir.join("tour-backup.db");
    show!(db.backup_to(&copy).await?);
    let restored = Db::open(&copy).await?;
    println!(
        "backup at {} opens with {} items and {} cents in the bank",
        copy.display(),
        restored.items().count().await?,
        restored.accounts().total_balance().await?
    );
    restored.close().await;
    // Never overwrites: a second backup to the same path is refused.
    show!(db.backup_to(&copy).await).unwrap_err();

    step("Db::integrity_check and Db::wal_stats — what a health endpoint reports");
    show!(db.integrity_check().await?);
    show!(db.wal_stats());
    Ok(())
}

/// The same calls from a URL: `sqlite://` here; with the `postgres` feature and a server
/// (`SQLREPO_PG_URL`, see the README's "PostgreSQL and replicas"), the repositories run again on
/// PostgreSQL and on a primary with a streaming replica.
async fn outgrowing_one_file(path: &std::path::Path) -> anyhow::Result<()> {
    step("Db::connect(\"sqlite://…\") — the database a URL names");
    let url = format!("sqlite://{}", path.display());
    let db = Db::connect(&url).await?;
    println!("{url}: {} items", db.items().count().await?);
    db.close().await;

    #[cfg(feature = "postgres")]
    if let Ok(server) = std::env::var("SQLREPO_PG_URL") {
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        let url = format!("{base}/sqlrepo_tour_{}", std::process::id());
        step(&format!(
            "Db::connect(\"{url}\") — the same calls on PostgreSQL (the database is created)"
        ));
        // Creating a missing database is opt-in: by default a typo in a URL is an error.
        let pg =
            Db::connect_with(&url, sqlrepo::DbOptions::default().create_database(true)).await?;
        items(&pg).await?;
        let ann = users_and_orders(&pg).await?;
        accounts(&pg, ann).await?;
        errors(&pg).await?;
        pg.close().await;
        if let Ok(replica) = std::env::var("SQLREPO_PG_REPLICA_URL") {
            let replica_base = replica
                .rsplit_once('/')
                .map_or(replica.as_str(), |(b, _)| b);
            let replica_url = format!("{replica_base}/sqlrepo_tour_{}", std::process::id());
            step(
                "Db::connect_replicated — writes to the primary, reads on the replica, own writes seen",
            );
            let db = Db::connect_replicated(&url, &[&replica_url]).await?;
            for round in 0..100 {
                let id = db
                    .items()
                    .create(&NewItem::new(format!("replicated {round}"), json!({})))
                    .await?;
                ensure!(db.items().get(id).await?.is_some(), "read my own write");
            }
            println!("100 creates, each read back at once through the replicated Db: all seen");
            db.close().await;
        }
        return Ok(());
    }
    println!(
        "(PostgreSQL part skipped: build with --features postgres and set SQLREPO_PG_URL, \
         see the README's \"PostgreSQL and replicas\")"
    );
    Ok(())
}

async fn balance(db: &Db, id: i64) -> anyhow::Result<i64> {
    Ok(db
        .accounts()
        .get(id)
        .await?
        .context("account exists")?
        .balance_cents)
}
