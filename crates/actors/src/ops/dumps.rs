//! Database dumps around a backup (`[[backup.dumps]]`, issue 15), hot backups, and
//! `restore-dump`. The dumps run inside the services' containers through the DockerActor's
//! exec messages (`docker/engine/exec.rs`); what runs and how its output is judged is in
//! `dumps.rs`.
//!
//! Ordering: a dump needs its database running, so every backup takes its dumps first, while
//! the services run: `auto-backup run` dumps, then stops, then archives (the archive's files
//! are then cold, and the dump is a consistent snapshot of the database a moment before the
//! stop: writes between the dump and the stop are in the files, not in the dump). A plain
//! `backup` runs after the operator stopped the services: a dump whose service is not
//! running is skipped with a notice (its files are consistent in a cold backup). A hot
//! backup (`--hot`) never stops anything: the dumps are the database's consistent copy and
//! its datadir (`hot_exclude`) is left out of the archive.
//!
//! A failed dump fails the backup before anything is stopped or archived: the catalog gets
//! a `failed` row with the dump's stderr tail, the services are untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nuwax_store::BackupType;

use super::{BackupEntry, Ctx, backup};
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::archive::{ArchiveInfo, DumpRecord, ImageRecord};
use crate::docker::engine::{ExecIo, ExecRequest};
use crate::docker::{ComposeProject, ContainerInfo, policy};
use crate::dumps::{self, DumpConfig, ServiceName};
use crate::error::{Error, Result};
use crate::exclude::ExcludeRule;
use crate::fsutil::partial_path;
use crate::progress::Progress;

/// Name prefix of a backup's dump dir in the storage dir (`.nuwax-dumps-<pid>-<micros>`);
/// start-up recovery removes one a killed process left.
pub(crate) const WORK_DIR_PREFIX: &str = ".nuwax-dumps-";
/// Name prefix of `restore-dump`'s copy of a dump in the storage dir
/// (`.nuwax-restore-dump-<pid>-<service>.sql`); recovery removes one a killed process left.
pub(crate) const RESTORE_FILE_PREFIX: &str = ".nuwax-restore-dump-";

/// The dumps taken for one backup: finished files in a private dir of the storage dir
/// (removed when this is dropped), their records for `info.json`, and what a hot backup
/// leaves out.
#[derive(Debug, Default)]
pub(crate) struct Dumps {
    dir: Option<PathBuf>,
    pub records: Vec<DumpRecord>,
    pub files: Vec<PathBuf>,
    /// Taken hot: the services kept running.
    pub hot: bool,
    /// The `hot_exclude` paths of the dumps (only for a hot backup).
    pub hot_exclude: Vec<ExcludeRule>,
}

impl Drop for Dumps {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Dumps {
    /// Fills the archive's info and returns the dump files, in the same order.
    pub(crate) fn apply(&self, info: &mut ArchiveInfo, exclude: &mut Vec<ExcludeRule>) {
        info.dumps = self.records.clone();
        info.hot = self.hot;
        for rule in &self.hot_exclude {
            if !exclude.contains(rule) {
                exclude.push(rule.clone());
            }
            if !info.excluded.contains(rule) {
                info.excluded.push(rule.clone());
            }
        }
    }
}

/// The running container of `service`, if any.
fn running_container<'a>(
    containers: &'a [ContainerInfo],
    service: &ServiceName,
) -> Option<&'a ContainerInfo> {
    containers
        .iter()
        .filter(|c| c.service.as_deref() == Some(service.as_str()))
        .find(|c| c.state == crate::docker::ContainerState::Running)
}

