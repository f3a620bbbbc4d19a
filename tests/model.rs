//! Model-based tests: random sequences of repository operations — items, users, orders,
//! accounts, deposits, transfers, batches, replayed and reused idempotency keys, and
//! caller-owned transactions that commit or roll back — run against an empty database and
//! against a plain in-memory model of the documented API (the README and the rustdoc). Every return
//! value, errors included, must agree, and at the end every table must hold what the model holds.
//!
//! It runs on every backend (`model::sqlite`, `model::postgres`, `model::replicated`, see
//! `tests/common/backend.rs`). The model names rows by ids of its own (SQLite's rule: the
//! largest plus one); the database's ids are learned as rows are created and every id is
//! translated on the way in and out (see [`Ids`]): on SQLite they are checked to be the same,
//! on PostgreSQL a sequence hands them out, spending some on refused inserts and rolled-back
//! transactions. Concurrent transfers are ordered by SQLite's one writer in call order, and by
//! nothing on PostgreSQL, where the model accepts any order that explains every answer (see
//! [`expect_group`]).
//!
//! `SQLREPO_MODEL_CASES` sets the number of cases (default 256), `SQLREPO_MODEL_SEED` replays a
//! run; `SQLREPO_MODEL_STEPS` the most operations per case (default 40).

#[path = "reliability_common/mod.rs"]
mod reliability_common;

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{Backend, TestDb, backend_test};
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use reliability_common::{check_integrity, count, raw, seed};
use serde_json::{Value, json};
use sqlrepo::limits::{MAX_DATA_BYTES, MAX_DATA_DEPTH, MAX_KEY_CHARS, MAX_NAME_CHARS};
use sqlrepo::{
    AccountRepo, Db, Error, ItemPatch, ItemRepo, ItemStatus, NewAccount, NewItem, NewOrder,
    NewUser, OrderRepo, Transfer, Tx, UserPatch, UserRepo,
};

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct MItem {
    name: String,
    data: Value,
    status: ItemStatus,
}

#[derive(Clone, Debug, PartialEq)]
struct MUser {
    email: String,
    name: String,
}

#[derive(Clone, Debug, PartialEq)]
struct MOrder {
    user: i64,
    total: i64,
}

#[derive(Clone, Debug, PartialEq)]
struct MAccount {
    user: Option<i64>,
    balance: i64,
}

#[derive(Clone, Debug, PartialEq)]
struct MLedger {
    from: Option<i64>,
    to: i64,
    amount: i64,
    key: Option<String>,
}

/// The database as the contract describes it, plus what the last operation must return.
#[derive(Clone, Debug, Default)]
struct Model {
    items: BTreeMap<i64, MItem>,
    users: BTreeMap<i64, MUser>,
    orders: BTreeMap<i64, MOrder>,
    accounts: BTreeMap<i64, MAccount>,
    ledger: Vec<MLedger>,
    /// The results the last transition must give, in order (several for a transaction).
    expected: Vec<Out>,
    /// Labels of notable things the last transition did (for the coverage report).
    notes: Vec<&'static str>,
    /// Item data holding a NUL character is refused: PostgreSQL's `jsonb` cannot store one
    /// (a documented difference; SQLite stores it). Set on the PostgreSQL backends' copy only.
    nul_data_refused: bool,
}

/// The model's id for a new row: the largest plus one, as SQLite gives rowids (so on SQLite the
/// model's ids are the database's; elsewhere they are mapped, see [`Ids`]).
fn next_id<V>(rows: &BTreeMap<i64, V>) -> i64 {
    rows.keys().next_back().map_or(1, |last| last + 1)
}

/// What an operation returned, in a form both sides can produce.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Id(i64),
    Bool(bool),
    Count(u64),
    Unit,
    Cents(i64),
    Item(Option<MItem>),
    Items(Vec<(i64, MItem)>),
    User(Option<(i64, MUser)>),
    Users(Vec<(i64, MUser)>),
    /// `(user, total)`.
    Order(Option<(i64, i64)>),
    /// `(id, total)`, newest first.
    Orders(Vec<(i64, i64)>),
    Stats(i64, i64),
    Dashboard((i64, MUser), Vec<(i64, i64)>, (i64, i64)),
    Account(Option<(Option<i64>, i64)>),
    Err(ErrOut),
}

#[derive(Clone, Debug, PartialEq)]
enum ErrOut {
    Invalid,
    /// A result computed from stored data does not fit (not the caller's input).
    Overflow,
    /// The entity and every id the error may name.
    NotFound(&'static str, Vec<i64>),
    Duplicate(String),
    ForeignKey,
    Insufficient {
        account: i64,
        balance_cents: i64,
        requested_cents: i64,
    },
    Other(String),
}

fn agrees(expected: &Out, actual: &Out) -> bool {
    match (expected, actual) {
        (
            Out::Err(ErrOut::NotFound(entity, ids)),
            Out::Err(ErrOut::NotFound(actual_entity, actual_ids)),
        ) => entity == actual_entity && actual_ids.len() == 1 && ids.contains(&actual_ids[0]),
        _ => expected == actual,
    }
}

fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains('\0') && name.chars().count() <= MAX_NAME_CHARS
}

/// The documented email shape: one `@` with text before it, a domain with an inner dot, no
/// whitespace or control characters, at most 254 characters.
fn valid_email(email: &str) -> bool {
    if email.chars().count() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn valid_data(data: &Value) -> bool {
    depth(data) <= MAX_DATA_DEPTH && serde_json::to_string(data).unwrap().len() <= MAX_DATA_BYTES
}

/// A NUL character anywhere in a string or an object key of `data`.
fn has_nul(data: &Value) -> bool {
    match data {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || has_nul(value)),
        _ => false,
    }
}

fn valid_key(key: &Option<String>) -> bool {
    key.as_ref()
        .is_none_or(|k| !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS)
}

fn email_key(email: &str) -> String {
    email.to_ascii_lowercase()
}

/// One transfer as generated.
#[derive(Clone, Debug)]
struct T {
    from: i64,
    to: i64,
    amount: i64,
    key: Option<String>,
}

impl T {
    fn transfer(&self) -> Transfer {
        let t = Transfer::new(self.from, self.to, self.amount);
        match &self.key {
            Some(key) => t.with_key(key.clone()),
            None => t,
        }
    }
    fn movement(&self) -> (Option<i64>, i64, i64) {
        (Some(self.from), self.to, self.amount)
    }
    fn valid(&self) -> bool {
        self.amount > 0 && self.from != self.to && valid_key(&self.key)
    }
}

#[derive(Clone, Debug)]
enum Op {
    CreateItem(String, Value, ItemStatus),
    UpdateItem(i64, Option<String>, Option<Value>, Option<ItemStatus>),
    DeleteItem(i64),
    InsertItems(Vec<(String, Value, ItemStatus)>),
    SetStatusMany(Vec<i64>, ItemStatus),
    GetItem(i64),
    GetItems(Vec<i64>),
    StreamItems,
    ListItems(ItemStatus),
    CountItems,
    CreateUser(String, String),
    UpdateUser(i64, Option<String>, Option<String>),
    DeleteUser(i64),
    InsertUsers(Vec<(String, String)>),
    GetUserByEmail(String),
    StreamUsers,
    CreateOrder(i64, i64),
    GetOrder(i64),
    DeleteOrder(i64),
    InsertOrders(Vec<(i64, i64)>),
    RecentOrders(i64, u32),
    OrderStats(i64),
    Dashboard(i64),
    OpenAccount(Option<i64>, i64),
    GetAccount(i64),
    Deposit(i64, i64),
    Transfer(T),
    TransferBatch(Vec<T>),
    TotalBalance,
    InTx(Vec<Op>, bool),
    /// Transfers of concurrent callers that queue for the writer together, in this order, and
    /// are carried as one group: each must get exactly what it would get alone, in turn.
    Grouped(Vec<T>),
}

impl Model {
    fn landed_key(&self, key: &str) -> Option<(Option<i64>, i64, i64)> {
        self.ledger
            .iter()
            .find(|row| row.key.as_deref() == Some(key))
            .map(|row| (row.from, row.to, row.amount))
    }

