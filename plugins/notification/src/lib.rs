//! `notification`: order confirmations (DESIGN Appendix A).
//!
//! Records: `sent/<order>` → `{count}`: how many confirmations went out, so that a
//! test can prove each order was notified exactly once.
//! - `send-confirmation {order, customer?}` → `{order, sent: true}`
//!
//! Failure injection, driven by the input (no hidden switches): with
//! `notification_transient_failures: N`, the call fails transiently on its first N
//! attempts (the host's `attempt` counter), as a flaky mail server would; with
//! `refuse_notification: "why"` it refuses, as a mail server that rejects the address
//! would (a refusal after the saga's pivot).

use serde::{Deserialize, Serialize};
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Sent {
    count: u64,
}

#[derive(Deserialize)]
struct Send {
    order: String,
    #[serde(default)]
    notification_transient_failures: u32,
    #[serde(default)]
    refuse_notification: Option<String>,
}

fn send_confirmation(input: Send, call: &Invocation) -> Result<serde_json::Value, Failure> {
    if call.attempt <= input.notification_transient_failures {
        return Err(Failure::Transient(format!(
            "mail server unavailable (attempt {} of {} planned failures)",
            call.attempt, input.notification_transient_failures
        )));
    }
    if let Some(why) = input.refuse_notification {
        return Err(Failure::Rejected(why));
    }
    let key = format!("sent/{}", input.order);
    let (mut sent, _) = json::get::<Sent>(&key)?.unwrap_or_default();
    sent.count += 1;
    json::set(&key, &sent)?;
    Ok(serde_json::json!({"order": input.order, "sent": true}))
}

wasaga_guest::service!(
    Service::new("notification")
        .operation(OperationInfo::new("send-confirmation", "Sends an order confirmation."), send_confirmation)
        .subscribe("order-completed", "send-confirmation")
);
