//! Which backups `prune` keeps: a pure plan over catalog rows, in the manner of restic `forget`.
//!
//! Design note: only `Completed` backups whose archive file is present take part in the keep
//! rules: a row without its archive is not a way back, so it neither uses up a count nor
//! counts as the kept newest (only its row goes). They are ordered newest first
//! (`created_at`, then the larger id on a tie, so the plan is deterministic whatever order the
//! caller passes), except that backups dated in the future (a clock that was ahead, an
//! imported archive) rank after every backup with a past date: their date cannot be trusted,
//! and trusting it would push real backups out of `keep_last` and the period windows.
//! `keep_last N` keeps the N first; `keep_daily N` keeps the first backup met of each of the N
//! UTC days *that have backups* (days without a backup do not use up the count),
//! `keep_weekly` does the same per ISO week and `keep_monthly` per calendar month. A backup
//! kept by several rules lists every reason.
//!
//! Safety rules apply whatever the keep rules say, so a prune can never leave the operator
//! without a way back:
//! - the newest completed backup (in the order above) is always kept;
//! - so is the most recently *taken* one (the highest catalog id among backups taken here,
//!   i.e. the insert order, which no clock can reorder): the backup just written is never
//!   prunable, whatever dates other rows carry;
//! - the newest completed pre-upgrade backup is kept until a newer upgrade has succeeded
//!   (an [`UpgradeRecord`] with outcome `Succeeded` that started after the backup was taken);
//! - the pre-upgrade backup recorded by the most recent *succeeded* upgrade (highest id) is
//!   kept: it leads back from the release now running, even when newer pre-upgrade backups
//!   (of upgrades that failed and were rolled back) exist;
//! - a backup referenced by an upgrade that is still running is kept.
//!
//! A backup whose archive is not here but has a recorded remote copy (`reindex --remote`, or
//! a local delete of a pushed backup) is *remote-only*: still restorable (a rollback pulls
//! it), so its row is always kept, and, like a missing archive, it takes no part in the keep
//! rules of a local prune (`remote prune` applies retention to the remote copies).
//!
//! `Running` backups are never dropped (another process may be writing them; crash recovery
//! turns dead ones into `Failed`). `Failed` backups have no usable archive and are always
//! dropped.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};
use nuwax_store::{BackupRecord, BackupStatus, BackupType, UpgradeOutcome, UpgradeRecord};

use serde::Deserialize;

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
pub const REASON_LATEST_TAKEN: &str = "most recently taken backup";
pub const REASON_PRE_UPGRADE: &str = "latest pre-upgrade backup (no newer successful upgrade)";
/// Followed by ` <id> (<from> -> <to>)`.
pub const REASON_WAY_BACK: &str =
    "pre-upgrade backup leading back from the running release, taken by upgrade";
pub const REASON_RUNNING: &str = "still running";
pub const REASON_FAILED: &str = "failed backup";
pub const REASON_MISSING: &str = "archive file missing: not a way back (only its catalog row goes)";
pub const REASON_REMOTE_ONLY: &str = "remote-only: restorable from the remote, its catalog row stays (remote prune manages the copy)";
pub const REASON_UNMATCHED: &str = "not kept by any rule";
/// A note added to every completed backup dated after `now`.
pub const REASON_FUTURE: &str = "dated in the future: ranked after backups with a past date";

/// Where a backup's archive is, as the caller sees it (the plan itself touches no file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The archive file is here.
    Here,
    /// Not here, but a remote copy is recorded: restorable.
    RemoteOnly,
    /// Neither here nor recorded on a remote.
    Missing,
}

