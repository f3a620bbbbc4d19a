//! AccountRepo and the ledger: the transfer rules, idempotency, batches, and the bank test.

mod common;

use std::collections::HashMap;

use common::backend::LedgerRow;
use common::{TestDb, backend_test, balance, fresh_db, open_account, raw};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlrepo::{Error, NewAccount, Transfer, TransferOutcome};

backend_test!(a_transfer_moves_money_and_writes_one_ledger_row);
async fn a_transfer_moves_money_and_writes_one_ledger_row(db: TestDb) {
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    db.accounts()
        .transfer(&Transfer::new(a, b, 300))
        .await
        .unwrap();
    assert_eq!((balance(&db, a).await, balance(&db, b).await), (700, 300));
    assert_eq!(
        db.transfers_between_accounts().await,
        [LedgerRow {
            from: Some(a),
            to: b,
            amount: 300,
            key: None
        }]
    );
    assert_eq!(db.accounts().total_balance().await.unwrap(), 1_000);
}

backend_test!(a_transfer_to_a_missing_account_moves_nothing);
async fn a_transfer_to_a_missing_account_moves_nothing(db: TestDb) {
    let a = open_account(&db, 1_000).await;
    let before = db.snapshot().await;
    let err = db
        .accounts()
        .transfer(&Transfer::new(a, 99, 300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                entity: "account",
                id: 99
            }
        ),
        "{err:?}"
    );
    let err = db
        .accounts()
        .transfer(&Transfer::new(77, a, 300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                entity: "account",
                id: 77
            }
        ),
        "{err:?}"
    );
    assert_eq!(db.snapshot().await, before);
    assert_eq!(balance(&db, a).await, 1_000);
}

backend_test!(an_overdraft_is_insufficient_funds_with_the_balance_seen);
async fn an_overdraft_is_insufficient_funds_with_the_balance_seen(db: TestDb) {
    let a = open_account(&db, 500).await;
    let b = open_account(&db, 0).await;
    let before = db.snapshot().await;
    let err = db
        .accounts()
        .transfer(&Transfer::new(a, b, 501))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsufficientFunds { account, balance_cents: 500, requested_cents: 501 } if account == a
        ),
        "{err:?}"
    );
    assert_eq!(db.snapshot().await, before);
    // Exactly the balance is fine, and leaves zero.
    db.accounts()
        .transfer(&Transfer::new(a, b, 500))
        .await
        .unwrap();
    assert_eq!(balance(&db, a).await, 0);
}

backend_test!(a_refusal_names_the_same_cause_whichever_account_has_the_larger_id);
/// The order in which a refused transfer's causes are reported does not depend on the
/// accounts' ids: the source missing, then the destination missing, then too little money, and
/// only then a credit that would overflow. (PostgreSQL's trigger takes its row locks in id
/// order, so for a source with the larger id it credits first: its credit is guarded, so that
/// an overflow there cannot be reported before the source's own refusal.)
async fn a_refusal_names_the_same_cause_whichever_account_has_the_larger_id(db: TestDb) {
    let full = open_account(&db, 0).await;
    db.accounts().deposit(full, i64::MAX - 5).await.unwrap();
    let poor = open_account(&db, 10).await;
    let rich = open_account(&db, 1_000).await;
    assert!(full < poor && poor < rich, "ids rise in opening order");
    let missing = rich + 1_000_000;
    let before = (
        balance(&db, full).await,
        balance(&db, poor).await,
        balance(&db, rich).await,
    );
    // A missing source, with a credit to `full` that would also overflow.
    let refused = db
        .accounts()
        .transfer(&Transfer::new(missing, full, i64::MAX))
        .await;
    assert!(
        matches!(refused, Err(Error::NotFound { entity: "account", id }) if id == missing),
        "{refused:?}"
    );
    // A source too poor (larger id than the destination), with an overflowing credit too.
    let refused = db
        .accounts()
        .transfer(&Transfer::new(poor, full, 1_000))
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::InsufficientFunds { account, balance_cents: 10, requested_cents: 1_000 })
                if account == poor
        ),
        "{refused:?}"
    );
    // Only a source that can pay reaches the overflowing credit.
    let refused = db
        .accounts()
        .transfer(&Transfer::new(rich, full, 100))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
    let after = (
        balance(&db, full).await,
        balance(&db, poor).await,
        balance(&db, rich).await,
    );
    assert_eq!(before, after, "a refused transfer moves nothing");
}

