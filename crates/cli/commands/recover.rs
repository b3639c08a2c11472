//! `recover`: show interrupted operations that could not be finished or undone by
//! themselves, and resolve them explicitly.
//!
//! Every mutating command refuses (exit 3) while such an operation exists; this command is
//! the way out. Without a flag it shows the state (stdout: one line per conflict); with
//! `--keep-live` or `--restore-saved` it sets the other copy aside (never deletes it) and
//! finishes the recovery.

use nuwax_actors::{Keep, Runtime};

use crate::exit::ExitStatus;
use crate::output::{BlockedJson, RecoverDocument};
use crate::printer::Printer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Keep what is live now; each saved copy is moved to <compose dir>/.nuwax-kept-<op>/.
    #[arg(long, conflicts_with = "restore_saved")]
    pub keep_live: bool,
    /// Put each saved copy back; what is live now is moved to <compose dir>/.nuwax-kept-<op>/.
    #[arg(long)]
    pub restore_saved: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub(crate) fn resolves(&self) -> bool {
        self.keep_live || self.restore_saved
    }
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let blocked = rt.blocked_operations();
    let keep = if args.keep_live {
        Some(Keep::Live)
    } else if args.restore_saved {
        Some(Keep::Saved)
    } else {
        None
    };
    let Some(keep) = keep else {
        if blocked.is_empty() {
            printer.info("nothing to recover: no interrupted operation is waiting for a decision");
        }
        for b in &blocked {
            printer.warn(&b.message);
            for (live, saved) in &b.conflicts {
                printer.data(&format!(
                    "operation {}\tlive {}\tsaved {}",
                    b.operation_id,
                    crate::output::escape_name(&live.display().to_string()),
                    crate::output::escape_name(&saved.display().to_string())
                ));
            }
        }
        if args.json {
            printer.document(
                &RecoverDocument {
                    blocked: blocked.iter().map(BlockedJson::from).collect(),
                    resolved: Vec::new(),
                },
                None,
            );
        }
        return Ok(ExitStatus::Success);
    };
    if blocked.is_empty() {
        printer.info("nothing to recover: no interrupted operation is waiting for a decision");
    }
    let notes = rt.resolve_blocked(keep).await?;
    for n in &notes {
        printer.info(n);
    }
    if args.json {
        printer.document(
            &RecoverDocument {
                blocked: Vec::new(),
                resolved: notes,
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
