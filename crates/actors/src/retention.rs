//! Which backups `prune` keeps: a pure plan over catalog rows, in the manner of restic `forget`.
//!
//! Design note: only `Completed` backups take part in the keep rules. They are ordered newest
//! first (`created_at`, then the larger id on a tie, so the plan is deterministic whatever order
//! the caller passes). `keep_last N` keeps the N newest; `keep_daily N` keeps the newest backup
//! of each of the N most recent UTC days *that have backups* (days without a backup do not use
//! up the count), `keep_weekly` does the same per ISO week and `keep_monthly` per calendar
//! month. A backup kept by several rules lists every reason.
//!
//! Two safety rules apply whatever the keep rules say, so a prune can never leave the operator
//! without a way back:
//! - the newest completed backup is always kept;
//! - the newest completed pre-upgrade backup is kept until a newer upgrade has succeeded
//!   (an [`UpgradeRecord`] with outcome `Succeeded` that started after the backup was taken),
//!   because until then it is the way back from the current release. A backup referenced by an
//!   upgrade that is still running is kept too.
//!
//! `Running` backups are never dropped (another process may be writing them; crash recovery
//! turns dead ones into `Failed`). `Failed` backups have no usable archive and are always
//! dropped.

use chrono::{DateTime, Datelike, Utc};
use nuwax_store::{BackupRecord, BackupStatus, BackupType, UpgradeOutcome, UpgradeRecord};

use crate::error::{Error, Result};

/// The keep rules of one prune (`--keep-last` ... or `[backup.retention]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepRules {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl KeepRules {
    /// `true` when no rule would keep anything: every rule unset or zero.
    ///
    /// A zero count keeps nothing, so "only zeros" is treated like "no rule": a prune driven by
    /// it would delete everything but the safety-kept backups, which is never what was meant.
    pub fn is_empty(&self) -> bool {
        [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ]
        .iter()
        .all(|r| r.unwrap_or(0) == 0)
    }
}

/// What the plan says about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub keep: bool,
    /// Why: for a kept backup every rule that keeps it (`"last 3"`, `"daily 2026-11-25"`,
    /// `"weekly 2026-W47"`, `"monthly 2026-11"`, `"newest completed backup"`, ...); for a
    /// dropped one the reason it goes (`"failed backup"`, `"not kept by any rule"`).
    pub reasons: Vec<String>,
}

pub const REASON_NEWEST: &str = "newest completed backup";
pub const REASON_PRE_UPGRADE: &str = "latest pre-upgrade backup (no newer successful upgrade)";
pub const REASON_RUNNING: &str = "still running";
pub const REASON_FAILED: &str = "failed backup";
pub const REASON_UNMATCHED: &str = "not kept by any rule";

#[derive(Debug, Clone, Copy)]
enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// The period `t` falls in (UTC), in the form the reasons show.
    fn bucket(self, t: DateTime<Utc>) -> String {
        match self {
            Period::Day => t.format("%Y-%m-%d").to_string(),
            Period::Week => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Period::Month => t.format("%Y-%m").to_string(),
        }
    }
}