backend_test!(self_transfers_and_non_positive_amounts_are_invalid_input);
async fn self_transfers_and_non_positive_amounts_are_invalid_input(db: TestDb) {
    let a = open_account(&db, 500).await;
    let b = open_account(&db, 0).await;
    let before = db.snapshot().await;
    for t in [
        Transfer::new(a, a, 1),
        Transfer::new(a, b, 0),
        Transfer::new(a, b, -5),
        Transfer::new(a, b, i64::MIN),
        Transfer::new(a, b, 1).with_key(""),
    ] {
        let err = db.accounts().transfer(&t).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{t:?}: {err:?}");
    }
    assert_eq!(db.snapshot().await, before);
}

backend_test!(the_same_key_twice_moves_money_once);
async fn the_same_key_twice_moves_money_once(db: TestDb) {
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    let t = Transfer::new(a, b, 400).with_key("invoice-7");
    assert_eq!(
        db.accounts().transfer_with_outcome(&t).await.unwrap(),
        TransferOutcome::Landed
    );
    assert_eq!(
        db.accounts().transfer_with_outcome(&t).await.unwrap(),
        TransferOutcome::Replayed
    );
    assert_eq!((balance(&db, a).await, balance(&db, b).await), (600, 400));
    assert_eq!(db.transfers_between_accounts().await.len(), 1);
    // A replay succeeds even when it could no longer be afforded.
    db.accounts()
        .transfer(&Transfer::new(a, b, 600))
        .await
        .unwrap();
    db.accounts().transfer(&t).await.unwrap();
    assert_eq!((balance(&db, a).await, balance(&db, b).await), (0, 1_000));
}

backend_test!(the_same_key_with_other_parameters_is_duplicate_even_if_unaffordable);
async fn the_same_key_with_other_parameters_is_duplicate_even_if_unaffordable(db: TestDb) {
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 0).await;
    db.accounts()
        .transfer(&Transfer::new(a, b, 400).with_key("k"))
        .await
        .unwrap();
    let before = db.snapshot().await;
    for t in [
        Transfer::new(a, b, 401).with_key("k"),
        Transfer::new(a, c, 400).with_key("k"),
        Transfer::new(a, b, 1_000_000).with_key("k"),
        Transfer::new(a, 99, 400).with_key("k"),
    ] {
        let err = db.accounts().transfer(&t).await.unwrap_err();
        assert!(
            matches!(&err, Error::Duplicate { constraint } if constraint == "transfers.idempotency_key"),
            "{t:?}: {err:?}"
        );
    }
    assert_eq!(db.snapshot().await, before);
}

backend_test!(a_batch_whose_third_step_overdraws_leaves_everything_as_before);
async fn a_batch_whose_third_step_overdraws_leaves_everything_as_before(db: TestDb) {
    let a = open_account(&db, 100).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 0).await;
    let before = db.snapshot().await;
    let batch = [
        Transfer::new(a, b, 60),
        Transfer::new(b, c, 50),
        Transfer::new(a, c, 41),
        Transfer::new(c, a, 1),
    ];
    let err = db.accounts().transfer_batch(&batch).await.unwrap_err();
    assert!(
        matches!(err, Error::InsufficientFunds { account, balance_cents: 40, requested_cents: 41 } if account == a),
        "{err:?}"
    );
    assert_eq!(db.snapshot().await, before);
}

backend_test!(a_batch_valid_only_in_order_succeeds_and_reordered_fails);
async fn a_batch_valid_only_in_order_succeeds_and_reordered_fails(db: TestDb) {
    let a = open_account(&db, 100).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 0).await;
    // b and c start empty: each step spends what the step before delivered.
    let in_order = [
        Transfer::new(a, b, 100),
        Transfer::new(b, c, 100),
        Transfer::new(c, a, 30),
    ];
    let reordered = [
        in_order[1].clone(),
        in_order[0].clone(),
        in_order[2].clone(),
    ];
    let before = db.snapshot().await;
    let err = db.accounts().transfer_batch(&reordered).await.unwrap_err();
    assert!(
        matches!(err, Error::InsufficientFunds { account, balance_cents: 0, .. } if account == b),
        "{err:?}"
    );
    assert_eq!(db.snapshot().await, before);
    db.accounts().transfer_batch(&in_order).await.unwrap();
    assert_eq!(
        (
            balance(&db, a).await,
            balance(&db, b).await,
            balance(&db, c).await
        ),
        (30, 0, 70)
    );
    assert_eq!(db.transfers_between_accounts().await.len(), 3);
}

