//! Where the engine is and how to reach it: `DOCKER_HOST`, else the current docker context,
//! else the default socket (moved by `NUWAX_DOCKER_SOCKET`), then API version negotiation.
//! Connecting fails closed: only a host with nothing configured and no socket file at all
//! yields `Ok(None)`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use sha2::Digest;

use super::{Engine, describe};
use crate::error::{Error, Result};

/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bollard's per-request timeout; ours (tokio) are tighter and apply first.
const TRANSPORT_TIMEOUT_SECS: u64 = 3600;

/// Where `DOCKER_HOST` (or its absence) says the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `http://host:port` to connect to, and `DOCKER_HOST` as the operator wrote it.
    Http {
        url: String,
        configured: String,
    },
    /// Configured, but not something we can talk to: fail closed.
    Unsupported {
        endpoint: String,
        reason: String,
    },
    /// No `DOCKER_HOST` and nothing at the default socket path.
    Absent,
}

fn resolve_endpoint(
    docker_host: Option<&str>,
    tls_verify: bool,
    default_socket: &Path,
) -> Endpoint {
    let Some(host) = docker_host.map(str::trim).filter(|h| !h.is_empty()) else {
        // `symlink_metadata`: a dangling symlink still means "an engine is expected here".
        return match std::fs::symlink_metadata(default_socket) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Endpoint::Absent,
            _ => Endpoint::Unix(default_socket.to_path_buf()),
        };
    };
    let unsupported = |reason: &str| Endpoint::Unsupported {
        endpoint: host.to_string(),
        reason: format!(
            "{reason}; use a unix:// or plain tcp:// DOCKER_HOST, or --skip-docker-check"
        ),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        Endpoint::Unix(PathBuf::from(path))
    } else if host.starts_with('/') {
        Endpoint::Unix(PathBuf::from(host))
    } else if let Some(addr) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        if tls_verify {
            unsupported("TLS (DOCKER_TLS_VERIFY) is not supported")
        } else {
            Endpoint::Http {
                url: format!("http://{addr}"),
                configured: host.to_string(),
            }
        }
    } else if host.starts_with("https://") {
        unsupported("TLS endpoints are not supported")
    } else {
        unsupported("unsupported DOCKER_HOST scheme")
    }
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The endpoint of the docker context in use (`DOCKER_CONTEXT`, else `currentContext` in
/// `config.json`), as the docker CLI would pick it; `None` for the default context. Rootless
/// docker is usually reached this way: ignoring it would look like "no engine here" and skip
/// the gate, so a context we cannot resolve is an error.
fn context_host(config_dir: Option<&Path>, env_context: Option<&str>) -> Result<Option<String>> {
    let name = match env_context.map(str::trim).filter(|c| !c.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let Some(dir) = config_dir else {
                return Ok(None);
            };
            let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
                return Ok(None);
            };
            let current = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("currentContext")?.as_str().map(str::to_string));
            match current {
                Some(name) if !name.trim().is_empty() => name,
                _ => return Ok(None),
            }
        }
    };
    if name == "default" {
        return Ok(None);
    }
    let fail = |message: String| {
        unreachable(
            &format!("docker context {name}"),
            format!("{message}; set DOCKER_HOST to the engine's address"),
        )
    };
    let Some(dir) = config_dir else {
        return Err(fail("no docker config directory to read it from".into()));
    };
    let meta = dir
        .join("contexts/meta")
        .join(hex::encode(sha2::Sha256::digest(name.as_bytes())))
        .join("meta.json");
    let text = std::fs::read_to_string(&meta)
        .map_err(|e| fail(format!("cannot read {}: {e}", meta.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| fail(format!("cannot parse {}: {e}", meta.display())))?;
    match value
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
    {
        Some(host) if !host.trim().is_empty() => Ok(Some(host.to_string())),
        _ => Err(fail(format!("{} names no docker endpoint", meta.display()))),
    }
}

fn unreachable(endpoint: &str, message: impl fmt::Display) -> Error {
    let mut message = message.to_string();
    if message.contains("Permission denied") || message.contains("permission denied") {
        message.push_str(" (run as root or as a member of the docker group)");
    } else {
        message.push_str(
            "; check that the Docker daemon is running (`docker info`, `systemctl status docker`) and that DOCKER_HOST or the current docker context names its socket",
        );
    }
    Error::DockerUnreachable {
        endpoint: endpoint.to_string(),
        message,
    }
}

impl Engine {
    /// Connects where the docker CLI would (`DOCKER_HOST`, else the current docker context,
    /// else the default socket) and negotiates the API version. `Ok(None)`: nothing
    /// configured and no socket file at all. Anything configured or present that does not
    /// answer is [`Error::DockerUnreachable`].
    pub async fn connect() -> Result<Option<Engine>> {
        let host = match std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
        {
            Some(host) => Some(host),
            None => context_host(
                docker_config_dir().as_deref(),
                std::env::var("DOCKER_CONTEXT").ok().as_deref(),
            )?,
        };
        let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
        // NUWAX_DOCKER_SOCKET moves the default socket (an engine in a non-standard place, or
        // tests simulating a machine without Docker); DOCKER_HOST still wins.
        let socket = std::env::var_os("NUWAX_DOCKER_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Self::connect_with(host.as_deref(), tls, &socket).await
    }

    /// [`Engine::connect`] with its inputs explicit (tests; callers with their own settings).
    pub async fn connect_with(
        docker_host: Option<&str>,
        tls_verify: bool,
        default_socket: &Path,
    ) -> Result<Option<Engine>> {
        let (docker, endpoint) = match resolve_endpoint(docker_host, tls_verify, default_socket) {
            Endpoint::Absent => {
                tracing::debug!(socket = %default_socket.display(), "no docker engine socket");
                return Ok(None);
            }
            Endpoint::Unsupported { endpoint, reason } => {
                return Err(unreachable(&endpoint, reason));
            }
            Endpoint::Unix(path) => {
                let endpoint = format!("unix://{}", path.display());
                let path_str = path.to_string_lossy();
                let docker = Docker::connect_with_unix(
                    &path_str,
                    TRANSPORT_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(&endpoint, describe(&e)))?;
                (docker, endpoint)
            }
            Endpoint::Http { url, configured } => {
                let docker = Docker::connect_with_http(
                    &url,
                    TRANSPORT_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(&configured, describe(&e)))?;
                (docker, configured)
            }
        };
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(e)) => return Err(unreachable(&endpoint, describe(&e))),
            Err(_) => {
                return Err(unreachable(
                    &endpoint,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ));
            }
        };
        tracing::debug!(%endpoint, version = ?docker.client_version(), "connected to docker engine");
        Ok(Some(Engine { docker, endpoint }))
    }

    /// `unix:///var/run/docker.sock`, `http://host:2375`...
    #[cfg(any(test, feature = "test-support"))]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("docker.sock");
        assert_eq!(resolve_endpoint(None, false, &missing), Endpoint::Absent);
        assert_eq!(
            resolve_endpoint(Some("  "), false, &missing),
            Endpoint::Absent
        );
        std::fs::write(&missing, b"").unwrap();
        assert_eq!(
            resolve_endpoint(None, false, &missing),
            Endpoint::Unix(missing.clone())
        );
        let dangling = dir.path().join("dangling.sock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(
            resolve_endpoint(None, false, &dangling),
            Endpoint::Unix(dangling.clone())
        );
        assert_eq!(
            resolve_endpoint(Some("unix:///run/x.sock"), false, &missing),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            resolve_endpoint(Some("tcp://10.0.0.1:2375"), false, &missing),
            Endpoint::Http {
                url: "http://10.0.0.1:2375".into(),
                configured: "tcp://10.0.0.1:2375".into()
            }
        );
        assert!(matches!(
            resolve_endpoint(Some("tcp://10.0.0.1:2376"), true, &missing),
            Endpoint::Unsupported { .. }
        ));
        for host in [
            "ssh://me@box",
            "npipe:////./pipe/docker_engine",
            "https://x:2376",
            "junk",
        ] {
            assert!(
                matches!(
                    resolve_endpoint(Some(host), false, &missing),
                    Endpoint::Unsupported { .. }
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn docker_context_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        // No config at all, or the default context: no override.
        assert_eq!(context_host(None, None).unwrap(), None);
        assert_eq!(context_host(Some(cfg), None).unwrap(), None);
        assert_eq!(context_host(Some(cfg), Some("default")).unwrap(), None);
        std::fs::write(cfg.join("config.json"), r#"{"auths":{}}"#).unwrap();
        assert_eq!(context_host(Some(cfg), None).unwrap(), None);

        // A context named in config.json resolves through its meta file.
        std::fs::write(cfg.join("config.json"), r#"{"currentContext":"rootless"}"#).unwrap();
        let err = context_host(Some(cfg), None).unwrap_err();
        assert!(matches!(err, Error::DockerUnreachable { .. }), "{err}");
        assert!(err.to_string().contains("rootless"), "{err}");
        let meta_dir = cfg
            .join("contexts/meta")
            .join(hex::encode(sha2::Sha256::digest(b"rootless")));
        std::fs::create_dir_all(&meta_dir).unwrap();
        std::fs::write(
            meta_dir.join("meta.json"),
            r#"{"Name":"rootless","Endpoints":{"docker":{"Host":"unix:///run/user/1000/docker.sock","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(
            context_host(Some(cfg), None).unwrap().as_deref(),
            Some("unix:///run/user/1000/docker.sock")
        );
        // DOCKER_CONTEXT wins over config.json.
        assert_eq!(context_host(Some(cfg), Some("default")).unwrap(), None);
        assert!(context_host(Some(cfg), Some("elsewhere")).is_err());
    }
}
