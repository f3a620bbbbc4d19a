//! An HTTP service over [`sqlrepo::Db`]: axum 0.8 on tokio, JSON in and out.
//!
//! It shows how a service uses sqlrepo: one [`Db`] in the router's state (cloning it is cheap),
//! one handler per repository call, a table of its own beside sqlrepo's ([`shipments`], with
//! its own migrations and checked queries), a caller-owned transaction for a unit of work that
//! spans sqlrepo's repositories and the service's (`POST /checkout`), and every
//! [`sqlrepo::Error`] turned into an HTTP response in one function, [`error_response`].
//!
//! # Running it
//!
//! ```text
//! cargo run -p example-service                    # ./service.db, http://127.0.0.1:3000
//! cargo run -p example-service -- /tmp/shop.db    # another database file (or SQLREPO_DB)
//! SQLREPO_ADDR=127.0.0.1:8080 RUST_LOG=debug cargo run -p example-service
//! ```
//!
//! The file is created and migrated on start (sqlrepo's migrations, then the service's). `RUST_LOG` filters the log (default `info`, which
//! shows one line per request on stderr: method, path, status, latency). Ctrl-C or SIGTERM
//! stops accepting connections and closes the database.
//!
//! ```text
//! curl -s -X POST localhost:3000/items -H 'content-type: application/json' \
//!      -d '{"name":"lamp","data":{"watts":40}}'
//! curl -s localhost:3000/items/1
//! curl -s -X PATCH localhost:3000/items/1 -H 'content-type: application/json' -d '{"status":"archived"}'
//! curl -s 'localhost:3000/items?status=archived&limit=50'   # {"items":[...],"next":null}
//! curl -s -X POST localhost:3000/accounts -H 'content-type: application/json' -d '{"balance_cents":1000}'
//! curl -s -X POST localhost:3000/accounts -H 'content-type: application/json' -d '{"balance_cents":0}'
//! curl -s -X POST localhost:3000/transfers -H 'content-type: application/json' \
//!      -H 'Idempotency-Key: invoice-7' -d '{"from":1,"to":2,"amount_cents":250}'
//! curl -s localhost:3000/accounts/1                # {"id":1,...,"balance_cents":750,...}
//! ```
//!
//! # Endpoints
//!
//! | Method and path                    | Body                                   | Success                      |
//! |------------------------------------|----------------------------------------|------------------------------|
//! | `POST /items`                      | `{name, data?, status?}`               | 201, the item                |
//! | `GET /items?status=active&after=&limit=` |                                  | 200, `{items, next}`: a page |
//! | `GET /items/{id}`                  |                                        | 200, the item                |
//! | `PATCH /items/{id}`                | `{name?, data?, status?}` (ItemPatch)  | 200, the item after it       |
//! | `DELETE /items/{id}`               |                                        | 204                          |
//! | `POST /items/batch`                | `[{name, data?, status?}, ...]`        | 201, `{inserted}`            |
//! | `POST /items/status`               | `{ids, status}`                        | 200, `{changed}`             |
//! | `POST /users`                      | `{email, name}`                        | 201, the user                |
//! | `GET /users/{id}`                  |                                        | 200, the user                |
//! | `GET /users/{id}/orders?limit=10`  |                                        | 200, newest orders first     |
//! | `GET /users/{id}/dashboard`        |                                        | 200, user, orders and stats  |
//! | `POST /orders`                     | `{user_id, total_cents}`               | 201, the order               |
//! | `GET /orders/{id}`                 |                                        | 200, the order               |
//! | `POST /accounts`                   | `{user_id?, balance_cents}`            | 201, the account             |
//! | `GET /accounts/total`              |                                        | 200, `{total_balance_cents}` |
//! | `GET /accounts/{id}`               |                                        | 200, the account             |
//! | `POST /accounts/{id}/deposit`      | `{amount_cents}`                       | 200, `{id, balance_cents}`   |
//! | `POST /transfers`                  | `{from, to, amount_cents}`             | 201, the transfer            |
//! | `POST /transfers/batch`            | `[{from, to, amount_cents, idempotency_key?}, ...]` | 201, `{steps}`  |
//! | `POST /checkout`                   | `{user_id, account_id, shop_account_id, total_cents, ship_to?}` | 201, `{order, shipment, ...}` |
//! | `POST /shipments`                  | `{order_id, address}`                  | 201, the shipment            |
//! | `GET /orders/{id}/shipment`        |                                        | 200, the order's shipment    |
//! | `GET /health`                      |                                        | 200, `{status: "ok", wal}`   |
//!
//! `GET /health` runs [`Db::integrity_check`] (it reads the whole file: probe it every few
//! minutes, not every second) and reports the WAL's checkpoint figures ([`Db::wal_stats`]); a
//! damaged file answers 503 with `{"status": "corrupt"}`, the detail going only to the log.
//!
//! `POST /transfers` takes an optional `Idempotency-Key` header: a replay with the same key and
//! the same body answers 201 again and moves nothing; the same key with another body is 409.
//!
//! # Errors
//!
//! Every error body is JSON: `{"error": <code>, "message": <a sentence>, ...details}`.
//! Unknown rows are 404 (`not_found`); a taken unique value or a missing/still-referenced row is
//! 409 (`duplicate`, `foreign_key`); a refused overdraft or invalid input is 422
//! (`insufficient_funds` with the account and its balance, `invalid_input`); a database locked
//! past its busy timeout is 503 (`busy`) with `Retry-After`; anything else is 500 (`internal`)
//! with a generic message, the detail going only to the log. A body that is not JSON, or JSON of
//! the wrong shape, gets axum's status (400, 413, 415, 422) with the same kind of JSON body.

