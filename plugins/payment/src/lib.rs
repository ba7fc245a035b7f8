//! `payment`: customer accounts and charges per order (DESIGN Appendix A).
//!
//! Records: `account/<customer>` → `{balance}`; `charge/<order>` →
//! `{customer, amount, refunded}`. Money is in integer cents.
//! - `open-account {customer, balance}` → `{customer, balance}`
//! - `charge {customer, amount, order}` → `{order, charged}`; rejected
//!   `declined: insufficient funds`
//! - `refund {order}` → `{order, refunded}` (0 if there was no charge)
//! - `configure {provider}` → `{provider}`: where the money is (a URL, or null: here)
//!
//! Two modes. Without a `settings` record the money is kept here, in `account/*`. With
//! `settings` = `{"provider": "http://127.0.0.1:PORT"}` (the demo's, a card processor
//! `wasaga provider` runs), accounts, charges and refunds are the processor's: `POST
//! /v1/customers`, `/v1/charges` (402 is a decline), `/v1/refunds`, with the API key
//! the operator grants as the secret `provider-key`, and the idempotency key the host
//! adds; `charge/<order>` then also holds the processor's charge id.
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
use serde_json::Value;
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, http, json};

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Charge {
    customer: String,
    amount: i64,
    refunded: bool,
    /// The processor's charge, in its mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

/// Where the money is: the processor's URL, or here.
#[derive(Debug, Deserialize)]
struct Settings {
    provider: String,
}

#[derive(Deserialize)]
struct Configure {
    provider: Option<String>,
}

fn configure(input: Configure) -> Result<Value, Failure> {
    match &input.provider {
        Some(url) => {
            json::set("settings", &serde_json::json!({"provider": url}))?;
        }
        None => wasaga_guest::wasaga::plugin::store::delete("settings", None).map_err(json::store_failure)?,
    }
    Ok(serde_json::json!({"provider": input.provider}))
}

fn provider() -> Result<Option<String>, Failure> {
    Ok(json::get::<Settings>("settings")?.map(|(s, _)| s.provider.trim_end_matches('/').to_owned()))
}

/// A call of the processor: its answer's status and JSON body.
fn processor(url: &str, body: Value) -> Result<(u16, Value), Failure> {
    let response = http::Request::post(url)
        .header("authorization", "Bearer {{secret.provider-key}}")
        .json(&body)?
        .send()?;
    let answer = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    match response.status {
        200..=299 | 400..=499 => Ok((response.status, answer)),
        status => Err(Failure::Transient(format!("the card processor answered {status}: {answer}"))),
    }
}

fn reason(answer: &Value) -> String {
    answer["error"]["message"].as_str().unwrap_or("refused").to_owned()
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

fn charge_op(input: ChargeInput, call: &Invocation) -> Result<Value, Failure> {
    flaky(call.attempt, input.payment_transient_failures)?;
    charge(input)
}

fn refund_op(input: Refund, call: &Invocation) -> Result<Value, Failure> {
    flaky(call.attempt, input.refund_transient_failures)?;
    refund(input)
}

/// The choreographed order flow: the event's payload is the order; the answer is the
/// next event, with the same payload.
fn charge_placed(order: Value, call: &Invocation) -> Result<Value, Failure> {
    let input: ChargeInput = json::input(&call.input)?;
    flaky(call.attempt, input.payment_transient_failures)?;
    match charge(input) {
        Ok(output) => {
            events::publish("payment-completed", &call.input, None);
            Ok(output)
        }
        Err(Failure::Rejected(reason)) => {
            let mut declined = order;
            declined["reason"] = Value::String(reason);
            events::publish("payment-declined", declined.to_string().as_bytes(), None);
            Ok(declined)
        }
        Err(transient) => Err(transient),
    }
}

wasaga_guest::service!(
    Service::new("payment")
        .operation(
            OperationInfo::new("open-account", "Opens a customer account with a balance.").internal(),
            |input, _| open_account(input)
        )
        .operation(
            OperationInfo::new("charge", "Charges a customer for an order.")
                .compensated_by("refund")
                .internal(),
            charge_op
        )
        .operation(OperationInfo::new("refund", "Refunds an order's charge."), refund_op)
        .operation(
            OperationInfo::new("charge-placed", "On stock-reserved: charges, says if it could."),
            charge_placed
        )
        .operation(
            OperationInfo::new("configure", "Sets where the money is: a card processor's URL, or here.")
                .internal(),
            |input, _| configure(input)
        )
        .subscribe("stock-reserved", "charge-placed")
        .destination("http://127.0.0.1:*/v1/", &["POST"])
        .destination("http://localhost:*/v1/", &["POST"])
);

fn account_key(customer: &str) -> String {
    format!("account/{customer}")
}

fn open_account(input: OpenAccount) -> Result<Value, Failure> {
    if input.balance < 0 {
        return Err(Failure::Rejected("an opening balance cannot be negative".into()));
    }
    if let Some(url) = provider()? {
        let (status, answer) = processor(
            &format!("{url}/v1/customers"),
            serde_json::json!({"id": input.customer, "balance": input.balance}),
        )?;
        if status != 200 {
            return Err(Failure::Rejected(format!(
                "the card processor refused the account: {}",
                reason(&answer)
            )));
        }
        return Ok(serde_json::json!({"customer": input.customer, "balance": input.balance}));
    }
    let key = account_key(&input.customer);
    if json::get::<Account>(&key)?.is_some() {
        return Err(Failure::Rejected(format!("customer `{}` already has an account", input.customer)));
    }
    json::set(&key, &Account { balance: input.balance })?;
    Ok(serde_json::json!({"customer": input.customer, "balance": input.balance}))
}

fn charge(input: ChargeInput) -> Result<Value, Failure> {
    let charge_key = format!("charge/{}", input.order);
    if let Some((existing, _)) = json::get::<Charge>(&charge_key)? {
        if existing.refunded {
            return Err(Failure::Rejected(format!("order `{}` was already refunded", input.order)));
        }
        return Ok(serde_json::json!({"order": input.order, "charged": existing.amount}));
    }
    if input.amount <= 0 {
        return Err(Failure::Rejected("the amount must be positive".into()));
    }
    if let Some(url) = provider()? {
        let body =
            serde_json::json!({"customer": input.customer, "amount": input.amount, "order": input.order});
        let (status, answer) = processor(&format!("{url}/v1/charges"), body)?;
        if status == 402 {
            return Err(Failure::Rejected(format!("declined: {}", reason(&answer))));
        }
        let Some(id) = answer["id"].as_str().filter(|_| status == 200) else {
            return Err(Failure::Rejected(format!(
                "the card processor refused the charge: {}",
                reason(&answer)
            )));
        };
        let charge =
            Charge { customer: input.customer, amount: input.amount, refunded: false, id: Some(id.into()) };
        json::set(&charge_key, &charge)?;
        return Ok(serde_json::json!({"order": input.order, "charged": input.amount}));
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
    json::set(
        &charge_key,
        &Charge { customer: input.customer, amount: input.amount, refunded: false, id: None },
    )?;
    Ok(serde_json::json!({"order": input.order, "charged": input.amount}))
}

fn refund(input: Refund) -> Result<Value, Failure> {
    let charge_key = format!("charge/{}", input.order);
    let Some((mut charge, _)) = json::get::<Charge>(&charge_key)?.filter(|(c, _)| !c.refunded) else {
        return Ok(serde_json::json!({"order": input.order, "refunded": 0}));
    };
    if let (Some(url), Some(id)) = (provider()?, &charge.id) {
        let (status, answer) = processor(&format!("{url}/v1/refunds"), serde_json::json!({"charge": id}))?;
        let done = status == 200 || answer["error"]["code"] == "charge_already_refunded";
        if !done {
            return Err(Failure::Transient(format!(
                "the card processor did not refund: {}",
                reason(&answer)
            )));
        }
        charge.refunded = true;
        json::set(&charge_key, &charge)?;
        return Ok(serde_json::json!({"order": input.order, "refunded": charge.amount}));
    }
    let key = account_key(&charge.customer);
    let (mut account, _) = json::get::<Account>(&key)?.unwrap_or((Account { balance: 0 }, 0));
    account.balance = account.balance.checked_add(charge.amount).ok_or_else(|| {
        Failure::Rejected(format!("refunding {} would overflow the balance", charge.amount))
    })?;
    json::set(&key, &account)?;
    charge.refunded = true;
    json::set(&charge_key, &charge)?;
    Ok(serde_json::json!({"order": input.order, "refunded": charge.amount}))
}
