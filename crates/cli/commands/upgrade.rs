//! `upgrade --package FILE`: apply a release with a pre-upgrade backup and automatic
//! rollback. Exit 5 when it failed and was rolled back, 6 when the rollback failed too.

use std::path::PathBuf;
use std::time::Duration;

use nuwax_actors::{Runtime, UpgradeRequest};
use serde::Serialize;

use crate::exit::{ExitStatus, usage};
use crate::output::BackupJson;
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The release package: a .tar.gz of the new compose project dir without the data scope.
    #[arg(long, value_name = "FILE")]
    pub package: PathBuf,
    /// The new version (default: the package's file name without .tar.gz).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// How long to wait for the new release to become healthy: `300`, `90s`, `5m`
    /// (default: [upgrade] health_timeout).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * mult))
        .map_err(|_| format!("{s:?} is not a duration like 300, 90s, 5m or 1h"))
}

/// `upgrade --json` on success.
#[derive(Serialize)]
struct UpgradeDocument {
    upgrade_id: i64,
    from_version: String,
    to_version: String,
    /// The PreUpgrade backup taken before applying the release.
    backup: BackupJson,
    /// Services the release defines.
    services: Vec<String>,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    if !args.package.is_file() {
        return Err(usage(format!(
            "release package {} does not exist",
            args.package.display()
        )));
    }
    let (result, totals) = Renderer::run(printer, |progress| {
        rt.upgrade(
            UpgradeRequest {
                package: args.package,
                version: args.version,
                health_timeout: args.health_timeout,
            },
            progress,
        )
    })
    .await;
    let report = result?;
    printer.info(&format!(
        "upgraded from {} to {} (pre-upgrade backup {}); the services are running and healthy; {}",
        report.from_version,
        report.to_version,
        report.backup.record.id,
        totals.suffix()
    ));
    if args.json {
        printer.document(
            &UpgradeDocument {
                upgrade_id: report.upgrade_id,
                from_version: report.from_version.clone(),
                to_version: report.to_version.clone(),
                backup: BackupJson::from(&report.backup),
                services: report.package.services.clone(),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
    }
}
