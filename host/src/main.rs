use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a fifth of the host's CPU went to glibc's
/// allocator under load (docs/architecture.md, Storage: build options).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = wasaga::cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