    /// The steps of a transfer or batch, checked against the model: `Ok(steps to apply)` or the
    /// error the whole call must give. Mirrors the contract: every step's own rules in order
    /// (rejected before the database is touched, keys repeated inside the batch included), then
    /// keys that already landed, then accounts, funds and overflow step by step.
    fn plan_transfers<'a>(&mut self, steps: &'a [T]) -> Result<Vec<&'a T>, ErrOut> {
        let mut seen: BTreeMap<&str, &T> = BTreeMap::new();
        let mut distinct = Vec::new();
        for t in steps {
            if !t.valid() {
                return Err(ErrOut::Invalid);
            }
            if let Some(key) = t.key.as_deref() {
                if let Some(first) = seen.get(key) {
                    if first.movement() == t.movement() {
                        self.notes.push("key repeated inside a batch, skipped");
                        continue;
                    }
                    return Err(ErrOut::Duplicate("transfers.idempotency_key".into()));
                }
                seen.insert(key, t);
            }
            distinct.push(t);
        }
        for t in &distinct {
            if let Some(landed) = t.key.as_deref().and_then(|k| self.landed_key(k))
                && landed != t.movement()
            {
                return Err(ErrOut::Duplicate("transfers.idempotency_key".into()));
            }
        }
        let mut balances: BTreeMap<i64, i64> = self
            .accounts
            .iter()
            .map(|(id, a)| (*id, a.balance))
            .collect();
        let mut apply = Vec::new();
        for t in distinct {
            if t.key.as_deref().and_then(|k| self.landed_key(k)).is_some() {
                self.notes.push("replayed key moved nothing");
                continue;
            }
            let missing: Vec<i64> = [t.from, t.to]
                .into_iter()
                .filter(|id| !balances.contains_key(id))
                .collect();
            if !missing.is_empty() {
                return Err(ErrOut::NotFound("account", missing));
            }
            let from_balance = balances[&t.from];
            if from_balance < t.amount {
                return Err(ErrOut::Insufficient {
                    account: t.from,
                    balance_cents: from_balance,
                    requested_cents: t.amount,
                });
            }
            let Some(credited) = balances[&t.to].checked_add(t.amount) else {
                return Err(ErrOut::Invalid);
            };
            balances.insert(t.from, from_balance - t.amount);
            balances.insert(t.to, credited);
            apply.push(t);
        }
        Ok(apply)
    }

    fn land(&mut self, t: &T) {
        self.accounts.get_mut(&t.from).unwrap().balance -= t.amount;
        self.accounts.get_mut(&t.to).unwrap().balance += t.amount;
        self.ledger.push(MLedger {
            from: Some(t.from),
            to: t.to,
            amount: t.amount,
            key: t.key.clone(),
        });
    }

    fn recent(&self, user: i64, limit: usize) -> Vec<(i64, i64)> {
        // The newest row has the largest id: a new row always takes the largest id plus one.
        self.orders
            .iter()
            .rev()
            .filter(|(_, o)| o.user == user)
            .take(limit)
            .map(|(id, o)| (*id, o.total))
            .collect()
    }

    fn stats(&self, user: i64) -> (i64, i64) {
        let mine = self.orders.values().filter(|o| o.user == user);
        (mine.clone().count() as i64, mine.map(|o| o.total).sum())
    }

    /// Data this backend cannot store (see `nul_data_refused`).
    fn unstorable(&self, data: &Value) -> bool {
        self.nul_data_refused && has_nul(data)
    }

    fn step(&mut self, op: &Op) -> Out {
        use ErrOut::*;
        let err = Out::Err;
        match op {
            Op::CreateItem(name, data, status) => {
                if !valid_name(name) || !valid_data(data) || self.unstorable(data) {
                    return err(Invalid);
                }
                if self.items.values().any(|i| &i.name == name) {
                    return err(Duplicate("items.name".into()));
                }
                let id = next_id(&self.items);
                let item = MItem {
                    name: name.clone(),
                    data: data.clone(),
                    status: *status,
                };
                self.items.insert(id, item);
                Out::Id(id)
            }
            Op::UpdateItem(id, name, data, status) => {
                if name.as_deref().is_some_and(|n| !valid_name(n))
                    || data
                        .as_ref()
                        .is_some_and(|d| !valid_data(d) || self.unstorable(d))
                {
                    return err(Invalid);
                }
                if name.is_none() && data.is_none() && status.is_none() {
                    return Out::Bool(false);
                }
                let Some(current) = self.items.get(id) else {
                    return Out::Bool(false);
                };
                let new = MItem {
                    name: name.clone().unwrap_or_else(|| current.name.clone()),
                    data: data.clone().unwrap_or_else(|| current.data.clone()),
                    status: status.unwrap_or(current.status),
                };
                if &new == current {
                    return Out::Bool(false);
                }
                if new.name != current.name && self.items.values().any(|i| i.name == new.name) {
                    return err(Duplicate("items.name".into()));
                }
                self.items.insert(*id, new);
                Out::Bool(true)
            }
            Op::DeleteItem(id) => Out::Bool(self.items.remove(id).is_some()),
            Op::InsertItems(rows) => {
                if rows.is_empty() {
                    return Out::Count(0);
                }
                if rows
                    .iter()
                    .any(|(n, d, _)| !valid_name(n) || !valid_data(d) || self.unstorable(d))
                {
                    return err(Invalid);
                }
                let mut names: BTreeSet<&str> =
                    self.items.values().map(|i| i.name.as_str()).collect();
                if !rows.iter().all(|(n, ..)| names.insert(n)) {
                    return err(Duplicate("items.name".into()));
                }
                for (name, data, status) in rows {
                    let id = next_id(&self.items);
                    let item = MItem {
                        name: name.clone(),
                        data: data.clone(),
                        status: *status,
                    };
                    self.items.insert(id, item);
                }
                Out::Count(rows.len() as u64)
            }
            Op::SetStatusMany(ids, status) => {
                let ids: BTreeSet<i64> = ids.iter().copied().collect();
                let mut changed = 0;
                for id in ids {
                    if let Some(item) = self.items.get_mut(&id)
                        && item.status != *status
                    {
                        item.status = *status;
                        changed += 1;
                    }
                }
                Out::Count(changed)
            }
            Op::GetItem(id) => Out::Item(self.items.get(id).cloned()),
            Op::GetItems(ids) => {
                let ids: BTreeSet<i64> = ids.iter().copied().collect();
                Out::Items(
                    ids.into_iter()
                        .filter_map(|id| Some((id, self.items.get(&id)?.clone())))
                        .collect(),
                )
            }
            Op::StreamItems => {
                Out::Items(self.items.iter().map(|(id, i)| (*id, i.clone())).collect())
            }
            Op::ListItems(status) => Out::Items(
                self.items
                    .iter()
                    .filter(|(_, i)| i.status == *status)
                    .map(|(id, i)| (*id, i.clone()))
                    .collect(),
            ),
            Op::CountItems => Out::Cents(self.items.len() as i64),
            Op::CreateUser(email, name) => {
                if !valid_email(email) || !valid_name(name) {
                    return err(Invalid);
                }
                if self
                    .users
                    .values()
                    .any(|u| email_key(&u.email) == email_key(email))
                {
                    return err(Duplicate("users.email".into()));
                }
                let id = next_id(&self.users);
                let user = MUser {
                    email: email.clone(),
                    name: name.clone(),
                };
                self.users.insert(id, user);
                Out::Id(id)
            }
            Op::UpdateUser(id, email, name) => {
                if email.as_deref().is_some_and(|e| !valid_email(e))
                    || name.as_deref().is_some_and(|n| !valid_name(n))
                {
                    return err(Invalid);
                }
                if email.is_none() && name.is_none() {
                    return Out::Bool(false);
                }
                let Some(current) = self.users.get(id) else {
                    return Out::Bool(false);
                };
                let new = MUser {
                    email: email.clone().unwrap_or_else(|| current.email.clone()),
                    name: name.clone().unwrap_or_else(|| current.name.clone()),
                };
                if &new == current {
                    return Out::Bool(false);
                }
                let taken = self
                    .users
                    .iter()
                    .any(|(other, u)| other != id && email_key(&u.email) == email_key(&new.email));
                if taken {
                    return err(Duplicate("users.email".into()));
                }
                self.users.insert(*id, new);
                Out::Bool(true)
            }
            Op::DeleteUser(id) => {
                if !self.users.contains_key(id) {
                    return Out::Bool(false);
                }
                let referenced = self.orders.values().any(|o| o.user == *id)
                    || self.accounts.values().any(|a| a.user == Some(*id));
                if referenced {
                    return err(ForeignKey);
                }
                self.users.remove(id);
                Out::Bool(true)
            }
            Op::InsertUsers(rows) => {
                if rows.is_empty() {
                    return Out::Count(0);
                }
                if rows.iter().any(|(e, n)| !valid_email(e) || !valid_name(n)) {
                    return err(Invalid);
                }
                let mut emails: BTreeSet<String> =
                    self.users.values().map(|u| email_key(&u.email)).collect();
                if !rows.iter().all(|(e, _)| emails.insert(email_key(e))) {
                    return err(Duplicate("users.email".into()));
                }
                for (email, name) in rows {
                    let id = next_id(&self.users);
                    let user = MUser {
                        email: email.clone(),
                        name: name.clone(),
                    };
                    self.users.insert(id, user);
                }
                Out::Count(rows.len() as u64)
            }
            Op::StreamUsers => {
                Out::Users(self.users.iter().map(|(id, u)| (*id, u.clone())).collect())
            }
            Op::GetOrder(id) => Out::Order(self.orders.get(id).map(|o| (o.user, o.total))),
            Op::GetUserByEmail(email) => Out::User(
                self.users
                    .iter()
                    .find(|(_, u)| email_key(&u.email) == email_key(email))
                    .map(|(id, u)| (*id, u.clone())),
            ),
            Op::CreateOrder(user, total) => {
                if *total < 0 {
                    return err(Invalid);
                }
                if !self.users.contains_key(user) {
                    return err(ForeignKey);
                }
                let id = next_id(&self.orders);
                self.orders.insert(
                    id,
                    MOrder {
                        user: *user,
                        total: *total,
                    },
                );
                Out::Id(id)
            }
            Op::DeleteOrder(id) => Out::Bool(self.orders.remove(id).is_some()),
            Op::InsertOrders(rows) => {
                if rows.is_empty() {
                    return Out::Count(0);
                }
                if rows.iter().any(|(_, total)| *total < 0) {
                    return err(Invalid);
                }
                if rows.iter().any(|(user, _)| !self.users.contains_key(user)) {
                    return err(ForeignKey);
                }
                for (user, total) in rows {
                    let id = next_id(&self.orders);
                    self.orders.insert(
                        id,
                        MOrder {
                            user: *user,
                            total: *total,
                        },
                    );
                }
                Out::Count(rows.len() as u64)
            }
            Op::RecentOrders(user, limit) => Out::Orders(self.recent(*user, *limit as usize)),
            Op::OrderStats(user) => {
                let (count, total) = self.stats(*user);
                Out::Stats(count, total)
            }
            Op::Dashboard(user) => match self.users.get(user) {
                None => err(NotFound("user", vec![*user])),
                Some(u) => Out::Dashboard(
                    (*user, u.clone()),
                    self.recent(*user, 10),
                    self.stats(*user),
                ),
            },
            Op::OpenAccount(user, balance) => {
                if *balance < 0 {
                    return err(Invalid);
                }
                if user.is_some_and(|u| !self.users.contains_key(&u)) {
                    return err(ForeignKey);
                }
                let id = next_id(&self.accounts);
                self.accounts.insert(
                    id,
                    MAccount {
                        user: *user,
                        balance: *balance,
                    },
                );
                // A positive opening balance is a ledger row from no account, like a deposit.
                if *balance > 0 {
                    self.ledger.push(MLedger {
                        from: None,
                        to: id,
                        amount: *balance,
                        key: None,
                    });
                }
                Out::Id(id)
            }
            Op::GetAccount(id) => Out::Account(self.accounts.get(id).map(|a| (a.user, a.balance))),
            Op::Deposit(id, amount) => {
                if *amount <= 0 {
                    return err(Invalid);
                }
                let Some(account) = self.accounts.get_mut(id) else {
                    return err(NotFound("account", vec![*id]));
                };
                let Some(balance) = account.balance.checked_add(*amount) else {
                    return err(Invalid);
                };
                account.balance = balance;
                self.ledger.push(MLedger {
                    from: None,
                    to: *id,
                    amount: *amount,
                    key: None,
                });
                Out::Cents(balance)
            }
            Op::Transfer(t) => match self.plan_transfers(std::slice::from_ref(t)) {
                Ok(steps) => {
                    for step in steps {
                        self.land(step);
                    }
                    Out::Unit
                }
                Err(e) => err(e),
            },
            Op::TransferBatch(ts) => match self.plan_transfers(ts) {
                Ok(steps) => {
                    for step in steps {
                        self.land(step);
                    }
                    Out::Unit
                }
                Err(e) => err(e),
            },
            Op::TotalBalance => {
                let total: i128 = self.accounts.values().map(|a| i128::from(a.balance)).sum();
                match i64::try_from(total) {
                    Ok(total) => Out::Cents(total),
                    Err(_) => err(ErrOut::Overflow),
                }
            }
            Op::InTx(..) => unreachable!("transactions are applied by `apply`"),
            Op::Grouped(..) => unreachable!("groups are applied by `apply`"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generating operations
// ---------------------------------------------------------------------------------------------

const ITEM_NAMES: &[&str] = &["lamp", "desk", "chair", "sofa", "rug", "Lamp", "l'amp; --"];
const BAD_NAMES: &[&str] = &["", "   ", "nul\0name"];
const EMAILS: &[&str] = &[
    "ann@x.io",
    "ANN@x.io",
    "bob@y.org",
    "cy@z.net",
    "dee@q.com",
    "Dee@Q.COM",
];
const BAD_EMAILS: &[&str] = &["no-at-sign", "a@b", "sp ace@x.io", "@x.io", "ann@x.io."];
const USER_NAMES: &[&str] = &["Ann", "Bob", "Cy", "O'Brien"];
const KEYS: &[&str] = &["k1", "k2", "k3", "k4", "k5"];
const TEXTS: &[&str] = &[
    "",
    "a",
    "é\u{2028}",
    "\"quoted\"",
    "back\\slash",
    "'; --",
    "tab\tnl\n",
];
const STATUSES: [ItemStatus; 3] = [
    ItemStatus::Active,
    ItemStatus::Inactive,
    ItemStatus::Archived,
];

fn item_name() -> BoxedStrategy<String> {
    prop_oneof![
        12 => select(ITEM_NAMES).prop_map(str::to_owned),
        1 => select(BAD_NAMES).prop_map(str::to_owned),
        1 => Just("n".repeat(MAX_NAME_CHARS + 1)),
    ]
    .boxed()
}

/// A number inside `levels` nested arrays.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(0), |inner, _| Value::Array(vec![inner]))
}

fn item_data() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(json!({})),
        2 => any::<i64>().prop_map(|n| json!({ "n": n })),
        2 => select(TEXTS).prop_map(Value::from),
        1 => Just(json!([1.5, 0.1, -0.0, 1e300, u64::MAX, i64::MIN])),
        1 => Just(json!({"z": [null, true, {"a": "\u{1F980}"}], "a": "\u{0}"})),
        1 => Just(nested(MAX_DATA_DEPTH)),
        1 => Just(nested(MAX_DATA_DEPTH + 1)),
    ]
    .boxed()
}

