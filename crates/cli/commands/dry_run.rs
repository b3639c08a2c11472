//! `rollback --dry-run` and `rollback-data-only --dry-run`: what the rollback would do,
//! touching nothing (no lock, no stopped container, no staging dir).

use nuwax_actors::{DiffEntry, RollbackScope, Runtime};

use crate::exit::ExitStatus;
use crate::output::inspect::{DryRunDocument, PathCount, SpaceJson};
use crate::output::{escape_name, escape_names, human_bytes};
use crate::printer::Printer;
use crate::progress::Renderer;

/// Paths shown per category in the text report.
const SHOWN: usize = 10;

pub(crate) async fn run(
    rt: &Runtime,
    printer: &Printer,
    id: i64,
    scope: RollbackScope,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.rollback_plan(id, scope, progress.clone()).await;
    renderer.finish(progress).await;
    let p = result?;
    let d = &p.diff;
    let stop: Vec<String> = p.would_stop.iter().map(|c| c.name.clone()).collect();
    let enough = p.available_bytes >= p.needed_with_margin;
    if json {
        printer.document(
            &DryRunDocument {
                dry_run: true,
                backup_id: id,
                scope: crate::output::scope_name(scope),
                replace: PathCount::of(&d.modified),
                add: PathCount::of(&d.removed),
                remove: PathCount::of(&d.added),
                unchanged: d.unchanged,
                space: SpaceJson {
                    needed_bytes: p.needed_bytes,
                    needed_with_margin: p.needed_with_margin,
                    available_bytes: p.available_bytes,
                    enough,
                },
                would_stop: stop,
                engine_found: p.engine_found,
                excluded: p.excluded.clone(),
            },
            None,
        );
        return Ok(ExitStatus::Success);
    }
    let mut out = format!(
        "dry run: rollback of {} from backup {} ({}, version {}, {} UTC); nothing was changed\n",
        scope.describe(),
        id,
        p.backup.record.backup_type.as_str(),
        escape_name(&p.backup.record.service_version),
        p.backup.record.created_at.format("%Y-%m-%d %H:%M:%S")
    );
    for (label, entries) in [
        ("replace (differs live)", &d.modified),
        ("restore (missing live)", &d.removed),
        ("remove (not in the backup)", &d.added),
    ] {
        out.push_str(&format!("{label}: {}\n", entries.len()));
        out.push_str(&first_paths(entries));
    }
    out.push_str(&format!("unchanged: {}\n", d.unchanged));
    out.push_str(&format!(
        "space: needs {} (with margin {}) on the compose dir's filesystem, {} available{}\n",
        human_bytes(p.needed_bytes),
        human_bytes(p.needed_with_margin),
        human_bytes(p.available_bytes),
        if enough {
            ""
        } else {
            ": NOT ENOUGH, the rollback would refuse (exit 3)"
        }
    ));
    out.push_str(&if !p.engine_found {
        "containers: no Docker engine found; none would be stopped\n".to_string()
    } else if stop.is_empty() {
        "containers: none running; none would be stopped\n".to_string()
    } else {
        format!(
            "containers that would stop (and start again): {}\n",
            escape_names(&stop)
        )
    });
    if !p.excluded.is_empty() {
        out.push_str(&format!(
            "never touched (exclude): {}\n",
            escape_names(&p.excluded)
        ));
    }
    printer.data(&out);
    Ok(ExitStatus::Success)
}

fn first_paths(entries: &[DiffEntry]) -> String {
    let mut s = String::new();
    for e in entries.iter().take(SHOWN) {
        s.push_str(&format!("  {}\n", escape_name(&e.path.to_string_lossy())));
    }
    if entries.len() > SHOWN {
        s.push_str(&format!("  ... and {} more\n", entries.len() - SHOWN));
    }
    s
}
