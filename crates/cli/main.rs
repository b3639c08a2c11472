//! `nuwax-cli`: cold backups and safe rollback for a docker compose service.
//!
//! This file only parses arguments, builds the printer and the runtime, dispatches to one
//! `commands::*::run`, and maps errors to exit codes (DESIGN.md section 7).

/// `eprintln!` that never panics: stderr may be a terminal that went away (SIGHUP) or a closed
/// pipe; losing a message must not turn a clean exit into a panic (exit 101).
macro_rules! eprintln_safe {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln_safe`]).
macro_rules! eprint_safe {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let _ = write!(err, $($t)*);
        let _ = err.flush();
    }};
}

mod commands;
mod exit;
mod output;
mod printer;
mod progress;
mod prompt;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use nuwax_actors::CancelFlag;

use crate::exit::ExitStatus;
use crate::printer::Printer;
use crate::progress::ProgressMode;

/// The commands people run most (`--help` and the man page's EXAMPLES).
macro_rules! examples {
    () => {
        "  nuwax-cli -C /srv/nuwax backup
  nuwax-cli -C /srv/nuwax list-backups
  nuwax-cli -C /srv/nuwax rollback 12 --force                  # app version only, data kept
  nuwax-cli -C /srv/nuwax rollback 12 --force --rollback-data  # app and data
  nuwax-cli -C /srv/nuwax rollback-data-only 12 --force        # data only
  nuwax-cli -C /srv/nuwax verify --all
  nuwax-cli -C /srv/nuwax auto-backup run --quiet              # from cron
  nuwax-cli -C /srv/nuwax backup --json --progress json        # for a GUI"
    };
}

/// What the exit code says (`--help` and the man page's EXIT STATUS; README "Exit codes").
macro_rules! exit_codes {
    () => {
        "  0    success
  1    the operation failed (live data unchanged unless the message says otherwise)
  2    usage error, unknown backup ID, or missing confirmation (--force)
  3    refused by a precondition: services running, lock held, no space, engine unreachable
  4    integrity failure: archive corrupt, checksum mismatch, unsafe entry
  5    upgrade failed and was rolled back automatically
  6    upgrade failed and the automatic rollback failed too
  130  interrupted by SIGINT (143 SIGTERM, 129 SIGHUP): partial work removed

With --json, stdout carries exactly one JSON document, also on failure."
    };
}

pub(crate) const EXAMPLES: &str = examples!();
pub(crate) const EXIT_CODES: &str = exit_codes!();
const AFTER_HELP: &str = concat!(
    "Examples:\n",
    examples!(),
    "\n\nExit codes:\n",
    exit_codes!()
);

#[derive(clap::Parser, Debug)]
#[command(
    name = "nuwax-cli",
    version,
    about = "Cold backups and safe rollback for a docker compose service",
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    /// Working directory: holds config.toml, docker/, backups/ and data/nuwax.db.
    #[arg(
        short = 'C',
        long = "work-dir",
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    work_dir: PathBuf,
    /// Config file (default: <work dir>/config.toml; a missing default means defaults).
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print nothing but data and errors (for cron).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output on stderr (-vv for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How progress is shown on stderr: bars on a terminal and lines otherwise (auto), lines
    /// (plain), one JSON object per line for a GUI (json), or none.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = ProgressMode::Auto,
        value_name = "MODE"
    )]
    progress: ProgressMode,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take a cold backup of the compose project dir.
    Backup(commands::backup::Args),
    /// List backups (table, or --json).
    ListBackups(commands::list::Args),
    /// Restore a backup: the app version by default, everything with --rollback-data.
    Rollback(commands::rollback::Args),
    /// Restore only the data scope (data/, upload/, ...) of a backup.
    RollbackDataOnly(commands::rollback::DataOnlyArgs),
    /// Delete a backup's archive and catalog entry.
    DeleteBackup(commands::delete::Args),
    /// Re-read archives completely and check them against their manifest and checksum.
    Verify(commands::verify::Args),
    /// Start, stop, restart the compose project's services, or show their status.
    DockerService(commands::docker_service::Args),
    /// The cron-safe backup: stop, back up, start exactly what ran.
    AutoBackup(commands::auto_backup::Args),
    /// Apply a release package: pre-upgrade backup, swap, start, health; automatic rollback.
    Upgrade(commands::upgrade::Args),
    /// Delete backups by retention rules (--dry-run shows each decision and its rule).
    Prune(commands::prune::Args),
    /// Rebuild the catalog from the archives in the storage dir.
    Reindex(commands::reindex::Args),
    /// Verify an archive and add it to the catalog.
    Import(commands::reindex::ImportArgs),
    /// Show an interrupted operation that could not be undone by itself, and resolve it
    /// (--keep-live or --restore-saved; nothing is deleted).
    Recover(commands::recover::Args),
    /// Offsite copies on S3-compatible storage: push, list, pull, verify, prune.
    Remote(commands::remote::Args),
    /// Browse a backup: the entries below PATH (from its manifest), -l for details.
    Ls(commands::ls::Args),
    /// Compare the live compose dir with a backup: added, removed, modified paths.
    Diff(commands::diff::Args),
    /// Copy chosen files or directories out of a backup into a separate directory (--to DIR);
    /// never into live data.
    Restore(commands::restore::Args),
    /// Load a backup's database dump into the running service (exec stdin):
    /// restore-dump ID --service NAME.
    RestoreDump(commands::restore_dump::Args),
    /// Restore drill: bring a backup up beside the live stack (own project, no ports, internal
    /// networks), wait for health, run [[drill.checks]], remove it. The live stack is untouched.
    Drill(commands::drill::Args),
    /// Encryption at rest: `encryption check` test-decrypts the newest encrypted backup.
    Encryption(commands::encryption::Args),
    /// Print a shell completion script on stdout (bash, zsh, fish...).
    Completions(commands::completions::Args),
    /// Print the man page (roff) on stdout: `nuwax-cli man > nuwax-cli.1`.
    #[command(hide = true)]
    Man,
}

impl Command {
    /// Whether the command changes live data or the catalog (and so takes the lock).
    fn mutating(&self) -> bool {
        match self {
            Command::Backup(_) | Command::DeleteBackup(_) | Command::RestoreDump(_) => true,
            Command::RollbackDataOnly(a) => !a.dry_run,
            Command::Rollback(a) => !a.list_json && !a.dry_run,
            // Read the catalog and archives; `restore` writes only outside the working dir.
            Command::Ls(_) | Command::Diff(_) | Command::Restore(_) => false,
            Command::ListBackups(_) | Command::Verify(_) | Command::Encryption(_) => false,
            Command::DockerService(a) => a.action.mutating(),
            Command::AutoBackup(a) => {
                matches!(a.action, commands::auto_backup::Action::Run(_))
            }
            Command::Upgrade(_) | Command::Reindex(_) | Command::Import(_) => true,
            // Journaled (a killed drill is cleaned up by the next command) and recorded.
            Command::Drill(_) => true,
            Command::Prune(a) => !a.dry_run,
            Command::Recover(a) => a.resolves(),
            Command::Remote(a) => a.action.mutating(),
            Command::Completions(_) | Command::Man => false,
        }
    }
}

fn main() -> std::process::ExitCode {
    progress::start_clock();
    // Colour only on a terminal without NO_COLOR (printer::color_allowed); help goes to
    // stdout, errors to stderr, so both must be terminals for clap to colour.
    let color = if printer::stdout_color() && printer::stderr_color() {
        clap::ColorChoice::Auto
    } else {
        clap::ColorChoice::Never
    };
    let parsed = Cli::command()
        .color(color)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return usage_failure(&e),
    };
    init_tracing(cli.verbose);
    let cancel = CancelFlag::default();
    let printer = Printer::new(cli.quiet, cli.progress, cancel.clone());
    let json = commands::wants_json(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let err = anyhow::anyhow!("cannot start the async runtime: {e}");
            return fail(&printer, json, false, &err).into();
        }
    };
    let status = runtime.block_on(run(cli, &printer, cancel));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    status.into()
}

/// clap refused the arguments (exit 2), or printed help or the version (exit 0). A command
/// line that asked for `--json` still gets its one JSON document on stdout.
fn usage_failure(e: &clap::Error) -> std::process::ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitStatus::Success.into();
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .collect();
    let json_asked = args.iter().any(|a| a == "--json" || a == "--list-json");
    let progress_json = args.iter().any(|a| a == "--progress=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--progress" && w[1] == "json");
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let printer = Printer::new(
        false,
        if progress_json {
            ProgressMode::Json
        } else {
            ProgressMode::None
        },
        CancelFlag::default(),
    );
    if progress_json {
        // stderr stays JSON lines: the first line of clap's message, as an error message.
        printer.error(&message);
    } else {
        let _ = e.print();
    }
    if json_asked {
        let failure = exit::Failure::new(ExitStatus::Usage, "usage", message);
        printer.document(&output::NoBody {}, Some(&failure));
    }
    ExitStatus::Usage.into()
}

async fn run(cli: Cli, printer: &Printer, cancel: CancelFlag) -> ExitStatus {
    let json = commands::wants_json(&cli.command);
    let list = commands::lists_backups(&cli.command);
    if let Err(e) = install_signal_handlers(&cancel) {
        let err = anyhow::anyhow!("cannot install the signal handlers: {e}");
        return fail(printer, json, list, &err);
    }
    match dispatch(cli, printer, cancel).await {
        Ok(status) => {
            let status = printer.exit_status(status);
            // Every `--json` run prints exactly one document, whatever the command did.
            if json && !printer.document_printed() {
                let failure = (status != ExitStatus::Success).then(|| {
                    exit::Failure::new(
                        status,
                        status.kind(),
                        format!("the command failed (exit {})", status as u8),
                    )
                });
                printer.document(&output::NoBody {}, failure.as_ref());
            }
            status
        }
        Err(err) => fail(printer, json, list, &err),
    }
}

/// A command that returned an error: the message on stderr and, with `--json`, the failure
/// document on stdout (unless the command already printed its own). Returns the exit code.
fn fail(printer: &Printer, json: bool, list: bool, err: &anyhow::Error) -> ExitStatus {
    let failure = exit::Failure::of(err);
    if json && !printer.document_printed() {
        if list {
            printer.document(&output::EmptyList { backups: [] }, Some(&failure));
        } else {
            printer.document(&output::NoBody {}, Some(&failure));
        }
    }
    printer.error(&failure.message);
    printer.exit_status(failure.status)
}

/// SIGINT, SIGTERM and SIGHUP all cancel the running operation the same way: the flag is set
/// (recording which signal), the operation stops at its next check, removes its partial work,
/// starts again what it stopped, and the process exits with 128 + the signal. The default
/// action (die on the spot, services left stopped, a `.partial` left behind) never runs.
fn install_signal_handlers(cancel: &CancelFlag) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, number) in [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
    ] {
        let mut stream = signal(kind)?;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if !cancel.is_cancelled() {
                    tracing::warn!("signal {number} received: interrupting");
                }
                cancel.cancel_with(number);
            }
        });
    }
    Ok(())
}

async fn dispatch(cli: Cli, printer: &Printer, cancel: CancelFlag) -> anyhow::Result<ExitStatus> {
    // Commands that need no working dir: nothing is opened, locked or created.
    match &cli.command {
        Command::Completions(args) => return commands::completions::run(args, printer),
        Command::Man => return commands::completions::run_man(printer),
        _ => {}
    }
    let mut settings = nuwax_actors::Settings::load(&cli.work_dir, cli.config.as_deref())?;
    if let Some(key) = commands::key_source(&cli.command) {
        settings.set_key(key);
    }
    let opts = nuwax_actors::RuntimeOptions {
        command: command_line(),
        mutating: cli.command.mutating(),
        resolving: matches!(cli.command, Command::Recover(_)),
        move_broken_catalog: matches!(&cli.command, Command::Reindex(a) if a.move_broken_catalog),
        cancel,
    };
    let rt = nuwax_actors::Runtime::start(settings, opts).await?;
    for note in rt.recovery_notes() {
        printer.warn(&format!("recovery: {note}"));
    }
    let result = match cli.command {
        Command::Backup(args) => commands::backup::run(args, &rt, printer).await,
        Command::ListBackups(args) => commands::list::run(args, &rt, printer).await,
        Command::Rollback(args) => commands::rollback::run(args, &rt, printer).await,
        Command::RollbackDataOnly(args) => {
            commands::rollback::run_data_only(args, &rt, printer).await
        }
        Command::DeleteBackup(args) => commands::delete::run(args, &rt, printer).await,
        Command::Verify(args) => commands::verify::run(args, &rt, printer).await,
        Command::DockerService(args) => commands::docker_service::run(args, &rt, printer).await,
        Command::AutoBackup(args) => commands::auto_backup::run(args, &rt, printer).await,
        Command::Upgrade(args) => commands::upgrade::run(args, &rt, printer).await,
        Command::Prune(args) => commands::prune::run(args, &rt, printer).await,
        Command::Reindex(args) => commands::reindex::run(args, &rt, printer).await,
        Command::Import(args) => commands::reindex::run_import(args, &rt, printer).await,
        Command::Recover(args) => commands::recover::run(args, &rt, printer).await,
        Command::Remote(args) => commands::remote::run(args, &rt, printer).await,
        Command::Ls(args) => commands::ls::run(args, &rt, printer).await,
        Command::Diff(args) => commands::diff::run(args, &rt, printer).await,
        Command::Restore(args) => commands::restore::run(args, &rt, printer).await,
        Command::RestoreDump(args) => commands::restore_dump::run(args, &rt, printer).await,
        Command::Drill(args) => commands::drill::run(args, &rt, printer).await,
        Command::Encryption(args) => commands::encryption::run(args, &rt, printer).await,
        Command::Completions(_) | Command::Man => unreachable!("handled before the runtime"),
    };
    rt.shutdown().await;
    result
}

/// The command line as recorded in the catalog's operations: `std::env::args()` panics on an
/// argument that is not UTF-8 (a legal path), so read the OS strings and show such bytes as
/// U+FFFD; the recorded line is for people, the arguments themselves were parsed by clap.
fn command_line() -> String {
    std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(printer::stderr_color())
        .with_target(false)
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (duplicate flags, bad defaults) for every subcommand.
    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
