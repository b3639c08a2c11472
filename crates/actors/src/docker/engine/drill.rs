//! What a restore drill needs of the engine beyond the lifecycle (its checks run through
//! `exec.rs`): the last lines a container printed, and removing everything
//! of one compose project (the drill's, never the live one: the caller names it).

use std::collections::HashMap;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};

use super::{API_TIMEOUT, Engine, truncate};
use crate::docker::discovery::PROJECT_LABEL;
use crate::error::{Error, Result};

impl Engine {
    /// The last `lines` lines a container printed (stdout and stderr), best effort.
    pub async fn log_tail(&self, id: &str, lines: usize) -> Option<String> {
        let kept = self.log_lines(id, lines).await?;
        Some(truncate(&kept.join("\n"), 4000))
    }

    /// Removes every container (forced, with its anonymous volumes), network and volume that
    /// carries `com.docker.compose.project=<project>` exactly. Returns what was removed.
    pub async fn remove_project(&self, project: &str) -> Result<Vec<String>> {
        let filters = HashMap::from([("label", vec![format!("{PROJECT_LABEL}={project}")])]);
        let mut removed = Vec::new();
        let containers = self
            .call(
                || format!("cannot list the containers of project {project}"),
                API_TIMEOUT,
                self.docker.list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                )),
            )
            .await?;
        for c in containers {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| id.clone());
            self.call(
                || format!("cannot remove container {name}"),
                API_TIMEOUT,
                self.docker.remove_container(
                    &id,
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                ),
            )
            .await
            .or_else(not_found)?;
            removed.push(format!("container {name}"));
        }
        let networks = self
            .call(
                || format!("cannot list the networks of project {project}"),
                API_TIMEOUT,
                self.docker.list_networks(Some(
                    ListNetworksOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                )),
            )
            .await?;
        for n in networks {
            let Some(name) = n.name else { continue };
            self.call(
                || format!("cannot remove network {name}"),
                API_TIMEOUT,
                self.docker.remove_network(&name),
            )
            .await
            .or_else(not_found)?;
            removed.push(format!("network {name}"));
        }
        let volumes = self
            .call(
                || format!("cannot list the volumes of project {project}"),
                API_TIMEOUT,
                self.docker.list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                )),
            )
            .await?;
        for v in volumes.volumes.unwrap_or_default() {
            let name = v.name;
            self.call(
                || format!("cannot remove volume {name}"),
                API_TIMEOUT,
                self.docker.remove_volume(
                    &name,
                    Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
                ),
            )
            .await
            .or_else(not_found)?;
            removed.push(format!("volume {name}"));
        }
        Ok(removed)
    }
}

/// Something already gone is what removal wanted.
fn not_found(e: Error) -> Result<()> {
    match &e {
        Error::Docker(m) if m.contains("404") || m.contains("No such") => Ok(()),
        _ => Err(e),
    }
}