use std::io::IsTerminal as _;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlrepo::{Db, Error, ItemPatch, ItemStatus, NewAccount, NewItem, NewOrder, NewUser, Transfer};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use shipments::{NewShipment, ShipmentRepo};

pub mod shipments;

/// The largest `limit` `GET /users/{id}/orders` accepts, so one request cannot read a table.
pub const MAX_ORDERS_LIMIT: u32 = 1_000;

/// What `Retry-After` tells a client to wait, in seconds, when the database is busy.
pub const RETRY_AFTER_SECONDS: u32 = 1;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr, coloured only on a terminal, so a log file stays plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SQLREPO_DB").ok())
        .unwrap_or_else(|| "service.db".to_owned());
    let addr = std::env::var("SQLREPO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    let db = Db::open(&path)
        .await
        .with_context(|| format!("cannot open the database {path}"))?;
    db.run_migrations(&shipments::MIGRATOR)
        .await
        .with_context(|| format!("cannot apply the service's migrations to {path}"))?;
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(db = %path, addr = %listener.local_addr()?, "serving");

    // Serving stops at Ctrl-C or SIGTERM; closing the Db waits for statements in flight, then
    // checkpoints the WAL so the file is whole on its own.
    tokio::select! {
        served = serve(db.clone(), listener) => served?,
        signal = shutdown_signal() => {
            let signal = signal?;
            tracing::info!(signal, "shutting down");
        }
    }
    db.close().await;
    Ok(())
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `kill` and container runtimes send),
/// and names the one that came.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                interrupted.context("cannot listen for Ctrl-C")?;
                Ok("SIGINT")
            }
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

/// Serves [`router`] on `listener` until the returned future is dropped.
///
/// # Errors
/// When accepting connections fails for good (axum retries transient accept errors itself).
pub async fn serve(db: Db, listener: TcpListener) -> anyhow::Result<()> {
    axum::serve(listener, router(db))
        .await
        .context("the HTTP server stopped")
}

/// Every endpoint of the service, over `db`, with one log line per request.
pub fn router(db: Db) -> Router {
    Router::new()
        .route("/items", post(create_item).get(list_items))
        .route("/items/batch", post(insert_items))
        .route("/items/status", post(set_item_status))
        .route(
            "/items/{id}",
            get(get_item).patch(patch_item).delete(delete_item),
        )
        .route("/users", post(create_user))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/orders", get(recent_orders))
        .route("/users/{id}/dashboard", get(dashboard))
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/shipment", get(get_shipment))
        .route("/shipments", post(create_shipment))
        .route("/accounts", post(open_account))
        .route("/accounts/total", get(total_balance))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/deposit", post(deposit))
        .route("/transfers", post(transfer))
        .route("/transfers/batch", post(transfer_batch))
        .route("/checkout", post(checkout))
        .route("/health", get(health))
        .layer(middleware::from_fn(log_request))
        .with_state(db)
}

