//! `payment`: customer accounts and charges per order (DESIGN Appendix A).
//!
//! Records: `account/<customer>` → `{balance}`; `charge/<order>` →
//! `{customer, amount, refunded}`. Money is in integer cents.
//! - `open-account {customer, balance}` → `{customer, balance}`
//! - `charge {customer, amount, order}` → `{order, charged}`; rejected
//!   `declined: insufficient funds`
//! - `refund {order}` → `{order, refunded}` (0 if there was no charge)
//!
//! An order is charged at most once and refunded at most once, whatever the keys.
//! Every operation is internal: accounts are opened by operators, charges and refunds
//! made by the order saga and the order flow's events, never by a client directly.
//!
//! Failure injection, driven by the input (no hidden switches):
//! `payment_transient_failures: N` makes `charge` fail transiently on its first N
//! attempts (the host's `attempt` counter), `refund_transient_failures: N` the same for
//! `refund`, as a flaky card processor would.

use serde::{Deserialize, Serialize};
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Guest, Invocation, Manifest, OperationInfo, json};

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    customer: String,
    amount: i64,
    refunded: bool,
}

#[derive(Deserialize)]
struct OpenAccount {
    customer: String,
    balance: i64,
}

#[derive(Deserialize)]
struct ChargeInput {
    customer: String,
    amount: i64,
    order: String,
    #[serde(default)]
    payment_transient_failures: u32,
}

#[derive(Deserialize)]
struct Refund {
    order: String,
    #[serde(default)]
    refund_transient_failures: u32,
}

fn flaky(attempt: u32, planned: u32) -> Result<(), Failure> {
    if attempt <= planned {
        return Err(Failure::Transient(format!(
            "card processor unavailable (attempt {attempt} of {planned} planned failures)"
        )));
    }
    Ok(())
}

struct Payment;

impl Guest for Payment {
    fn describe() -> Manifest {
        Manifest {
            name: "payment".into(),
            operations: vec![
                OperationInfo::new("open-account", "Opens a customer account with a balance.").internal(),
                OperationInfo::new("charge", "Charges a customer for an order.")
                    .compensated_by("refund")
                    .internal(),
                OperationInfo::new("refund", "Refunds an order's charge."),
                OperationInfo::new("charge-placed", "On stock-reserved: charges, says if it could."),
            ],
            subscriptions: vec![("stock-reserved".into(), "charge-placed".into())],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        match call.operation.as_str() {
            "open-account" => open_account(json::input(&call.input)?),
            "charge" => {
                let input: ChargeInput = json::input(&call.input)?;
                flaky(call.attempt, input.payment_transient_failures)?;
                charge(input)
            }
            "refund" => {
                let input: Refund = json::input(&call.input)?;
                flaky(call.attempt, input.refund_transient_failures)?;
                refund(input)
            }
            "charge-placed" => {
                let input: ChargeInput = json::input(&call.input)?;
                flaky(call.attempt, input.payment_transient_failures)?;
                let order: serde_json::Value = json::input(&call.input)?;
                match charge(input) {
                    Ok(output) => {
                        events::publish("payment-completed", &call.input, None);
                        Ok(output)
                    }
                    Err(Failure::Rejected(reason)) => {
                        let mut declined = order;
                        declined["reason"] = serde_json::Value::String(reason);
                        events::publish("payment-declined", declined.to_string().as_bytes(), None);
                        json::output(&declined)
                    }
                    Err(transient) => Err(transient),
                }
            }
            other => Err(Failure::Rejected(format!("unknown operation `{other}`"))),
        }
    }
}

fn account_key(customer: &str) -> String {
    format!("account/{customer}")
}

fn open_account(input: OpenAccount) -> Result<Vec<u8>, Failure> {
    if input.balance < 0 {
        return Err(Failure::Rejected("an opening balance cannot be negative".into()));
    }
    let key = account_key(&input.customer);
    if json::get::<Account>(&key)?.is_some() {
        return Err(Failure::Rejected(format!("customer `{}` already has an account", input.customer)));
    }
    json::set(&key, &Account { balance: input.balance })?;
    json::output(&serde_json::json!({"customer": input.customer, "balance": input.balance}))
}

fn charge(input: ChargeInput) -> Result<Vec<u8>, Failure> {
    let charge_key = format!("charge/{}", input.order);
    if let Some((existing, _)) = json::get::<Charge>(&charge_key)? {
        if existing.refunded {
            return Err(Failure::Rejected(format!("order `{}` was already refunded", input.order)));
        }
        return json::output(&serde_json::json!({"order": input.order, "charged": existing.amount}));
    }
    if input.amount <= 0 {
        return Err(Failure::Rejected("the amount must be positive".into()));
    }
    let key = account_key(&input.customer);
    let Some((mut account, _)) = json::get::<Account>(&key)? else {
        return Err(Failure::Rejected(format!("declined: customer `{}` has no account", input.customer)));
    };
    if account.balance < input.amount {
        return Err(Failure::Rejected("declined: insufficient funds".into()));
    }
    account.balance -= input.amount;
    json::set(&key, &account)?;
    json::set(&charge_key, &Charge { customer: input.customer, amount: input.amount, refunded: false })?;
    json::output(&serde_json::json!({"order": input.order, "charged": input.amount}))
}

fn refund(input: Refund) -> Result<Vec<u8>, Failure> {
    let charge_key = format!("charge/{}", input.order);
    let Some((mut charge, _)) = json::get::<Charge>(&charge_key)?.filter(|(c, _)| !c.refunded) else {
        return json::output(&serde_json::json!({"order": input.order, "refunded": 0}));
    };
    let key = account_key(&charge.customer);
    let (mut account, _) = json::get::<Account>(&key)?.unwrap_or((Account { balance: 0 }, 0));
    account.balance = account.balance.checked_add(charge.amount).ok_or_else(|| {
        Failure::Rejected(format!("refunding {} would overflow the balance", charge.amount))
    })?;
    json::set(&key, &account)?;
    charge.refunded = true;
    json::set(&charge_key, &charge)?;
    json::output(&serde_json::json!({"order": input.order, "refunded": charge.amount}))
}

wasaga_guest::export!(Payment with_types_in wasaga_guest);