/// Takes the configured dumps of the services that run (`containers`: the project's
/// containers now). `hot`: a service that does not run is refused (its datadir would be
/// missing from the archive with no dump for it); otherwise it is skipped with a notice.
pub(crate) async fn take(
    ctx: &Ctx,
    containers: &[ContainerInfo],
    hot: bool,
    progress: &Progress,
) -> Result<Dumps> {
    let configured = &ctx.settings.config.backup.dumps;
    let mut out = Dumps::default();
    out.hot = hot;
    if configured.is_empty() {
        return Ok(out);
    }
    let storage = &ctx.settings.paths.storage_dir;
    std::fs::create_dir_all(storage).map_err(|e| Error::io("cannot create", storage, e))?;
    for dump in configured {
        let Some(container) = running_container(containers, &dump.service) else {
            if hot {
                return Err(Error::Refused(format!(
                    "service {} is not running, so its dump cannot be taken and a hot backup would hold neither its files nor a dump; start it, or take a cold backup (`nuwax-cli auto-backup run`)",
                    dump.service
                )));
            }
            progress.notice(format!(
                "service {} is not running: no dump taken (its files are in this cold backup)",
                dump.service
            ));
            continue;
        };
        if out.dir.is_none() {
            let dir = storage.join(format!(
                "{WORK_DIR_PREFIX}{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_micros()
            ));
            std::fs::create_dir(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
            out.dir = Some(dir);
        }
        let dir = out.dir.clone().unwrap_or_default();
        progress.notice(format!(
            "dumping {} database of service {} ({})",
            dump.kind.as_str(),
            dump.service,
            container.name
        ));
        let (record, file) = dump_one(ctx, dump, container, &dir).await?;
        progress.notice(format!(
            "dump of service {}: {} bytes",
            dump.service, record.size
        ));
        out.records.push(record);
        out.files.push(file);
        if hot {
            out.hot_exclude.extend(dump.hot_exclude.iter().cloned());
        }
    }
    Ok(out)
}

fn request(
    dump: &DumpConfig,
    container: &ContainerInfo,
    command: dumps::ExecCommand,
) -> ExecRequest {
    ExecRequest {
        container: container.id.clone(),
        label: format!("container {} (service {})", container.name, dump.service),
        command,
        timeout: Duration::from_secs(dump.timeout),
    }
}

/// The container's environment, with the password the dump needs added when the environment
/// only names a file for it (`*_PASSWORD_FILE`): read from that file inside the container,
/// never put on a command line.
async fn container_env(
    ctx: &Ctx,
    dump: &DumpConfig,
    container: &ContainerInfo,
) -> Result<Vec<String>> {
    let id = container.id.clone();
    let mut env = ctx.docker(|r| DockerMsg::ContainerEnv(id, r)).await?;
    let Some((var, path)) = dumps::password_file(dump, &env) else {
        return Ok(env);
    };
    let mut req = request(dump, container, dumps::read_password_file(&path));
    req.timeout = req.timeout.min(Duration::from_secs(60));
    let timeout = req.timeout;
    let failed = |why: String| {
        Error::DumpFailed(format!(
            "service {}: cannot read the database password from {path} in container {} ({var}_FILE): {why}; check that the file exists in the container, or set {var} in its environment",
            dump.service, container.name
        ))
    };
    let outcome = ctx
        .docker_for(timeout, |r| {
            DockerMsg::Exec(Box::new(req), ExecIo::Capture, ctx.cancel.clone(), r)
        })
        .await
        .map_err(|e| match e {
            Error::Docker(m) => failed(m),
            other => other,
        })?;
    match outcome.exit_code {
        Some(0) => {}
        Some(code) => {
            return Err(failed(format!(
                "`cat` exited with status {code}: {}",
                dumps::tail_text(&outcome.stderr_tail)
            )));
        }
        None => return Err(failed("the engine reported no exit status".into())),
    }
    // The whole file is kept only up to the tail's size: a longer one is not a password.
    if outcome.stdout_bytes > outcome.stdout_tail.len() as u64 {
        return Err(failed(format!(
            "the file holds {} bytes, too many for a password",
            outcome.stdout_bytes
        )));
    }
    let password = dumps::password_from_file(&outcome.stdout_tail)
        .ok_or_else(|| failed("the file is not UTF-8 text".into()))?;
    env.push(format!("{var}={password}"));
    Ok(env)
}

/// One dump into `dir/SERVICE.sql` (through `.partial`), judged by its exit status and, for
/// the database kinds, the tool's completion trailer.
async fn dump_one(
    ctx: &Ctx,
    dump: &DumpConfig,
    container: &ContainerInfo,
    dir: &Path,
) -> Result<(DumpRecord, PathBuf)> {
    let env = container_env(ctx, dump, container).await?;
    let req = request(dump, container, dumps::dump_command(dump, &env));
    let file = dir.join(format!("{}.sql", dump.service));
    let partial = partial_path(&file);
    let timeout = req.timeout;
    let outcome = ctx
        .docker_for(timeout, |r| {
            DockerMsg::Exec(
                Box::new(req),
                ExecIo::StdoutTo(partial.clone()),
                ctx.cancel.clone(),
                r,
            )
        })
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(match e {
                Error::Docker(m) => {
                    Error::DumpFailed(format!("dump of service {} failed: {m}", dump.service))
                }
                other => other,
            });
        }
    };
    let stderr = dumps::tail_text(&outcome.stderr_tail);
    let failure = match outcome.exit_code {
        Some(0) if !dumps::has_trailer(dump.kind, &outcome.stdout_tail) => Some(format!(
            "the dump ended without its completion line ({} bytes written): it is incomplete",
            outcome.stdout_bytes
        )),
        Some(0) => None,
        Some(code) => Some(format!("the dump command exited with status {code}")),
        None => Some("the engine reported no exit status for the dump command".into()),
    };
    if let Some(why) = failure {
        let _ = std::fs::remove_file(&partial);
        let stderr = if stderr.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with:\n{stderr}")
        };
        return Err(Error::DumpFailed(format!(
            "dump of service {} failed: {why}{stderr}",
            dump.service
        )));
    }
    std::fs::rename(&partial, &file).map_err(|e| Error::io("cannot rename dump", &file, e))?;
    Ok((
        DumpRecord {
            service: dump.service.clone(),
            kind: dump.kind,
            size: outcome.stdout_bytes,
            sha256: outcome.stdout_sha256,
        },
        file,
    ))
}

