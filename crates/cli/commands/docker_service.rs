//! `docker-service start|stop|restart|status`: the compose project's lifecycle.

use nuwax_actors::Runtime;
use serde::Serialize;

use crate::exit::ExitStatus;
use crate::output::escape_names;
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Action {
    /// Start the services in dependency order and wait until they are running and healthy.
    Start(JsonFlag),
    /// Stop the running services in reverse dependency order.
    Stop(JsonFlag),
    /// Stop, then start.
    Restart(JsonFlag),
    /// Show each service's state, health, restart policy and image.
    Status(JsonFlag),
}

#[derive(clap::Args, Debug)]
pub(crate) struct JsonFlag {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Action {
    pub fn json(&self) -> bool {
        match self {
            Action::Start(j) | Action::Stop(j) | Action::Restart(j) | Action::Status(j) => j.json,
        }
    }

    pub fn mutating(&self) -> bool {
        !matches!(self, Action::Status(_))
    }
}

/// `docker-service status --json`.
#[derive(Serialize)]
struct StatusDocument {
    project: String,
    /// No Docker engine socket on this machine.
    engine_absent: bool,
    services: Vec<ServiceJson>,
}

#[derive(Serialize)]
struct ServiceJson {
    service: Option<String>,
    container: String,
    /// Engine state: running, exited, paused, restarting, created, dead.
    state: String,
    /// healthy, unhealthy, starting, or null without a healthcheck.
    health: Option<String>,
    restart_policy: String,
    image: String,
    one_shot: bool,
}

/// `docker-service start|stop|restart --json`.
#[derive(Serialize)]
struct ActionDocument {
    action: &'static str,
    stopped: Vec<String>,
    started: Vec<String>,
    compose_up: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let json = args.action.json();
    if let Action::Status(_) = args.action {
        return status(rt, printer, json).await;
    }
    let (renderer, progress) = Renderer::start(printer);
    let mut doc = ActionDocument {
        action: "",
        stopped: Vec::new(),
        started: Vec::new(),
        compose_up: false,
    };
    let result: anyhow::Result<()> = async {
        match args.action {
            Action::Stop(_) => {
                doc.action = "stop";
                let stopped = rt.stop_services(&progress).await?;
                doc.stopped = stopped.into_iter().map(|c| c.name).collect();
            }
            Action::Start(_) => {
                doc.action = "start";
                let r = rt.start_services(&progress).await?;
                doc.started = r.started;
                doc.compose_up = r.compose_up;
            }
            Action::Restart(_) => {
                doc.action = "restart";
                let stopped = rt.stop_services(&progress).await?;
                doc.stopped = stopped.into_iter().map(|c| c.name).collect();
                let r = rt.start_services(&progress).await?;
                doc.started = r.started;
                doc.compose_up = r.compose_up;
            }
            Action::Status(_) => unreachable!("handled above"),
        }
        Ok(())
    }
    .await;
    let totals = renderer.finish(progress).await;
    result?;
    match doc.action {
        "stop" if doc.stopped.is_empty() => printer.info("nothing was running"),
        "stop" => printer.info(&format!(
            "stopped: {} {}",
            escape_names(&doc.stopped),
            totals.suffix()
        )),
        _ => printer.info(&format!(
            "the services are running and healthy {}",
            totals.suffix()
        )),
    }
    if json {
        printer.document(&doc, None);
    }
    Ok(ExitStatus::Success)
}

async fn status(rt: &Runtime, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let st = rt.service_status().await?;
    if let Some(file) = &st.missing_compose_file {
        printer.warn(&format!(
            "no compose file at {}: this is not a deployed working dir (give it with -C DIR), or set [docker] compose_file in config.toml; the containers below are found by the project name '{}' only",
            file.display(),
            st.project
        ));
    }
    let services: Vec<ServiceJson> = st
        .services
        .iter()
        .map(|s| ServiceJson {
            service: s.container.service.clone(),
            container: s.container.name.clone(),
            state: s.container.state.to_string(),
            health: s.container.health.clone(),
            restart_policy: s.container.restart_policy.clone(),
            image: s.container.image.clone(),
            one_shot: s.one_shot,
        })
        .collect();
    if json {
        printer.document(
            &StatusDocument {
                project: st.project.clone(),
                engine_absent: st.engine_absent,
                services,
            },
            None,
        );
        return Ok(ExitStatus::Success);
    }
    if st.engine_absent {
        printer.warn("no Docker engine socket found on this machine");
        return Ok(ExitStatus::Success);
    }
    if services.is_empty() {
        printer.info(&format!(
            "project '{}' has no containers; create and start them with `nuwax-cli docker-service start`",
            st.project
        ));
        return Ok(ExitStatus::Success);
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "CONTAINER".into(),
        "STATE".into(),
        "HEALTH".into(),
        "RESTART".into(),
        "IMAGE".into(),
    ]];
    for s in &services {
        rows.push([
            s.service.clone().unwrap_or_else(|| "-".into()),
            s.container.clone(),
            s.state.clone(),
            s.health.clone().unwrap_or_else(|| "-".into()),
            format!(
                "{}{}",
                s.restart_policy,
                if s.one_shot { " (one-shot)" } else { "" }
            ),
            s.image.clone(),
        ]);
    }
    let out = crate::output::render_table(&rows);
    printer.data(&out);
    Ok(ExitStatus::Success)
}
