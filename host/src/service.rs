//! The plugin contract in the host's own types: what a service says about itself
//! (its [`Manifest`]), what it is asked ([`Invocation`]) and how it refuses
//! ([`Failure`]). These mirror `wit/service.wit`; `runtime::bindings` converts.

use std::fmt;

use serde::Serialize;

/// A plugin version's identity: the sha256 of its wasm bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginDigest([u8; 32]);

impl PluginDigest {
    pub fn of(wasm: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        PluginDigest(Sha256::digest(wasm).into())
    }

    /// Reads back what [`fmt::Display`] wrote: `sha256:` and 64 hex digits.
    pub fn parse(text: &str) -> Option<PluginDigest> {
        let hex = text.strip_prefix("sha256:")?;
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(PluginDigest(bytes))
    }
}

impl fmt::Display for PluginDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PluginDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Who may call an operation directly over the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Any client (with the API token, when the server requires one).
    Public,
    /// Only sagas, event deliveries and operators (with the admin token).
    Internal,
}

/// One operation a service offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OperationInfo {
    pub name: String,
    /// The operation that undoes this one, if any.
    pub compensated_by: Option<String>,
    pub description: String,
    /// Who may call it: as declared, or decided by [`Manifest::new`].
    pub visibility: Visibility,
}

/// What a service says about itself when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub name: String,
    pub operations: Vec<OperationInfo>,
    /// Events the service subscribes to: (topic, operation).
    pub subscriptions: Vec<(String, String)>,
    /// The HTTP destinations it calls, as declared.
    pub destinations: Vec<DeclaredDestination>,
}

/// An HTTP destination as a manifest declares it (see `wit/service.wit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeclaredDestination {
    /// `scheme://host[:port]/path-prefix`.
    pub url: String,
    /// Empty for every method.
    pub methods: Vec<String>,
}

impl Manifest {
    /// A manifest from what a plugin declared. An operation that declares no
    /// visibility is internal when it compensates another or handles a subscription
    /// (nobody should refund or deliver an event by hand), and public otherwise.
    pub fn new(
        name: String,
        operations: Vec<(OperationInfo, Option<Visibility>)>,
        subscriptions: Vec<(String, String)>,
    ) -> Self {
        let for_the_host = |op: &str| {
            operations.iter().any(|(other, _)| other.compensated_by.as_deref() == Some(op))
                || subscriptions.iter().any(|(_, handler)| handler == op)
        };
        let resolved = operations
            .iter()
            .map(|(op, declared)| {
                let default = if for_the_host(&op.name) { Visibility::Internal } else { Visibility::Public };
                OperationInfo { visibility: declared.unwrap_or(default), ..op.clone() }
            })
            .collect();
        Manifest { name, operations: resolved, subscriptions, destinations: Vec::new() }
    }

    /// The declared destinations, parsed; an error names the first malformed one.
    pub fn parsed_destinations(&self) -> Result<Vec<crate::outbound::Destination>, String> {
        self.destinations
            .iter()
            .map(|d| {
                crate::outbound::Destination::parse(&d.url, &d.methods)
                    .map_err(|e| format!("destination {e}"))
            })
            .collect()
    }

    /// The operation called `name`, if the service has one.
    pub fn operation(&self, name: &str) -> Option<&OperationInfo> {
        self.operations.iter().find(|op| op.name == name)
    }

    /// Checks what the host relies on: a valid service name, unique operation names,
    /// compensations and subscriptions that name operations of this service.
    pub fn validate(&self) -> Result<(), String> {
        validate_service_name(&self.name)?;
        for (i, op) in self.operations.iter().enumerate() {
            if op.name.is_empty() {
                return Err("an operation has an empty name".into());
            }
            if self.operations[..i].iter().any(|other| other.name == op.name) {
                return Err(format!("operation `{}` is declared twice", op.name));
            }
        }
        for op in &self.operations {
            if let Some(undo) = &op.compensated_by
                && self.operation(undo).is_none()
            {
                return Err(format!(
                    "operation `{}` is compensated by `{undo}`, which the service does not declare",
                    op.name
                ));
            }
        }
        if let Some(op) = self.operations.iter().find(|op| RESERVED.contains(&op.name.as_str())) {
            return Err(format!(
                "an operation may not be called `{}`: /v1/services/{{service}}/{} is the service's records",
                op.name, op.name
            ));
        }
        for (i, (topic, operation)) in self.subscriptions.iter().enumerate() {
            if self.operation(operation).is_none() {
                return Err(format!(
                    "subscription to `{topic}` names operation `{operation}`, which the service does not declare"
                ));
            }
            // A delivery is one per event and service (its idempotency key names the
            // service): a second handler of the same topic would never be called.
            if let Some((_, first)) = self.subscriptions[..i].iter().find(|(t, _)| t == topic) {
                return Err(format!(
                    "topic `{topic}` is subscribed twice (by `{first}` and `{operation}`): a service receives \
                     each event once, so one operation handles a topic"
                ));
            }
        }
        self.parsed_destinations()?;
        Ok(())
    }
}

