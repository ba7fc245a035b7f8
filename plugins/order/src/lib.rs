//! `order`: the order's own record and status (DESIGN Appendix A).
//!
//! Records: `order/<order>` → `{status, customer, sku, qty, amount, reason?}`.
//! - `create {order, customer, sku, qty, amount}` → `{order, status: "pending"}`
//! - `complete {order}` → `{order, status: "completed"}`; rejected if cancelled
//! - `cancel {order, reason?}` → `{order, status: "cancelled"}`; rejected if completed
//!
//! A saga passes the failure that made it compensate as `reason`, so a cancelled order
//! says why.

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
}

struct OrderService;

impl Guest for OrderService {
    fn describe() -> Manifest {
        Manifest {
            name: "order".into(),
            operations: vec![
                OperationInfo {
                    name: "create".into(),
                    compensated_by: Some("cancel".into()),
                    description: "Creates a pending order.".into(),
                },
                OperationInfo::new("complete", "Marks an order completed."),
                OperationInfo::new("cancel", "Cancels an order, with the reason."),
                OperationInfo::new(
                    "place",
                    "Starts the choreographed order flow: creates the order, publishes order-placed.",
                ),
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
            "complete" => change(json::input(&call.input)?, "completed"),
            "cancel" => change(json::input(&call.input)?, "cancelled"),
            // The choreographed order flow (see the inventory and payment services).
            "place" => {
                let output = create(json::input(&call.input)?)?;
                events::publish("order-placed", &call.input);
                Ok(output)
            }
            "complete-placed" => {
                let output = change(json::input(&call.input)?, "completed")?;
                events::publish("order-completed", &call.input);
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
