//! `order`: the order's own record and status (DESIGN Appendix A).
//!
//! Records: `order/<order>` → `{status, customer, sku, qty, amount, reason?}`.
//! - `create {order, customer, sku, qty, amount}` → `{order, status}`: `pending` for a
//!   new order; the same order created again with the same details answers its status;
//!   with other details it is refused (an order id names one order)
//! - `complete {order}` → `{order, status: "completed"}`; rejected if cancelled
//! - `cancel {order, reason?}` → `{order, status: "cancelled"}`; rejected if completed
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
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Guest, Invocation, Manifest, OperationInfo, json};

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

struct OrderService;

impl Guest for OrderService {
    fn describe() -> Manifest {
        Manifest {
            name: "order".into(),
            operations: vec![
                OperationInfo::new("create", "Creates a pending order.").compensated_by("cancel").internal(),
                OperationInfo::new("complete", "Marks an order completed.").internal(),
                OperationInfo::new("cancel", "Cancels an order, with the reason."),
                OperationInfo::new(
                    "place",
                    "Starts the choreographed order flow: creates the order, publishes order-placed.",
                )
                .public(),
                OperationInfo::new("complete-placed", "On payment-completed: completes the order."),
                OperationInfo::new(
                    "cancel-placed",
                    "On payment-declined or stock-rejected: cancels the order.",
                ),
            ],
            subscriptions: vec![
                ("payment-completed".into(), "complete-placed".into()),
                ("payment-declined".into(), "cancel-placed".into()),
                ("stock-rejected".into(), "cancel-placed".into()),
            ],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        match call.operation.as_str() {
            "create" => create(json::input(&call.input)?),
            "complete" => {
                let input: Change = json::input(&call.input)?;
                if let Some(why) = input.refuse_completion {
                    return Err(Failure::Rejected(why));
                }
                change(input, "completed")
            }
            "cancel" => change(json::input(&call.input)?, "cancelled"),
            // The choreographed order flow (see the inventory and payment services).
            // The flow's chain is named by the order id, so that it is found by the id
            // people know; the events after it inherit the chain.
            "place" => {
                let input: Create = json::input(&call.input)?;
                let chain = input.order.clone();
                let output = create(input)?;
                events::publish("order-placed", &call.input, Some(&chain));
                Ok(output)
            }
            "complete-placed" => {
                let output = change(json::input(&call.input)?, "completed")?;
                events::publish("order-completed", &call.input, None);
                Ok(output)
            }
            "cancel-placed" => change(json::input(&call.input)?, "cancelled"),
            other => Err(Failure::Rejected(format!("unknown operation `{other}`"))),
        }
    }
}

fn create(input: Create) -> Result<Vec<u8>, Failure> {
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
        return json::output(&serde_json::json!({"order": input.order, "status": existing.status}));
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
    json::output(&serde_json::json!({"order": input.order, "status": "pending"}))
}

fn change(input: Change, to: &str) -> Result<Vec<u8>, Failure> {
    let key = format!("order/{}", input.order);
    let Some((mut order, _)) = json::get::<Order>(&key)? else {
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
    json::output(&serde_json::json!({"order": input.order, "status": to}))
}

wasaga_guest::export!(OrderService with_types_in wasaga_guest);
