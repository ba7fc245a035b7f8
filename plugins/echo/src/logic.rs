//! The operations of `echo`, over the host imports.

use serde_json::{Value, json};
use wasaga_guest::Failure;
use wasaga_guest::wasaga::plugin::{events, log, store};

pub fn handle(operation: &str, input: &[u8], correlation_id: &str) -> Result<Vec<u8>, Failure> {
    if operation == "echo" {
        return Ok(input.to_vec());
    }
    let input: Value =
        serde_json::from_slice(input).map_err(|e| Failure::Rejected(format!("input is not JSON: {e}")))?;
    let text = |name: &str| input[name].as_str().unwrap_or_default().to_owned();
    let version = |name: &str| input[name].as_u64();
    let output = match operation {
        "get" => {
            let key = text("key");
            match store::get(&key) {
                Some(entry) => json!({"key": key, "value": parse(&entry.value), "version": entry.version}),
                None => json!({"key": key, "value": null, "version": null}),
            }
        }
        "set" => {
            let key = text("key");
            let version = store::set(&key, input["value"].to_string().as_bytes()).map_err(refuse)?;
            json!({"key": key, "version": version})
        }
        "put" => {
            let key = text("key");
            let value = input["value"].to_string();
            let version = store::put(&key, value.as_bytes(), version("expected")).map_err(refuse)?;
            json!({"key": key, "version": version})
        }
        "delete" => {
            let key = text("key");
            store::delete(&key, version("expected")).map_err(refuse)?;
            json!({"key": key})
        }
        "scan" => {
            let start_after = input["start_after"].as_str();
            let limit = version("limit").unwrap_or(100) as u32;
            let rows = store::scan(&text("prefix"), start_after, limit);
            rows.into_iter()
                .map(|(key, e)| json!({"key": key, "value": parse(&e.value), "version": e.version}))
                .collect()
        }
        "publish" => {
            let chain = input["chain"].as_str();
            events::publish(&text("topic"), input["payload"].to_string().as_bytes(), chain);
            json!({})
        }
        "log" => {
            let message = text("message");
            for level in [log::Level::Debug, log::Level::Info, log::Level::Warn, log::Level::Error] {
                log::log(level, &message);
            }
            println!("stdout: {message}");
            eprintln!("stderr: {message}");
            json!({})
        }
        "publish-then-refuse" => {
            events::publish(&text("topic"), input["payload"].to_string().as_bytes(), None);
            return Err(Failure::Rejected("refused after publishing".into()));
        }
        "append" => {
            let key = format!("journal/{correlation_id}");
            let mut list = match store::get(&key) {
                Some(entry) => parse(&entry.value),
                None => json!([]),
            };
            if let Some(list) = list.as_array_mut() {
                list.push(input["n"].clone());
            }
            store::set(&key, list.to_string().as_bytes()).map_err(refuse)?;
            list
        }
        "burn" => {
            // Busy for `ms` milliseconds (at most 2 s): a slow call that holds its instance.
            let ms = version("ms").unwrap_or(0).min(2000);
            let began = std::time::Instant::now();
            while began.elapsed().as_millis() < u128::from(ms) {
                std::hint::spin_loop();
            }
            json!({"burned_ms": ms})
        }
        "agree" => {
            // Reads every key given; all of them holding one value is an answer, any two
            // apart a transient failure (a call whose reads must agree with each other).
            let keys: Vec<String> = input["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect();
            let values: Vec<Value> =
                keys.iter().map(|key| store::get(key).map_or(Value::Null, |e| parse(&e.value))).collect();
            if values.windows(2).any(|pair| pair[0] != pair[1]) {
                return Err(Failure::Transient(format!("the records disagree: {values:?}")));
            }
            json!({"value": values.first()})
        }
        "fail" => {
            let reason = text("reason");
            return Err(match input["kind"].as_str() {
                Some("transient") => Failure::Transient(reason),
                _ => Failure::Rejected(reason),
            });
        }
        other => return Err(Failure::Rejected(format!("unknown operation `{other}`"))),
    };
    Ok(output.to_string().into_bytes())
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
}

fn refuse(error: store::StoreError) -> Failure {
    Failure::Rejected(match error {
        store::StoreError::Conflict(c) => {
            format!("conflict on `{}`: expected {:?}, found {:?}", c.key, c.expected, c.actual)
        }
        store::StoreError::Invalid(message) => format!("invalid: {message}"),
    })
}