/// Operation names the HTTP API takes for itself under `/v1/services/{service}/`.
const RESERVED: &[&str] = &["records"];

/// Service names appear in URLs, file names and idempotency keys, so they are kept
/// plain: 1 to 64 of lowercase ASCII letters, digits and `-`, starting with a letter.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let plain = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid service name (1 to 64 of a-z, 0-9 and `-`, starting with a letter)"
        ))
    }
}

/// Correlation ids name a chain in URLs and headers: 1 to 255 visible ASCII
/// characters, like idempotency keys.
pub fn validate_correlation_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "a correlation id must be 1 to 255 visible ASCII characters (got {} bytes)",
            id.len()
        ));
    }
    Ok(())
}

/// One call of one operation of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub operation: String,
    pub input: Vec<u8>,
    pub idempotency_key: String,
    /// The saga or event chain this call belongs to.
    pub correlation_id: String,
    /// 1 on the first run; higher on re-runs.
    pub attempt: u32,
}

/// How a plugin refuses an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A business refusal: final, stored and replayed, compensated in a saga.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A temporary problem: not stored, retried.
    #[error("transient: {0}")]
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest stored as text reads back as the same digest, and nothing else does.
    #[test]
    fn a_plugin_digest_reads_back_what_it_wrote() {
        let digest = PluginDigest::of(b"\0asm a plugin");
        assert_eq!(PluginDigest::parse(&digest.to_string()), Some(digest));
        let hex = "ab".repeat(32);
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &format!("md5:{hex}"),
            &format!("sha256:{hex}00"),
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert_eq!(PluginDigest::parse(bad), None, "{bad:?}");
        }
    }

    fn op(name: &str, undo: Option<&str>) -> OperationInfo {
        OperationInfo {
            name: name.into(),
            compensated_by: undo.map(Into::into),
            description: String::new(),
            visibility: Visibility::Public,
        }
    }

    fn manifest(ops: Vec<OperationInfo>, subs: Vec<(&str, &str)>) -> Manifest {
        Manifest {
            name: "inventory".into(),
            operations: ops,
            subscriptions: subs.into_iter().map(|(t, o)| (t.into(), o.into())).collect(),
            destinations: vec![],
        }
    }

    #[test]
    fn a_consistent_manifest_is_accepted() {
        let m = manifest(
            vec![op("reserve", Some("release")), op("release", None)],
            vec![("order-placed", "reserve")],
        );
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn a_compensation_the_service_lacks_is_refused() {
        let err = manifest(vec![op("reserve", Some("release"))], vec![]).validate().unwrap_err();
        assert!(err.contains("compensated by `release`"), "{err}");
    }

    #[test]
    fn duplicate_operations_and_dangling_subscriptions_are_refused() {
        let twice = manifest(vec![op("a", None), op("a", None)], vec![]).validate().unwrap_err();
        assert!(twice.contains("`a` is declared twice"), "{twice}");
        let dangling = manifest(vec![op("a", None)], vec![("t", "b")]).validate().unwrap_err();
        assert!(dangling.contains("names operation `b`"), "{dangling}");
    }

    /// One service, one handler per topic: a second would silently never be called
    /// (deliveries are one per event and service).
    #[test]
    fn a_topic_subscribed_twice_is_refused() {
        let twice = manifest(vec![op("a", None), op("b", None)], vec![("t", "a"), ("u", "a"), ("t", "b")]);
        let err = twice.validate().unwrap_err();
        assert!(err.contains("topic `t` is subscribed twice (by `a` and `b`)"), "{err}");
    }

    /// `POST /v1/services/{service}/records` is the records API, not a call.
    #[test]
    fn an_operation_named_records_is_refused() {
        let err = manifest(vec![op("records", None)], vec![]).validate().unwrap_err();
        assert!(err.contains("may not be called `records`"), "{err}");
    }

    #[test]
    fn compensations_and_subscription_handlers_are_internal_unless_declared() {
        let m = Manifest::new(
            "payment".into(),
            vec![
                (op("charge", Some("refund")), None),
                (op("refund", None), None),
                (op("on-order", None), None),
                (op("open", None), Some(Visibility::Internal)),
                (op("void", Some("unvoid")), None),
                (op("unvoid", None), Some(Visibility::Public)),
            ],
            vec![("order-placed".into(), "on-order".into())],
        );
        let visibility = |name: &str| m.operation(name).unwrap().visibility;
        assert_eq!(visibility("charge"), Visibility::Public, "undeclared, not for the host");
        assert_eq!(visibility("refund"), Visibility::Internal, "a compensation");
        assert_eq!(visibility("on-order"), Visibility::Internal, "a subscription handler");
        assert_eq!(visibility("open"), Visibility::Internal, "declared");
        assert_eq!(visibility("unvoid"), Visibility::Public, "a compensation declared public");
    }

    #[test]
    fn service_names_are_plain() {
        for good in ["inventory", "a", "order-2"] {
            assert_eq!(validate_service_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Inventory", "2fast", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_service_name(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