backend_test!(a_batch_with_a_missing_account_names_it_and_moves_nothing);
async fn a_batch_with_a_missing_account_names_it_and_moves_nothing(db: TestDb) {
    let a = open_account(&db, 100).await;
    let b = open_account(&db, 0).await;
    let before = db.snapshot().await;
    let batch = [Transfer::new(a, b, 10), Transfer::new(b, 404, 5)];
    let err = db.accounts().transfer_batch(&batch).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                entity: "account",
                id: 404
            }
        ),
        "{err:?}"
    );
    assert_eq!(db.snapshot().await, before);
}

backend_test!(keys_inside_a_batch_follow_the_replay_rule);
async fn keys_inside_a_batch_follow_the_replay_rule(db: TestDb) {
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    db.accounts()
        .transfer(&Transfer::new(a, b, 100).with_key("landed"))
        .await
        .unwrap();
    // A landed key with the same movement is skipped; a key repeated in the batch lands once.
    let batch = [
        Transfer::new(a, b, 100).with_key("landed"),
        Transfer::new(a, b, 10).with_key("new"),
        Transfer::new(a, b, 10).with_key("new"),
        Transfer::new(a, b, 1),
    ];
    db.accounts().transfer_batch(&batch).await.unwrap();
    assert_eq!((balance(&db, a).await, balance(&db, b).await), (889, 111));
    assert_eq!(db.transfers_between_accounts().await.len(), 3);
    // The whole batch again moves nothing but the unkeyed step.
    db.accounts().transfer_batch(&batch).await.unwrap();
    assert_eq!((balance(&db, a).await, balance(&db, b).await), (888, 112));

    let before = db.snapshot().await;
    for batch in [
        vec![
            Transfer::new(a, b, 5),
            Transfer::new(a, b, 101).with_key("landed"),
        ],
        vec![
            Transfer::new(a, b, 5).with_key("fresh"),
            Transfer::new(a, b, 6).with_key("fresh"),
        ],
        // The key rule wins over an overdraft earlier in the batch.
        vec![
            Transfer::new(b, a, 1_000_000),
            Transfer::new(a, b, 7).with_key("landed"),
        ],
    ] {
        let err = db.accounts().transfer_batch(&batch).await.unwrap_err();
        assert!(
            matches!(&err, Error::Duplicate { constraint } if constraint == "transfers.idempotency_key"),
            "{batch:?}: {err:?}"
        );
    }
    assert_eq!(db.snapshot().await, before);
}

