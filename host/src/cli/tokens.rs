//! Tokens, for the server and for the commands that talk to one.
//!
//! A token comes from an environment variable or a file, never from a flag: a flag's
//! value is visible to every user of the machine in the process list (`ps`,
//! `/proc/<pid>/cmdline`). The old `--admin-token` flag is refused with that reason.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// The fewest characters a token may have (16 random hex digits are 64 bits).
const MIN_TOKEN_CHARS: usize = 16;

/// The server's tokens.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Access")]
pub struct ServerTokens {
    /// Read the admin token from this file (or set WASAGA_ADMIN_TOKEN). Operator
    /// actions need it: record writes, retries, redeliveries, plugin uploads and
    /// removals, calls of internal operations. Without an admin token they are refused.
    #[arg(long, env = "WASAGA_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,

    /// Read the API token from this file (or set WASAGA_API_TOKEN). When set, every
    /// client must send it (or the admin token) to call public operations and to read;
    /// without it those are open to whoever reaches the server.
    #[arg(long, env = "WASAGA_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,

    // Refused with the reason: see the module's doc.
    #[arg(long, hide = true)]
    admin_token: Option<String>,
    #[arg(long, hide = true)]
    api_token: Option<String>,
}

/// Resolved tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub api: Option<String>,
}

impl ServerTokens {
    pub fn resolve(&self) -> anyhow::Result<Tokens> {
        let admin = secret(&ADMIN, self.admin_token_file.as_deref(), self.admin_token.is_some())?;
        let api = secret(&API, self.api_token_file.as_deref(), self.api_token.is_some())?;
        if admin.is_some() && admin == api {
            anyhow::bail!("the API token must differ from the admin token (a client would be an operator)");
        }
        Ok(Tokens { admin, api })
    }
}

/// Where a command that talks to a server finds it, and its tokens.
#[derive(Debug, Args)]
#[command(next_help_heading = "Server")]
pub struct Remote {
    /// The wasaga server's base URL.
    #[arg(long, env = "WASAGA_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,

    /// Read the admin token from this file (or set WASAGA_ADMIN_TOKEN): sent by the
    /// operator commands, and by the others when there is no API token.
    #[arg(long, env = "WASAGA_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,

    /// Read the API token from this file (or set WASAGA_API_TOKEN): sent to servers
    /// that require one.
    #[arg(long, env = "WASAGA_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
}

impl Remote {
    /// `request` with the admin token; an error that says how to give it when there is none.
    pub fn as_operator(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
        match secret(&ADMIN, self.admin_token_file.as_deref(), false)? {
            Some(token) => Ok(request.bearer_auth(token)),
            None => anyhow::bail!(
                "this is an operator command: give the server's admin token in WASAGA_ADMIN_TOKEN \
                 or --admin-token-file"
            ),
        }
    }

    /// `request` with the API token, or else the admin token, or else as it is.
    pub fn as_reader(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = match secret(&API, self.api_token_file.as_deref(), false)? {
            Some(token) => Some(token),
            None => secret(&ADMIN, self.admin_token_file.as_deref(), false)?,
        };
        Ok(match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        })
    }
}

struct Kind {
    name: &'static str,
    env: &'static str,
    flag: &'static str,
}

const ADMIN: Kind = Kind { name: "admin token", env: "WASAGA_ADMIN_TOKEN", flag: "admin-token" };
const API: Kind = Kind { name: "API token", env: "WASAGA_API_TOKEN", flag: "api-token" };

/// A token from the environment or a file (not both), checked; `None` when neither.
fn secret(kind: &Kind, file: Option<&Path>, given_as_flag: bool) -> anyhow::Result<Option<String>> {
    let Kind { name, env, flag } = kind;
    if given_as_flag {
        anyhow::bail!(
            "--{flag} is not accepted: a flag's value is visible to every user of this machine in \
             the process list. Put the {name} in the environment variable {env}, or in a file \
             named by --{flag}-file"
        );
    }
    let from_env = std::env::var(env).ok().filter(|t| !t.is_empty());
    let token = match (from_env, file) {
        (Some(_), Some(_)) => anyhow::bail!("give the {name} once: {env} or --{flag}-file, not both"),
        (Some(token), None) => token,
        (None, Some(file)) => read_token_file(name, file)?,
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_owned();
    if token.chars().count() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "the {name} must be at least {MIN_TOKEN_CHARS} visible ASCII characters, without \
             spaces (for example the output of `openssl rand -hex 32`)"
        );
    }
    Ok(Some(token))
}

fn read_token_file(name: &str, file: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the {name} from {}", file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %file.display(),
                "the {name} file can be read by other users (mode {:o}): chmod 600 it",
                mode & 0o777
            );
        }
    }
    Ok(token)
}

/// A fresh random token (64 hex digits), for the demo.
pub fn generate() -> String {
    use rand::Rng;
    hex::encode(rand::rng().random::<[u8; 32]>())
}