fn status() -> BoxedStrategy<ItemStatus> {
    select(&STATUSES[..]).boxed()
}

fn email() -> BoxedStrategy<String> {
    prop_oneof![
        8 => select(EMAILS).prop_map(str::to_owned),
        1 => select(BAD_EMAILS).prop_map(str::to_owned),
    ]
    .boxed()
}

fn user_name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => select(USER_NAMES).prop_map(str::to_owned),
        1 => Just(" ".to_owned()),
    ]
    .boxed()
}

/// Existing ids mostly, and a few that do not exist.
fn id_in<V>(rows: &BTreeMap<i64, V>) -> BoxedStrategy<i64> {
    let unknown = vec![0, -1, next_id(rows) + 7];
    let known: Vec<i64> = rows.keys().copied().collect();
    if known.is_empty() {
        select(unknown).boxed()
    } else {
        prop_oneof![4 => select(known), 1 => select(unknown)].boxed()
    }
}

fn amount() -> BoxedStrategy<i64> {
    prop_oneof![
        12 => 1..400_i64,
        1 => Just(0_i64),
        1 => -3..0_i64,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
    .boxed()
}

fn opening_balance() -> BoxedStrategy<i64> {
    prop_oneof![
        8 => 1..2_000_i64,
        1 => Just(0_i64),
        1 => Just(i64::MAX / 2 + 1),
        1 => Just(-1_i64),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(None),
        4 => select(KEYS).prop_map(|k| Some(k.to_owned())),
        1 => Just(Some(String::new())),
    ]
    .boxed()
}

fn transfer(s: &Model) -> BoxedStrategy<T> {
    let fresh = (id_in(&s.accounts), id_in(&s.accounts), amount(), key())
        .prop_map(|(from, to, amount, key)| T {
            from,
            to,
            amount,
            key,
        })
        .boxed();
    let mut arms = vec![(2, fresh)];
    // Between existing accounts, from one with money, for a share of its balance (a little
    // more than all of it now and then): most of these land.
    let ids: Vec<i64> = s.accounts.keys().copied().collect();
    let funded: Vec<(i64, i64)> = s
        .accounts
        .iter()
        .filter(|(_, a)| a.balance > 0)
        .map(|(id, a)| (*id, a.balance))
        .collect();
    if ids.len() >= 2 && !funded.is_empty() {
        let others = ids.clone();
        let paying = (select(funded), select(ids), 0.0..1.2_f64, key())
            .prop_map(move |((from, balance), to, share, key)| {
                let to = if to == from {
                    others.iter().copied().find(|id| *id != from).unwrap()
                } else {
                    to
                };
                let amount = ((balance as f64 * share).min(i64::MAX as f64) as i64).max(1);
                T {
                    from,
                    to,
                    amount,
                    key,
                }
            })
            .boxed();
        arms.push((5, paying));
    }
    // Replays of landed keys: the same movement, or the same key with another amount.
    let landed: Vec<T> = s
        .ledger
        .iter()
        .filter_map(|row| {
            Some(T {
                from: row.from?,
                to: row.to,
                amount: row.amount,
                key: Some(row.key.clone()?),
            })
        })
        .collect();
    if !landed.is_empty() {
        let replay = (select(landed), proptest::bool::weighted(0.75))
            .prop_map(|(mut t, same)| {
                if !same {
                    t.amount += 1;
                }
                t
            })
            .boxed();
        arms.push((4, replay));
    }
    proptest::strategy::Union::new_weighted(arms).boxed()
}

/// Any operation but a transaction.
fn plain_op(s: &Model) -> BoxedStrategy<Op> {
    let item = || id_in(&s.items);
    let user = || id_in(&s.users);
    let order = id_in(&s.orders);
    let account = || id_in(&s.accounts);
    prop_oneof![
        4 => (item_name(), item_data(), status()).prop_map(|(n, d, st)| Op::CreateItem(n, d, st)),
        3 => (
            item(),
            proptest::option::of(item_name()),
            proptest::option::weighted(0.3, item_data()),
            proptest::option::of(status()),
        )
            .prop_map(|(id, n, d, st)| Op::UpdateItem(id, n, d, st)),
        1 => item().prop_map(Op::DeleteItem),
        2 => proptest::collection::vec((item_name(), item_data(), status()), 0..4)
            .prop_map(Op::InsertItems),
        2 => (proptest::collection::vec(item(), 0..5), status())
            .prop_map(|(ids, st)| Op::SetStatusMany(ids, st)),
        1 => item().prop_map(Op::GetItem),
        1 => proptest::collection::vec(item(), 0..5).prop_map(Op::GetItems),
        1 => Just(Op::StreamItems),
        1 => Just(Op::StreamUsers),
        1 => order.clone().prop_map(Op::GetOrder),
        1 => status().prop_map(Op::ListItems),
        1 => Just(Op::CountItems),
        3 => (email(), user_name()).prop_map(|(e, n)| Op::CreateUser(e, n)),
        2 => (user(), proptest::option::of(email()), proptest::option::of(user_name()))
            .prop_map(|(id, e, n)| Op::UpdateUser(id, e, n)),
        1 => user().prop_map(Op::DeleteUser),
        1 => proptest::collection::vec((email(), user_name()), 0..3).prop_map(Op::InsertUsers),
        1 => email().prop_map(Op::GetUserByEmail),
        3 => (user(), prop_oneof![9 => 0..5_000_i64, 1 => Just(-1_i64)])
            .prop_map(|(u, t)| Op::CreateOrder(u, t)),
        1 => order.prop_map(Op::DeleteOrder),
        1 => proptest::collection::vec((user(), 0..900_i64), 0..4).prop_map(Op::InsertOrders),
        1 => (user(), 0..4_u32).prop_map(|(u, l)| Op::RecentOrders(u, l)),
        1 => user().prop_map(Op::OrderStats),
        1 => user().prop_map(Op::Dashboard),
        5 => (proptest::option::weighted(0.4, user()), opening_balance())
            .prop_map(|(u, b)| Op::OpenAccount(u, b)),
        1 => account().prop_map(Op::GetAccount),
        3 => (account(), amount()).prop_map(|(id, a)| Op::Deposit(id, a)),
        6 => transfer(s).prop_map(Op::Transfer),
        3 => proptest::collection::vec(transfer(s), 0..5).prop_map(Op::TransferBatch),
        1 => Just(Op::TotalBalance),
    ]
    .boxed()
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        prop_oneof![
            12 => plain_op(state),
            1 => (proptest::collection::vec(plain_op(state), 1..5), any::<bool>())
                .prop_map(|(ops, commit)| Op::InTx(ops, commit)),
            2 => proptest::collection::vec(transfer(state), 2..6).prop_map(Op::Grouped),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.notes.clear();
        state.expected = match op {
            Op::InTx(ops, commit) => {
                let mut scratch = state.clone();
                let mut outs: Vec<Out> = ops.iter().map(|op| scratch.step(op)).collect();
                outs.push(Out::Unit);
                let notes = std::mem::take(&mut scratch.notes);
                if *commit {
                    state = scratch;
                }
                state.notes = notes;
                state.notes.push(if *commit {
                    "transaction committed"
                } else {
                    "transaction rolled back"
                });
                outs
            }
            Op::Grouped(ts) => {
                let outs = ts
                    .iter()
                    .map(|t| state.step(&Op::Transfer(t.clone())))
                    .collect();
                state.notes.push("grouped transfers");
                outs
            }
            op => vec![state.step(op)],
        };
        state
    }
}

// ---------------------------------------------------------------------------------------------
// Running operations against the database
// ---------------------------------------------------------------------------------------------

fn err_out(err: Error) -> ErrOut {
    match err {
        Error::InvalidInput(_) => ErrOut::Invalid,
        Error::Overflow(_) => ErrOut::Overflow,
        Error::NotFound { entity, id } => ErrOut::NotFound(entity, vec![id]),
        Error::Duplicate { constraint } => ErrOut::Duplicate(constraint),
        Error::ForeignKey => ErrOut::ForeignKey,
        Error::InsufficientFunds {
            account,
            balance_cents,
            requested_cents,
        } => ErrOut::Insufficient {
            account,
            balance_cents,
            requested_cents,
        },
        other => ErrOut::Other(format!("{other:?}")),
    }
}

fn out<T>(result: sqlrepo::Result<T>, ok: impl FnOnce(T) -> Out) -> Out {
    match result {
        Ok(value) => ok(value),
        Err(err) => Out::Err(err_out(err)),
    }
}

fn m_item(item: sqlrepo::Item) -> (i64, MItem) {
    (
        item.id,
        MItem {
            name: item.name,
            data: item.data,
            status: item.status,
        },
    )
}

fn m_user(user: sqlrepo::User) -> (i64, MUser) {
    (
        user.id,
        MUser {
            email: user.email,
            name: user.name,
        },
    )
}

/// The repositories of the `Db`, or of an open transaction.
struct Repos<'a> {
    items: ItemRepo,
    users: UserRepo,
    orders: OrderRepo,
    accounts: AccountRepo,
    db: &'a Db,
    tx: Option<&'a Tx>,
}

