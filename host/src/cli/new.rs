//! `wasaga new`: a ready service project, from templates carried in the binary
//! (`host/templates/`): the service with one operation, the contract (`wit/`), the
//! language's SDK, its build command, and a test that runs the built component.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Start a service project: one operation (`greet`), its build, a test.
///
/// Writes NAME/ (or --dir): the service's source on wasaga's SDK for the language, the
/// wasaga:plugin contract in wit/, a README with the commands to build, check, test
/// and push it, and test.sh, which runs the built component offline. Prints those
/// commands. Refuses a directory that exists and is not empty.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The service's name: lowercase letters, digits and `-`, starting with a letter.
    name: String,

    /// The language of the project.
    #[arg(long, value_enum)]
    lang: Language,

    /// Where to write it (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
}

/// The wasaga:plugin contract, as `wit/` holds it.
const WIT: &[(&str, &str)] = &[
    ("wit/world.wit", include_str!("../../../wit/world.wit")),
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/store.wit", include_str!("../../../wit/store.wit")),
    ("wit/events.wit", include_str!("../../../wit/events.wit")),
    ("wit/log.wit", include_str!("../../../wit/log.wit")),
    ("wit/service.wit", include_str!("../../../wit/service.wit")),
    // WASI's packages the world's wasi:http import needs, as wasmtime ships them.
    ("wit/deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    ("wit/deps/clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("wit/deps/random.wit", include_str!("../../../wit/deps/random.wit")),
    ("wit/deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("wit/deps/filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("wit/deps/sockets.wit", include_str!("../../../wit/deps/sockets.wit")),
];

/// Every project's: the test, its records, the README, what git ignores.
const COMMON: &[(&str, &str)] = &[
    ("test.sh", include_str!("../../templates/common/test.sh")),
    ("test-records.json", include_str!("../../templates/common/test-records.json")),
    ("README.md", include_str!("../../templates/common/README.md")),
    (".gitignore", include_str!("../../templates/common/gitignore")),
];

/// The Rust SDK is wasaga's own guest crate (`plugins/guest`), copied in: the project
/// builds without this repository.
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
    ("wasaga-guest/Cargo.toml", include_str!("../../templates/rust/guest-Cargo.toml")),
    ("wasaga-guest/src/lib.rs", include_str!("../../../plugins/guest/src/lib.rs")),
    ("wasaga-guest/src/service.rs", include_str!("../../../plugins/guest/src/service.rs")),
    ("wasaga-guest/src/http.rs", include_str!("../../../plugins/guest/src/http.rs")),
];

const JS: &[(&str, &str)] = &[
    ("app.js", include_str!("../../templates/js/app.js")),
    ("wasaga.js", include_str!("../../templates/js/wasaga.js")),
    ("build.mjs", include_str!("../../templates/js/build.mjs")),
    ("package.json", include_str!("../../templates/js/package.json")),
];

const PYTHON: &[(&str, &str)] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    ("wasaga.py", include_str!("../../templates/python/wasaga.py")),
];

/// The componentize-py the Python template is built and tested with (the JavaScript
/// template pins componentize-js in its `package.json`).
const COMPONENTIZE_PY: &str = "0.25.1";

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
        }
    }

    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Language::Rust => RUST,
            Language::Js => JS,
            Language::Python => PYTHON,
        }
    }

    /// Where the build puts the component.
    fn wasm(self, name: &str) -> String {
        match self {
            Language::Rust => format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
            Language::Js | Language::Python => format!("{name}.wasm"),
        }
    }

    /// Where the service's code is, for the README.
    fn source(self) -> &'static str {
        match self {
            Language::Rust => {
                "The service is `src/lib.rs`, on `wasaga-guest/` (wasaga's Rust SDK: `Service`, the bindings, JSON helpers)."
            }
            Language::Js => "The service is `app.js`, on `wasaga.js` (wasaga's JavaScript SDK).",
            Language::Python => "The service is `app.py`, on `wasaga.py` (wasaga's Python SDK).",
        }
    }

    /// The commands from the new project to a pushed service, run in its directory.
    fn steps(self, name: &str) -> Vec<String> {
        let wasm = self.wasm(name);
        let mut steps: Vec<String> = match self {
            Language::Rust => vec![
                "rustup target add wasm32-wasip2".into(),
                "cargo build --release --target wasm32-wasip2".into(),
            ],
            Language::Js => vec!["npm install".into(), "npm run build".into()],
            Language::Python => vec![
                "python3 -m venv .venv".into(),
                format!(".venv/bin/pip install componentize-py=={COMPONENTIZE_PY}"),
                format!(".venv/bin/componentize-py -d wit -w plugin componentize app -o {wasm}"),
            ],
        };
        steps.push(format!("wasaga plugin check {wasm}"));
        steps.push("sh test.sh".into());
        steps.push(format!("wasaga plugin push {wasm} --service {name}"));
        steps
    }
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    crate::service::validate_service_name(&args.name).map_err(anyhow::Error::msg)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!("{} exists and is not empty: choose another --dir", dir.display());
    }
    let (name, lang) = (args.name.as_str(), args.lang);
    let steps = lang.steps(name);
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{wasm}}", &lang.wasm(name))
            .replace("{{language}}", lang.name())
            .replace("{{source}}", lang.source())
            .replace("{{steps}}", &steps.join("\n"))
    };
    for (path, text) in WIT.iter().chain(COMMON).chain(lang.files()) {
        let text = if path.starts_with("wit/") {
            (*text).to_owned()
        } else if path.starts_with("wasaga-guest/src/") {
            // The guest crate finds the contract beside it, not two levels up.
            text.replace(r#"path: "../../wit""#, r#"path: "../wit""#)
        } else {
            fill(text)
        };
        write(&dir.join(path), &text)?;
    }
    println!("created {} ({} service `{name}`)", dir.display(), lang.name());
    println!("next, in {}:", dir.display());
    for step in &steps {
        println!("  {step}");
    }
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
