//! Interactive selection and confirmation (terminal only).

use std::io::{BufRead, IsTerminal};

use nuwax_actors::{BackupEntry, BackupStatus};

use crate::exit::usage;
use crate::printer::Printer;

pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn read_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}

/// Asks for a backup ID among the restorable ones; shows catalog IDs (the same IDs the
/// commands take), never row numbers.
pub(crate) fn select_backup(
    printer: &Printer,
    backups: &[BackupEntry],
    command: &str,
) -> anyhow::Result<i64> {
    if !interactive() {
        return Err(usage(format!(
            "no backup ID given and no terminal to ask on; pass one: `nuwax-cli {command} <ID> --force` (IDs: `nuwax-cli list-backups`, or `nuwax-cli rollback --list-json` for JSON)"
        )));
    }
    let usable: Vec<&BackupEntry> = backups
        .iter()
        .filter(|b| b.record.status == BackupStatus::Completed && b.file_exists)
        .collect();
    if usable.is_empty() {
        return Err(usage(
            "there is no restorable backup (none Completed with its archive present); create one with `nuwax-cli backup`",
        ));
    }
    printer.prompt(&format!(
        "Restorable backups:\n{}\n",
        crate::output::table(&usable)
    ));
    loop {
        printer.prompt("Backup ID to restore (q to cancel): ");
        let Some(answer) = read_line() else {
            return Err(usage("cancelled: no answer; nothing was changed"));
        };
        if answer.is_empty() || answer.eq_ignore_ascii_case("q") || answer == "quit" {
            return Err(usage("cancelled; nothing was changed"));
        }
        match answer.parse::<i64>() {
            Ok(id) if usable.iter().any(|b| b.record.id == id) => return Ok(id),
            _ => printer.prompt(&format!("{answer:?} is not one of the IDs listed above\n")),
        }
    }
}

/// `y`/`yes` confirms. Without a terminal and without `--force` this is a usage error.
pub(crate) fn confirm(printer: &Printer, question: &str) -> anyhow::Result<()> {
    if !interactive() {
        return Err(usage(format!(
            "{question}\nrefusing without confirmation: there is no terminal to ask on; pass --force to confirm"
        )));
    }
    printer.prompt(&format!("{question} [y/N] "));
    match read_line() {
        Some(a) if a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes") => Ok(()),
        _ => Err(usage("cancelled; nothing was changed")),
    }
}
