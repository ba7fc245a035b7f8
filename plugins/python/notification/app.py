"""`notification` in Python: the Rust service's port (plugins/notification), on
wasaga's Python SDK (host/templates/python/wasaga.py), with the same records,
answers and failure injection, so that the demo's sagas and their invariants hold
with either. See plugins/notification/src/lib.rs for what it does."""

from wasaga import Rejected, Service, Transient, records

app = Service("notification")


@app.operation("send-confirmation", "Sends an order confirmation.")
def send_confirmation(input, call):
    planned = input.get("notification_transient_failures", 0)
    if call.attempt <= planned:
        raise Transient(f"mail server unavailable (attempt {call.attempt} of {planned} planned failures)")
    if input.get("refuse_notification") is not None:
        raise Rejected(input["refuse_notification"])
    key = f"sent/{input['order']}"
    sent = records.get(key)
    records.set(key, {"count": (sent.value["count"] if sent else 0) + 1})
    return {"order": input["order"], "sent": True}


app.subscribe("order-completed", "send-confirmation")

Service = app.component()