async fn run(repos: &Repos<'_>, op: &Op) -> Out {
    match op {
        Op::CreateItem(name, data, status) => {
            let new = NewItem {
                name: name.clone(),
                data: data.clone(),
                status: *status,
            };
            out(repos.items.create(&new).await, Out::Id)
        }
        Op::UpdateItem(id, name, data, status) => {
            let patch = ItemPatch {
                name: name.clone(),
                data: data.clone(),
                status: *status,
            };
            out(repos.items.update(*id, &patch).await, Out::Bool)
        }
        Op::DeleteItem(id) => out(repos.items.delete(*id).await, Out::Bool),
        Op::InsertItems(rows) => {
            let rows: Vec<NewItem> = rows
                .iter()
                .map(|(name, data, status)| NewItem {
                    name: name.clone(),
                    data: data.clone(),
                    status: *status,
                })
                .collect();
            out(repos.items.insert_many(&rows).await, Out::Count)
        }
        Op::SetStatusMany(ids, status) => {
            out(repos.items.set_status_many(ids, *status).await, Out::Count)
        }
        Op::GetItems(ids) => out(repos.items.get_many(ids).await, |items| {
            Out::Items(items.into_iter().map(m_item).collect())
        }),
        Op::StreamItems => {
            let items: Vec<_> = repos.items.stream().collect().await;
            out(
                items.into_iter().collect::<sqlrepo::Result<Vec<_>>>(),
                |items| Out::Items(items.into_iter().map(m_item).collect()),
            )
        }
        Op::StreamUsers => {
            let users: Vec<_> = repos.users.stream().collect().await;
            out(
                users.into_iter().collect::<sqlrepo::Result<Vec<_>>>(),
                |users| Out::Users(users.into_iter().map(m_user).collect()),
            )
        }
        Op::GetOrder(id) => out(repos.orders.get(*id).await, |o| {
            Out::Order(o.map(|o| (o.user_id, o.total_cents)))
        }),
        Op::GetItem(id) => out(repos.items.get(*id).await, |i| {
            Out::Item(i.map(|i| m_item(i).1))
        }),
        Op::ListItems(status) => out(repos.items.list_by_status(*status).await, |items| {
            Out::Items(items.into_iter().map(m_item).collect())
        }),
        Op::CountItems => out(repos.items.count().await, Out::Cents),
        Op::CreateUser(email, name) => out(
            repos.users.create(&NewUser::new(email, name)).await,
            Out::Id,
        ),
        Op::UpdateUser(id, email, name) => {
            let patch = UserPatch {
                email: email.clone(),
                name: name.clone(),
            };
            out(repos.users.update(*id, &patch).await, Out::Bool)
        }
        Op::DeleteUser(id) => out(repos.users.delete(*id).await, Out::Bool),
        Op::InsertUsers(rows) => {
            let rows: Vec<NewUser> = rows.iter().map(|(e, n)| NewUser::new(e, n)).collect();
            out(repos.users.insert_many(&rows).await, Out::Count)
        }
        Op::GetUserByEmail(email) => out(repos.users.get_by_email(email).await, |u| {
            Out::User(u.map(m_user))
        }),
        Op::CreateOrder(user, total) => out(
            repos.orders.create(&NewOrder::new(*user, *total)).await,
            Out::Id,
        ),
        Op::DeleteOrder(id) => out(repos.orders.delete(*id).await, Out::Bool),
        Op::InsertOrders(rows) => {
            let rows: Vec<NewOrder> = rows.iter().map(|(u, t)| NewOrder::new(*u, *t)).collect();
            out(repos.orders.insert_many(&rows).await, Out::Count)
        }
        Op::RecentOrders(user, limit) => out(
            repos.orders.recent_for_user(*user, *limit).await,
            |orders| Out::Orders(orders.into_iter().map(|o| (o.id, o.total_cents)).collect()),
        ),
        Op::OrderStats(user) => out(repos.orders.stats_for_user(*user).await, |s| {
            Out::Stats(s.count, s.total_cents)
        }),
        Op::Dashboard(user) => {
            let result = match repos.tx {
                Some(tx) => tx.dashboard(*user).await,
                None => repos.db.dashboard(*user).await,
            };
            out(result, |d| {
                Out::Dashboard(
                    m_user(d.user),
                    d.recent_orders
                        .iter()
                        .map(|o| (o.id, o.total_cents))
                        .collect(),
                    (d.stats.count, d.stats.total_cents),
                )
            })
        }
        Op::OpenAccount(user, balance) => {
            let new = NewAccount {
                user_id: *user,
                balance_cents: *balance,
            };
            out(repos.accounts.open(&new).await, Out::Id)
        }
        Op::GetAccount(id) => out(repos.accounts.get(*id).await, |a| {
            Out::Account(a.map(|a| (a.user_id, a.balance_cents)))
        }),
        Op::Deposit(id, amount) => out(repos.accounts.deposit(*id, *amount).await, Out::Cents),
        Op::Transfer(t) => out(repos.accounts.transfer(&t.transfer()).await, |()| Out::Unit),
        Op::TransferBatch(ts) => {
            let ts: Vec<Transfer> = ts.iter().map(T::transfer).collect();
            out(repos.accounts.transfer_batch(&ts).await, |()| Out::Unit)
        }
        Op::TotalBalance => out(repos.accounts.total_balance().await, Out::Cents),
        Op::InTx(..) => unreachable!("transactions are run by `run_transition`"),
        Op::Grouped(..) => unreachable!("groups are run by `run_transition`"),
    }
}

