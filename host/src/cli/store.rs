//! `wasaga export` and `wasaga import`: a whole store to a file and back, to move a
//! deployment from SQLite to PostgreSQL (or back), or to keep a copy
//! (`store/portable.rs`).

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::app::Storage;
use crate::store::portable::Counts;

/// Which store: `--data`, or else `--database` (so that a `--data` given on the command
/// line wins over a WASAGA_DATABASE set for the hosts).
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct StoreArgs {
    /// A SQLite store: the data directory of `wasaga serve --data` (no server may be
    /// using it meanwhile). Wins over --database and WASAGA_DATABASE.
    #[arg(long)]
    data: Option<PathBuf>,

    /// A PostgreSQL store: the connection string of `wasaga serve --database` (better
    /// passed through WASAGA_DATABASE, out of `ps`).
    #[arg(long, env = "WASAGA_DATABASE", hide_env_values = true)]
    database: Option<String>,
}

impl StoreArgs {
    fn storage(&self) -> Storage {
        match (&self.data, &self.database) {
            (Some(dir), _) => Storage::Sqlite { data: dir.clone(), options: Default::default() },
            (None, Some(url)) => Storage::Postgres { url: url.clone(), options: Default::default() },
            (None, None) => unreachable!("clap requires one of --data and --database"),
        }
    }
}

/// Write a whole store to a file: records with their versions, stored outcomes, sagas
/// and their definitions, events and deliveries, plugin uploads. Read in one snapshot.
/// With `wasaga import`, it moves a deployment from SQLite to PostgreSQL: stop the
/// server, export its --data, import into the database, start the hosts there (they
/// take over the unfinished sagas). See docs/deployment.md.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// The file to write (JSON lines); `-` for standard output.
    #[arg(long, short)]
    output: PathBuf,
}

/// Load a file written by `wasaga export` into an empty store, all of it in one
/// transaction (a file cut short, or a store that is not empty, loads nothing).
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// The file to read; `-` for standard input.
    #[arg(long, short)]
    input: PathBuf,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let from = args.store.storage();
    let counts = if args.output.as_os_str() == "-" {
        from.export(&mut BufWriter::new(std::io::stdout().lock())).await?
    } else {
        // Every record and outcome is in it: readable by its owner only, as the store is.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file =
            options.open(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
        from.export(&mut BufWriter::new(file)).await?
    };
    eprintln!("exported {from}: {}", summary(&counts));
    Ok(ExitCode::SUCCESS)
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let to = args.store.storage();
    let counts = if args.input.as_os_str() == "-" {
        to.import(&mut std::io::stdin().lock()).await?
    } else {
        let file =
            std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
        to.import(&mut BufReader::new(file))
            .await
            .with_context(|| format!("importing {}", args.input.display()))?
    };
    eprintln!("imported into {to}: {}", summary(&counts));
    Ok(ExitCode::SUCCESS)
}

fn summary(counts: &Counts) -> String {
    counts.iter().map(|(table, n)| format!("{n} {table}")).collect::<Vec<_>>().join(", ")
}
