//! The compose file of a restore drill: the backup's own compose file, rewritten so that its
//! stack can run next to the live one without touching it (issue 17).
//!
//! Design note: the drill project runs from a scratch copy under the storage dir, under its
//! own project name. What would make it collide with the live stack or reach live data is
//! taken out or refused, never guessed:
//! - `container_name` and published `ports` are dropped (they would clash with the live
//!   containers); a top-level `name:` is dropped (the caller passes `-p`);
//! - every network is the project's own and `internal` (no `external`, no fixed `name`, no
//!   `ipam` subnets or fixed addresses that overlap the live ones); `network_mode: host` or
//!   `container:...` and `volumes_from: container:...` are refused;
//! - bind mounts that point into the live compose dir (relative ones included) are re-pointed
//!   to the same place in the scratch copy; a bind mount anywhere else on the host is dropped
//!   when it is read-only and refused when it is writable (a drill must not write host data);
//! - named volumes are the drill project's own: `external` ones are refused, a fixed `name`
//!   is dropped, a local-driver bind (`driver_opts.device`) is treated as a bind mount.
//!
//! Everything dropped or re-pointed is returned as a note for the operator.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::compose::{Vars, scalar_string};
use crate::error::{Error, Result};

/// The rewritten compose file and what was changed.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillCompose {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Where the live stack's files are and where their drill copy is.
#[derive(Debug, Clone)]
pub struct DrillPlaces {
    /// The live compose dir, every spelling of it (as configured, canonical).
    pub live: Vec<PathBuf>,
    /// The compose dir inside the scratch copy.
    pub scratch: PathBuf,
}

impl DrillPlaces {
    /// The scratch counterpart of a host path the live stack would use, or `None` when the
    /// path is outside the live compose dir. A relative path is relative to the compose dir.
    pub fn map(&self, raw: &Path) -> Option<PathBuf> {
        let base = self.live.first()?;
        let host = lexical(&if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            base.join(raw)
        });
        self.live.iter().find_map(|live| {
            host.strip_prefix(lexical(live))
                .ok()
                .map(|rest| self.scratch.join(rest))
        })
    }
}

/// `..` and `.` resolved without the filesystem (a path that climbs above `/` stays at `/`).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A path written back into the compose file: compose interpolates `$`.
fn literal(p: &Path) -> Value {
    Value::String(p.to_string_lossy().replace('$', "$$"))
}

fn refuse(message: String) -> Error {
    Error::Refused(format!(
        "{message}; a drill never lets the drilled stack reach host data or the live stack. \
         Change the compose file (a later backup will have it), or drill another backup"
    ))
}

/// Reads the backup's compose file in the scratch copy (interpolated with `env_file`, when
/// given, as compose would) and rewrites it for a drill.
pub fn rewrite_file(
    compose_file: &Path,
    env_file: Option<&Path>,
    places: &DrillPlaces,
) -> Result<DrillCompose> {
    let text = std::fs::read_to_string(compose_file)
        .map_err(|e| Error::io("cannot read compose file", compose_file, e))?;
    let env = match env_file {
        Some(p) => super::compose::read_env_file(p)?,
        None => BTreeMap::new(),
    };
    rewrite(&text, &env, places)
}