// ---------------------------------------------------------------------------------------------
// Model ids and database ids
// ---------------------------------------------------------------------------------------------

/// The tables whose rows the model names by id.
#[derive(Clone, Copy, Debug)]
enum Table {
    Items,
    Users,
    Orders,
    Accounts,
}

/// Where a model id that names no row the database handed out goes on PostgreSQL: this plus
/// the model's id, far past any value a test's sequences reach, so "unknown" stays unknown.
/// (Sending the model's own number could name a real row: sequences spend ids on refused
/// inserts and rolled-back transactions, so the database's ids run ahead of the model's.)
const UNKNOWN_BASE: i64 = 1 << 40;

/// What a database id that no model row was learned for reads as: below every id the model
/// uses (theirs are -1 and up), so it can never agree with an expectation.
const UNLEARNED: i64 = i64::MIN / 2;

/// One table's model ids and the database's, learned as rows are created.
#[derive(Default)]
struct IdMap {
    to_db: BTreeMap<i64, i64>,
    /// Every database id ever learned (rows since deleted or rolled back included: an error
    /// may still name one).
    to_model: BTreeMap<i64, i64>,
    /// The largest database id learned.
    last: i64,
}

/// The model keeps its own ids (a new row takes the largest plus one, SQLite's rowid rule);
/// every id in an operation is sent as the database's id for it, and every id that comes back
/// is read as the model's. On SQLite the two are the same number, and that is checked at every
/// new row; on PostgreSQL a sequence hands them out and they differ.
struct Ids {
    backend: Backend,
    maps: [IdMap; 4],
}

impl Ids {
    fn new(backend: Backend) -> Ids {
        Ids {
            backend,
            maps: Default::default(),
        }
    }

    /// The database's id for model id `id`.
    fn db(&self, table: Table, id: i64) -> i64 {
        if let Some(db_id) = self.maps[table as usize].to_db.get(&id) {
            return *db_id;
        }
        if id <= 0 || !self.backend.is_postgres() {
            id
        } else {
            UNKNOWN_BASE + id
        }
    }

    /// The model's id for database id `id`.
    fn model(&self, table: Table, id: i64) -> i64 {
        if let Some(model_id) = self.maps[table as usize].to_model.get(&id) {
            return *model_id;
        }
        if id <= 0 || !self.backend.is_postgres() {
            id
        } else if id >= UNKNOWN_BASE {
            id - UNKNOWN_BASE
        } else {
            UNLEARNED + id
        }
    }

    /// Records that the database stored the row the model calls `model_id` as `db_id`.
    fn learn(&mut self, table: Table, model_id: i64, db_id: i64) {
        let map = &mut self.maps[table as usize];
        if self.backend.is_postgres() {
            // The model orders rows by its ids (the newest order first): that is the database's
            // order only while every new id is past all earlier ones, as a sequence's are.
            assert!(
                db_id > map.last,
                "{table:?}: the new row got id {db_id}, not past {} handed out before",
                map.last
            );
        } else {
            assert_eq!(
                db_id, model_id,
                "{table:?}: SQLite gives a new row the largest rowid plus one"
            );
        }
        map.to_db.insert(model_id, db_id);
        map.to_model.insert(db_id, model_id);
        map.last = map.last.max(db_id);
    }

    /// Learns the rows a batch insert made: the model's new ids and the new ids among `listed`
    /// (the table's rows now), paired in order (a batch stores its rows in the order given).
    fn learn_new(
        &mut self,
        table: Table,
        before: &BTreeSet<i64>,
        after: impl Iterator<Item = i64>,
        listed: impl Iterator<Item = i64>,
    ) {
        let before_db: BTreeSet<i64> = before.iter().map(|id| self.db(table, *id)).collect();
        let new_model: Vec<i64> = after.filter(|id| !before.contains(id)).collect();
        let mut new_db: Vec<i64> = listed.filter(|id| !before_db.contains(id)).collect();
        new_db.sort_unstable();
        assert_eq!(
            new_model.len(),
            new_db.len(),
            "{table:?}: the model made rows {new_model:?}, the database {new_db:?}"
        );
        for (model_id, db_id) in new_model.into_iter().zip(new_db) {
            self.learn(table, model_id, db_id);
        }
    }

    fn transfer(&self, t: &T) -> T {
        T {
            from: self.db(Table::Accounts, t.from),
            to: self.db(Table::Accounts, t.to),
            amount: t.amount,
            key: t.key.clone(),
        }
    }

    /// `op` with every model id replaced by the database's.
    fn op_to_db(&self, op: &Op) -> Op {
        use Table::*;
        let item = |id: &i64| self.db(Items, *id);
        let user = |id: &i64| self.db(Users, *id);
        let account = |id: &i64| self.db(Accounts, *id);
        match op.clone() {
            Op::UpdateItem(id, name, data, status) => Op::UpdateItem(item(&id), name, data, status),
            Op::DeleteItem(id) => Op::DeleteItem(item(&id)),
            Op::SetStatusMany(ids, status) => {
                Op::SetStatusMany(ids.iter().map(item).collect(), status)
            }
            Op::GetItem(id) => Op::GetItem(item(&id)),
            Op::GetItems(ids) => Op::GetItems(ids.iter().map(item).collect()),
            Op::UpdateUser(id, email, name) => Op::UpdateUser(user(&id), email, name),
            Op::DeleteUser(id) => Op::DeleteUser(user(&id)),
            Op::CreateOrder(id, total) => Op::CreateOrder(user(&id), total),
            Op::GetOrder(id) => Op::GetOrder(self.db(Orders, id)),
            Op::DeleteOrder(id) => Op::DeleteOrder(self.db(Orders, id)),
            Op::InsertOrders(rows) => {
                Op::InsertOrders(rows.iter().map(|(u, t)| (user(u), *t)).collect())
            }
            Op::RecentOrders(id, limit) => Op::RecentOrders(user(&id), limit),
            Op::OrderStats(id) => Op::OrderStats(user(&id)),
            Op::Dashboard(id) => Op::Dashboard(user(&id)),
            Op::OpenAccount(id, balance) => Op::OpenAccount(id.as_ref().map(user), balance),
            Op::GetAccount(id) => Op::GetAccount(account(&id)),
            Op::Deposit(id, amount) => Op::Deposit(account(&id), amount),
            Op::Transfer(t) => Op::Transfer(self.transfer(&t)),
            Op::TransferBatch(ts) => {
                Op::TransferBatch(ts.iter().map(|t| self.transfer(t)).collect())
            }
            Op::Grouped(ts) => Op::Grouped(ts.iter().map(|t| self.transfer(t)).collect()),
            Op::InTx(..) => unreachable!("a transaction's operations are sent one by one"),
            other => other,
        }
    }