/// Logs method, path, status and latency of every request at `info`.
///
/// The path carries ids but no bodies or query strings, so no user data reaches the log.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        latency = ?started.elapsed(),
        "request"
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a request failed: a repository error, or a request axum could not read.
#[derive(Debug)]
pub enum ApiError {
    /// What sqlrepo refused; mapped by [`error_response`].
    Repo(Error),
    /// A body, path or query that did not parse, with the status axum chose for it.
    Request {
        /// 400, 413, 415 or 422, as axum's rejection says.
        status: StatusCode,
        /// axum's explanation (it names the field or the syntax problem, never a value).
        message: String,
    },
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError::Repo(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Repo(err) => error_response(&err),
            ApiError::Request { status, message } => (
                status,
                Json(json!({"error": "invalid_request", "message": message})),
            )
                .into_response(),
        }
    }
}

/// The HTTP response for a repository error: the one place errors meet status codes.
///
/// Client errors carry the error's sentence and its fields; server errors carry a generic
/// sentence only (their detail, which may quote SQL, is logged with `tracing::error!`).
pub fn error_response(err: &Error) -> Response {
    let message = err.to_string();
    let (status, body) = match err {
        Error::NotFound { entity, id } => (
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": message, "entity": entity, "id": id}),
        ),
        Error::Duplicate { constraint } => (
            StatusCode::CONFLICT,
            json!({"error": "duplicate", "message": message, "constraint": constraint}),
        ),
        Error::ForeignKey => (
            StatusCode::CONFLICT,
            json!({"error": "foreign_key", "message": message}),
        ),
        Error::InsufficientFunds {
            account,
            balance_cents,
            requested_cents,
        } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": "insufficient_funds",
                "message": message,
                "account": account,
                "balance_cents": balance_cents,
                "requested_cents": requested_cents,
            }),
        ),
        Error::InvalidInput(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "invalid_input", "message": message}),
        ),
        // The schema refused a value the handler let through: still the client's value.
        Error::Constraint { constraint } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "constraint", "message": message, "constraint": constraint}),
        ),
        Error::Busy => {
            tracing::warn!(error = %err, "database busy; asking the client to retry");
            let body = json!({"error": "busy", "message": message});
            let retry_after = HeaderValue::from(RETRY_AFTER_SECONDS);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, retry_after)],
                Json(body),
            )
                .into_response();
        }
        // The request was fine; the machine was not (a full disk, a failing one): try again
        // later, and tell the operator.
        Error::DiskFull | Error::Io(_) => {
            tracing::error!(error = ?err, "storage failure; asking the client to retry later");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": "storage_unavailable",
                    "message": "the server cannot store or read data right now; retry later",
                }),
            )
        }
        // A value bigger than the database takes in one piece: the request was too large.
        Error::TooBig(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "too_big", "message": "a value in the request is too large to store"}),
        ),
        // Corrupt, Overflow (stored data out of range: not the client's fault), Schema,
        // Database and whatever variants sqlrepo adds later: the operator's problem.
        _ => {
            tracing::error!(error = ?err, "request failed inside the database layer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({
                    "error": "internal",
                    "message": "the server could not complete the request; it has been logged",
                }),
            )
        }
    };
    (status, Json(body)).into_response()
}

/// `Ok(row)`, or [`Error::NotFound`] naming what was missing.
fn found<T>(row: Option<T>, entity: &'static str, id: i64) -> Result<T, ApiError> {
    row.ok_or(ApiError::Repo(Error::NotFound { entity, id }))
}

// ---------------------------------------------------------------------------------------------
// Extractors: axum's own, with their rejections turned into JSON `ApiError`s.

