//! `order`: the order's own record and status (DESIGN Appendix A).
//!
//! Records: `order/<order>` → `{status, customer, sku, qty, amount, reason?}`.
//! - `create {order, customer, sku, qty, amount}` → `{order, status}`: `pending` for a
//!   new order; the same order created again with the same details answers its status;
//!   with other details it is refused (an order id names one order)
//! - `complete {order}` → `{order, status: "completed"}`; rejected if cancelled
//! - `cancel {order, reason?}` → `{order, status: "cancelled"}`; rejected if completed;
//!   an order never created has nothing to undo: `{order, status: "cancelled",
//!   created: false}` (a compensation must not fail for a step that never committed,
//!   as `wasaga saga verify` checks)
//! - `place {...}`: the choreographed flow's entry (the only public operation): creates
//!   the order and publishes `order-placed` in the chain named by the order id
//!
//! A saga passes the failure that made it compensate as `reason`, so a cancelled order
//! says why.
//!
//! Failure injection, driven by the input (no hidden switches): with
//! `refuse_completion: "why"`, `complete` refuses, as a warehouse that lost the goods
//! would (the saga's pivot refused). Everything but `place` is internal: only the saga, the event deliveries
//! and operators may create, complete or cancel an order.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    status: String,
    customer: String,
    sku: String,
    qty: u64,
    amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Create {
    order: String,
    customer: String,
    sku: String,
    qty: u64,
    amount: i64,
}

#[derive(Deserialize)]
struct Change {
    order: String,
    reason: Option<String>,
    #[serde(default)]
    refuse_completion: Option<String>,
}

fn complete(input: Change, _: &Invocation) -> Result<Value, Failure> {
    if let Some(why) = input.refuse_completion.clone() {
        return Err(Failure::Rejected(why));
    }
    change(input, "completed")
}

// The choreographed order flow (see the inventory and payment services). The flow's
// chain is named by the order id, so that it is found by the id people know; the
// events after it inherit the chain.

fn place(input: Create, call: &Invocation) -> Result<Value, Failure> {
    let chain = input.order.clone();
    let output = create(input)?;
    events::publish("order-placed", &call.input, Some(&chain));
    Ok(output)
}

fn complete_placed(input: Change, call: &Invocation) -> Result<Value, Failure> {
    let output = change(input, "completed")?;
    events::publish("order-completed", &call.input, None);
    Ok(output)
}

wasaga_guest::service!(
    Service::new("order")
        .operation(
            OperationInfo::new("create", "Creates a pending order.").compensated_by("cancel").internal(),
            |input, _| create(input)
        )
        .operation(OperationInfo::new("complete", "Marks an order completed.").internal(), complete)
        .operation(OperationInfo::new("cancel", "Cancels an order, with the reason."), |input, _| {
            change(input, "cancelled")
        })
        .operation(
            OperationInfo::new(
                "place",
                "Starts the choreographed order flow: creates the order, publishes order-placed.",
            )
            .public(),
            place
        )
        .operation(
            OperationInfo::new("complete-placed", "On payment-completed: completes the order."),
            complete_placed
        )
        .operation(
            OperationInfo::new("cancel-placed", "On payment-declined or stock-rejected: cancels the order."),
            |input, _| change(input, "cancelled")
        )
        .subscribe("payment-completed", "complete-placed")
        .subscribe("payment-declined", "cancel-placed")
        .subscribe("stock-rejected", "cancel-placed")
);

fn create(input: Create) -> Result<Value, Failure> {
    let key = format!("order/{}", input.order);
    if let Some((existing, _)) = json::get::<Order>(&key)? {
        let same = (&existing.customer, &existing.sku, existing.qty, existing.amount)
            == (&input.customer, &input.sku, input.qty, input.amount);
        if !same {
            return Err(Failure::Rejected(format!(
                "order `{}` already exists with other details (customer, sku, qty or amount)",
                input.order
            )));
        }
        return Ok(serde_json::json!({"order": input.order, "status": existing.status}));
    }
    let order = Order {
        status: "pending".into(),
        customer: input.customer,
        sku: input.sku,
        qty: input.qty,
        amount: input.amount,
        reason: None,
    };
    json::set(&key, &order)?;
    Ok(serde_json::json!({"order": input.order, "status": "pending"}))
}

fn change(input: Change, to: &str) -> Result<Value, Failure> {
    let key = format!("order/{}", input.order);
    let Some((mut order, _)) = json::get::<Order>(&key)? else {
        if to == "cancelled" {
            return Ok(serde_json::json!({"order": input.order, "status": to, "created": false}));
        }
        return Err(Failure::Rejected(format!("no order `{}`", input.order)));
    };
    if order.status != to {
        if order.status != "pending" {
            return Err(Failure::Rejected(format!("order `{}` is already {}", input.order, order.status)));
        }
        order.status = to.into();
        order.reason = input.reason;
        json::set(&key, &order)?;
    }
    Ok(serde_json::json!({"order": input.order, "status": to}))
}