    /// What `op` returned, with every database id replaced by the model's.
    fn out_to_model(&self, op: &Op, out: Out) -> Out {
        use Table::*;
        let user = |id: i64| self.model(Users, id);
        let orders = |orders: Vec<(i64, i64)>| {
            orders
                .into_iter()
                .map(|(id, total)| (self.model(Orders, id), total))
                .collect()
        };
        match out {
            Out::Id(id) => {
                let table = match op {
                    Op::CreateItem(..) => Items,
                    Op::CreateUser(..) => Users,
                    Op::CreateOrder(..) => Orders,
                    Op::OpenAccount(..) => Accounts,
                    other => unreachable!("{other:?} returns no id"),
                };
                Out::Id(self.model(table, id))
            }
            Out::Items(items) => Out::Items(
                items
                    .into_iter()
                    .map(|(id, item)| (self.model(Items, id), item))
                    .collect(),
            ),
            Out::User(found) => Out::User(found.map(|(id, u)| (user(id), u))),
            Out::Users(users) => {
                Out::Users(users.into_iter().map(|(id, u)| (user(id), u)).collect())
            }
            Out::Order(found) => Out::Order(found.map(|(id, total)| (user(id), total))),
            Out::Orders(found) => Out::Orders(orders(found)),
            Out::Dashboard((id, u), recent, stats) => {
                Out::Dashboard((user(id), u), orders(recent), stats)
            }
            Out::Account(found) => {
                Out::Account(found.map(|(owner, cents)| (owner.map(user), cents)))
            }
            Out::Err(ErrOut::NotFound(entity, ids)) => {
                let table = match entity {
                    "user" => Users,
                    "account" => Accounts,
                    "order" => Orders,
                    _ => Items,
                };
                let ids = ids.into_iter().map(|id| self.model(table, id)).collect();
                Out::Err(ErrOut::NotFound(entity, ids))
            }
            Out::Err(ErrOut::Insufficient {
                account,
                balance_cents,
                requested_cents,
            }) => Out::Err(ErrOut::Insufficient {
                account: self.model(Accounts, account),
                balance_cents,
                requested_cents,
            }),
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running transitions: the model's expectation beside the database's answer
// ---------------------------------------------------------------------------------------------

fn keys<V>(rows: &BTreeMap<i64, V>) -> BTreeSet<i64> {
    rows.keys().copied().collect()
}

/// One operation (not a transaction or a group) on the model and on the database: the model's
/// result and the database's, in model ids. New rows are learned on the way.
async fn step(repos: &Repos<'_>, ids: &mut Ids, model: &mut Model, op: &Op) -> (Out, Out) {
    let before = match op {
        Op::InsertItems(_) => keys(&model.items),
        Op::InsertUsers(_) => keys(&model.users),
        Op::InsertOrders(_) => keys(&model.orders),
        _ => BTreeSet::new(),
    };
    let expected = model.step(op);
    let sent = ids.op_to_db(op);
    let actual = run(repos, &sent).await;
    match (op, &expected, &actual) {
        (Op::CreateItem(..), Out::Id(m), Out::Id(d)) => ids.learn(Table::Items, *m, *d),
        (Op::CreateUser(..), Out::Id(m), Out::Id(d)) => ids.learn(Table::Users, *m, *d),
        (Op::CreateOrder(..), Out::Id(m), Out::Id(d)) => ids.learn(Table::Orders, *m, *d),
        (Op::OpenAccount(..), Out::Id(m), Out::Id(d)) => ids.learn(Table::Accounts, *m, *d),
        (Op::InsertItems(_), Out::Count(n), Out::Count(k)) if n == k && *n > 0 => {
            let listed: Vec<sqlrepo::Result<_>> = repos.items.stream().collect().await;
            let listed = listed.into_iter().map(|item| item.expect("list items").id);
            ids.learn_new(Table::Items, &before, model.items.keys().copied(), listed);
        }
        (Op::InsertUsers(_), Out::Count(n), Out::Count(k)) if n == k && *n > 0 => {
            let listed: Vec<sqlrepo::Result<_>> = repos.users.stream().collect().await;
            let listed = listed.into_iter().map(|user| user.expect("list users").id);
            ids.learn_new(Table::Users, &before, model.users.keys().copied(), listed);
        }
        (Op::InsertOrders(_), Out::Count(n), Out::Count(k)) if n == k && *n > 0 => {
            let Op::InsertOrders(rows) = &sent else {
                unreachable!()
            };
            let users: BTreeSet<i64> = rows.iter().map(|(user, _)| *user).collect();
            let mut listed = Vec::new();
            for user in users {
                let orders = repos.orders.recent_for_user(user, u32::MAX).await;
                listed.extend(orders.expect("list a user's orders").iter().map(|o| o.id));
            }
            ids.learn_new(
                Table::Orders,
                &before,
                model.orders.keys().copied(),
                listed.into_iter(),
            );
        }
        _ => {}
    }
    (expected, ids.out_to_model(op, actual))
}

/// Runs a transition against the database and the backend's copy of the model: what the model
/// says each call must return, what each returned (in model ids), and the model's notes.
async fn run_transition(sut: &mut Sut, op: &Op) -> (Vec<Out>, Vec<Out>) {
    let Sut {
        db,
        ids,
        model,
        concurrent,
        ..
    } = sut;
    model.notes.clear();
    match op {
        Op::InTx(ops, commit) => {
            let mut scratch = model.clone();
            // What is learned inside is forgotten if the transaction does not commit: a row it
            // deleted is back under its old id, whatever the model's id was reused for inside.
            let saved = ids.maps.each_ref().map(|map| map.to_db.clone());
            let mut expected = Vec::new();
            let mut actual = Vec::new();
            let tx = match db.begin().await {
                Ok(tx) => tx,
                Err(err) => {
                    expected.extend(ops.iter().map(|op| scratch.step(op)));
                    expected.push(Out::Unit);
                    return (expected, vec![Out::Err(err_out(err))]);
                }
            };
            let repos = Repos {
                items: tx.items(),
                users: tx.users(),
                orders: tx.orders(),
                accounts: tx.accounts(),
                db,
                tx: Some(&tx),
            };
            for op in ops {
                let (e, a) = step(&repos, ids, &mut scratch, op).await;
                expected.push(e);
                actual.push(a);
            }
            drop(repos);
            let end = if *commit {
                tx.commit().await
            } else {
                tx.rollback().await
            };
            let committed = *commit && end.is_ok();
            expected.push(Out::Unit);
            actual.push(out(end, |()| Out::Unit));
            if !committed {
                for (map, to_db) in ids.maps.iter_mut().zip(saved) {
                    map.to_db = to_db;
                }
            }
            let notes = std::mem::take(&mut scratch.notes);
            if *commit {
                *model = scratch;
            }
            model.notes = notes;
            model.notes.push(if *commit {
                "transaction committed"
            } else {
                "transaction rolled back"
            });
            (expected, actual)
        }
        Op::Grouped(ts) => {
            let sent: Vec<T> = ts.iter().map(|t| ids.transfer(t)).collect();
            let actual: Vec<Out> = run_grouped(db, ids.backend, &sent)
                .await
                .into_iter()
                .map(|out| ids.out_to_model(&Op::Transfer(ts[0].clone()), out))
                .collect();
            let start = model.ledger.len();
            let expected = expect_group(ids.backend, model, ts, &actual);
            if ids.backend.is_postgres() && model.ledger.len() > start + 1 {
                concurrent.push(start..model.ledger.len());
            }
            model.notes.push("grouped transfers");
            (expected, actual)
        }
        op => {
            let repos = Repos {
                items: db.items(),
                users: db.users(),
                orders: db.orders(),
                accounts: db.accounts(),
                db,
                tx: None,
            };
            let (e, a) = step(&repos, ids, model, op).await;
            (vec![e], vec![a])
        }
    }
}

/// What a group of concurrent transfers must return, and the model after them.
///
/// On SQLite the callers queue for the one writer in the order they called and are carried as
/// one group: each gets exactly what it would get alone, in turn. On PostgreSQL nothing orders
/// them (each runs on a connection of its own; row locks decide), so the expectation is that
/// some order of them, one after another, gives every caller what it got: the model moves to
/// what that order leaves. Several orders may fit; all of them leave the same balances and
/// ledger rows (which transfers landed is in the answers), only the ledger rows' order differs,
/// which the end-of-case check allows inside a group on PostgreSQL.
fn expect_group(backend: Backend, model: &mut Model, ts: &[T], actual: &[Out]) -> Vec<Out> {
    let in_turn = |order: &[usize]| {
        let mut trial = model.clone();
        let mut outs = vec![Out::Unit; ts.len()];
        for &i in order {
            outs[i] = trial.step(&Op::Transfer(ts[i].clone()));
        }
        (trial, outs)
    };
    let fits = |outs: &[Out]| {
        outs.len() == actual.len() && outs.iter().zip(actual).all(|(e, a)| agrees(e, a))
    };
    let orders = if backend.is_postgres() {
        permutations(ts.len())
    } else {
        vec![(0..ts.len()).collect()]
    };
    for order in &orders {
        let (trial, outs) = in_turn(order);
        if fits(&outs) {
            *model = trial;
            if order.windows(2).any(|pair| pair[0] > pair[1]) {
                model.notes.push("group served out of call order");
            }
            return outs;
        }
    }
    // No order fits: expect the call order, which the assertion reports against.
    in_turn(&orders[0]).1
}

/// Every order of `0..n`, the identity first.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in permutations(n - 1) {
        for at in (0..=shorter.len()).rev() {
            let mut order = shorter.clone();
            order.insert(at, n - 1);
            all.push(order);
        }
    }
    all
}

/// Runs transfers as concurrent callers, their answers in call order.
///
/// On SQLite the requests queue for the writer together: a transaction holds the writer while
/// each transfer is polled once (so it queues, in order), then lets go, and whichever transfer
/// gets the writer carries all of them as one group. On PostgreSQL there is no one writer to
/// queue for: they all run at once.
async fn run_grouped(db: &Db, backend: Backend, ts: &[T]) -> Vec<Out> {
    use std::future::Future;
    use std::task::Poll;

    let accounts = db.accounts();
    let transfers: Vec<Transfer> = ts.iter().map(T::transfer).collect();
    if backend.is_postgres() {
        let calls = transfers.iter().map(|t| accounts.transfer(t));
        return futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|result| out(result, |()| Out::Unit))
            .collect();
    }
    let holder = match db.begin().await {
        Ok(tx) => tx,
        Err(err) => return vec![Out::Err(err_out(err)); ts.len()],
    };
    let mut calls: Vec<_> = transfers
        .iter()
        .map(|t| Box::pin(accounts.transfer(t)))
        .collect();
    // An invalid transfer is answered on its first poll, before it queues.
    let mut answered: Vec<Option<Out>> = vec![None; ts.len()];
    std::future::poll_fn(|cx| {
        for (call, answer) in calls.iter_mut().zip(&mut answered) {
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                *answer = Some(out(result, |()| Out::Unit));
            }
        }
        Poll::Ready(())
    })
    .await;
    holder
        .rollback()
        .await
        .expect("the holding transaction rolls back");
    let mut outs = Vec::with_capacity(ts.len());
    for (call, answer) in calls.into_iter().zip(answered) {
        outs.push(match answer {
            Some(answer) => answer,
            None => out(call.await, |()| Out::Unit),
        });
    }
    outs
}

