//! `inventory`: stock per SKU and reservations per order (DESIGN Appendix A).
//!
//! Records: `stock/<sku>` → `{available, reserved}`; `reservation/<order>` →
//! `{sku, qty, released}`.
//! - `restock {sku, qty}` → `{sku, available}`
//! - `reserve {sku, qty, order}` → `{sku, order, qty}`; rejected `insufficient stock`
//! - `release {order}` → `{order, released}` (0 if nothing was held)
//!
//! Failure injection, driven by the input (no hidden switches): with
//! `release_transient_failures: N`, `release` fails transiently on its first N attempts
//! (the host's `attempt` counter), as a flaky warehouse system would.
//!
//! Reserving the same order twice holds the stock once; releasing twice gives it back
//! once. Stock never goes negative: a reservation reads the stock it changes, so two
//! that race are serialised by the host's version check; and it never wraps around: a
//! restock that would overflow the count is refused.
//!
//! Every operation is internal: stock is added by operators and held or given back by
//! the order saga and the order flow's events, never by a client directly.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stock {
    available: u64,
    reserved: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    sku: String,
    qty: u64,
    /// Kept after a release, so that a late duplicate cannot hold the stock again and
    /// the record tells what happened.
    #[serde(default)]
    released: bool,
}

#[derive(Deserialize)]
struct Restock {
    sku: String,
    qty: u64,
}

#[derive(Deserialize)]
struct Reserve {
    sku: String,
    qty: u64,
    order: String,
}

#[derive(Deserialize)]
struct Release {
    order: String,
    #[serde(default)]
    release_transient_failures: u32,
}

fn release_op(input: Release, call: &Invocation) -> Result<Value, Failure> {
    if call.attempt <= input.release_transient_failures {
        return Err(Failure::Transient(format!(
            "warehouse system unavailable (attempt {} of {} planned failures)",
            call.attempt, input.release_transient_failures
        )));
    }
    release(input)
}

// The choreographed order flow: the event's payload is the order; each step answers by
// publishing the next event with the same payload.

fn reserve_placed(order: Value, call: &Invocation) -> Result<Value, Failure> {
    match reserve(json::input(&call.input)?) {
        Ok(output) => {
            events::publish("stock-reserved", &call.input, None);
            Ok(output)
        }
        Err(Failure::Rejected(reason)) => {
            let mut refused = order;
            refused["reason"] = Value::String(reason);
            events::publish("stock-rejected", refused.to_string().as_bytes(), None);
            Ok(refused)
        }
        Err(transient) => Err(transient),
    }
}

fn release_placed(input: Release, call: &Invocation) -> Result<Value, Failure> {
    let output = release(input)?;
    events::publish("stock-released", &call.input, None);
    Ok(output)
}

wasaga_guest::service!(
    Service::new("inventory")
        .operation(OperationInfo::new("restock", "Adds stock of a SKU.").internal(), |input, _| restock(
            input
        ))
        .operation(
            OperationInfo::new("reserve", "Holds stock of a SKU for an order.")
                .compensated_by("release")
                .internal(),
            |input, _| reserve(input)
        )
        .operation(OperationInfo::new("release", "Gives an order's held stock back."), release_op)
        .operation(
            OperationInfo::new("reserve-placed", "On order-placed: holds the stock, says if it could."),
            reserve_placed
        )
        .operation(
            OperationInfo::new("release-placed", "On payment-declined: gives the stock back."),
            release_placed
        )
        .subscribe("order-placed", "reserve-placed")
        .subscribe("payment-declined", "release-placed")
);

fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

fn restock(input: Restock) -> Result<Value, Failure> {
    let key = stock_key(&input.sku);
    let (mut stock, _) = json::get::<Stock>(&key)?.unwrap_or_default();
    stock.available = stock
        .available
        .checked_add(input.qty)
        .filter(|total| total.checked_add(stock.reserved).is_some())
        .ok_or_else(|| {
            Failure::Rejected(format!("restocking {} would overflow the stock count", input.qty))
        })?;
    json::set(&key, &stock)?;
    Ok(serde_json::json!({"sku": input.sku, "available": stock.available}))
}

fn reserve(input: Reserve) -> Result<Value, Failure> {
    let held = format!("reservation/{}", input.order);
    if let Some((existing, _)) = json::get::<Reservation>(&held)? {
        if existing.released {
            return Err(Failure::Rejected(format!("order `{}` was already released", input.order)));
        }
        return Ok(serde_json::json!({"sku": existing.sku, "order": input.order, "qty": existing.qty}));
    }
    let key = stock_key(&input.sku);
    let (mut stock, _) = json::get::<Stock>(&key)?.unwrap_or_default();
    if input.qty == 0 || stock.available < input.qty {
        return Err(Failure::Rejected("insufficient stock".into()));
    }
    stock.available -= input.qty;
    stock.reserved += input.qty;
    json::set(&key, &stock)?;
    json::set(&held, &Reservation { sku: input.sku.clone(), qty: input.qty, released: false })?;
    Ok(serde_json::json!({"sku": input.sku, "order": input.order, "qty": input.qty}))
}

fn release(input: Release) -> Result<Value, Failure> {
    let held = format!("reservation/{}", input.order);
    let Some((mut reservation, _)) = json::get::<Reservation>(&held)?.filter(|(r, _)| !r.released) else {
        return Ok(serde_json::json!({"order": input.order, "released": 0}));
    };
    let key = stock_key(&reservation.sku);
    let (mut stock, _) = json::get::<Stock>(&key)?.unwrap_or_default();
    stock.available += reservation.qty;
    stock.reserved = stock.reserved.saturating_sub(reservation.qty);
    json::set(&key, &stock)?;
    reservation.released = true;
    json::set(&held, &reservation)?;
    Ok(serde_json::json!({"order": input.order, "released": reservation.qty}))
}