/// A JSON request body of type `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::Request {
                status: rejection.status(),
                message: rejection.body_text(),
            }),
        }
    }
}

/// The `{id}` segment of the path.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<i64>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            Err(rejection) => Err(ApiError::Request {
                status: rejection.status(),
                message: rejection.body_text(),
            }),
        }
    }
}

/// The query string, parsed as `T`.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            // Axum answers 400 for a bad query; the value is wrong, not the syntax: 422.
            Err(rejection) => Err(ApiError::Request {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: rejection.body_text(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Items

/// The body of `POST /items`: like [`NewItem`], with `data` (default `null`) and `status`
/// (default `active`) optional.
#[derive(Debug, Deserialize)]
pub struct CreateItem {
    /// Unique, not blank.
    pub name: String,
    /// Any JSON.
    #[serde(default)]
    pub data: Value,
    /// Initial status.
    #[serde(default)]
    pub status: ItemStatus,
}

impl From<CreateItem> for NewItem {
    fn from(item: CreateItem) -> Self {
        NewItem {
            name: item.name,
            data: item.data,
            status: item.status,
        }
    }
}

async fn create_item(
    State(db): State<Db>,
    Body(item): Body<CreateItem>,
) -> Result<Response, ApiError> {
    let id = db.items().create(&item.into()).await?;
    let item = found(db.items().get(id).await?, "item", id)?;
    Ok(created(format!("/items/{id}"), item))
}

async fn get_item(State(db): State<Db>, Id(id): Id) -> Result<Response, ApiError> {
    let item = found(db.items().get(id).await?, "item", id)?;
    Ok(Json(item).into_response())
}

/// Items per page of `GET /items` when the client names no `limit`.
pub const DEFAULT_PAGE_ITEMS: u32 = 100;

/// The query of `GET /items`: one page of the items in a status.
#[derive(Debug, Deserialize)]
pub struct ListItems {
    /// Which items to list: `active`, `inactive` or `archived`.
    pub status: ItemStatus,
    /// The cursor from the previous page's `next`; absent for the first page.
    pub after: Option<i64>,
    /// Items per page, 1 to [`sqlrepo::limits::MAX_PAGE_ROWS`] (default [`DEFAULT_PAGE_ITEMS`]);
    /// more is 422.
    pub limit: Option<u32>,
}

/// A page of a table that may hold millions of rows: never the whole list in one response.
/// `next` is the `after` of the following page, `null` after the last.
async fn list_items(
    State(db): State<Db>,
    Params(query): Params<ListItems>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_ITEMS);
    let page = db
        .items()
        .list_by_status_page(query.status, query.after, limit)
        .await?;
    Ok(Json(json!({"items": page.items, "next": page.next})).into_response())
}

async fn patch_item(
    State(db): State<Db>,
    Id(id): Id,
    Body(patch): Body<ItemPatch>,
) -> Result<Response, ApiError> {
    // `update` is false both for an unknown id and for a patch that changes nothing; reading
    // the row back tells them apart and gives the client the item as it now is.
    db.items().update(id, &patch).await?;
    let item = found(db.items().get(id).await?, "item", id)?;
    Ok(Json(item).into_response())
}

async fn delete_item(State(db): State<Db>, Id(id): Id) -> Result<Response, ApiError> {
    if db.items().delete(id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Error::NotFound { entity: "item", id }.into())
    }
}

async fn insert_items(
    State(db): State<Db>,
    Body(items): Body<Vec<CreateItem>>,
) -> Result<Response, ApiError> {
    let items: Vec<NewItem> = items.into_iter().map(NewItem::from).collect();
    let inserted = db.items().insert_many(&items).await?;
    Ok((StatusCode::CREATED, Json(json!({"inserted": inserted}))).into_response())
}

/// The body of `POST /items/status`.
#[derive(Debug, Deserialize)]
pub struct SetStatus {
    /// The items to change; unknown ids are skipped.
    pub ids: Vec<i64>,
    /// Their new status.
    pub status: ItemStatus,
}

async fn set_item_status(
    State(db): State<Db>,
    Body(request): Body<SetStatus>,
) -> Result<Response, ApiError> {
    let changed = db
        .items()
        .set_status_many(&request.ids, request.status)
        .await?;
    Ok(Json(json!({"changed": changed})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Users, orders and the dashboard

async fn create_user(
    State(db): State<Db>,
    Body(user): Body<NewUser>,
) -> Result<Response, ApiError> {
    let id = db.users().create(&user).await?;
    let user = found(db.users().get(id).await?, "user", id)?;
    Ok(created(format!("/users/{id}"), user))
}

async fn get_user(State(db): State<Db>, Id(id): Id) -> Result<Response, ApiError> {
    let user = found(db.users().get(id).await?, "user", id)?;
    Ok(Json(user).into_response())
}

async fn create_order(
    State(db): State<Db>,
    Body(order): Body<NewOrder>,
) -> Result<Response, ApiError> {
    let id = db.orders().create(&order).await?;
    let order = found(db.orders().get(id).await?, "order", id)?;
    Ok(created(format!("/orders/{id}"), order))
}

async fn get_order(State(db): State<Db>, Id(id): Id) -> Result<Response, ApiError> {
    let order = found(db.orders().get(id).await?, "order", id)?;
    Ok(Json(order).into_response())
}

/// The query of `GET /users/{id}/orders`.
#[derive(Debug, Deserialize)]
pub struct RecentOrders {
    /// How many orders, newest first (default 10, at most [`MAX_ORDERS_LIMIT`]).
    pub limit: Option<u32>,
}

async fn recent_orders(
    State(db): State<Db>,
    Id(user_id): Id,
    Params(query): Params<RecentOrders>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(10);
    if limit > MAX_ORDERS_LIMIT {
        return Err(Error::InvalidInput(format!(
            "limit must be at most {MAX_ORDERS_LIMIT}, not {limit}"
        ))
        .into());
    }
    // An unknown user has no orders; say 404 rather than an empty list that looks like an answer.
    found(db.users().get(user_id).await?, "user", user_id)?;
    let orders = db.orders().recent_for_user(user_id, limit).await?;
    Ok(Json(orders).into_response())
}

async fn dashboard(State(db): State<Db>, Id(user_id): Id) -> Result<Response, ApiError> {
    Ok(Json(db.dashboard(user_id).await?).into_response())
}

// ---------------------------------------------------------------------------------------------
// Accounts and transfers

async fn open_account(
    State(db): State<Db>,
    Body(account): Body<NewAccount>,
) -> Result<Response, ApiError> {
    let id = db.accounts().open(&account).await?;
    let account = found(db.accounts().get(id).await?, "account", id)?;
    Ok(created(format!("/accounts/{id}"), account))
}

async fn get_account(State(db): State<Db>, Id(id): Id) -> Result<Response, ApiError> {
    let account = found(db.accounts().get(id).await?, "account", id)?;
    Ok(Json(account).into_response())
}

async fn total_balance(State(db): State<Db>) -> Result<Response, ApiError> {
    let total = db.accounts().total_balance().await?;
    Ok(Json(json!({"total_balance_cents": total})).into_response())
}

/// The body of `POST /accounts/{id}/deposit`.
#[derive(Debug, Deserialize)]
pub struct Deposit {
    /// A positive amount.
    pub amount_cents: i64,
}

async fn deposit(
    State(db): State<Db>,
    Id(id): Id,
    Body(request): Body<Deposit>,
) -> Result<Response, ApiError> {
    let balance = db.accounts().deposit(id, request.amount_cents).await?;
    Ok(Json(json!({"id": id, "balance_cents": balance})).into_response())
}

/// The body of `POST /transfers`; the idempotency key travels in the `Idempotency-Key` header.
#[derive(Debug, Deserialize)]
pub struct TransferRequest {
    /// The account debited.
    pub from: i64,
    /// The account credited.
    pub to: i64,
    /// A positive amount.
    pub amount_cents: i64,
}

/// The header a client sets to make `POST /transfers` safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn transfer(
    State(db): State<Db>,
    headers: HeaderMap,
    Body(request): Body<TransferRequest>,
) -> Result<Response, ApiError> {
    let mut transfer = Transfer::new(request.from, request.to, request.amount_cents);
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key.to_str().map_err(|_| {
            Error::InvalidInput("the Idempotency-Key header must be visible ASCII".to_owned())
        })?;
        transfer = transfer.with_key(key);
    }
    // A replay of a landed key is Ok too, so the client gets the same answer both times.
    db.accounts().transfer(&transfer).await?;
    Ok((StatusCode::CREATED, Json(transfer)).into_response())
}

async fn transfer_batch(
    State(db): State<Db>,
    Body(transfers): Body<Vec<Transfer>>,
) -> Result<Response, ApiError> {
    db.accounts().transfer_batch(&transfers).await?;
    Ok((StatusCode::CREATED, Json(json!({"steps": transfers.len()}))).into_response())
}

/// The body of `POST /checkout`.
#[derive(Debug, Deserialize)]
pub struct Checkout {
    /// The buyer.
    pub user_id: i64,
    /// The account that pays.
    pub account_id: i64,
    /// The account that is paid.
    pub shop_account_id: i64,
    /// The order's total, moved from `account_id` to `shop_account_id`.
    pub total_cents: i64,
    /// Where to ship the order, if anywhere: a shipment in the service's own table.
    #[serde(default)]
    pub ship_to: Option<String>,
}

/// Creates the order, ships it (when `ship_to` is given) and pays for it in one caller-owned
/// transaction: sqlrepo's order and transfer and the service's own shipment all land, or none.
async fn checkout(
    State(db): State<Db>,
    Body(request): Body<Checkout>,
) -> Result<Response, ApiError> {
    let tx = db.begin().await?;
    let order_id = tx
        .orders()
        .create(&NewOrder::new(request.user_id, request.total_cents))
        .await?;
    // The service's repository on the transaction's handle: its insert commits or rolls back
    // with sqlrepo's.
    let shipment = match request.ship_to {
        Some(address) => {
            let shipments = ShipmentRepo::new(tx.handle());
            let new = NewShipment { order_id, address };
            let id = shipments.create(&new).await?;
            shipments.get(id).await?
        }
        None => None,
    };
    // An early return drops `tx`, which rolls the order and the shipment back.
    tx.accounts()
        .transfer(&Transfer::new(
            request.account_id,
            request.shop_account_id,
            request.total_cents,
        ))
        .await?;
    let order = found(tx.orders().get(order_id).await?, "order", order_id)?;
    tx.commit().await?;
    let body = json!({
        "order": order,
        "shipment": shipment,
        "paid_from": request.account_id,
        "paid_to": request.shop_account_id,
    });
    Ok(created(format!("/orders/{order_id}"), body))
}

async fn create_shipment(
    State(db): State<Db>,
    Body(new): Body<NewShipment>,
) -> Result<Response, ApiError> {
    let shipments = ShipmentRepo::new(db.handle());
    let id = shipments.create(&new).await?;
    let shipment = found(shipments.get(id).await?, "shipment", id)?;
    Ok(created(
        format!("/orders/{}/shipment", new.order_id),
        shipment,
    ))
}

async fn get_shipment(State(db): State<Db>, Id(order_id): Id) -> Result<Response, ApiError> {
    let shipment = ShipmentRepo::new(db.handle()).for_order(order_id).await?;
    let shipment = found(shipment, "shipment of order", order_id)?;
    Ok(Json(shipment).into_response())
}

/// 201 with a `Location` header and the created resource as JSON.
fn created(location: String, body: impl serde::Serialize) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Operations

/// `GET /health`: the whole file checked, and the WAL's checkpoint figures.
async fn health(State(db): State<Db>) -> Result<Response, ApiError> {
    match db.integrity_check().await {
        Ok(()) => Ok((
            StatusCode::OK,
            Json(json!({"status": "ok", "wal": db.wal_stats()})),
        )
            .into_response()),
        Err(Error::Corrupt(detail)) => {
            tracing::error!(%detail, "integrity check failed");
            Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "corrupt",
                    "message": "the database file is damaged; restore it from a backup",
                })),
            )
                .into_response())
        }
        Err(other) => Err(other.into()),
    }
}