impl From<bool> for Presence {
    fn from(here: bool) -> Self {
        if here {
            Presence::Here
        } else {
            Presence::Missing
        }
    }
}

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
/// `archive_present` says where a backup's archive is (a `bool`: here or missing; or a
/// [`Presence`]). `now` tells which backups are dated in the future.
pub fn plan<P: Into<Presence>>(
    backups: &[BackupRecord],
    archive_present: impl Fn(&BackupRecord) -> P,
    rules: &KeepRules,
    upgrades: &[UpgradeRecord],
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    if rules.is_empty() {
        return Err(Error::Usage(
            "prune needs at least one keep rule: --keep-last, --keep-daily, --keep-weekly or \
             --keep-monthly with a count of 1 or more (or [backup.retention] in config.toml)"
                .into(),
        ));
    }

    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];
    let presence: Vec<Presence> = backups
        .iter()
        .map(|b| {
            if b.status == BackupStatus::Completed {
                archive_present(b).into()
            } else {
                Presence::Here
            }
        })
        .collect();
    let missing: Vec<bool> = presence.iter().map(|p| *p != Presence::Here).collect();
    let future = |i: usize| backups[i].created_at > now;

    // Completed backups with their archive, newest first: past-dated before future-dated,
    // then by date, ties broken by the larger id (the later insert).
    let mut completed: Vec<usize> = (0..backups.len())
        .filter(|&i| backups[i].status == BackupStatus::Completed && !missing[i])
        .collect();
    completed.sort_by(|&a, &b| {
        future(a)
            .cmp(&future(b))
            .then(backups[b].created_at.cmp(&backups[a].created_at))
            .then(backups[b].id.cmp(&backups[a].id))
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
        // A set, not "the previous bucket": a future-dated backup ranked last may share a
        // period with the newest real one, and must not count that period twice.
        let mut seen: HashSet<String> = HashSet::new();
        for &i in &completed {
            if seen.len() >= n as usize {
                break;
            }
            let bucket = period.bucket(backups[i].created_at);
            if seen.insert(bucket.clone()) {
                reasons[i].push(format!("{label} {bucket}"));
            }
        }
    }

    let newest = completed.first().copied();
    if let Some(i) = newest {
        reasons[i].push(REASON_NEWEST.into());
    }
    // The insert order: backups taken here first (an imported old archive gets a high id too).
    let latest_taken = completed
        .iter()
        .copied()
        .filter(|&i| backups[i].owner_pid.is_some())
        .max_by_key(|&i| backups[i].id)
        .or_else(|| completed.iter().copied().max_by_key(|&i| backups[i].id));
    if let Some(i) = latest_taken
        && Some(i) != newest
    {
        reasons[i].push(REASON_LATEST_TAKEN.into());
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
    let current_upgrade = upgrades
        .iter()
        .filter(|u| u.outcome == UpgradeOutcome::Succeeded)
        .max_by_key(|u| u.id);
    if let Some(u) = current_upgrade
        && let Some(&i) = completed
            .iter()
            .find(|&&i| Some(backups[i].id) == u.backup_id)
        && !reasons[i].iter().any(|r| r == REASON_PRE_UPGRADE)
    {
        reasons[i].push(format!(
            "{REASON_WAY_BACK} {} ({} -> {})",
            u.id, u.from_version, u.to_version
        ));
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
        .enumerate()
        .zip(reasons)
        .map(|((i, b), mut reasons)| {
            let keep = match b.status {
                BackupStatus::Completed if presence[i] == Presence::RemoteOnly => {
                    reasons = vec![REASON_REMOTE_ONLY.into()];
                    true
                }
                BackupStatus::Completed if missing[i] => {
                    reasons = vec![REASON_MISSING.into()];
                    false
                }
                BackupStatus::Completed => {
                    let keep = !reasons.is_empty();
                    if !keep {
                        reasons.push(REASON_UNMATCHED.into());
                    }
                    if future(i) {
                        reasons.push(REASON_FUTURE.into());
                    }
                    keep
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

/// `[backup.retention]` / `[remote.retention]` in `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl From<&RetentionConfig> for KeepRules {
    fn from(c: &RetentionConfig) -> Self {
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
            legacy: false,
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
        at(2028, 1, 1, 0)
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
            let err = plan(&b, |_| true, &r, &[], now()).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err}");
            assert!(err.to_string().contains("--keep-last"), "{err}");
        }
        assert!(!rules(None, None, Some(1), None).is_empty());
    }

    #[test]
    fn empty_catalog_gives_empty_plan() {
        assert!(
            plan(&[], |_| true, &rules(Some(1), None, None, None), &[], now())
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
        let d = plan(&b, |_| true, &rules(Some(3), None, None, None), &[], now()).unwrap();
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
        let d = plan(&b, |_| true, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(d.iter().map(|d| d.id).collect::<Vec<_>>(), [7, 9, 8]);
        assert_eq!(kept(&d), [9]);
        let d2 = plan(&b, |_| true, &rules(Some(1), None, None, None), &[], now()).unwrap();
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
        let d = plan(&b, |_| true, &rules(None, Some(2), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [6, 3]);
        assert_eq!(reasons(&d, 6), ["daily 2026-11-25", REASON_NEWEST]);
        assert_eq!(reasons(&d, 3), ["daily 2026-11-23"]);
        let d = plan(&b, |_| true, &rules(None, Some(10), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [6, 3, 1]);
    }

    #[test]
    fn days_are_utc() {
        // 23:30 UTC and 00:30 UTC the next day are two days, whatever the local zone.
        let b = vec![
            backup(2, Utc.with_ymd_and_hms(2026, 11, 26, 0, 30, 0).unwrap()),
            backup(1, Utc.with_ymd_and_hms(2026, 11, 25, 23, 30, 0).unwrap()),
        ];
        let d = plan(&b, |_| true, &rules(None, Some(2), None, None), &[], now()).unwrap();
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
        let d = plan(&b, |_| true, &rules(None, None, Some(5), None), &[], now()).unwrap();
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
        let d = plan(
            &b,
            |_| true,
            &rules(Some(1), Some(2), Some(1), Some(2)),
            &[],
            now(),
        )
        .unwrap();
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
        let d = plan(
            &b,
            |_| true,
            &rules(Some(1), Some(1), None, None),
            &[],
            now(),
        )
        .unwrap();
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
        let d = plan(&b, |_| true, &rules(None, None, None, Some(1)), &[], now()).unwrap();
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
        let d = plan(&b, |_| true, &r, std::slice::from_ref(&own), now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);
        assert_eq!(reasons(&d, 2), [REASON_PRE_UPGRADE]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED], "only the latest one");

        // A later upgrade that failed or was rolled back does not supersede it either.
        let failed = upgrade(2, at(2026, 11, 24, 10), UpgradeOutcome::RolledBack, None);
        let d = plan(&b, |_| true, &r, &[own.clone(), failed.clone()], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);

        // An upgrade started at the very instant of the backup is not "newer".
        let same = upgrade(3, at(2026, 11, 20, 9), UpgradeOutcome::Succeeded, None);
        let d = plan(&b, |_| true, &r, &[same], now()).unwrap();
        assert_eq!(kept(&d), [4, 2]);

        // A newer successful upgrade releases it.
        let newer = upgrade(4, at(2026, 11, 24, 10), UpgradeOutcome::Succeeded, None);
        let d = plan(&b, |_| true, &r, &[own, failed, newer], now()).unwrap();
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
        let d = plan(&b, |_| true, &rules(Some(1), None, None, None), &[], now()).unwrap();
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
        let d = plan(&b, |_| true, &rules(Some(1), None, None, None), &ups, now()).unwrap();
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
        let d = plan(
            &b,
            |_| true,
            &rules(Some(5), Some(5), Some(5), Some(5)),
            &[],
            now(),
        )
        .unwrap();
        assert_eq!(kept(&d), [2]);
    }

    #[test]
    fn remote_only_backups_keep_their_row_and_use_up_no_count() {
        let b = vec![
            backup(3, at(2026, 11, 26, 9)),
            backup(2, at(2026, 11, 25, 9)),
            backup(1, at(2026, 11, 24, 9)),
        ];
        let presence = |r: &BackupRecord| match r.id {
            3 => Presence::RemoteOnly,
            2 => Presence::Missing,
            _ => Presence::Here,
        };
        let d = plan(&b, presence, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [3, 1]);
        assert_eq!(reasons(&d, 3), [REASON_REMOTE_ONLY]);
        assert_eq!(reasons(&d, 2), [REASON_MISSING]);
        assert_eq!(reasons(&d, 1), ["last 1", REASON_NEWEST]);
    }

    #[test]
    fn missing_archive_is_never_the_kept_newest_and_uses_up_no_count() {
        let b = vec![
            backup(4, at(2026, 11, 26, 9)),
            backup(3, at(2026, 11, 25, 9)),
            backup(2, at(2026, 11, 24, 9)),
            backup(1, at(2026, 11, 23, 9)),
        ];
        let gone = |r: &BackupRecord| r.id != 4 && r.id != 2;
        let d = plan(&b, gone, &rules(Some(1), None, None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [3], "the newest backup with its archive");
        assert_eq!(reasons(&d, 3), ["last 1", REASON_NEWEST]);
        assert_eq!(reasons(&d, 4), [REASON_MISSING]);
        assert_eq!(reasons(&d, 2), [REASON_MISSING]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED]);
        // Periods too: the missing one's day does not use up the daily count.
        let d = plan(&b, gone, &rules(None, Some(2), None, None), &[], now()).unwrap();
        assert_eq!(kept(&d), [3, 1]);
        // A missing pre-upgrade backup is not "the way back" either.
        let b = vec![
            backup(2, at(2026, 11, 26, 9)),
            with(backup(1, at(2026, 11, 25, 9)), |b| {
                b.backup_type = BackupType::PreUpgrade
            }),
        ];
        let ups = [upgrade(
            1,
            at(2026, 11, 25, 8),
            UpgradeOutcome::Succeeded,
            Some(1),
        )];
        let d = plan(
            &b,
            |r| r.id != 1,
            &rules(Some(1), None, None, None),
            &ups,
            now(),
        )
        .unwrap();
        assert_eq!(kept(&d), [2]);
        assert_eq!(reasons(&d, 1), [REASON_MISSING]);
        // Nothing present at all: nothing is kept, nothing but rows goes.
        let d = plan(
            &b,
            |_| false,
            &rules(Some(5), None, None, None),
            &ups,
            now(),
        )
        .unwrap();
        assert!(kept(&d).is_empty());
    }

    #[test]
    fn future_dated_backups_never_push_out_the_backup_just_written() {
        let now = at(2026, 11, 25, 12);
        let taken = |b: BackupRecord| with(b, |b| b.owner_pid = Some(42));
        let b = vec![
            // Written while the clock was a month ahead, or imported from such a host.
            taken(backup(2, at(2026, 12, 30, 9))),
            taken(backup(1, at(2026, 12, 29, 9))),
            // Just written, with the right clock.
            taken(backup(4, at(2026, 11, 25, 11))),
            taken(backup(3, at(2026, 11, 24, 11))),
        ];
        for r in [
            rules(Some(1), None, None, None),
            rules(None, Some(1), None, None),
            rules(None, None, Some(1), None),
            rules(None, None, None, Some(1)),
        ] {
            let d = plan(&b, |_| true, &r, &[], now).unwrap();
            assert!(kept(&d).contains(&4), "{r:?}: {d:?}");
            assert!(reasons(&d, 4).contains(&REASON_NEWEST.to_string()), "{r:?}");
            assert!(!kept(&d).contains(&3), "{r:?}: {d:?}");
        }
        let d = plan(&b, |_| true, &rules(Some(3), None, None, None), &[], now).unwrap();
        // Real dates first, then the future-dated ones.
        assert_eq!(kept(&d), [2, 4, 3], "input order");
        assert_eq!(reasons(&d, 4), ["last 3", REASON_NEWEST]);
        assert_eq!(reasons(&d, 3), ["last 3"]);
        assert_eq!(reasons(&d, 2), ["last 3", REASON_FUTURE]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED, REASON_FUTURE]);
        let d = plan(&b, |_| true, &rules(Some(1), None, None, None), &[], now).unwrap();
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED, REASON_FUTURE]);

        // A future-dated backup in the same day as the newest real one: that day counts once.
        let b = vec![
            taken(backup(5, at(2026, 11, 25, 20))),
            taken(backup(7, at(2026, 11, 25, 10))),
            taken(backup(6, at(2026, 11, 24, 10))),
        ];
        let d = plan(&b, |_| true, &rules(None, Some(2), None, None), &[], now).unwrap();
        assert_eq!(kept(&d), [7, 6]);
        assert_eq!(reasons(&d, 7), ["daily 2026-11-25", REASON_NEWEST]);
        assert_eq!(reasons(&d, 6), ["daily 2026-11-24"]);
        assert_eq!(reasons(&d, 5), [REASON_UNMATCHED, REASON_FUTURE]);
    }

    #[test]
    fn most_recently_taken_backup_is_kept_whatever_the_dates() {
        // The clock was ahead when 1 and 2 were taken; it no longer is (they are in the past
        // now) but they still look newer than 3, the backup just written (the highest id).
        let now = at(2026, 11, 25, 12);
        let taken = |b: BackupRecord| with(b, |b| b.owner_pid = Some(42));
        let b = vec![
            taken(backup(1, at(2026, 11, 25, 11))),
            taken(backup(2, at(2026, 11, 25, 11))),
            taken(backup(3, at(2026, 11, 25, 9))),
            // An old archive imported afterwards: highest id, but not taken here.
            backup(4, at(2026, 1, 1, 0)),
        ];
        let d = plan(&b, |_| true, &rules(Some(1), None, None, None), &[], now).unwrap();
        assert_eq!(kept(&d), [2, 3]);
        assert_eq!(reasons(&d, 2), ["last 1", REASON_NEWEST]);
        assert_eq!(reasons(&d, 3), [REASON_LATEST_TAKEN]);
        assert_eq!(reasons(&d, 4), [REASON_UNMATCHED]);
        // Only imported rows: the highest id is the latest insert.
        let imported: Vec<_> = b
            .iter()
            .map(|r| with(r.clone(), |r| r.owner_pid = None))
            .collect();
        let d = plan(
            &imported,
            |_| true,
            &rules(Some(1), None, None, None),
            &[],
            now,
        )
        .unwrap();
        assert_eq!(kept(&d), [2, 4]);
        assert_eq!(reasons(&d, 4), [REASON_LATEST_TAKEN]);
    }

    #[test]
    fn the_way_back_from_the_running_release_is_kept() {
        let pre = |id, t| with(backup(id, t), |b| b.backup_type = BackupType::PreUpgrade);
        let b = vec![
            backup(3, at(2026, 11, 25, 9)),
            // Taken by an upgrade 2 -> 3 that was rolled back.
            pre(2, at(2026, 11, 24, 9)),
            // Taken by the upgrade 1 -> 2 that succeeded: the running release is 2.
            pre(1, at(2026, 11, 20, 9)),
        ];
        let mut up1 = upgrade(1, at(2026, 11, 20, 8), UpgradeOutcome::Succeeded, Some(1));
        up1.from_version = "1.0".into();
        up1.to_version = "2.0".into();
        let up2 = upgrade(2, at(2026, 11, 24, 8), UpgradeOutcome::RolledBack, Some(2));
        let r = rules(Some(1), None, None, None);
        let d = plan(&b, |_| true, &r, &[up1.clone(), up2.clone()], now()).unwrap();
        assert_eq!(kept(&d), [3, 2, 1]);
        assert_eq!(reasons(&d, 2), [REASON_PRE_UPGRADE]);
        assert_eq!(
            reasons(&d, 1),
            [format!("{REASON_WAY_BACK} 1 (1.0 -> 2.0)")]
        );
        // The order of the upgrade rows does not matter: the highest id is the latest.
        let d2 = plan(&b, |_| true, &r, &[up2.clone(), up1.clone()], now()).unwrap();
        assert_eq!(d, d2);

        // A later successful upgrade (3 -> 4, its backup deleted since) moves the way back:
        // backup 1 no longer leads back from the running release.
        let up3 = upgrade(3, at(2026, 11, 26, 8), UpgradeOutcome::Succeeded, None);
        let d = plan(&b, |_| true, &r, &[up1, up2, up3], now()).unwrap();
        assert_eq!(kept(&d), [3]);
        assert_eq!(reasons(&d, 1), [REASON_UNMATCHED]);
    }
}