/// Takes the dumps for a cold backup, with a failure recorded in the catalog (a `failed`
/// row with the dump's error) before it is returned: nothing has been stopped yet.
pub(crate) async fn take_for_backup(
    ctx: &Ctx,
    backup_type: BackupType,
    compose: &ComposeProject,
    containers: Option<&[ContainerInfo]>,
    hot: bool,
    progress: &Progress,
) -> Result<Dumps> {
    if ctx.settings.config.backup.dumps.is_empty() {
        return Ok(Dumps::default());
    }
    let Some(containers) = containers else {
        if hot {
            return Err(Error::Refused(
                "no Docker engine socket found on this machine: a hot backup needs the engine to take its dumps".into(),
            ));
        }
        progress.notice("warning: no Docker engine: the configured dumps are not taken");
        return Ok(Dumps::default());
    };
    match take(ctx, containers, hot, progress).await {
        Ok(d) => Ok(d),
        Err(e @ Error::DumpFailed(_)) => {
            backup::record_failed(ctx, backup_type, compose, &e.to_string()).await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// `backup --hot`: the services keep running. Refused (exit 3) while a running persistent
/// service has neither a dump nor a place in `[backup] hot_safe`; then the dumps, then the
/// archive without the dumps' `hot_exclude` paths, recorded as hot.
pub(crate) async fn hot_backup(
    ctx: &Ctx,
    backup_type: BackupType,
    level: Option<u32>,
    full: bool,
    progress: &Progress,
) -> Result<BackupEntry> {
    let compose = ctx.compose_project()?;
    let Some(containers) = ctx.containers(&compose).await? else {
        return Err(Error::Refused(
            "no Docker engine socket found on this machine: a hot backup cannot check which services run; take a cold backup".into(),
        ));
    };
    let cfg = &ctx.settings.config.backup;
    let dumped: Vec<&str> = cfg.dumps.iter().map(|d| d.service.as_str()).collect();
    let safe: Vec<&str> = cfg.hot_safe.iter().map(ServiceName::as_str).collect();
    let blocking = policy::hot_blocking(&compose, &containers, &dumped, &safe);
    if !blocking.is_empty() {
        let list = blocking
            .iter()
            .map(|c| {
                format!(
                    "  {} (service {})",
                    c.name,
                    c.service.as_deref().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::Refused(format!(
            "a hot backup copies files while the services run; these running services have no dump and are not listed as safe to copy live:\n{list}\nadd a [[backup.dumps]] entry for each database, list services whose files are safe to copy live in [backup] hot_safe, or take a cold backup (`nuwax-cli auto-backup run`)"
        )));
    }
    backup::backup_preflight(ctx).await?;
    let dumps = take_for_backup(
        ctx,
        backup_type,
        &compose,
        Some(&containers),
        true,
        progress,
    )
    .await?;
    let images = containers
        .iter()
        .map(|c| ImageRecord {
            service: c.service.clone().unwrap_or_default(),
            container: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
        })
        .collect();
    let entry = backup::backup_at_level(
        ctx,
        backup_type,
        compose,
        images,
        backup::Making {
            level,
            dumps: Some(&dumps),
            full,
            restart: None,
        },
        progress,
    )
    .await?;
    let id = entry.record.id;
    ctx.store(|r| StoreMsg::MarkHot(id, r)).await?;
    Ok(BackupEntry { hot: true, ..entry })
}

/// After a rollback of a hot backup: the datadirs it left out were kept as they are live;
/// says what to run to bring each database back to the backup's content.
pub(crate) fn rollback_notice(info: &ArchiveInfo, id: i64, progress: &Progress) {
    if !info.hot {
        return;
    }
    for dump in &info.dumps {
        progress.notice(format!(
            "backup {id} was taken hot: the database files of service {} were not in it and were left as they are; to bring its database back to the backup's content, start the services and run `nuwax-cli restore-dump {id} --service {}`",
            dump.service, dump.service
        ));
    }
}

/// What `restore-dump` did.
#[derive(Debug, Clone)]
pub struct RestoreDumpReport {
    pub backup_id: i64,
    pub service: String,
    pub container: String,
    pub bytes: u64,
}

/// `restore-dump ID --service NAME`: the backup's dump of that service, checked against its
/// checksum, fed to the running database through exec stdin.
pub(crate) async fn restore_dump(
    ctx: &Ctx,
    id: i64,
    service: &str,
    progress: &Progress,
) -> Result<RestoreDumpReport> {
    let service = ServiceName::parse(service).map_err(Error::Usage)?;
    let entry = ctx.get_backup(id).await?;
    let archive = entry.record.file_path.clone();
    if !archive.exists() {
        return Err(Error::ArchiveMissing { id, path: archive });
    }
    let dump = ctx
        .settings
        .config
        .backup
        .dumps
        .iter()
        .find(|d| d.service == service)
        .cloned()
        .ok_or_else(|| {
            Error::Usage(format!(
                "no [[backup.dumps]] entry for service {service} in config.toml: it says how to load a dump (kind, user)"
            ))
        })?;
    let compose = ctx.compose_project()?;
    let containers = ctx.containers(&compose).await?.ok_or_else(|| {
        Error::Refused("no Docker engine socket found on this machine: restore-dump feeds the dump to the database through the engine".into())
    })?;
    let container = running_container(&containers, &service).cloned().ok_or_else(|| {
        Error::Refused(format!(
            "service {service} is not running: start it (`nuwax-cli docker-service start`), then run restore-dump again"
        ))
    })?;
    let storage = ctx.settings.paths.storage_dir.clone();
    let file = storage.join(format!(
        "{RESTORE_FILE_PREFIX}{}-{service}.sql",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&file);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(file.clone());
    let (src, out) = (archive.clone(), file.clone());
    let svc = service.clone();
    let record = super::blocking(move || crate::archive::read_dump(&src, &svc, &out))
        .await?
        .ok_or_else(|| {
            Error::Usage(format!(
                "backup {id} holds no dump of service {service}; `nuwax-cli ls {id}` shows what it holds"
            ))
        })?;
    crate::faults::point("restore_dump.copied");
    let command = {
        let env = container_env(ctx, &dump, &container).await?;
        dumps::restore_command(&dump, &env).ok_or_else(|| {
            Error::Usage(format!(
                "service {service}'s dump is of kind \"command\": set restore_command = [...] in its [[backup.dumps]] entry to say how to load it"
            ))
        })?
    };
    progress.notice(format!(
        "loading the dump of service {service} from backup {id} ({} bytes) into {}",
        record.size, container.name
    ));
    let req = request(&dump, &container, command);
    let timeout = req.timeout;
    let outcome = ctx
        .docker_for(timeout, |r| {
            DockerMsg::Exec(
                Box::new(req),
                ExecIo::StdinFrom(file.clone()),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
    let stderr = dumps::tail_text(&outcome.stderr_tail);
    let failure = match (outcome.exit_code, &outcome.stdin_error) {
        (Some(0), None) => None,
        (Some(0), Some(e)) => Some(format!("the loader stopped reading its input: {e}")),
        (Some(code), _) => Some(format!("the loader exited with status {code}")),
        (None, _) => Some("the engine reported no exit status for the loader".into()),
    };
    if let Some(why) = failure {
        let stderr = if stderr.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with:\n{stderr}")
        };
        return Err(Error::DumpFailed(format!(
            "restoring the dump of service {service} failed: {why}{stderr}; the database may hold part of the dump: run restore-dump again once the cause is fixed"
        )));
    }
    Ok(RestoreDumpReport {
        backup_id: id,
        service: service.to_string(),
        container: container.name,
        bytes: record.size,
    })
}
