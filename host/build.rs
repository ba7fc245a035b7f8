//! Builds the guest components in `plugins/` for `wasm32-wasip2`, in the manner of
//! wasmtime's test-programs, so that `cargo run` and `cargo test` need no extra step.
//!
//! The components land in `<target>/wasm-plugins/services/<name>.wasm` (services a
//! server can run) and `<target>/wasm-plugins/fixtures/<name>.wasm` (plugins that
//! misbehave on purpose, for tests); the directory is passed to the crate as
//! `WASAGA_GUEST_DIR` (see `wasaga::guests`). The plugins have a
//! workspace and a target directory of their own: the host workspace never compiles
//! them for the wrong target, and the debug and release builds of the host share one
//! build of the guests.
//!
//! Machines here run rustup with `RUSTUP_AUTO_INSTALL=0`, which stops it from adding
//! the `wasm32-wasip2` target named in rust-toolchain.toml. When the target is missing
//! this script adds it with `rustup target add`, or explains what to do without rustup.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// The guest crates whose components the host and its tests use, by folder.
const GUESTS: &[(&str, &[&str])] = &[
    ("services", &["echo", "inventory", "payment", "profile", "order", "notification", "history"]),
    (
        "fixtures",
        &[
            "trap",
            "spin",
            "hog",
            "escape",
            "stranger",
            "hello-v1",
            "hello-v2",
            "old-inventory",
            "legacy",
            "broken-payment",
            "caller",
            "legacy-v2",
        ],
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent");
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    ensure_target_installed();

    let target_dir = target_dir(root).join("wasm-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--locked", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host target; the nested build must not
    // inherit them (flags, wrappers such as clippy-driver, the outer target dir).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_ENCODED_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTDOC"
            );
        if inherited {
            build.env_remove(&*key);
        }
    }
    let status = build.status().expect("failed to run cargo for the guest plugins");
    assert!(status.success(), "building the guest plugins in {} failed", plugins.display());

    let built = target_dir.join(TARGET).join("release");
    for (folder, names) in GUESTS {
        let folder = target_dir.join(folder);
        std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        for name in *names {
            // cargo names a cdylib after its crate, with `-` turned into `_`.
            let artifact = built.join(format!("{}.wasm", name.replace('-', "_")));
            copy_if_changed(&artifact, &folder.join(format!("{name}.wasm")));
        }
    }
    println!("cargo:rustc-env=WASAGA_GUEST_DIR={}", target_dir.display());

    // What `wasaga --version` says besides the crate's version.
    println!("cargo:rustc-env=WASAGA_WIT_VERSION={}", wit_version(&root.join("wit")));
    println!("cargo:rustc-env=WASAGA_COMMIT={}", commit(root));
}

/// The version of the WIT package `wasaga:plugin` in `wit/` (from `world.wit`).
fn wit_version(wit: &Path) -> String {
    let world = wit.join("world.wit");
    let text = std::fs::read_to_string(&world).unwrap_or_else(|e| panic!("{}: {e}", world.display()));
    text.lines()
        .find_map(|line| {
            line.trim().strip_prefix("package wasaga:plugin@")?.strip_suffix(';').map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("{} does not declare `package wasaga:plugin@<version>;`", world.display()))
}

/// The commit being built: `WASAGA_COMMIT` if set (a build from a source archive), else
/// what git says, else `unknown`. Rebuilt when HEAD moves.
fn commit(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=WASAGA_COMMIT");
    if let Ok(commit) = std::env::var("WASAGA_COMMIT") {
        return commit;
    }
    let git = root.join(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed={}", git.join(reference).display());
            println!("cargo:rerun-if-changed={}", git.join("packed-refs").display());
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Copies only when the bytes differ, so that a file's mtime (which hot reload
/// watches) moves only when the component does.
fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        std::fs::write(to, &new).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key}"))
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, or the one that holds OUT_DIR
/// (`<target>/<profile>/build/<pkg>/out`, one level deeper with `--target`), else `target/`.
fn target_dir(root: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() { dir } else { root.join(dir) };
    }
    let out = PathBuf::from(env("OUT_DIR"));
    out.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"))
}

fn ensure_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("failed to run rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; adding it with rustup");
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        add.args(["--toolchain", toolchain]);
    }
    match add.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            panic!("`rustup target add {TARGET}` failed ({status}); the plugins cannot be built without it")
        }
        Err(e) => panic!(
            "the {TARGET} target is not installed and rustup is not available ({e}). \
             Install the target for {} (sysroot {}) and build again.",
            rustc,
            sysroot.display()
        ),
    }
}