/// Rewrites compose file `text` (already read from the scratch copy) for a drill.
/// `env` is what the compose file is interpolated with (the env file's variables).
pub fn rewrite(
    text: &str,
    env: &BTreeMap<String, String>,
    places: &DrillPlaces,
) -> Result<DrillCompose> {
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| Error::Config {
        path: places.scratch.clone(),
        message: format!("the backup's compose file cannot be read: {e}"),
    })?;
    doc.apply_merge().map_err(|e| Error::Config {
        path: places.scratch.clone(),
        message: format!("the backup's compose file cannot be read: {e}"),
    })?;
    let vars = Vars { env };
    let mut notes = Vec::new();
    let Value::Mapping(top) = &mut doc else {
        return Err(Error::Config {
            path: places.scratch.clone(),
            message: "the backup's compose file is not a mapping".into(),
        });
    };
    top.remove("name");
    if let Some(Value::Mapping(services)) = top.get_mut("services") {
        for (name, body) in services.iter_mut() {
            let service = scalar_string(name).unwrap_or_default();
            if let Value::Mapping(body) = body {
                rewrite_service(&service, body, &vars, places, &mut notes)?;
            }
        }
    }
    // Networks: the project's own, internal.
    let networks = top
        .entry(Value::from("networks"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !networks.is_mapping() {
        *networks = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(networks) = networks {
        if !networks.contains_key("default") {
            networks.insert("default".into(), Value::Null);
        }
        for (name, body) in networks.iter_mut() {
            let network = scalar_string(name).unwrap_or_default();
            if !body.is_mapping() {
                *body = Value::Mapping(Mapping::new());
            }
            if let Value::Mapping(body) = body {
                for key in ["external", "name", "ipam"] {
                    if body.remove(key).is_some() {
                        notes.push(format!(
                            "network {network}: `{key}` dropped (the drill has its own networks)"
                        ));
                    }
                }
                body.insert("internal".into(), Value::Bool(true));
            }
        }
    }
    if let Some(Value::Mapping(volumes)) = top.get_mut("volumes") {
        for (name, body) in volumes.iter_mut() {
            let volume = scalar_string(name).unwrap_or_default();
            let Value::Mapping(body) = body else { continue };
            if body.get("external").is_some_and(truthy) {
                return Err(refuse(format!(
                    "volume {volume} is `external`: the drill would share it with the live stack"
                )));
            }
            if body.remove("name").is_some() {
                notes.push(format!(
                    "volume {volume}: its fixed `name` dropped (the drill gets its own, empty volume)"
                ));
            }
            if let Some(Value::Mapping(opts)) = body.get_mut("driver_opts")
                && let Some(device) = opts.get("device").and_then(scalar_string)
            {
                let device = vars.interpolate(&device);
                match places.map(Path::new(&device)) {
                    Some(scratch) => {
                        opts.insert("device".into(), literal(&scratch));
                        notes.push(format!(
                            "volume {volume}: its device re-pointed to the scratch copy"
                        ));
                    }
                    None => {
                        return Err(refuse(format!(
                            "volume {volume} binds host path {device}, outside the compose dir"
                        )));
                    }
                }
            }
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(Value::Mapping(items)) = top.get_mut(section) {
            for (_, body) in items.iter_mut() {
                let Value::Mapping(body) = body else { continue };
                if let Some(file) = body.get("file").and_then(scalar_string) {
                    let file = vars.interpolate(&file);
                    if Path::new(&file).is_absolute()
                        && let Some(scratch) = places.map(Path::new(&file))
                    {
                        body.insert("file".into(), literal(&scratch));
                    }
                }
            }
        }
    }
    let yaml = serde_yaml::to_string(&doc)
        .map_err(|e| Error::Internal(format!("cannot write the drill's compose file: {e}")))?;
    Ok(DrillCompose { yaml, notes })
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Mapping(_) => true, // `external: {name: x}` (old form)
        other => scalar_string(other).is_some_and(|s| s == "true"),
    }
}

fn rewrite_service(
    service: &str,
    body: &mut Mapping,
    vars: &Vars<'_>,
    places: &DrillPlaces,
    notes: &mut Vec<String>,
) -> Result<()> {
    if body.remove("container_name").is_some() {
        notes.push(format!("service {service}: container_name dropped"));
    }
    if body.remove("ports").is_some() {
        notes.push(format!("service {service}: published ports dropped"));
    }
    if let Some(mode) = body.get("network_mode").and_then(scalar_string) {
        let mode = vars.interpolate(&mode);
        let mode = mode.trim();
        if mode == "host" || mode.starts_with("container:") {
            return Err(refuse(format!(
                "service {service} uses `network_mode: {mode}`"
            )));
        }
        if mode == "bridge" || mode == "default" {
            body.remove("network_mode");
            notes.push(format!(
                "service {service}: `network_mode: {mode}` replaced by the drill's internal network"
            ));
        }
    }
    if let Some(Value::Sequence(list)) = body.get("volumes_from") {
        for item in list.iter().filter_map(scalar_string) {
            if vars.interpolate(&item).starts_with("container:") {
                return Err(refuse(format!(
                    "service {service} takes volumes from live container {item}"
                )));
            }
        }
    }
    if let Some(Value::Mapping(networks)) = body.get_mut("networks") {
        for (_, net) in networks.iter_mut() {
            if let Value::Mapping(net) = net {
                net.remove("ipv4_address");
                net.remove("ipv6_address");
            }
        }
    }
    // env_file: an absolute path into the live dir reads the scratch copy's instead.
    let repoint = |v: &mut Value| {
        if let Some(p) = scalar_string(v) {
            let p = vars.interpolate(&p);
            if Path::new(&p).is_absolute()
                && let Some(scratch) = places.map(Path::new(&p))
            {
                *v = literal(&scratch);
            }
        }
    };
    match body.get_mut("env_file") {
        Some(Value::Sequence(list)) => {
            for item in list.iter_mut() {
                match item {
                    Value::Mapping(m) => {
                        if let Some(p) = m.get_mut("path") {
                            repoint(p);
                        }
                    }
                    other => repoint(other),
                }
            }
        }
        Some(v) => repoint(v),
        None => {}
    }
    if let Some(Value::Sequence(volumes)) = body.get_mut("volumes") {
        let mut kept = Vec::with_capacity(volumes.len());
        for item in volumes.drain(..) {
            if let Some(item) = rewrite_mount(service, item, vars, places, notes)? {
                kept.push(item);
            }
        }
        *volumes = kept;
    }
    Ok(())
}

/// One entry of a service's `volumes`: kept, re-pointed, dropped (`None`) or refused.
fn rewrite_mount(
    service: &str,
    item: Value,
    vars: &Vars<'_>,
    places: &DrillPlaces,
    notes: &mut Vec<String>,
) -> Result<Option<Value>> {
    // (host source, read-only, how to write the re-pointed source back)
    let (source, read_only, mut item) = match item {
        Value::String(short) => {
            let text = vars.interpolate(&short);
            let parts: Vec<&str> = text.split(':').collect();
            if parts.len() < 2 {
                return Ok(Some(Value::String(short))); // anonymous volume
            }
            let source = parts[0].to_string();
            let read_only = parts
                .get(2)
                .is_some_and(|mode| mode.split(',').any(|m| m == "ro"));
            (source, read_only, Value::String(short))
        }
        Value::Mapping(m) => {
            let kind = m.get("type").and_then(scalar_string);
            let Some(source) = m.get("source").and_then(scalar_string) else {
                return Ok(Some(Value::Mapping(m)));
            };
            let source = vars.interpolate(&source);
            let is_bind = match kind.as_deref() {
                Some("bind") => true,
                None => is_path(&source),
                _ => false,
            };
            if !is_bind {
                return Ok(Some(Value::Mapping(m)));
            }
            let read_only = m.get("read_only").is_some_and(truthy);
            (source, read_only, Value::Mapping(m))
        }
        other => return Ok(Some(other)),
    };
    if !is_path(&source) {
        return Ok(Some(item)); // a named volume: the drill project's own
    }
    let mapped = if source.starts_with('~') {
        None
    } else {
        places.map(Path::new(&source))
    };
    match mapped {
        Some(scratch) => {
            match &mut item {
                Value::String(short) => {
                    let text = vars.interpolate(short);
                    let rest = text.split_once(':').map(|(_, r)| r).unwrap_or_default();
                    *short = format!(
                        "{}:{}",
                        scratch.to_string_lossy().replace('$', "$$"),
                        rest.replace('$', "$$")
                    );
                }
                Value::Mapping(m) => {
                    m.insert("source".into(), literal(&scratch));
                }
                _ => {}
            }
            Ok(Some(item))
        }
        None if read_only => {
            notes.push(format!(
                "service {service}: read-only bind mount of host path {source} dropped (outside the compose dir)"
            ));
            Ok(None)
        }
        None => Err(refuse(format!(
            "service {service} bind-mounts host path {source} (outside the compose dir) writable"
        ))),
    }
}

/// Compose reads a mount source as a host path when it starts with `.`, `/` or `~`.
fn is_path(source: &str) -> bool {
    source.starts_with(['.', '/', '~'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> DrillPlaces {
        DrillPlaces {
            live: vec![PathBuf::from("/srv/app/docker")],
            scratch: PathBuf::from("/srv/app/backups/.nuwax-drill-7/staged"),
        }
    }

    fn run(text: &str) -> Result<(Value, Vec<String>)> {
        let env = BTreeMap::from([("DATA".to_string(), "/srv/app/docker/data".to_string())]);
        let out = rewrite(text, &env, &places())?;
        Ok((serde_yaml::from_str(&out.yaml).unwrap(), out.notes))
    }

    #[test]
    fn ports_names_and_networks_are_made_private() {
        let (doc, notes) = run("name: live\n\
             services:\n  db:\n    image: x\n    container_name: db\n    ports: ['3306:3306']\n\
             \x20   networks:\n      back:\n        ipv4_address: 10.5.0.2\n\
             networks:\n  back:\n    external: true\n    ipam: {config: [{subnet: 10.5.0.0/16}]}\n")
        .unwrap();
        assert!(doc.get("name").is_none());
        let db = &doc["services"]["db"];
        assert!(db.get("container_name").is_none());
        assert!(db.get("ports").is_none());
        assert!(db["networks"]["back"].get("ipv4_address").is_none());
        assert_eq!(doc["networks"]["back"]["internal"], Value::Bool(true));
        assert!(doc["networks"]["back"].get("external").is_none());
        assert!(doc["networks"]["back"].get("ipam").is_none());
        assert_eq!(doc["networks"]["default"]["internal"], Value::Bool(true));
        assert!(notes.iter().any(|n| n.contains("ports")), "{notes:?}");
    }

    #[test]
    fn binds_into_the_compose_dir_go_to_the_scratch_copy() {
        let (doc, notes) = run("services:\n  db:\n    image: x\n    volumes:\n\
             \x20     - ./data:/var/lib/db\n      - ${DATA}/x:/x:ro\n      - named:/n\n      - /anon\n\
             \x20     - type: bind\n        source: /srv/app/docker/conf\n        target: /c\n\
             \x20     - /etc/localtime:/etc/localtime:ro\n")
        .unwrap();
        let v = doc["services"]["db"]["volumes"].as_sequence().unwrap();
        assert_eq!(
            v[0].as_str(),
            Some("/srv/app/backups/.nuwax-drill-7/staged/data:/var/lib/db")
        );
        assert_eq!(
            v[1].as_str(),
            Some("/srv/app/backups/.nuwax-drill-7/staged/data/x:/x:ro")
        );
        assert_eq!(v[2].as_str(), Some("named:/n"));
        assert_eq!(v[3].as_str(), Some("/anon"));
        assert_eq!(
            v[4]["source"].as_str(),
            Some("/srv/app/backups/.nuwax-drill-7/staged/conf")
        );
        assert_eq!(v.len(), 5, "the read-only host mount is dropped: {v:?}");
        assert!(
            notes.iter().any(|n| n.contains("/etc/localtime")),
            "{notes:?}"
        );
    }

    #[test]
    fn what_would_reach_host_data_or_the_live_stack_is_refused() {
        for bad in [
            "services:\n  db:\n    image: x\n    volumes: ['/var/lib/mysql:/var/lib/mysql']\n",
            "services:\n  db:\n    image: x\n    volumes: ['../shared:/s']\n",
            "services:\n  db:\n    image: x\n    volumes: ['~/x:/s']\n",
            "services:\n  db:\n    image: x\n    network_mode: host\n",
            "services:\n  db:\n    image: x\n    volumes_from: ['container:live_db']\n",
            "services:\n  db:\n    image: x\nvolumes:\n  v:\n    external: true\n",
            "services:\n  db:\n    image: x\nvolumes:\n  v:\n    driver_opts: {type: none, o: bind, device: /data}\n",
        ] {
            match run(bad) {
                Err(Error::Refused(m)) => assert!(m.contains("a drill never"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_fixed_volume_name_is_dropped() {
        let (doc, _) =
            run("services:\n  db:\n    image: x\nvolumes:\n  v:\n    name: live_v\n").unwrap();
        assert!(doc["volumes"]["v"].get("name").is_none());
    }
}
