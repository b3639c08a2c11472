//! One module per subcommand, each with its clap `Args` and one `run`.

pub(crate) mod auto_backup;
pub(crate) mod backup;
pub(crate) mod completions;
pub(crate) mod delete;
pub(crate) mod diff;
pub(crate) mod docker_service;
pub(crate) mod drill;
pub(crate) mod dry_run;
pub(crate) mod encryption;
pub(crate) mod list;
pub(crate) mod ls;
pub(crate) mod prune;
pub(crate) mod recover;
pub(crate) mod reindex;
pub(crate) mod remote;
pub(crate) mod restore;
pub(crate) mod restore_dump;
pub(crate) mod rollback;
pub(crate) mod upgrade;
pub(crate) mod verify;

use crate::Command;

/// Whether the command prints a JSON document (so errors must too).
pub(crate) fn wants_json(cmd: &Command) -> bool {
    match cmd {
        Command::Backup(a) => a.json,
        Command::ListBackups(a) => a.json,
        Command::Rollback(a) => a.json || a.list_json,
        Command::RollbackDataOnly(a) => a.json,
        Command::DeleteBackup(a) => a.json,
        Command::Verify(a) => a.json,
        Command::DockerService(a) => a.action.json(),
        Command::AutoBackup(a) => a.action.json(),
        Command::Upgrade(a) => a.json,
        Command::Prune(a) => a.json,
        Command::Reindex(a) => a.json,
        Command::Import(a) => a.json,
        Command::Recover(a) => a.json,
        Command::Remote(a) => a.action.json(),
        Command::Ls(a) => a.json,
        Command::Diff(a) => a.json,
        Command::Restore(a) => a.json,
        Command::RestoreDump(a) => a.json,
        Command::Drill(a) => a.json,
        Command::Encryption(a) => a.action.json(),
        Command::Completions(_) | Command::Man => false,
    }
}

/// The key given on the command line for an encrypted backup (`--identity`,
/// `--passphrase-file`), if the command takes one.
pub(crate) fn key_source(cmd: &Command) -> Option<nuwax_actors::KeySource> {
    match cmd {
        Command::Rollback(a) => a.key.source(),
        Command::RollbackDataOnly(a) => a.key.source(),
        Command::Verify(a) => a.key.source(),
        Command::Ls(a) => a.key.source(),
        Command::Diff(a) => a.key.source(),
        Command::Restore(a) => a.key.source(),
        Command::Encryption(a) => a.action.key().source(),
        Command::Remote(a) => a.action.key(),
        Command::Drill(a) => a.key.source(),
        Command::Reindex(a) => a.key.source(),
        Command::Import(a) => a.key.source(),
        _ => None,
    }
}

/// Whether the command's document is the backup list (`list-backups --json`, `rollback
/// --list-json`): its failure document carries an empty `backups` too, as the original tool's.
pub(crate) fn lists_backups(cmd: &Command) -> bool {
    match cmd {
        Command::ListBackups(a) => a.json,
        Command::Rollback(a) => a.list_json,
        _ => false,
    }
}
