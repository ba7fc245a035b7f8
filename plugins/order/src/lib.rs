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
            ],
            subscriptions: vec![],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        match call.operation.as_str() {
            "create" => create(json::input(&call.input)?),
            "complete" => change(json::input(&call.input)?, "completed"),
            "cancel" => change(json::input(&call.input)?, "cancelled"),
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