/// Plans a prune: one [`Decision`] per backup, in the order of `backups`.
///
/// `now` is not used by the current rules, which count periods that have backups rather than
/// calendar periods back from today; it is part of the signature so time-window rules
/// (restic's `--keep-within`) can be added without changing callers.
pub fn plan(
    backups: &[BackupRecord],
    rules: &KeepRules,
    upgrades: &[UpgradeRecord],
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    let _ = now;
    if rules.is_empty() {
        return Err(Error::Usage(
            "prune needs at least one keep rule: --keep-last, --keep-daily, --keep-weekly or \
             --keep-monthly with a count of 1 or more (or [backup.retention] in config.toml)"
                .into(),
        ));
    }

    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];

    // Indices of completed backups, newest first; ties broken by the larger id (the later insert).
    let mut completed: Vec<usize> = (0..backups.len())
        .filter(|&i| backups[i].status == BackupStatus::Completed)
        .collect();
    completed.sort_by(|&a, &b| {
        let (a, b) = (&backups[a], &backups[b]);
        b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id))
    });

    if let Some(n) = rules.keep_last {
        for &i in completed.iter().take(n as usize) {
            reasons[i].push(format!("last {n}"));
        }
    }
    let periods = [
        (rules.keep_daily, "daily", Period::Day),
        (rules.keep_weekly, "weekly", Period::Week),
        (rules.keep_monthly, "monthly", Period::Month),
    ];
    for (count, label, period) in periods {
        let Some(n) = count else { continue };
        let mut seen = 0u32;
        let mut last_bucket: Option<String> = None;
        for &i in &completed {
            if seen >= n {
                break;
            }
            let bucket = period.bucket(backups[i].created_at);
            // Newest first, so the first backup met in a bucket is that bucket's newest.
            if last_bucket.as_deref() != Some(bucket.as_str()) {
                reasons[i].push(format!("{label} {bucket}"));
                seen += 1;
                last_bucket = Some(bucket);
            }
        }
    }

    if let Some(&newest) = completed.first() {
        reasons[newest].push(REASON_NEWEST.into());
    }
    let latest_pre_upgrade = completed
        .iter()
        .copied()
        .find(|&i| backups[i].backup_type == BackupType::PreUpgrade);
    if let Some(i) = latest_pre_upgrade {
        let taken = backups[i].created_at;
        let superseded = upgrades
            .iter()
            .any(|u| u.outcome == UpgradeOutcome::Succeeded && u.started_at > taken);
        if !superseded {
            reasons[i].push(REASON_PRE_UPGRADE.into());
        }
    }
    for u in upgrades
        .iter()
        .filter(|u| u.outcome == UpgradeOutcome::Running)
    {
        for &i in &completed {
            if Some(backups[i].id) == u.backup_id {
                reasons[i].push(format!("backup of running upgrade {}", u.id));
            }
        }
    }

    Ok(backups
        .iter()
        .zip(reasons)
        .map(|(b, mut reasons)| {
            let keep = match b.status {
                BackupStatus::Completed => {
                    if reasons.is_empty() {
                        reasons.push(REASON_UNMATCHED.into());
                        false
                    } else {
                        true
                    }
                }
                BackupStatus::Running => {
                    reasons = vec![REASON_RUNNING.into()];
                    true
                }
                BackupStatus::Failed => {
                    reasons = vec![REASON_FAILED.into()];
                    false
                }
            };
            Decision {
                id: b.id,
                keep,
                reasons,
            }
        })
        .collect())
}

