//! The operator's side of the policy: what each service is granted (destinations, the
//! private addresses they may reach, their limits) and the secrets it may use, read
//! from the file given to `wasaga serve --outbound`.
//!
//! ```toml
//! [services.payment]
//! max-requests = 16                        # per invocation (default 16)
//!
//! [[services.payment.destinations]]
//! url = "https://api.example.com/v1/"      # scheme://host[:port]/path-prefix
//! methods = ["POST"]                       # default: any the plugin declared
//! addresses = ["10.0.0.0/8"]               # private addresses it may reach (an IP host grants itself)
//! idempotency-header = "Idempotency-Key"   # the default; "" sends none
//! timeout = "10s"                          # per request, capped by the plugin's deadline
//! max-response = "1MiB"                    # the response body
//! connections = 16                         # open at once to this destination
//!
//! [services.payment.secrets.api-key]       # `{{secret.api-key}}` in a header
//! env = "PAYMENT_API_KEY"                  # or file = "/run/secrets/api-key"
//! destinations = ["https://api.example.com/"]
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::address::Block;
use super::rules::Destination;
use crate::config::{parse_bytes, parse_duration};

/// Per request, unless a grant says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Per invocation, unless the service's grants say otherwise.
pub const DEFAULT_MAX_REQUESTS: u32 = 16;
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Everything granted, per service. Empty (the default) grants nothing.
#[derive(Debug, Default)]
pub struct Grants {
    services: HashMap<String, ServiceGrants>,
}

/// What one service is granted.
#[derive(Debug)]
pub struct ServiceGrants {
    pub destinations: Vec<Grant>,
    pub secrets: Vec<Secret>,
    pub max_requests: u32,
}

impl Default for ServiceGrants {
    fn default() -> Self {
        ServiceGrants { destinations: Vec::new(), secrets: Vec::new(), max_requests: DEFAULT_MAX_REQUESTS }
    }
}

impl ServiceGrants {
    /// The URLs of the grants that admit some request `declared` admits.
    pub fn granting(&self, declared: &Destination) -> Vec<String> {
        self.destinations
            .iter()
            .filter(|g| g.destination.overlaps(declared))
            .map(|g| g.destination.url.clone())
            .collect()
    }
}

/// One granted destination and how requests to it are sent.
#[derive(Debug)]
pub struct Grant {
    pub destination: Destination,
    /// Special addresses (loopback, private, link-local…) this destination may reach.
    pub addresses: Vec<Block>,
    pub idempotency_header: Option<http::HeaderName>,
    pub timeout: Duration,
    pub max_response: u64,
    pub connections: usize,
}

impl Grant {
    /// Whether this grant lets a request connect to `ip`: any public address, and the
    /// special ones it names.
    pub fn may_connect(&self, ip: std::net::IpAddr) -> Result<(), String> {
        match super::address::special(ip) {
            None => Ok(()),
            Some(_) if self.addresses.iter().any(|block| block.contains(ip)) => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address, which the grant of {} does not name in its `addresses`",
                self.destination.url
            )),
        }
    }
}

/// A secret a service may put in a header as `{{secret.NAME}}`, sent only to its
/// destinations. Its value never leaves this struct but on the wire.
pub struct Secret {
    pub name: String,
    value: String,
    pub destinations: Vec<Destination>,
}

impl Secret {
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

impl Grants {
    /// Reads the grants file, and every secret it names (from the environment or a
    /// file) at once, so that a missing one stops the start rather than a request.
    pub fn load(file: &Path) -> anyhow::Result<Grants> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Grants::parse(&text, &|name| std::env::var(name).ok())
            .with_context(|| format!("in {}", file.display()))
    }

    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Grants> {
        let file: FileForm = toml::from_str(text)?;
        let mut services = HashMap::new();
        for (service, form) in file.services {
            crate::service::validate_service_name(&service).map_err(anyhow::Error::msg)?;
            let grants = service_grants(form, env).with_context(|| format!("service `{service}`"))?;
            services.insert(service, grants);
        }
        Ok(Grants { services })
    }

    /// What `service` is granted; nothing for a service the file does not name.
    pub fn of(&self, service: &str) -> Option<&ServiceGrants> {
        self.services.get(service)
    }
}

