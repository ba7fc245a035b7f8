//! A service declared once: its operations, each with a typed input and output, and
//! its subscriptions. The manifest and the dispatch of calls come from the one
//! declaration, so they cannot disagree.
//!
//! ```ignore
//! fn greet(input: Greet, _call: &Invocation) -> Result<Greeting, Failure> { /* ... */ }
//!
//! wasaga_guest::service!(
//!     Service::new("greeter").operation(OperationInfo::new("greet", "Greets someone"), greet)
//! );
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Destination, Failure, Invocation, Manifest, OperationInfo, json};

type Handler = Box<dyn Fn(&Invocation) -> Result<Vec<u8>, Failure> + Send + Sync>;

/// A service's name, operations and subscriptions. Export one with [`crate::service!`].
pub struct Service {
    name: String,
    operations: Vec<(OperationInfo, Handler)>,
    subscriptions: Vec<(String, String)>,
    destinations: Vec<Destination>,
}

impl Service {
    pub fn new(name: &str) -> Self {
        Service {
            name: name.into(),
            operations: Vec::new(),
            subscriptions: Vec::new(),
            destinations: Vec::new(),
        }
    }

    /// Declares an operation. `handler` gets the call's JSON input, parsed (a malformed
    /// input is a rejection that says what is wrong), and the call itself (its
    /// idempotency key, chain and attempt); its output is answered as JSON.
    pub fn operation<I, O>(
        mut self,
        info: OperationInfo,
        handler: impl Fn(I, &Invocation) -> Result<O, Failure> + Send + Sync + 'static,
    ) -> Self
    where
        I: DeserializeOwned,
        O: Serialize,
    {
        let handler = move |call: &Invocation| json::output(&handler(json::input(&call.input)?, call)?);
        self.operations.push((info, Box::new(handler)));
        self
    }

    /// Delivers each event published on `topic` to `operation` (one of this service's).
    pub fn subscribe(mut self, topic: &str, operation: &str) -> Self {
        self.subscriptions.push((topic.into(), operation.into()));
        self
    }

    /// Declares an HTTP destination the service calls with [`crate::http`]:
    /// `scheme://host[:port]/path-prefix` (`:*` for a port the operator chooses) and
    /// the methods (none for all). The operator must grant it too.
    pub fn destination(mut self, url: &str, methods: &[&str]) -> Self {
        let methods = methods.iter().map(|m| (*m).to_owned()).collect();
        self.destinations.push(Destination { url: url.into(), methods });
        self
    }

    /// What `describe` answers.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            name: self.name.clone(),
            operations: self.operations.iter().map(|(info, _)| info.clone()).collect(),
            subscriptions: self.subscriptions.clone(),
            destinations: self.destinations.clone(),
        }
    }

    /// Runs the call's operation.
    pub fn handle(&self, call: Invocation) -> Result<Vec<u8>, Failure> {
        match self.operations.iter().find(|(info, _)| info.name == call.operation) {
            Some((_, handler)) => handler(&call),
            None => Err(Failure::Rejected(format!("unknown operation `{}`", call.operation))),
        }
    }
}

/// Exports the service the expression builds (once, on the first call of the
/// instance) as this component's `wasaga:plugin/service`.
#[macro_export]
macro_rules! service {
    ($service:expr) => {
        struct WasagaService;

        fn wasaga_service() -> &'static $crate::Service {
            static SERVICE: ::std::sync::OnceLock<$crate::Service> = ::std::sync::OnceLock::new();
            SERVICE.get_or_init(|| $service)
        }

        impl $crate::Guest for WasagaService {
            fn describe() -> $crate::Manifest {
                wasaga_service().manifest()
            }

            fn handle(call: $crate::Invocation) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::Failure> {
                wasaga_service().handle(call)
            }
        }

        $crate::export!(WasagaService with_types_in $crate);
    };
}
