//! The example service (`src/main.rs`) on a real socket, driven by a real HTTP client.
//!
//! Each test starts the service on `127.0.0.1:0` over a fresh database file and talks to it with
//! reqwest, checking statuses, bodies, and what the database holds afterwards (through the API).

// `main` and a few helpers of the example are not used by the tests.
#[allow(dead_code)]
#[path = "../src/main.rs"]
mod service;

use std::time::Duration;

use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use sqlrepo::{Db, DbOptions, Error};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A running service over its own database file; stops when dropped.
struct Service {
    base: String,
    client: reqwest::Client,
    /// The service's database, to check what it holds without going through HTTP.
    db: Db,
    _dir: TempDir,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A status and a JSON body (`null` for an empty one).
type Reply = (StatusCode, Value);

impl Service {
    /// The service over a fresh database file, migrated as `main` does it: sqlrepo's
    /// migrations, then the service's own.
    async fn start() -> Service {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path().join("service.db"))
            .await
            .expect("open db");
        db.run_migrations(&service::shipments::MIGRATOR)
            .await
            .expect("the service's migrations");
        Service::start_on(db, dir).await
    }

    /// The service over a database opened by the caller inside `dir`.
    async fn start_on(db: Db, dir: TempDir) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let server = tokio::spawn(service::serve(db.clone(), listener));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Service {
            base,
            client,
            db,
            _dir: dir,
            server,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.patch(self.url(path)).json(&body))
            .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    async fn transfer(&self, key: Option<&str>, from: i64, to: i64, amount_cents: i64) -> Reply {
        let mut request = self
            .client
            .post(self.url("/transfers"))
            .json(&json!({"from": from, "to": to, "amount_cents": amount_cents}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens an account with `balance_cents` and returns its id.
    async fn account(&self, balance_cents: i64) -> i64 {
        let (status, body) = self
            .post("/accounts", json!({"balance_cents": balance_cents}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().expect("account id")
    }

    async fn balance(&self, account: i64) -> i64 {
        let (status, body) = self.get(&format!("/accounts/{account}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["balance_cents"].as_i64().expect("balance")
    }

    async fn total(&self) -> i64 {
        let (status, body) = self.get("/accounts/total").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["total_balance_cents"].as_i64().expect("total")
    }

    /// Creates a user and returns their id.
    async fn user(&self, email: &str) -> i64 {
        let (status, body) = self
            .post("/users", json!({"email": email, "name": "Ann"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().expect("user id")
    }
}

fn ids(items: &Value) -> Vec<i64> {
    items
        .as_array()
        .expect("array")
        .iter()
        .map(|item| item["id"].as_i64().expect("id"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Items

#[tokio::test]
async fn item_is_created_read_patched_and_deleted() {
    let service = Service::start().await;

    let (status, created) = service
        .post("/items", json!({"name": "lamp", "data": {"watts": 40}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "lamp");
    assert_eq!(created["status"], "active");
    let id = created["id"].as_i64().unwrap();

    let (status, item) = service.get(&format!("/items/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(item, created);

    let (status, patched) = service
        .patch(
            &format!("/items/{id}"),
            json!({"status": "archived", "data": {"watts": 60}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["status"], "archived");
    assert_eq!(patched["data"]["watts"], 60);
    assert_eq!(patched["name"], "lamp");

    let (status, _) = service.delete(&format!("/items/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = service.get(&format!("/items/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["entity"], "item");
    assert_eq!(body["id"], id);
}

#[tokio::test]
async fn unknown_item_is_404_for_every_verb() {
    let service = Service::start().await;
    assert_eq!(service.get("/items/404").await.0, StatusCode::NOT_FOUND);
    let patched = service.patch("/items/404", json!({"name": "x"})).await;
    assert_eq!(patched.0, StatusCode::NOT_FOUND);
    assert_eq!(service.delete("/items/404").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn duplicate_item_name_is_409_naming_the_constraint() {
    let service = Service::start().await;
    let (status, _) = service.post("/items", json!({"name": "lamp"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, other) = service.post("/items", json!({"name": "desk"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = service.post("/items", json!({"name": "lamp"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "duplicate");
    assert_eq!(body["constraint"], "items.name");

    // Renaming onto a taken name is the same conflict, and changes nothing.
    let path = format!("/items/{}", other["id"]);
    let (status, _) = service.patch(&path, json!({"name": "lamp"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(service.get(&path).await.1["name"], "desk");
}

#[tokio::test]
async fn batch_insert_then_status_change_counts_only_real_changes() {
    let service = Service::start().await;
    let batch = json!([
        {"name": "a", "data": {"n": 1}},
        {"name": "b"},
        {"name": "c", "status": "inactive"},
    ]);
    let (status, body) = service.post("/items/batch", batch).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["inserted"], 3);

    let (status, active) = service.get("/items?status=active").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["next"], Value::Null, "{active}");
    let active_ids = ids(&active["items"]);
    assert_eq!(active_ids.len(), 2);

    // Two active items change; the inactive one and an unknown id do not count.
    let (_, inactive) = service.get("/items?status=inactive").await;
    let mut targets = active_ids.clone();
    targets.extend(ids(&inactive["items"]));
    targets.push(9_999);
    let request = json!({"ids": targets, "status": "inactive"});
    let (status, body) = service.post("/items/status", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], 2);
    let (_, body) = service.post("/items/status", request).await;
    assert_eq!(body["changed"], 0);

    assert_eq!(
        ids(&service.get("/items?status=inactive").await.1["items"]).len(),
        3
    );
    assert_eq!(
        ids(&service.get("/items?status=active").await.1["items"]).len(),
        0
    );
}

#[tokio::test]
async fn batch_with_a_repeated_name_inserts_nothing() {
    let service = Service::start().await;
    let batch = json!([{"name": "a"}, {"name": "b"}, {"name": "a"}]);
    let (status, body) = service.post("/items/batch", batch).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        service.get("/items?status=active").await.1,
        json!({"items": [], "next": null})
    );
}

#[tokio::test]
async fn listing_items_pages_with_a_cursor_until_next_is_null() {
    let service = Service::start().await;
    let batch: Vec<Value> = (0..7)
        .map(|i| json!({"name": format!("item-{i}"), "status": if i == 3 { "archived" } else { "active" }}))
        .collect();
    let (status, body) = service.post("/items/batch", Value::Array(batch)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut path = "/items?status=active&limit=4".to_owned();
    loop {
        let (status, page) = service.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = ids(&page["items"]);
        assert!(items.len() <= 4, "{page}");
        seen.extend(items);
        pages += 1;
        match page["next"].as_i64() {
            Some(next) => path = format!("/items?status=active&limit=4&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, [1, 2, 3, 5, 6, 7]);
    assert_eq!(pages, 2);
}

#[tokio::test]
async fn a_page_limit_past_the_maximum_or_zero_is_422_and_the_default_is_bounded() {
    let service = Service::start().await;
    let too_many = sqlrepo::limits::MAX_PAGE_ROWS + 1;
    for limit in [0, too_many] {
        let (status, body) = service
            .get(&format!("/items?status=active&limit={limit}"))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{limit}: {body}");
        assert_eq!(body["error"], "invalid_input");
    }
    let batch: Vec<Value> = (0..service::DEFAULT_PAGE_ITEMS + 5)
        .map(|i| json!({"name": format!("item-{i}")}))
        .collect();
    service.post("/items/batch", Value::Array(batch)).await;
    let (status, page) = service.get("/items?status=active").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(&page["items"]).len(),
        service::DEFAULT_PAGE_ITEMS as usize
    );
    assert_eq!(page["next"], i64::from(service::DEFAULT_PAGE_ITEMS));
}

// ---------------------------------------------------------------------------------------------
// Users, orders, dashboard

#[tokio::test]
async fn orders_and_dashboard_show_the_users_newest_orders_and_totals() {
    let service = Service::start().await;
    let user = service.user("ann@example.com").await;
    let (status, fetched) = service.get(&format!("/users/{user}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["email"], "ann@example.com");

    let mut order_ids = Vec::new();
    for total in [100, 250, 400] {
        let order = json!({"user_id": user, "total_cents": total});
        let (status, body) = service.post("/orders", order).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["total_cents"], total);
        order_ids.push(body["id"].as_i64().unwrap());
    }

    let (status, recent) = service.get(&format!("/users/{user}/orders?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{recent}");
    assert_eq!(ids(&recent), vec![order_ids[2], order_ids[1]]);

    let (status, dashboard) = service.get(&format!("/users/{user}/dashboard")).await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    assert_eq!(dashboard["user"]["id"], user);
    assert_eq!(dashboard["stats"], json!({"count": 3, "total_cents": 750}));
    let recent_ids = ids(&dashboard["recent_orders"]);
    assert_eq!(recent_ids, vec![order_ids[2], order_ids[1], order_ids[0]]);
}

#[tokio::test]
async fn user_errors_map_to_404_409_and_422() {
    let service = Service::start().await;
    let user = service.user("ann@example.com").await;

    let (status, body) = service
        .post(
            "/users",
            json!({"email": "ann@example.com", "name": "Other"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["constraint"], "users.email");

    let (status, body) = service
        .post("/users", json!({"email": "not an email", "name": "Bob"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "invalid_input");

    let (status, body) = service
        .post("/orders", json!({"user_id": user + 100, "total_cents": 5}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "foreign_key");

    for path in ["/users/77", "/users/77/dashboard", "/users/77/orders"] {
        let (status, body) = service.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["entity"], "user");
    }
    let too_many = format!("/users/{user}/orders?limit=1000000");
    assert_eq!(
        service.get(&too_many).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

// ---------------------------------------------------------------------------------------------
// Accounts and transfers

#[tokio::test]
async fn replayed_transfer_moves_money_once_and_reused_key_is_409() {
    let service = Service::start().await;
    let a = service.account(1_000).await;
    let b = service.account(0).await;

    let first = service.transfer(Some("invoice-7"), a, b, 300).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert_eq!(first.1["idempotency_key"], "invoice-7");
    let replay = service.transfer(Some("invoice-7"), a, b, 300).await;
    assert_eq!(replay, first, "a replay gets the same answer");
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (700, 300)
    );
    assert_eq!(service.total().await, 1_000);

    let (status, body) = service.transfer(Some("invoice-7"), a, b, 301).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "duplicate");
    assert_eq!(body["constraint"], "transfers.idempotency_key");
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (700, 300)
    );

    // Without a key, the same transfer twice moves money twice.
    assert_eq!(
        service.transfer(None, a, b, 100).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        service.transfer(None, a, b, 100).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (500, 500)
    );
}

#[tokio::test]
async fn overdraft_is_422_naming_the_account_and_its_balance() {
    let service = Service::start().await;
    let a = service.account(700).await;
    let b = service.account(0).await;

    let (status, body) = service.transfer(None, a, b, 701).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "insufficient_funds");
    assert_eq!(body["account"], a);
    assert_eq!(body["balance_cents"], 700);
    assert_eq!(body["requested_cents"], 701);
    assert!(body["message"].as_str().unwrap().contains("700"));
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (700, 0)
    );
}

#[tokio::test]
async fn unknown_account_is_404_and_nothing_moves() {
    let service = Service::start().await;
    let a = service.account(500).await;

    let (status, body) = service.transfer(None, a, 999, 100).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({"error": "not_found", "entity": "account", "id": 999,
                            "message": body["message"]})
    );
    assert_eq!(service.get("/accounts/999").await.0, StatusCode::NOT_FOUND);
    let deposit = service
        .post("/accounts/999/deposit", json!({"amount_cents": 5}))
        .await;
    assert_eq!(deposit.0, StatusCode::NOT_FOUND);
    assert_eq!(service.balance(a).await, 500);
    assert_eq!(service.total().await, 500);
}

#[tokio::test]
async fn deposit_returns_the_new_balance() {
    let service = Service::start().await;
    let a = service.account(100).await;
    let (status, body) = service
        .post(
            &format!("/accounts/{a}/deposit"),
            json!({"amount_cents": 50}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": a, "balance_cents": 150}));
    assert_eq!(service.balance(a).await, 150);
}

#[tokio::test]
async fn invalid_input_is_422_and_changes_nothing() {
    let service = Service::start().await;
    let a = service.account(500).await;
    let b = service.account(0).await;

    let refused = [
        service.transfer(None, a, a, 100).await,
        service.transfer(None, a, b, 0).await,
        service.transfer(None, a, b, -5).await,
        service.transfer(Some(""), a, b, 5).await,
        service
            .post("/accounts", json!({"balance_cents": -1}))
            .await,
        service
            .post(
                &format!("/accounts/{a}/deposit"),
                json!({"amount_cents": 0}),
            )
            .await,
        service.post("/items", json!({"name": "   "})).await,
    ];
    for (status, body) in refused {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"], "invalid_input", "{body}");
    }
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (500, 0)
    );
    assert_eq!(service.total().await, 500);
}

#[tokio::test]
async fn malformed_requests_get_json_errors_with_axums_status() {
    let service = Service::start().await;
    let not_json = service.send(
        service
            .client
            .post(service.url("/items"))
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .body("{not json"),
    );
    let (status, body) = not_json.await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");

    let (status, body) = service.post("/items", json!({"data": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["message"].as_str().unwrap().contains("name"), "{body}");

    let (status, body) = service.get("/items/not-a-number").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_request");

    let (status, _) = service.get("/items?status=gone").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn transfer_batch_is_all_or_nothing() {
    let service = Service::start().await;
    let a = service.account(100).await;
    let b = service.account(0).await;

    // The second step needs the first step's money plus more than there is.
    let refused = json!([
        {"from": a, "to": b, "amount_cents": 60},
        {"from": b, "to": a, "amount_cents": 61},
    ]);
    let (status, body) = service.post("/transfers/batch", refused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["account"], b);
    assert_eq!(body["balance_cents"], 60);
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (100, 0)
    );

    let landed = json!([
        {"from": a, "to": b, "amount_cents": 60},
        {"from": b, "to": a, "amount_cents": 10, "idempotency_key": "refund-1"},
    ]);
    let (status, body) = service.post("/transfers/batch", landed).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["steps"], 2);
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (50, 50)
    );
}

#[tokio::test]
async fn checkout_creates_the_order_and_pays_or_does_neither() {
    let service = Service::start().await;
    let user = service.user("buyer@example.com").await;
    let (_, wallet) = service
        .post("/accounts", json!({"user_id": user, "balance_cents": 500}))
        .await;
    let wallet = wallet["id"].as_i64().unwrap();
    let shop = service.account(0).await;
    let checkout = |total: i64| json!({"user_id": user, "account_id": wallet, "shop_account_id": shop, "total_cents": total});

    let (status, body) = service.post("/checkout", checkout(300)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["order"]["total_cents"], 300);
    let order = body["order"]["id"].as_i64().unwrap();
    assert_eq!(
        service.get(&format!("/orders/{order}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        (service.balance(wallet).await, service.balance(shop).await),
        (200, 300)
    );

    // The order is written first, then the payment fails: the order must be rolled back.
    let (status, body) = service.post("/checkout", checkout(1_000)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "insufficient_funds");
    let (_, dashboard) = service.get(&format!("/users/{user}/dashboard")).await;
    assert_eq!(dashboard["stats"], json!({"count": 1, "total_cents": 300}));
    assert_eq!(ids(&dashboard["recent_orders"]), vec![order]);
    assert_eq!(
        (service.balance(wallet).await, service.balance(shop).await),
        (200, 300)
    );

    // A payment to a missing account rolls back too, and the writer is free afterwards.
    let mut missing_shop = checkout(100);
    missing_shop["shop_account_id"] = json!(999);
    assert_eq!(
        service.post("/checkout", missing_shop).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, dashboard) = service.get(&format!("/users/{user}/dashboard")).await;
    assert_eq!(dashboard["stats"]["count"], 1);
    assert_eq!(
        service.post("/checkout", checkout(200)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(service.balance(wallet).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Shipments: the service's own table, in sqlrepo's transactions

impl Service {
    /// A buyer with a wallet holding `balance_cents`, and the shop's account: (user, wallet,
    /// shop).
    async fn buyer(&self, email: &str, balance_cents: i64) -> (i64, i64, i64) {
        let user = self.user(email).await;
        let (status, wallet) = self
            .post(
                "/accounts",
                json!({"user_id": user, "balance_cents": balance_cents}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{wallet}");
        let shop = self.account(0).await;
        (user, wallet["id"].as_i64().expect("wallet id"), shop)
    }

    /// How many shipments and orders the database holds.
    async fn shipments_and_orders(&self) -> (i64, i64) {
        let shipments = service::shipments::ShipmentRepo::new(self.db.handle())
            .count()
            .await
            .expect("count shipments");
        // The service's checked statements may read sqlrepo's tables too.
        let mut conn = self.db.handle().reader().await.expect("a reader");
        let orders = sqlx::query_scalar!(
            r#"
            SELECT COUNT(*) AS "count!: i64"
            FROM orders
            "#
        )
        .fetch_one(conn.sqlite().expect("the connection"))
        .await
        .expect("count orders");
        (shipments, orders)
    }
}

#[tokio::test]
async fn checkout_ships_the_order_in_the_same_transaction_as_the_order_and_the_payment() {
    let service = Service::start().await;
    let (user, wallet, shop) = service.buyer("shipper@example.com", 500).await;
    let checkout = |total: i64| {
        json!({"user_id": user, "account_id": wallet, "shop_account_id": shop,
               "total_cents": total, "ship_to": "1 Quay Street"})
    };

    let (status, body) = service.post("/checkout", checkout(300)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = body["order"]["id"].as_i64().unwrap();
    assert_eq!(body["shipment"]["order_id"], order);
    assert_eq!(body["shipment"]["address"], "1 Quay Street");
    let (status, shipment) = service.get(&format!("/orders/{order}/shipment")).await;
    assert_eq!(status, StatusCode::OK, "{shipment}");
    assert_eq!(shipment, body["shipment"]);
    assert_eq!(service.shipments_and_orders().await, (1, 1));

    // The order and the shipment are written first, then the payment is refused: the
    // service's shipment rolls back with sqlrepo's order.
    let (status, body) = service.post("/checkout", checkout(1_000)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "insufficient_funds");
    assert_eq!(service.shipments_and_orders().await, (1, 1));
    assert_eq!(
        (service.balance(wallet).await, service.balance(shop).await),
        (200, 300)
    );

    // A shipment the service refuses (a blank address) takes the order back too.
    let mut blank = checkout(100);
    blank["ship_to"] = json!("  ");
    let (status, body) = service.post("/checkout", blank).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "invalid_input");
    assert_eq!(service.shipments_and_orders().await, (1, 1));
    assert_eq!(service.balance(wallet).await, 200);
}

#[tokio::test]
async fn the_services_own_constraint_errors_are_sqlrepos_409s() {
    let service = Service::start().await;
    let (user, wallet, shop) = service.buyer("twice@example.com", 500).await;
    let (_, body) = service
        .post(
            "/checkout",
            json!({"user_id": user, "account_id": wallet, "shop_account_id": shop,
                   "total_cents": 100}),
        )
        .await;
    let order = body["order"]["id"].as_i64().unwrap();
    assert_eq!(body["shipment"], Value::Null);
    let (status, _) = service.get(&format!("/orders/{order}/shipment")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let ship = |order_id: i64| json!({"order_id": order_id, "address": "2 Dock Road"});
    let (status, body) = service.post("/shipments", ship(order)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A second shipment of the order: Duplicate, naming the service's column.
    let (status, body) = service.post("/shipments", ship(order)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "duplicate");
    assert_eq!(body["constraint"], "shipments.order_id");

    // A shipment of an order that does not exist: ForeignKey.
    let (status, body) = service.post("/shipments", ship(999)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "foreign_key");

    // sqlrepo's own delete now meets the service's reference to the order.
    assert!(matches!(
        service.db.orders().delete(order).await,
        Err(Error::ForeignKey)
    ));
    assert_eq!(service.shipments_and_orders().await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checkouts_ship_exactly_the_orders_that_were_paid() {
    const BUYERS: usize = 12;
    let service = std::sync::Arc::new(Service::start().await);
    // Every buyer can pay for one 400-cent checkout, not two.
    let mut buyers = Vec::new();
    for index in 0..BUYERS {
        buyers.push(
            service
                .buyer(&format!("rush{index}@example.com"), 500)
                .await,
        );
    }
    let mut requests = JoinSet::new();
    for attempt in 0..2 {
        for &(user, wallet, shop) in &buyers {
            let service = service.clone();
            requests.spawn(async move {
                let body = json!({"user_id": user, "account_id": wallet,
                                  "shop_account_id": shop, "total_cents": 400,
                                  "ship_to": format!("{attempt} Rush Lane")});
                service.post("/checkout", body).await
            });
        }
    }
    let mut paid = 0;
    while let Some(reply) = requests.join_next().await {
        let (status, body) = reply.expect("task");
        match status {
            StatusCode::CREATED => {
                assert_eq!(body["shipment"]["order_id"], body["order"]["id"]);
                paid += 1;
            }
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(body["error"], "insufficient_funds"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(paid, BUYERS, "each buyer pays exactly once");
    assert_eq!(
        service.shipments_and_orders().await,
        (BUYERS as i64, BUYERS as i64)
    );
    for &(_, wallet, shop) in &buyers {
        assert_eq!(
            (service.balance(wallet).await, service.balance(shop).await),
            (100, 400)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_all_land_and_conserve_the_total() {
    let service = std::sync::Arc::new(Service::start().await);
    let mut accounts = Vec::new();
    for _ in 0..4 {
        accounts.push(service.account(10_000).await);
    }

    // 32 transfers around a ring of four accounts, each account sending 8 x 100 and receiving
    // 8 x 100, plus readers hitting the same accounts while they run.
    let mut requests = JoinSet::new();
    for i in 0..32 {
        let service = service.clone();
        let (from, to) = (accounts[i % 4], accounts[(i + 1) % 4]);
        requests.spawn(async move { service.transfer(None, from, to, 100).await });
    }
    for &account in &accounts {
        let service = service.clone();
        requests.spawn(async move { service.get(&format!("/accounts/{account}")).await });
    }
    while let Some(reply) = requests.join_next().await {
        let (status, body) = reply.expect("task");
        assert!(status.is_success(), "{status}: {body}");
    }

    for &account in &accounts {
        assert_eq!(service.balance(account).await, 10_000);
    }
    assert_eq!(service.total().await, 40_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_of_one_key_move_money_once() {
    let service = std::sync::Arc::new(Service::start().await);
    let a = service.account(1_000).await;
    let b = service.account(0).await;

    let mut requests = JoinSet::new();
    for _ in 0..16 {
        let service = service.clone();
        requests.spawn(async move { service.transfer(Some("retry-storm"), a, b, 250).await });
    }
    while let Some(reply) = requests.join_next().await {
        let (status, body) = reply.expect("task");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(
        (service.balance(a).await, service.balance(b).await),
        (750, 250)
    );
    assert_eq!(service.total().await, 1_000);
}

// ---------------------------------------------------------------------------------------------
// Server errors

async fn body_of(response: axum::response::Response) -> (StatusCode, String) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn database_error_is_500_without_sql_in_the_body() {
    let leaky = sqlx::Error::Protocol(
        "near \"SELEC\": syntax error in SELEC balance FROM accounts WHERE id = ?1".to_owned(),
    );
    let (status, body) = body_of(service::error_response(&Error::Database(leaky))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "internal");
    let text = body.to_string();
    for secret in ["SELEC", "accounts", "syntax", "balance", "?1"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn unmigrated_database_is_500_without_schema_details() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DbOptions::new(dir.path().join("empty.db")).migrate(false);
    let db = Db::open_with(options)
        .await
        .expect("open without migrating");
    let service = Service::start_on(db, dir).await;

    let (status, body) = service.get("/items/1").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"], "internal");
    let text = body.to_string();
    for secret in ["no such table", "items", "migrat", "sqlx"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn busy_is_503_with_retry_after() {
    let response = service::error_response(&Error::Busy);
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let (status, body) = body_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.expect("Retry-After"), "1");
    assert!(body.contains("\"busy\""), "{body}");
}

#[tokio::test]
async fn storage_errors_map_to_statuses_a_client_and_an_operator_can_act_on() {
    let cases = [
        (
            Error::DiskFull,
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
        ),
        (
            Error::Io("disk I/O error".to_owned()),
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
        ),
        (
            Error::TooBig("string or blob too big".to_owned()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_big",
        ),
        (
            Error::Corrupt("database disk image is malformed".to_owned()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
        // Stored data out of range is not the client's fault: never a 422.
        (
            Error::Overflow("a sum would overflow a 64-bit integer".to_owned()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
    ];
    for (err, expected, kind) in cases {
        let (status, body) = body_of(service::error_response(&err)).await;
        assert_eq!(status, expected, "{err:?}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["error"], kind, "{err:?}");
        assert!(!body.to_string().contains("malformed"), "{body}");
    }
}

#[tokio::test]
async fn an_order_total_that_overflows_on_the_dashboard_is_500_not_422() {
    let service = Service::start().await;
    let (_, user) = service
        .post("/users", json!({"email": "big@example.com", "name": "Big"}))
        .await;
    let user = user["id"].as_i64().expect("user id");
    for total in [i64::MAX, 1] {
        let (status, body) = service
            .post("/orders", json!({"user_id": user, "total_cents": total}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = service.get(&format!("/users/{user}/dashboard")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "internal");
}

#[tokio::test]
async fn health_is_200_with_the_wal_figures_on_a_sound_database() {
    let service = Service::start().await;
    service.post("/items", json!({"name": "lamp"})).await;
    let (status, body) = service.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    assert!(body["wal"]["largest_wal_bytes"].is_u64(), "{body}");
    assert!(body["wal"]["checkpoints"].is_u64(), "{body}");
}

#[tokio::test]
async fn health_is_503_corrupt_on_a_damaged_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("service.db");
    {
        let db = Db::open(&path).await.expect("open db");
        let items: Vec<sqlrepo::NewItem> = (0..3_000)
            .map(|i| sqlrepo::NewItem::new(format!("item {i:05}"), json!({"i": i})))
            .collect();
        db.items().insert_many(&items).await.expect("insert");
        db.close().await;
    }
    // Scribble over the second half of the file's last page (a page of the items table or of
    // an index on it, never the schema on page 1), as a bad sector might. The page size is in
    // the file header (bytes 16-17, big-endian).
    let mut bytes = std::fs::read(&path).expect("read");
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let last_page = bytes.len() - page_size;
    bytes[last_page + page_size / 2..].fill(0x5a);
    std::fs::write(&path, &bytes).expect("write");

    let db = Db::open_with(DbOptions::new(&path).migrate(false))
        .await
        .expect("open damaged db");
    let service = Service::start_on(db, dir).await;
    let (status, body) = service.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "corrupt");
    assert!(!body.to_string().contains("page"), "detail leaked: {body}");
}