impl From<&crate::config::RetentionConfig> for KeepRules {
    fn from(c: &crate::config::RetentionConfig) -> Self {
        KeepRules {
            keep_last: c.keep_last,
            keep_daily: c.keep_daily,
            keep_weekly: c.keep_weekly,
            keep_monthly: c.keep_monthly,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    fn backup(id: i64, created_at: DateTime<Utc>) -> BackupRecord {
        BackupRecord {
            id,
            file_path: PathBuf::from(format!("/b/{id}.tar.gz")),
            backup_type: BackupType::Manual,
            service_version: "1.0.0".into(),
            status: BackupStatus::Completed,
            size: Some(1),
            sha256: Some("00".into()),
            entry_count: Some(1),
            error: None,
            created_at,
            finished_at: Some(created_at),
            owner_pid: None,
            verified_at: None,
            compose_project: None,
        }
    }

    fn with(mut b: BackupRecord, f: impl FnOnce(&mut BackupRecord)) -> BackupRecord {
        f(&mut b);
        b
    }

    fn upgrade(
        id: i64,
        started_at: DateTime<Utc>,
        outcome: UpgradeOutcome,
        backup_id: Option<i64>,
    ) -> UpgradeRecord {
        UpgradeRecord {
            id,
            from_version: "1".into(),
            to_version: "2".into(),
            backup_id,
            outcome,
            started_at,
            finished_at: None,
            error: None,
        }
    }

    fn rules(
        last: Option<u32>,
        daily: Option<u32>,
        weekly: Option<u32>,
        monthly: Option<u32>,
    ) -> KeepRules {
        KeepRules {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    fn now() -> DateTime<Utc> {
        at(2027, 1, 1, 0)
    }

    fn kept(decisions: &[Decision]) -> Vec<i64> {
        decisions.iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    fn reasons(decisions: &[Decision], id: i64) -> Vec<String> {
        decisions
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .reasons
            .clone()
    }

    #[test]
    fn no_rule_is_a_usage_error() {
        let b = [backup(1, at(2026, 11, 25, 1))];
        for r in [KeepRules::default(), rules(Some(0), Some(0), None, Some(0))] {
            assert!(r.is_empty());
            let err = plan(&b, &r, &[], now()).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err}");
            assert!(err.to_string().contains("--keep-last"), "{err}");
        }
        assert!(!rules(None, None, Some(1), None).is_empty());
    }

    #[test]
    fn empty_catalog_gives_empty_plan() {
        assert!(
            plan(&[], &rules(Some(1), None, None, None), &[], now())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn keep_last_keeps_the_n_newest_in_input_order() {
        let b: Vec<_> = (1..=5)
            .rev()
            .map(|i| backup(i, at(2026, 11, i as u32, 12)))
            .collect();
        let d = plan(&b, &rules(Some(3), None, None, None), &[], now()).unwrap();
        assert_eq!(d.iter().map(|d| d.id).collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
        assert_eq!(kept(&d), [5, 4, 3]);
        assert_eq!(reasons(&d, 5), ["last 3", REASON_NEWEST]);
        assert_eq!(reasons(&d, 4), ["last 3"]);
        assert_eq!(reasons(&d, 2), [REASON_UNMATCHED]);
    }

    #[test]
    fn input_order_does_not_matter_and_ties_break_by_id() {
        let t = at(2026, 11, 25, 12);
        let b = vec![backup(7, t), backup(9, t), backup(8, t)];
        let d = plan(&b, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(d.iter().map(|d| d.id).collect::<Vec<_>>(), [7, 9, 8]);
        assert_eq!(kept(&d), [9]);
        let d2 = plan(&b, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(d, d2, "deterministic");
    }

    #[test]
    fn daily_keeps_newest_of_each_recent_day_with_backups() {
        let b = vec![
            backup(6, at(2026, 11, 25, 23)),
            backup(5, at(2026, 11, 25, 8)),
            backup(4, at(2026, 11, 25, 0)),
            // gap: 24th has nothing, it does not use up the count
            backup(3, at(2026, 11, 23, 18)),
            backup(2, at(2026, 11, 23, 6)),
            backup(1, at(2026, 11, 22, 6)),
        ];
        let d = plan(&b, &rules(None, Some(2), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [6, 3]);
        assert_eq!(reasons(&d, 6), ["daily 2026-11-25", REASON_NEWEST]);
        assert_eq!(reasons(&d, 3), ["daily 2026-11-23"]);
        let d = plan(&b, &rules(None, Some(10), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [6, 3, 1]);
    }

    #[test]
    fn days_are_utc() {
        // 23:30 UTC and 00:30 UTC the next day are two days, whatever the local zone.
        let b = vec![
            backup(2, Utc.with_ymd_and_hms(2026, 11, 26, 0, 30, 0).unwrap()),
            backup(1, Utc.with_ymd_and_hms(2026, 11, 25, 23, 30, 0).unwrap()),
        ];
        let d = plan(&b, &rules(None, Some(2), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [2, 1]);
        assert_eq!(reasons(&d, 1), ["daily 2026-11-25"]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_year_boundaries() {
        // 2026-12-31 (Thu) and 2027-01-03 (Sun) are both in ISO week 2026-W53;
        // 2027-01-04 (Mon) starts 2027-W01; 2024-12-30 (Mon) is 2025-W01.
        let b = vec![
            backup(5, at(2027, 1, 4, 9)),
            backup(4, at(2027, 1, 3, 9)),
            backup(3, at(2026, 12, 31, 9)),
            backup(2, at(2024, 12, 30, 9)),
            backup(1, at(2024, 12, 29, 9)),
        ];
        let d = plan(&b, &rules(None, None, Some(5), None), &[], now()).unwrap();
        assert_eq!(kept(&d), [5, 4, 2, 1]);
        assert_eq!(reasons(&d, 5), ["weekly 2027-W01", REASON_NEWEST]);
        assert_eq!(reasons(&d, 4), ["weekly 2026-W53"]);
        assert_eq!(reasons(&d, 3), [REASON_UNMATCHED]);
        assert_eq!(reasons(&d, 2), ["weekly 2025-W01"]);
        assert_eq!(reasons(&d, 1), ["weekly 2024-W52"]);
    }

    #[test]
    fn monthly_and_combined_rules_list_every_reason() {
        let b = vec![
            backup(5, at(2026, 11, 25, 9)),
            backup(4, at(2026, 11, 24, 9)),
            backup(3, at(2026, 11, 2, 9)),
            backup(2, at(2026, 10, 31, 9)),
            backup(1, at(2026, 9, 1, 9)),
        ];
        let d = plan(&b, &rules(Some(1), Some(2), Some(1), Some(2)), &[], now()).unwrap();
        assert_eq!(kept(&d), [5, 4, 2]);
        assert_eq!(
            reasons(&d, 5),
            [
                "last 1",
                "daily 2026-11-25",
                "weekly 2026-W48",
                "monthly 2026-11",
                REASON_NEWEST
            ]
        );
        assert_eq!(reasons(&d, 4), ["daily 2026-11-24"]);
        assert_eq!(reasons(&d, 2), ["monthly 2026-10"]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED]);
    }

    #[test]
    fn failed_are_dropped_and_running_kept_without_using_up_counts() {
        let b = vec![
            with(backup(4, at(2026, 11, 26, 9)), |b| {
                b.status = BackupStatus::Running
            }),
            with(backup(3, at(2026, 11, 25, 9)), |b| {
                b.status = BackupStatus::Failed
            }),
            backup(2, at(2026, 11, 24, 9)),
            backup(1, at(2026, 11, 23, 9)),
        ];
        let d = plan(&b, &rules(Some(1), Some(1), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);
        assert_eq!(reasons(&d, 4), [REASON_RUNNING]);
        assert_eq!(reasons(&d, 3), [REASON_FAILED]);
        assert_eq!(
            reasons(&d, 2),
            ["last 1", "daily 2026-11-24", REASON_NEWEST]
        );
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED]);
    }

    #[test]
    fn newest_completed_is_always_kept() {
        // Every positive rule starts from the newest backup, so the safety rule never changes
        // the outcome today; it is listed so the operator sees the backup is protected, and it
        // holds even when newer rows are failed or running.
        let b = vec![
            with(backup(4, at(2026, 11, 27, 9)), |b| {
                b.status = BackupStatus::Running
            }),
            with(backup(3, at(2026, 11, 26, 9)), |b| {
                b.status = BackupStatus::Failed
            }),
            backup(2, at(2026, 11, 25, 9)),
            backup(1, at(2026, 11, 24, 9)),
        ];
        let d = plan(&b, &rules(None, None, None, Some(1)), &[], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);
        assert_eq!(reasons(&d, 2), ["monthly 2026-11", REASON_NEWEST]);
    }

    #[test]
    fn latest_pre_upgrade_kept_until_a_newer_successful_upgrade() {
        let pre = |id, t| with(backup(id, t), |b| b.backup_type = BackupType::PreUpgrade);
        let b = vec![
            backup(4, at(2026, 11, 25, 9)),
            backup(3, at(2026, 11, 24, 9)),
            pre(2, at(2026, 11, 20, 9)),
            pre(1, at(2026, 11, 10, 9)),
        ];
        let r = rules(Some(1), None, None, None);

        // The upgrade that took backup 2 started just before it: it does not supersede it.
        let own = upgrade(1, at(2026, 11, 20, 8), UpgradeOutcome::Succeeded, Some(2));
        let d = plan(&b, &r, std::slice::from_ref(&own), now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);
        assert_eq!(reasons(&d, 2), [REASON_PRE_UPGRADE]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED], "only the latest one");

        // A later upgrade that failed or was rolled back does not supersede it either.
        let failed = upgrade(2, at(2026, 11, 24, 10), UpgradeOutcome::RolledBack, None);
        let d = plan(&b, &r, &[own.clone(), failed.clone()], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);

        // An upgrade started at the very instant of the backup is not "newer".
        let same = upgrade(3, at(2026, 11, 20, 9), UpgradeOutcome::Succeeded, None);
        let d = plan(&b, &r, &[same], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);

        // A newer successful upgrade releases it.
        let newer = upgrade(4, at(2026, 11, 24, 10), UpgradeOutcome::Succeeded, None);
        let d = plan(&b, &r, &[own, failed, newer], now()).unwrap();
        assert_eq!(kept(&d), [4]);
        assert_eq!(reasons(&d, 2), [REASON_UNMATCHED]);
    }

    #[test]
    fn failed_pre_upgrade_backup_does_not_count_as_latest() {
        let b = vec![
            backup(3, at(2026, 11, 25, 9)),
            with(backup(2, at(2026, 11, 24, 9)), |b| {
                b.backup_type = BackupType::PreUpgrade;
                b.status = BackupStatus::Failed;
            }),
            with(backup(1, at(2026, 11, 20, 9)), |b| {
                b.backup_type = BackupType::PreUpgrade
            }),
        ];
        let d = plan(&b, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [3, 1]);
        assert_eq!(reasons(&d, 1), [REASON_PRE_UPGRADE]);
        assert_eq!(reasons(&d, 2), [REASON_FAILED]);
    }

    #[test]
    fn backup_of_a_running_upgrade_is_kept() {
        let b = vec![
            backup(3, at(2026, 11, 25, 9)),
            backup(2, at(2026, 11, 24, 9)),
            backup(1, at(2026, 11, 20, 9)),
        ];
        let ups = [
            upgrade(7, at(2026, 11, 20, 8), UpgradeOutcome::Running, Some(1)),
            upgrade(8, at(2026, 11, 24, 8), UpgradeOutcome::Failed, Some(2)),
        ];
        let d = plan(&b, &rules(Some(1), None, None, None), &ups, now()).unwrap();
        assert_eq!(kept(&d), [3, 1]);
        assert_eq!(reasons(&d, 1), ["backup of running upgrade 7"]);
    }

    #[test]
    fn only_failed_and_running_backups() {
        let b = vec![
            with(backup(2, at(2026, 11, 25, 9)), |b| {
                b.status = BackupStatus::Running
            }),
            with(backup(1, at(2026, 11, 24, 9)), |b| {
                b.status = BackupStatus::Failed
            }),
        ];
        let d = plan(&b, &rules(Some(5), Some(5), Some(5), Some(5)), &[], now()).unwrap();
        assert_eq!(kept(&d), [2]);
    }
}
