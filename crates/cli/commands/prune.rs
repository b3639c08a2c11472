//! `prune`: apply retention rules (restic-style keep rules; refuses without one).

use nuwax_actors::KeepRules;
use nuwax_actors::Runtime;
use serde::Serialize;

use crate::exit::ExitStatus;
use crate::printer::Printer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days that have backups.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N weeks that have backups.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have backups.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Only list each backup with the rule that keeps or drops it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PruneDocument {
    dry_run: bool,
    /// Every backup, newest first, with the decision and the rules behind it.
    backups: Vec<DecisionJson>,
}

#[derive(Serialize)]
struct DecisionJson {
    id: i64,
    keep: bool,
    reasons: Vec<String>,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let mut rules = KeepRules::from(&rt.settings().config.backup.retention);
    // Flags override the config; with any flag given, only the flags count.
    if args.keep_last.is_some()
        || args.keep_daily.is_some()
        || args.keep_weekly.is_some()
        || args.keep_monthly.is_some()
    {
        rules = KeepRules {
            keep_last: args.keep_last,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
        };
    }
    let decisions = rt.prune(&rules, args.dry_run).await?;
    if args.json {
        printer.document(
            &PruneDocument {
                dry_run: args.dry_run,
                backups: decisions
                    .iter()
                    .map(|d| DecisionJson {
                        id: d.id,
                        keep: d.keep,
                        reasons: d.reasons.clone(),
                    })
                    .collect(),
            },
            None,
        );
    } else {
        let mut out = String::new();
        for d in &decisions {
            out.push_str(&format!(
                "{:<10} {:>5}  {}\n",
                if d.keep {
                    "keep"
                } else if args.dry_run {
                    "would drop"
                } else {
                    "drop"
                },
                d.id,
                crate::output::escape_name(&d.reasons.join(", "))
            ));
        }
        printer.data(&out);
    }
    let dropped = decisions.iter().filter(|d| !d.keep).count();
    printer.info(&if args.dry_run {
        format!("dry run: {dropped} backup(s) would be deleted; nothing was changed")
    } else {
        format!("deleted {dropped} backup(s)")
    });
    Ok(ExitStatus::Success)
}