backend_test!(invalid_steps_are_named_and_empty_batches_are_ok);
async fn invalid_steps_are_named_and_empty_batches_are_ok(db: TestDb) {
    let a = open_account(&db, 100).await;
    let b = open_account(&db, 0).await;
    db.accounts().transfer_batch(&[]).await.unwrap();
    let err = db
        .accounts()
        .transfer_batch(&[Transfer::new(a, b, 1), Transfer::new(b, b, 1)])
        .await
        .unwrap_err();
    match err {
        Error::InvalidInput(message) => assert!(message.contains("step 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(db.transfers_between_accounts().await.is_empty());
}

backend_test!(deposits_are_checked_recorded_and_return_the_new_balance);
async fn deposits_are_checked_recorded_and_return_the_new_balance(db: TestDb) {
    let a = open_account(&db, 100).await;
    assert_eq!(db.accounts().deposit(a, 50).await.unwrap(), 150);
    assert_eq!(balance(&db, a).await, 150);
    assert_eq!(
        db.ledger().await.len(),
        2,
        "the opening balance and the deposit are ledger rows"
    );
    let before = db.snapshot().await;
    assert!(matches!(
        db.accounts().deposit(a, 0).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert!(matches!(
        db.accounts().deposit(a, -1).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert!(matches!(
        db.accounts().deposit(a, i64::MAX).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert!(matches!(
        db.accounts().deposit(999, 10).await.unwrap_err(),
        Error::NotFound {
            entity: "account",
            id: 999
        }
    ));
    assert_eq!(db.snapshot().await, before);
}

backend_test!(a_credit_that_would_overflow_is_invalid_input);
async fn a_credit_that_would_overflow_is_invalid_input(db: TestDb) {
    let rich = open_account(&db, i64::MAX).await;
    let a = open_account(&db, 10).await;
    let before = db.snapshot().await;
    let err = db
        .accounts()
        .transfer(&Transfer::new(a, rich, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(db.snapshot().await, before);
}

backend_test!(opening_needs_a_non_negative_balance_and_a_known_user);
async fn opening_needs_a_non_negative_balance_and_a_known_user(db: TestDb) {
    let negative = NewAccount {
        user_id: None,
        balance_cents: -1,
    };
    assert!(matches!(
        db.accounts().open(&negative).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    let orphan = NewAccount {
        user_id: Some(5),
        balance_cents: 0,
    };
    assert!(matches!(
        db.accounts().open(&orphan).await.unwrap_err(),
        Error::ForeignKey
    ));
    assert!(db.dump("accounts").await.is_empty());
    assert!(db.accounts().get(1).await.unwrap().is_none());
}

backend_test!(
    multi_thread,
    the_bank_test_conserves_money_under_concurrent_valid_and_invalid_transfers
);
/// 16 tasks × 300 random operations among 20 accounts, valid and invalid mixed. Afterwards no
/// money was made or lost, no balance is negative, and every balance is what the ledger says
/// came in (the opening balance included) and went out.
async fn the_bank_test_conserves_money_under_concurrent_valid_and_invalid_transfers(db: TestDb) {
    const ACCOUNTS: i64 = 20;
    const TASKS: u64 = 16;
    const OPS: usize = 300;
    let seed: u64 = std::env::var("SQLREPO_BANK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("bank test seed {seed} (set SQLREPO_BANK_SEED to replay)");

    let mut opening = HashMap::new();
    for i in 0..ACCOUNTS {
        let id = open_account(&db, 10_000 + i * 100).await;
        opening.insert(id, 10_000 + i * 100);
    }
    let start_total: i64 = opening.values().sum();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let db = db.db.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ task);
            let mut outcomes: HashMap<&'static str, u32> = HashMap::new();
            let mut keys: Vec<Transfer> = Vec::new();
            for op in 0..OPS {
                let pick = |rng: &mut SmallRng| -> Transfer {
                    let from = rng.random_range(1..=ACCOUNTS + 1); // ACCOUNTS + 1 does not exist
                    let to = rng.random_range(1..=ACCOUNTS + 1);
                    let amount = match rng.random_range(0..10) {
                        0 => 50_000,                   // overdraft
                        1 => rng.random_range(-5..=0), // invalid
                        _ => rng.random_range(1..=2_000),
                    };
                    Transfer::new(from, to, amount)
                };
                let result = match rng.random_range(0..10) {
                    0..=5 => db.accounts().transfer(&pick(&mut rng)).await,
                    6 | 7 => {
                        let steps: Vec<Transfer> = (0..rng.random_range(1..=8))
                            .map(|_| pick(&mut rng))
                            .collect();
                        db.accounts().transfer_batch(&steps).await
                    }
                    _ => {
                        // Keyed transfers, sometimes replaying an earlier key exactly or with
                        // another amount.
                        let t = if !keys.is_empty() && rng.random_bool(0.5) {
                            let earlier = keys[rng.random_range(0..keys.len())].clone();
                            if rng.random_bool(0.5) {
                                earlier
                            } else {
                                Transfer {
                                    amount_cents: earlier.amount_cents + 1,
                                    ..earlier
                                }
                            }
                        } else {
                            pick(&mut rng).with_key(format!("task{task}-op{op}"))
                        };
                        let result = db.accounts().transfer(&t).await;
                        if result.is_ok() {
                            keys.push(t);
                        }
                        result
                    }
                };
                let outcome = match result {
                    Ok(()) => "ok",
                    Err(Error::NotFound { .. }) => "not_found",
                    Err(Error::InsufficientFunds { .. }) => "insufficient_funds",
                    Err(Error::InvalidInput(_)) => "invalid_input",
                    Err(Error::Duplicate { .. }) => "duplicate",
                    Err(other) => panic!("unexpected error: {other:?}"),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            outcomes
        }));
    }
    let mut outcomes: HashMap<&'static str, u32> = HashMap::new();
    for task in tasks {
        for (outcome, n) in task.await.unwrap() {
            *outcomes.entry(outcome).or_default() += n;
        }
    }
    let mut summary: Vec<_> = outcomes.iter().collect();
    summary.sort();
    println!("bank test outcomes: {summary:?}");
    for outcome in [
        "ok",
        "not_found",
        "insufficient_funds",
        "invalid_input",
        "duplicate",
    ] {
        assert!(
            outcomes.get(outcome).copied().unwrap_or(0) > 0,
            "no {outcome} outcome"
        );
    }

    assert_eq!(db.accounts().total_balance().await.unwrap(), start_total);
    let accounts = common::backend::accounts(&db).await;
    assert_eq!(accounts.len(), ACCOUNTS as usize);
    assert!(accounts.iter().all(|account| account.balance_cents >= 0));
    // Every balance is its ledger credits minus its debits, and each opening is in the ledger.
    let ledger = db.ledger().await;
    let rows = db.balances_and_ledger().await;
    assert_eq!(rows.len(), ACCOUNTS as usize);
    for (id, balance, net) in rows {
        assert_eq!(balance, net, "account {id}");
        let credits: i64 = ledger
            .iter()
            .filter(|row| row.to == id)
            .map(|row| row.amount)
            .sum();
        assert!(
            credits >= opening[&id],
            "account {id}: its opening is in the ledger"
        );
    }
    println!("bank test ledger rows: {}", ledger.len());
}

backend_test!(a_total_balance_past_i64_is_overflow_not_a_wrong_number_nor_the_callers_fault);
async fn a_total_balance_past_i64_is_overflow_not_a_wrong_number_nor_the_callers_fault(db: TestDb) {
    open_account(&db, i64::MAX).await;
    open_account(&db, 1).await;
    let err = db.accounts().total_balance().await.unwrap_err();
    // Stored data overflows, not input: InvalidInput would tell a service to answer 422.
    assert!(matches!(err, Error::Overflow(_)), "{err:?}");
}

/// Checks each account's `(id, balance, credits - debits)`, on either backend.
async fn balances_and_ledger(db: &TestDb, expected: &[(i64, i64, i64)]) {
    assert_eq!(db.balances_and_ledger().await, expected);
}

backend_test!(every_balance_can_be_rebuilt_from_the_ledger_after_opens_deposits_and_transfers);
async fn every_balance_can_be_rebuilt_from_the_ledger_after_opens_deposits_and_transfers(
    db: TestDb,
) {
    let a = open_account(&db, 500).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 1_250).await;
    db.accounts().deposit(b, 75).await.unwrap();
    db.accounts()
        .transfer(&Transfer::new(a, b, 200))
        .await
        .unwrap();
    db.accounts()
        .transfer_batch(&[Transfer::new(c, a, 50), Transfer::new(b, c, 275)])
        .await
        .unwrap();
    balances_and_ledger(&db, &[(a, 350, 350), (b, 0, 0), (c, 1_475, 1_475)]).await;
    assert_eq!(db.accounts().total_balance().await.unwrap(), 1_825);
}

backend_test!(an_opening_balance_is_one_ledger_row_from_no_account_and_is_credited_once);
async fn an_opening_balance_is_one_ledger_row_from_no_account_and_is_credited_once(db: TestDb) {
    let a = open_account(&db, 500).await;
    let empty = open_account(&db, 0).await;
    assert_eq!(balance(&db, a).await, 500);
    assert_eq!(balance(&db, empty).await, 0);
    assert_eq!(db.accounts().total_balance().await.unwrap(), 500);
    assert_eq!(
        db.ledger().await,
        [LedgerRow {
            from: None,
            to: a,
            amount: 500,
            key: None
        }],
        "one row for the opening, none for an empty opening"
    );
}

// SQLite only: a second program writing the same file.
#[tokio::test]
async fn accounts_inserted_by_other_sql_get_their_opening_in_the_ledger_too() {
    let db = fresh_db().await;
    // The seed's statement, as a Python service sharing the file runs it.
    let conn = raw(&db.path);
    conn.execute("INSERT INTO accounts (balance) VALUES (?)", [900])
        .unwrap();
    let id = conn.last_insert_rowid();
    assert_eq!(balance(&db, id).await, 900);
    let balance_and_credits: (i64, i64) = conn
        .query_row(
            "SELECT a.balance, (SELECT sum(amount) FROM transfers WHERE to_account = a.id)
             FROM accounts AS a WHERE a.id = ?",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(balance_and_credits, (900, 900));
}

backend_test!(a_failed_open_writes_no_ledger_row);
async fn a_failed_open_writes_no_ledger_row(db: TestDb) {
    let orphan = NewAccount {
        user_id: Some(42),
        balance_cents: 500,
    };
    let err = db.accounts().open(&orphan).await.unwrap_err();
    assert!(matches!(err, Error::ForeignKey), "{err:?}");
    assert!(db.dump("accounts").await.is_empty());
    assert_eq!(db.accounts().total_balance().await.unwrap(), 0);
    assert!(db.ledger().await.is_empty());
}

backend_test!(a_deposit_returns_exactly_the_balance_it_stored);
async fn a_deposit_returns_exactly_the_balance_it_stored(db: TestDb) {
    let a = open_account(&db, 40).await;
    for (amount, expected) in [(1, 41), (59, 100), (1_000_000, 1_000_100)] {
        assert_eq!(db.accounts().deposit(a, amount).await.unwrap(), expected);
        assert_eq!(balance(&db, a).await, expected);
    }
    balances_and_ledger(&db, &[(a, 1_000_100, 1_000_100)]).await;
}

backend_test!(open_returns_the_new_accounts_id_not_its_opening_ledger_rows);
async fn open_returns_the_new_accounts_id_not_its_opening_ledger_rows(db: TestDb) {
    let a = open_account(&db, 0).await;
    for _ in 0..3 {
        db.accounts().deposit(a, 5).await.unwrap();
    }
    // The opening row written inside this INSERT is ledger row 4; the account is 2.
    let b = open_account(&db, 500).await;
    assert_eq!(b, a + 1);
    assert_eq!(balance(&db, b).await, 500);
    balances_and_ledger(&db, &[(a, 15, 15), (b, 500, 500)]).await;
}

/// What one transfer of the concurrent-outcomes test must get, whoever it is carried with.
#[derive(Debug, Clone)]
enum Expected {
    Landed,
    Replayed,
    Overdrawn { account: i64, requested_cents: i64 },
    Missing(i64),
    Duplicate,
}

backend_test!(
    multi_thread,
    concurrent_transfers_each_get_exactly_their_own_outcome_and_money_is_conserved
);
async fn concurrent_transfers_each_get_exactly_their_own_outcome_and_money_is_conserved(
    db: TestDb,
) {
    // Every outcome is fixed whatever the order: rich accounts only pay (and hold more than
    // all they pay), sinks only receive, the poor (empty) accounts only try to pay, so no
    // transfer's answer depends on which neighbours its group carried.
    const TASKS: usize = 64;
    const OPS: usize = 24;
    const MISSING: i64 = 9_999_999;
    let mut rich = Vec::new();
    let mut sinks = Vec::new();
    let mut poor = Vec::new();
    for _ in 0..8 {
        rich.push(open_account(&db, 1_000_000).await);
        sinks.push(open_account(&db, 0).await);
    }
    for _ in 0..4 {
        poor.push(open_account(&db, 0).await);
    }
    let start_total = db.accounts().total_balance().await.unwrap();
    // Keys that landed before the concurrent part: replayed exactly, or reused with another
    // amount.
    let mut landed_before = Vec::new();
    for i in 0..16 {
        let t = Transfer::new(rich[i % 8], sinks[i % 8], 7).with_key(format!("before-{i}"));
        db.accounts().transfer(&t).await.unwrap();
        landed_before.push(t);
    }

    let mut plans: Vec<Vec<(Transfer, Expected)>> = Vec::new();
    for task in 0..TASKS {
        let mut plan = Vec::new();
        for op in 0..OPS {
            let n = task * OPS + op;
            let amount = 1 + (n as i64 % 97);
            let (payer, payee) = (rich[n % 8], sinks[(n / 8) % 8]);
            plan.push(match n % 8 {
                0 | 1 => (Transfer::new(payer, payee, amount), Expected::Landed),
                2 => (
                    Transfer::new(payer, payee, amount).with_key(format!("new-{n}")),
                    Expected::Landed,
                ),
                3 => {
                    let account = poor[n % 4];
                    (
                        Transfer::new(account, payee, amount),
                        Expected::Overdrawn {
                            account,
                            requested_cents: amount,
                        },
                    )
                }
                4 => (
                    Transfer::new(payer, MISSING, amount),
                    Expected::Missing(MISSING),
                ),
                5 => (
                    Transfer::new(MISSING, payee, amount),
                    Expected::Missing(MISSING),
                ),
                6 => {
                    let earlier = &landed_before[n % 16];
                    (
                        Transfer {
                            amount_cents: earlier.amount_cents + 1,
                            ..earlier.clone()
                        },
                        Expected::Duplicate,
                    )
                }
                _ => (landed_before[n % 16].clone(), Expected::Replayed),
            });
        }
        plans.push(plan);
    }
    // Pairs of tasks race the same new key with the same movement: exactly one of each pair
    // lands, the other is a replay.
    let racing: Vec<Transfer> = (0..TASKS / 2)
        .map(|i| Transfer::new(rich[i % 8], sinks[i % 8], 11).with_key(format!("race-{i}")))
        .collect();

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for (task, plan) in plans.iter().cloned().enumerate() {
        let db = db.db.clone();
        let start = start.clone();
        let race = racing[task / 2].clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let race_outcome = db.accounts().transfer_with_outcome(&race).await;
            let mut results = Vec::new();
            for (t, _) in &plan {
                results.push(db.accounts().transfer_with_outcome(t).await);
            }
            (race_outcome, results)
        }));
    }

    let mut landed_amounts: HashMap<i64, i64> = HashMap::new();
    let mut landed_rows = 0;
    let mut race_landed: HashMap<String, usize> = HashMap::new();
    for (task, handle) in tasks.into_iter().enumerate() {
        let (race_outcome, results) = handle.await.unwrap();
        let race = &racing[task / 2];
        match race_outcome {
            Ok(TransferOutcome::Landed) => {
                *race_landed
                    .entry(race.idempotency_key.clone().unwrap())
                    .or_default() += 1;
                *landed_amounts.entry(race.from).or_default() -= race.amount_cents;
                *landed_amounts.entry(race.to).or_default() += race.amount_cents;
                landed_rows += 1;
            }
            Ok(TransferOutcome::Replayed) => {}
            Err(err) => panic!("task {task}: the racing key failed: {err:?}"),
        }
        for ((t, expected), result) in plans[task].iter().zip(results) {
            match (expected, &result) {
                (Expected::Landed, Ok(TransferOutcome::Landed)) => {
                    *landed_amounts.entry(t.from).or_default() -= t.amount_cents;
                    *landed_amounts.entry(t.to).or_default() += t.amount_cents;
                    landed_rows += 1;
                }
                (Expected::Replayed, Ok(TransferOutcome::Replayed)) => {}
                (
                    Expected::Overdrawn {
                        account,
                        requested_cents,
                    },
                    Err(Error::InsufficientFunds {
                        account: got_account,
                        balance_cents: 0,
                        requested_cents: got_requested,
                    }),
                ) if account == got_account && requested_cents == got_requested => {}
                (
                    Expected::Missing(id),
                    Err(Error::NotFound {
                        entity: "account",
                        id: got,
                    }),
                ) if id == got => {}
                (Expected::Duplicate, Err(Error::Duplicate { constraint }))
                    if constraint == "transfers.idempotency_key" => {}
                _ => panic!("task {task}: {t:?} expected {expected:?}, got {result:?}"),
            }
        }
    }
    assert_eq!(race_landed.len(), TASKS / 2, "every racing key landed once");
    assert!(race_landed.values().all(|&n| n == 1), "{race_landed:?}");

    // What the database holds is exactly what the callers were told.
    assert_eq!(db.accounts().total_balance().await.unwrap(), start_total);
    for (id, opening) in rich
        .iter()
        .map(|&id| (id, 1_000_000))
        .chain(sinks.iter().chain(&poor).map(|&id| (id, 0)))
    {
        let before: i64 = landed_before
            .iter()
            .map(|t| {
                if t.from == id {
                    -t.amount_cents
                } else if t.to == id {
                    t.amount_cents
                } else {
                    0
                }
            })
            .sum();
        let during = landed_amounts.get(&id).copied().unwrap_or(0);
        assert_eq!(
            balance(&db, id).await,
            opening + before + during,
            "account {id}"
        );
    }
    // Rows between accounts: opening balances are ledger rows too, from no account.
    assert_eq!(
        db.transfers_between_accounts().await.len() as i64,
        16 + landed_rows
    );
}
