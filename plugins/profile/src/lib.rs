//! `profile`: user profiles edited field by field, the classic read-modify-write that
//! loses updates without versions.
//!
//! Records: `profile/<user>` → a JSON object of fields.
//! - `update {user, fields: {...}}` → the whole profile after the update, and its
//!   version. Reads the profile, merges the fields, writes it back: when two updates
//!   race, the host's version check makes one of them run again on the other's result.
//! - `get {user}` → the profile (`{}` if none) and its version (0 if none).

use serde::Deserialize;
use serde_json::{Map, Value, json};
use wasaga_guest::{Failure, Guest, Invocation, Manifest, OperationInfo};

#[derive(Deserialize)]
struct Update {
    user: String,
    fields: Map<String, Value>,
}

#[derive(Deserialize)]
struct Get {
    user: String,
}

struct Profile;

impl Guest for Profile {
    fn describe() -> Manifest {
        Manifest {
            name: "profile".into(),
            operations: vec![
                OperationInfo::new("update", "Sets some fields of a user's profile."),
                OperationInfo::new("get", "Reads a user's profile."),
            ],
            subscriptions: vec![],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        match call.operation.as_str() {
            "update" => {
                let input: Update = wasaga_guest::json::input(&call.input)?;
                let key = format!("profile/{}", input.user);
                let (mut profile, _) =
                    wasaga_guest::json::get::<Map<String, Value>>(&key)?.unwrap_or_default();
                profile.extend(input.fields);
                let version = wasaga_guest::json::set(&key, &profile)?;
                wasaga_guest::json::output(
                    &json!({"user": input.user, "profile": profile, "version": version}),
                )
            }
            "get" => {
                let input: Get = wasaga_guest::json::input(&call.input)?;
                let key = format!("profile/{}", input.user);
                let (profile, version) =
                    wasaga_guest::json::get::<Map<String, Value>>(&key)?.unwrap_or_default();
                wasaga_guest::json::output(
                    &json!({"user": input.user, "profile": profile, "version": version}),
                )
            }
            other => Err(Failure::Rejected(format!("unknown operation `{other}`"))),
        }
    }
}

wasaga_guest::export!(Profile with_types_in wasaga_guest);
