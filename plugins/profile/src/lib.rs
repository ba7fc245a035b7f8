//! `profile`: user profiles edited field by field, the classic read-modify-write that
//! loses updates without versions.
//!
//! Records: `profile/<user>` → a JSON object of fields.
//! - `update {user, fields: {...}}` → the whole profile after the update, and its
//!   version. Reads the profile, merges the fields, writes it back: when two updates
//!   race, the host's version check makes one of them run again on the other's result.
//! - `get {user}` → the profile (`{}` if none) and its version (0 if none).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

#[derive(Deserialize)]
struct Update {
    user: String,
    fields: Map<String, Value>,
}

#[derive(Deserialize)]
struct Get {
    user: String,
}

#[derive(Serialize)]
struct Profile {
    user: String,
    profile: Map<String, Value>,
    version: u64,
}

fn update(input: Update, _: &Invocation) -> Result<Profile, Failure> {
    let key = format!("profile/{}", input.user);
    let (mut profile, _) = json::get::<Map<String, Value>>(&key)?.unwrap_or_default();
    profile.extend(input.fields);
    let version = json::set(&key, &profile)?;
    Ok(Profile { user: input.user, profile, version })
}

fn get(input: Get, _: &Invocation) -> Result<Profile, Failure> {
    let key = format!("profile/{}", input.user);
    let (profile, version) = json::get::<Map<String, Value>>(&key)?.unwrap_or_default();
    Ok(Profile { user: input.user, profile, version })
}

wasaga_guest::service!(
    Service::new("profile")
        .operation(OperationInfo::new("update", "Sets some fields of a user's profile."), update)
        .operation(OperationInfo::new("get", "Reads a user's profile."), get)
);