// ---------------------------------------------------------------------------------------------
// The state machine test
// ---------------------------------------------------------------------------------------------

/// What every case of one run shares (`init_test` takes no arguments, so the runner's thread
/// holds it).
#[derive(Clone)]
struct Context {
    backend: Backend,
    /// The runtime of the test's `Db`; the cases run on a blocking thread and enter it.
    runtime: tokio::runtime::Handle,
    /// The test's database on PostgreSQL, emptied before each case; `None` on SQLite, where a
    /// case gets a copy of an empty template file.
    pg: Option<Db>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
    /// What the run covered: outcomes by kind, notes, cases and steps.
    static COVERAGE: RefCell<BTreeMap<String, usize>> = const { RefCell::new(BTreeMap::new()) };
}

fn context() -> Context {
    CONTEXT.with(|context| context.borrow().clone().expect("the run's context"))
}

struct Sut {
    context: Context,
    db: Db,
    /// The SQLite file (`None` on PostgreSQL).
    file: Option<(tempfile::TempDir, PathBuf)>,
    ids: Ids,
    /// The model as this backend must hold it. The reference state drives the generator; this
    /// copy is what the database is checked against. They are the same on SQLite (checked at
    /// every step); on PostgreSQL a group of concurrent transfers may be served in another
    /// order than the reference's, and this copy follows the order the server chose.
    model: Model,
    /// Ranges of `model.ledger` landed by one group of concurrent transfers on PostgreSQL,
    /// whose ledger rows may be stored in any order.
    concurrent: Vec<std::ops::Range<usize>>,
}

/// Where case files go: memory-backed when the system has it (the cases are many and small).
fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// A freshly migrated, empty database file, made once per run; every case starts from a copy
/// of it (the same bytes `Db::open` would produce, without migrating hundreds of times).
fn template(runtime: &tokio::runtime::Handle) -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
        let path = dir.path().join("template.db");
        runtime.block_on(async {
            Db::open(&path).await.unwrap().close().await;
        });
        (dir, path)
    });
    path
}

fn note(label: impl Into<String>) {
    COVERAGE.with(|coverage| *coverage.borrow_mut().entry(label.into()).or_default() += 1);
}

fn label(out: &Out) -> String {
    match out {
        Out::Err(ErrOut::Duplicate(constraint)) => format!("Duplicate({constraint})"),
        Out::Err(ErrOut::NotFound(entity, _)) => format!("NotFound({entity})"),
        Out::Err(ErrOut::Insufficient { .. }) => "InsufficientFunds".into(),
        Out::Err(other) => format!("{other:?}"),
        Out::Bool(b) => format!("Bool({b})"),
        other => format!("{other:?}").split('(').next().unwrap().to_owned(),
    }
}

struct ModelTest;

impl StateMachineTest for ModelTest {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(initial: &Model) -> Sut {
        note("cases");
        let context = context();
        let (db, file) = match &context.pg {
            Some(db) => {
                context.runtime.block_on(pg_tables::empty(db));
                (db.clone(), None)
            }
            None => {
                let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
                let path = dir.path().join("model.db");
                std::fs::copy(template(&context.runtime), &path).unwrap();
                let db = context.runtime.block_on(Db::open(&path)).unwrap();
                (db, Some((dir, path)))
            }
        };
        let nul_data_refused = context.backend.is_postgres();
        Sut {
            ids: Ids::new(context.backend),
            context,
            db,
            file,
            model: Model {
                nul_data_refused,
                ..initial.clone()
            },
            concurrent: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, state: &Model, op: Op) -> Sut {
        let runtime = sut.context.runtime.clone();
        let (expected, actual) = runtime.block_on(run_transition(&mut sut, &op));
        note("operations");
        for label_text in expected.iter().map(label) {
            note(label_text);
        }
        for text in &sut.model.notes {
            note(*text);
        }
        if !sut.context.backend.is_postgres() {
            // SQLite serves a group in call order, as the reference does: the copies agree.
            assert_eq!(
                expected, state.expected,
                "the backend's model left the reference"
            );
        }
        let agree = actual.len() == expected.len()
            && expected.iter().zip(&actual).all(|(e, a)| agrees(e, a));
        assert!(
            agree,
            "{op:?}\n  sent {:?}\n  model expects {expected:?}\n  database gave {actual:?}",
            match &op {
                Op::InTx(..) => None,
                op => Some(sut.ids.op_to_db(op)),
            }
        );
        sut
    }