fn service_grants(form: ServiceForm, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ServiceGrants> {
    let mut destinations = Vec::new();
    for d in form.destinations {
        let url = d.url.clone();
        let grant = grant(d).with_context(|| format!("destination `{url}`"))?;
        destinations.push(grant);
    }
    let mut secrets = Vec::new();
    for (name, s) in form.secrets {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            bail!("`{name}` is not a secret name (letters, digits, `-` and `_`)");
        }
        let value = match (&s.env, &s.file) {
            (Some(var), None) => env(var)
                .with_context(|| format!("secret `{name}`: the environment variable {var} is not set"))?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("secret `{name}`: reading {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            _ => bail!("secret `{name}`: give exactly one of `env` and `file`"),
        };
        if value.is_empty() || http::HeaderValue::from_str(&value).is_err() {
            bail!("secret `{name}`: its value is empty or cannot go in a header");
        }
        if s.destinations.is_empty() {
            bail!("secret `{name}`: `destinations` names none, so it could never be sent");
        }
        let destinations = s
            .destinations
            .iter()
            .map(|url| Destination::parse(url, &[]).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("secret `{name}`"))?;
        secrets.push(Secret { name, value, destinations });
    }
    let max_requests = form.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS);
    Ok(ServiceGrants { destinations, secrets, max_requests })
}

fn grant(d: DestinationForm) -> anyhow::Result<Grant> {
    let destination =
        Destination::parse(&d.url, &d.methods.unwrap_or_default()).map_err(anyhow::Error::msg)?;
    let mut addresses: Vec<Block> = d
        .addresses
        .iter()
        .map(|a| Block::parse(a).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    addresses.extend(destination.address().map(Block::single));
    let idempotency_header = match d.idempotency_header.as_deref() {
        None => Some(http::HeaderName::from_static(DEFAULT_IDEMPOTENCY_HEADER)),
        Some("") => None,
        Some(name) => {
            Some(http::HeaderName::try_from(name).with_context(|| format!("`{name}` is not a header name"))?)
        }
    };
    let timeout = d.timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(DEFAULT_TIMEOUT);
    let max_response =
        d.max_response.as_deref().map(parse_bytes).transpose()?.unwrap_or(DEFAULT_MAX_RESPONSE);
    let connections = d.connections.unwrap_or(DEFAULT_CONNECTIONS);
    if connections == 0 {
        bail!("`connections` must be at least 1");
    }
    Ok(Grant { destination, addresses, idempotency_header, timeout, max_response, connections })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    services: HashMap<String, ServiceForm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServiceForm {
    #[serde(default)]
    destinations: Vec<DestinationForm>,
    #[serde(default)]
    secrets: HashMap<String, SecretForm>,
    max_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DestinationForm {
    url: String,
    methods: Option<Vec<String>>,
    #[serde(default)]
    addresses: Vec<String>,
    idempotency_header: Option<String>,
    timeout: Option<String>,
    max_response: Option<String>,
    connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretForm {
    env: Option<String>,
    file: Option<std::path::PathBuf>,
    #[serde(default)]
    destinations: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk_test_123".to_owned())
    }

    #[test]
    fn a_grants_file_reads_destinations_limits_and_secrets() {
        let grants = Grants::parse(
            r#"
            [services.payment]
            max-requests = 4
            [[services.payment.destinations]]
            url = "http://127.0.0.1:4242/v1/"
            methods = ["post"]
            timeout = "2s"
            idempotency-header = ""
            [[services.payment.destinations]]
            url = "https://api.example.com/"
            addresses = ["10.0.0.0/8"]
            [services.payment.secrets.api-key]
            env = "KEY"
            destinations = ["http://127.0.0.1:4242/"]
            "#,
            &env,
        )
        .unwrap();
        let payment = grants.of("payment").unwrap();
        assert_eq!(payment.max_requests, 4);
        let [local, remote] = &payment.destinations[..] else { panic!("two destinations") };
        assert_eq!(local.timeout, Duration::from_secs(2));
        assert_eq!(local.idempotency_header, None);
        assert!(local.may_connect("127.0.0.1".parse().unwrap()).is_ok(), "an IP host grants itself");
        assert!(local.may_connect("127.0.0.2".parse().unwrap()).is_err());
        assert_eq!(remote.idempotency_header.as_ref().unwrap().as_str(), "idempotency-key");
        assert!(remote.may_connect("10.9.9.9".parse().unwrap()).is_ok());
        let err = remote.may_connect("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        assert_eq!(payment.secrets[0].value(), "sk_test_123");
        assert!(!format!("{grants:?}").contains("sk_test_123"), "Debug never shows a secret");
        assert!(grants.of("order").is_none());
    }

    #[test]
    fn a_bad_grants_file_says_what_is_wrong() {
        for (text, says) in [
            ("[services.payment]\ndestinatons = []", "destinatons"),
            ("[[services.payment.destinations]]\nurl = \"ftp://x.com/\"", "http or https"),
            (
                "[[services.payment.destinations]]\nurl = \"http://x.com/\"\naddresses = [\"nowhere\"]",
                "nowhere",
            ),
            (
                "[services.payment.secrets.k]\nenv = \"MISSING\"\ndestinations = [\"http://x.com/\"]",
                "MISSING",
            ),
            ("[services.payment.secrets.k]\nenv = \"KEY\"", "never be sent"),
            ("[services.Payment]", "service name"),
        ] {
            let err = format!("{:#}", Grants::parse(text, &env).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
