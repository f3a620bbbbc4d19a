//! [`AccountRepo`](super::AccountRepo) on PostgreSQL: calls the statements of
//! `sqlrepo_postgres::accounts` and turns their rows and refusals into sqlrepo's types.
//!
//! The trigger `transfers_apply` refuses with everything a caller is told, so no second read is
//! needed to explain a refusal (as SQLite's `explain_failure` does): a missing account is 23503
//! on `transfers_from_fk`/`transfers_to_fk` naming the id in its DETAIL, an overdraft 23514 on
//! `accounts_balance_non_negative` with the balance and amount as a JSON DETAIL, an
//! overflowing credit 22003.

use serde::Deserialize;
use sqlrepo_postgres::accounts as statements;
use sqlx::PgConnection;
use sqlx::postgres::PgDatabaseError;

use super::{
    Account, IDEMPOTENCY_KEY_CONSTRAINT, Transfer, TransferOutcome, credit_overflow,
    steps_from_json,
};
use crate::conn::{Backend, Conn};
use crate::error::sqlstate::{
    CHECK_VIOLATION, FOREIGN_KEY_VIOLATION, NUMERIC_VALUE_OUT_OF_RANGE, UNIQUE_VIOLATION,
};
use crate::error::{Error, Result, classify_sum};

pub(super) async fn open(
    conn: &mut PgConnection,
    user_id: Option<i64>,
    balance_cents: i64,
) -> Result<i64> {
    Ok(statements::insert_account(conn, user_id, balance_cents).await?)
}

fn account(row: statements::AccountRow) -> Account {
    Account {
        id: row.id,
        user_id: row.user_id,
        balance_cents: row.balance,
        created_at: row.created_at,
    }
}

pub(super) async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<Account>> {
    Ok(statements::select_account(conn, id).await?.map(account))
}