    fn teardown(sut: Sut, _: Model) {
        let stored = match &sut.file {
            Some((_, path)) => {
                sut.context.runtime.block_on(sut.db.close());
                let conn = raw(path);
                check_integrity(&conn).unwrap();
                stored_sqlite(&conn)
            }
            None => sut.context.runtime.block_on(pg_tables::stored(&sut.db)),
        };
        let (ids, model) = (&sut.ids, &sut.model);
        let items: BTreeMap<i64, MItem> = stored
            .items
            .into_iter()
            .map(|(id, item)| (ids.model(Table::Items, id), item))
            .collect();
        assert_eq!(items, model.items, "items table");
        let users: BTreeMap<i64, MUser> = stored
            .users
            .into_iter()
            .map(|(id, user)| (ids.model(Table::Users, id), user))
            .collect();
        assert_eq!(users, model.users, "users table");
        let orders: BTreeMap<i64, MOrder> = stored
            .orders
            .into_iter()
            .map(|(id, order)| {
                let user = ids.model(Table::Users, order.user);
                (ids.model(Table::Orders, id), MOrder { user, ..order })
            })
            .collect();
        assert_eq!(orders, model.orders, "orders table");
        let accounts: BTreeMap<i64, MAccount> = stored
            .accounts
            .into_iter()
            .map(|(id, account)| {
                let user = account.user.map(|user| ids.model(Table::Users, user));
                (ids.model(Table::Accounts, id), MAccount { user, ..account })
            })
            .collect();
        assert_eq!(accounts, model.accounts, "accounts table");
        let account = |id: i64| ids.model(Table::Accounts, id);
        let mut ledger: Vec<MLedger> = stored
            .ledger
            .into_iter()
            .map(|row| MLedger {
                from: row.from.map(account),
                to: account(row.to),
                ..row
            })
            .collect();
        let mut expected = model.ledger.clone();
        if ledger.len() == expected.len() {
            // Rows of one group of concurrent transfers: in the order the server took them.
            let key = |row: &MLedger| (row.from, row.to, row.amount, row.key.clone());
            for span in &sut.concurrent {
                ledger[span.clone()].sort_by_key(key);
                expected[span.clone()].sort_by_key(key);
            }
        }
        assert_eq!(ledger, expected, "transfers table");
    }
}

/// Every row the database holds at the end of a case, in the database's ids.
#[derive(Default)]
struct Stored {
    items: Vec<(i64, MItem)>,
    users: Vec<(i64, MUser)>,
    orders: Vec<(i64, MOrder)>,
    accounts: Vec<(i64, MAccount)>,
    /// In id order.
    ledger: Vec<MLedger>,
}

fn rows<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], map)
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The tables of a closed SQLite file, read behind the API's back.
fn stored_sqlite(conn: &rusqlite::Connection) -> Stored {
    Stored {
        items: rows(conn, "SELECT id, name, data, status FROM items", |r| {
            let data: String = r.get(2)?;
            let status: String = r.get(3)?;
            Ok((
                r.get(0)?,
                MItem {
                    name: r.get(1)?,
                    data: serde_json::from_str(&data).unwrap(),
                    status: status.parse().unwrap(),
                },
            ))
        }),
        users: rows(conn, "SELECT id, email, name FROM users", |r| {
            Ok((
                r.get(0)?,
                MUser {
                    email: r.get(1)?,
                    name: r.get(2)?,
                },
            ))
        }),
        orders: rows(conn, "SELECT id, user_id, total FROM orders", |r| {
            Ok((
                r.get(0)?,
                MOrder {
                    user: r.get(1)?,
                    total: r.get(2)?,
                },
            ))
        }),
        accounts: rows(conn, "SELECT id, user_id, balance FROM accounts", |r| {
            Ok((
                r.get(0)?,
                MAccount {
                    user: r.get(1)?,
                    balance: r.get(2)?,
                },
            ))
        }),
        ledger: rows(
            conn,
            "SELECT from_account, to_account, amount, idempotency_key FROM transfers ORDER BY id",
            |r| {
                Ok(MLedger {
                    from: r.get(0)?,
                    to: r.get(1)?,
                    amount: r.get(2)?,
                    key: r.get(3)?,
                })
            },
        ),
    }
}

/// The test's own statements on PostgreSQL, as `tests/pg_accounts.rs` reads the ledger: the
/// state as the server holds it, not as sqlrepo reports it. They run on a connection of the
/// `Db` itself, so with a replica its reads after them see them too.
#[cfg(feature = "postgres")]
mod pg_tables {
    use super::{Db, MAccount, MItem, MLedger, MOrder, MUser, Stored};

    /// Empties every table. The sequences go on where they were, on purpose: the database's
    /// ids then run ahead of the model's from the second case on, as they do after any refused
    /// insert, which is what the id mapping is for.
    pub async fn empty(db: &Db) {
        let mut conn = db
            .handle()
            .writer()
            .await
            .expect("a connection to the primary");
        sqlx::query("TRUNCATE transfers, accounts, orders, users, items")
            .execute(conn.postgres().unwrap())
            .await
            .expect("empty the tables");
    }

    pub async fn stored(db: &Db) -> Stored {
        let mut lease = db
            .handle()
            .writer()
            .await
            .expect("a connection to the primary");
        let conn = lease.postgres().unwrap();
        let items: Vec<(i64, String, String, String)> =
            sqlx::query_as("SELECT id, name, data::text, status FROM items")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let users: Vec<(i64, String, String)> = sqlx::query_as("SELECT id, email, name FROM users")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let orders: Vec<(i64, i64, i64)> = sqlx::query_as("SELECT id, user_id, total FROM orders")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let accounts: Vec<(i64, Option<i64>, i64)> =
            sqlx::query_as("SELECT id, user_id, balance FROM accounts")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        // Keys are stored as their UTF-8 bytes (`bytea`, which can hold a NUL).
        type LedgerRow = (Option<i64>, i64, i64, Option<Vec<u8>>);
        let ledger: Vec<LedgerRow> = sqlx::query_as(
            "SELECT from_account, to_account, amount, idempotency_key FROM transfers ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        Stored {
            items: items
                .into_iter()
                .map(|(id, name, data, status)| {
                    let data = serde_json::from_str(&data).unwrap();
                    let status = status.parse().unwrap();
                    (id, MItem { name, data, status })
                })
                .collect(),
            users: users
                .into_iter()
                .map(|(id, email, name)| (id, MUser { email, name }))
                .collect(),
            orders: orders
                .into_iter()
                .map(|(id, user, total)| (id, MOrder { user, total }))
                .collect(),
            accounts: accounts
                .into_iter()
                .map(|(id, user, balance)| (id, MAccount { user, balance }))
                .collect(),
            ledger: ledger
                .into_iter()
                .map(|(from, to, amount, key)| MLedger {
                    from,
                    to,
                    amount,
                    key: key.map(|bytes| String::from_utf8(bytes).expect("a UTF-8 key")),
                })
                .collect(),
        }
    }
}

/// Without the `postgres` feature no case runs on PostgreSQL (the fixture skips it).
#[cfg(not(feature = "postgres"))]
mod pg_tables {
    use super::{Db, Stored};

    pub async fn empty(_: &Db) {
        unreachable!("no PostgreSQL in this build")
    }

    pub async fn stored(_: &Db) -> Stored {
        unreachable!("no PostgreSQL in this build")
    }
}

backend_test!(
    multi_thread,
    random_operation_sequences_agree_with_the_model
);

async fn random_operation_sequences_agree_with_the_model(db: TestDb) {
    let context = Context {
        backend: db.backend,
        runtime: tokio::runtime::Handle::current(),
        pg: db.backend.is_postgres().then(|| db.db.clone()),
    };
    // The cases are plain code that enters the runtime for each call (proptest's runner is not
    // async), so they run on a thread that may block.
    let run = tokio::task::spawn_blocking(move || run_cases(context)).await;
    if let Err(err) = run {
        std::panic::resume_unwind(err.into_panic());
    }
}

fn run_cases(context: Context) {
    let backend = context.backend;
    CONTEXT.with(|slot| *slot.borrow_mut() = Some(context));
    COVERAGE.with(|coverage| coverage.borrow_mut().clear());
    let seed = seed("SQLREPO_MODEL_SEED");
    let cases = count("SQLREPO_MODEL_CASES", 256) as u32;
    let steps = count("SQLREPO_MODEL_STEPS", 40);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &ModelMachine::sequential_strategy(1..steps),
        |(initial, transitions, seen)| {
            ModelTest::test_sequential(config.clone(), initial, transitions, seen);
            Ok(())
        },
    );
    if let Err(failure) = result {
        panic!("{backend:?}, seed {seed}: {failure}");
    }
    let coverage = COVERAGE.with(|coverage| coverage.borrow().clone());
    println!(
        "model on {backend:?}: {} cases, {} operations in {:?}; outcomes and notes: {coverage:?}",
        coverage.get("cases").copied().unwrap_or(0),
        coverage.get("operations").copied().unwrap_or(0),
        started.elapsed()
    );
    // The generator must reach every rule, or agreeing proves little.
    let must_see = [
        "Duplicate(items.name)",
        "Duplicate(users.email)",
        "Duplicate(transfers.idempotency_key)",
        "ForeignKey",
        "NotFound(account)",
        "NotFound(user)",
        "InsufficientFunds",
        "Invalid",
        "replayed key moved nothing",
        "transaction committed",
        "transaction rolled back",
        "Bool(true)",
        "Bool(false)",
    ];
    if cases >= 64 {
        let missing: Vec<&str> = must_see
            .iter()
            .copied()
            .filter(|label| !coverage.contains_key(*label))
            .collect();
        assert!(
            missing.is_empty(),
            "never exercised on {backend:?}: {missing:?}"
        );
    }
}