pub(super) async fn get_many(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<Account>> {
    let rows = statements::select_many(conn, ids).await?;
    Ok(rows.into_iter().map(account).collect())
}

pub(super) async fn count(conn: &mut PgConnection) -> Result<i64> {
    Ok(statements::count(conn).await?)
}

pub(super) async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> Result<Vec<Account>> {
    let rows = statements::select_page(conn, from_id, limit).await?;
    Ok(rows.into_iter().map(account).collect())
}

pub(super) async fn deposit(conn: &mut PgConnection, id: i64, amount_cents: i64) -> Result<i64> {
    statements::deposit(conn, id, amount_cents)
        .await
        .map_err(|err| refusal(err, || credit_overflow(amount_cents, id)))
}

pub(super) async fn total_balance(conn: &mut PgConnection) -> Result<i64> {
    statements::total_balance(conn).await.map_err(classify_sum)
}

/// One transfer, as one ledger `INSERT`.
///
/// A keyed transfer refused with a unique violation on its key is run once more (see
/// `sqlrepo_postgres::accounts` on keys): a twin with the key committed while the statement ran,
/// after its own lookup. The fresh statement sees the twin and answers replay or duplicate,
/// and that answer is final (one row per key can land, and it is committed). Every other
/// refusal is final at once: the trigger looked the key up again before refusing.
pub(super) async fn transfer(conn: &mut Conn, t: &Transfer) -> Result<TransferOutcome> {
    let key = t.idempotency_key.as_deref();
    let row = match statements::insert_transfer(postgres(conn)?, t.from, t.to, t.amount_cents, key)
        .await
    {
        Err(err) if key.is_some() && is_key_taken(&err) => {
            // The failed statement aborted the transaction this call runs in, if any.
            conn.recover().await?;
            statements::insert_transfer(postgres(conn)?, t.from, t.to, t.amount_cents, key).await
        }
        other => other,
    }
    .map_err(|err| refusal(err, || credit_overflow(t.amount_cents, t.to)))?;
    match (row.landed, row.same_movement) {
        (true, _) => Ok(TransferOutcome::Landed),
        (false, Some(true)) => Ok(TransferOutcome::Replayed),
        (false, Some(false)) => Err(key_reused()),
        (false, None) => Err(Error::Database(sqlx::Error::Protocol(
            "a transfer neither landed nor found its key landed".to_owned(),
        ))),
    }
}

/// A batch as one `INSERT … SELECT` over arrays, all or nothing, in order. `steps_json` holds
/// the steps left after `distinct_steps` (validated, in-batch replays dropped).
///
/// As for one transfer, a batch refused with a unique violation on a key is run again: a twin
/// of one of its keys committed during it. Each such refusal reveals a key that has landed for
/// good, which the next run sees, so there are at most as many runs again as keyed steps.
pub(super) async fn transfer_batch(conn: &mut Conn, steps_json: &str) -> Result<()> {
    let transfers = steps_from_json(steps_json)
        .ok_or_else(|| Error::invalid("the batch's steps could not be read back"))?;
    let mut steps = statements::Steps::default();
    for t in transfers {
        steps.from.push(t.from);
        steps.to.push(t.to);
        steps.amount.push(t.amount_cents);
        steps.idempotency_key.push(t.idempotency_key);
    }
    let keyed = steps.idempotency_key.iter().flatten().count();
    let mut runs_again = 0;
    let row = loop {
        match statements::insert_transfers(postgres(conn)?, &steps).await {
            Err(err) if runs_again < keyed && is_key_taken(&err) => {
                runs_again += 1;
                conn.recover().await?;
            }
            other => break other,
        }
    }
    .map_err(|err| {
        refusal(err, || {
            Error::invalid("a step's credit would overflow the balance of the account it credits")
        })
    })?;
    if row.key_reused {
        return Err(key_reused());
    }
    Ok(())
}

/// The PostgreSQL connection of a `Conn` the caller matched as PostgreSQL already.
fn postgres(conn: &mut Conn) -> Result<&mut PgConnection> {
    match conn.backend()? {
        Backend::Postgres(pg) => Ok(pg),
        _ => Err(Error::WrongBackend(
            "a PostgreSQL statement was sent to another backend".to_owned(),
        )),
    }
}

fn key_reused() -> Error {
    Error::Duplicate {
        constraint: IDEMPOTENCY_KEY_CONSTRAINT.to_owned(),
    }
}

/// The schema's name for the unique constraint on `transfers.idempotency_key`.
const KEY_UNIQUE_CONSTRAINT: &str = "transfers_idempotency_key_unique";

fn database_error(err: &sqlx::Error) -> Option<&PgDatabaseError> {
    err.as_database_error()?
        .try_downcast_ref::<PgDatabaseError>()
}

/// A unique violation on the idempotency key: a transfer with the key committed after the
/// statement looked the key up (its index, or the trigger's second look, refused).
fn is_key_taken(err: &sqlx::Error) -> bool {
    database_error(err).is_some_and(|db| {
        db.code() == UNIQUE_VIOLATION && db.constraint() == Some(KEY_UNIQUE_CONSTRAINT)
    })
}

/// A refused ledger insert as the error that names its cause; `overflow` says which credit
/// overflowed. Anything else is classified as every error is (`Error::from`).
fn refusal(err: sqlx::Error, overflow: impl FnOnce() -> Error) -> Error {
    let named = database_error(&err).and_then(|db| {
        let detail = db.detail().unwrap_or_default();
        match (db.code(), db.constraint()) {
            (FOREIGN_KEY_VIOLATION, Some("transfers_from_fk" | "transfers_to_fk")) => {
                missing_account(detail).map(|id| Error::NotFound {
                    entity: "account",
                    id,
                })
            }
            (CHECK_VIOLATION, Some("accounts_balance_non_negative")) => overdraft(detail),
            (NUMERIC_VALUE_OUT_OF_RANGE, _) => Some(overflow()),
            _ => None,
        }
    });
    named.unwrap_or_else(|| Error::from(err))
}

/// The id in `Key (to_account)=(7) is not present in table "accounts".`
fn missing_account(detail: &str) -> Option<i64> {
    let (_, after) = detail.split_once(")=(")?;
    let (id, _) = after.split_once(')')?;
    id.parse().ok()
}

/// The trigger's overdraft DETAIL, `{"account" : 1, "balance" : 300, "requested" : 900}`.
fn overdraft(detail: &str) -> Option<Error> {
    #[derive(Deserialize)]
    struct Overdraft {
        account: i64,
        balance: i64,
        requested: i64,
    }
    let o: Overdraft = serde_json::from_str(detail).ok()?;
    Some(Error::InsufficientFunds {
        account: o.account,
        balance_cents: o.balance,
        requested_cents: o.requested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_account_detail_names_the_id() {
        assert_eq!(
            missing_account(r#"Key (to_account)=(7) is not present in table "accounts"."#),
            Some(7)
        );
        assert_eq!(
            missing_account(
                r#"Key (from_account)=(123456789012) is not present in table "accounts"."#
            ),
            Some(123_456_789_012)
        );
        assert_eq!(missing_account("something else"), None);
    }

    #[test]
    fn an_overdraft_detail_gives_account_balance_and_amount() {
        let err = overdraft(r#"{"account" : 1, "balance" : 300, "requested" : 900}"#);
        assert!(matches!(
            err,
            Some(Error::InsufficientFunds {
                account: 1,
                balance_cents: 300,
                requested_cents: 900
            })
        ));
        assert!(overdraft("Failing row contains (1, null, -5).").is_none());
    }
}
