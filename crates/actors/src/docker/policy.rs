//! The cold-backup gate and the stop/start ordering: pure functions over what the compose
//! file says and what the engine reports (DESIGN.md 4.2).
//!
//! A container is *one-shot* only when both the compose file (`restart: "no"` or `false`,
//! written explicitly) and the engine (`HostConfig.RestartPolicy` `no` or empty) say it does
//! not restart. Everything else is *persistent*: a service without a `restart:` key, a service
//! that disappeared from the compose file, a container whose actual policy disagrees with the
//! file. Being wrong in that direction costs a refused backup; the other direction costs a
//! corrupt one.
//!
//! Ordering comes from each container's `depends_on` (the `com.docker.compose.depends_on`
//! label, or the compose file through [`fill_missing_dependencies`] for containers made by
//! compose v1, which does not write that label). Containers are started in dependency order
//! and stopped in reverse, in *waves*: every container of a wave only depends on earlier
//! waves, so a wave can be handled concurrently. Ties sort by container name; a cycle is
//! broken at the container with the fewest unplaced dependencies (then by name), so a broken
//! file never hangs or reorders at random.

use std::collections::{BTreeMap, BTreeSet};

use super::{ComposeProject, ComposeService, ContainerInfo, GateEntry, GateReport};

/// Engine states in which a container is (or is about to be) using its data (see
/// [`ContainerState::is_active`], the one definition).
pub fn is_active(state: &super::ContainerState) -> bool {
    state.is_active()
}

/// `true` only when the compose service explicitly says `restart: "no"` (or `false`) and the
/// container's actual restart policy is `no` (or empty).
pub fn is_one_shot(service: Option<&ComposeService>, container: &ContainerInfo) -> bool {
    let compose_says_no = service
        .and_then(|s| s.restart.as_deref())
        .is_some_and(|r| r.trim().eq_ignore_ascii_case("no"));
    let engine_says_no = matches!(container.restart_policy.trim(), "" | "no");
    compose_says_no && engine_says_no
}

/// Whether `container` is persistent according to `compose`.
pub fn is_persistent(compose: &ComposeProject, container: &ContainerInfo) -> bool {
    !is_one_shot(service_of(compose, container), container)
}

fn service_of<'a>(
    compose: &'a ComposeProject,
    container: &ContainerInfo,
) -> Option<&'a ComposeService> {
    container
        .service
        .as_deref()
        .and_then(|s| compose.services.get(s))
}

/// Classifies the project's containers: persistent and running, restarting or paused ->
/// `blocking`; one-shot and active -> `warnings`; the rest -> `stopped`. Each list is sorted
/// by container name.
pub fn gate(project: &str, compose: &ComposeProject, containers: &[ContainerInfo]) -> GateReport {
    let mut report = GateReport {
        project: project.to_string(),
        ..GateReport::default()
    };
    let mut sorted: Vec<&ContainerInfo> = containers.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    for container in sorted {
        let one_shot = is_one_shot(service_of(compose, container), container);
        let entry = GateEntry {
            container: container.clone(),
            one_shot,
        };
        match (is_active(&container.state), one_shot) {
            (true, false) => report.blocking.push(entry),
            (true, true) => report.warnings.push(entry),
            (false, _) => report.stopped.push(entry),
        }
    }
    report
}

/// The hot-backup gate: the active persistent containers whose service has neither a dump
/// (`dumped`) nor a place in `hot_safe`: copying their files live could give an inconsistent
/// copy, so a hot backup is refused while any runs. Sorted by container name.
pub fn hot_blocking<'a>(
    compose: &ComposeProject,
    containers: &'a [ContainerInfo],
    dumped: &[&str],
    hot_safe: &[&str],
) -> Vec<&'a ContainerInfo> {
    let mut out: Vec<&ContainerInfo> = containers
        .iter()
        .filter(|c| is_active(&c.state) && is_persistent(compose, c))
        .filter(|c| {
            let service = c.service.as_deref().unwrap_or_default();
            !dumped.contains(&service) && !hot_safe.contains(&service)
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    out
}

/// Containers made by compose v1 carry no `com.docker.compose.depends_on` label: take their
/// dependencies from the compose file instead. Containers that already list dependencies are
/// left alone (the label describes how they were actually created).
pub fn fill_missing_dependencies(containers: &mut [ContainerInfo], compose: &ComposeProject) {
    for container in containers.iter_mut().filter(|c| c.depends_on.is_empty()) {
        if let Some(service) = service_of(compose, container) {
            container.depends_on = service.depends_on.clone();
        }
    }
}

/// Dependency order: a container comes after every container of the services it depends on.
#[cfg(any(test, feature = "test-support"))]
pub fn start_order(containers: &[ContainerInfo]) -> Vec<&ContainerInfo> {
    start_waves(containers).into_iter().flatten().collect()
}

/// Reverse dependency order: a container comes before the containers it depends on.
#[cfg(any(test, feature = "test-support"))]
pub fn stop_order(containers: &[ContainerInfo]) -> Vec<&ContainerInfo> {
    stop_waves(containers).into_iter().flatten().collect()
}

/// [`start_order`] grouped into waves that can start concurrently.
pub fn start_waves(containers: &[ContainerInfo]) -> Vec<Vec<&ContainerInfo>> {
    let graph = Graph::new(containers);
    let waves = layers(&graph.nodes, &graph.deps);
    graph.resolve(waves)
}

/// [`stop_order`] grouped into waves that can stop concurrently.
pub fn stop_waves(containers: &[ContainerInfo]) -> Vec<Vec<&ContainerInfo>> {
    let graph = Graph::new(containers);
    // Reverse the edges: a dependency waits for everything that depends on it.
    let mut dependents = vec![BTreeSet::new(); graph.nodes.len()];
    for (node, deps) in graph.deps.iter().enumerate() {
        for &dep in deps {
            dependents[dep].insert(node);
        }
    }
    let waves = layers(&graph.nodes, &dependents);
    graph.resolve(waves)
}

/// Containers sorted by (name, id) and, per container, the indices it must follow.
struct Graph<'a> {
    nodes: Vec<&'a ContainerInfo>,
    deps: Vec<BTreeSet<usize>>,
}

impl<'a> Graph<'a> {
    fn new(containers: &'a [ContainerInfo]) -> Self {
        let mut nodes: Vec<&ContainerInfo> = containers.iter().collect();
        nodes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let mut by_service: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, c) in nodes.iter().enumerate() {
            if let Some(service) = c.service.as_deref() {
                by_service.entry(service).or_default().push(i);
            }
        }
        let deps = nodes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.depends_on
                    .iter()
                    // Replicas of one service never order each other.
                    .filter(|dep| c.service.as_deref() != Some(dep.as_str()))
                    .filter_map(|dep| by_service.get(dep.as_str()))
                    .flatten()
                    .copied()
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        Graph { nodes, deps }
    }

    fn resolve(&self, waves: Vec<Vec<usize>>) -> Vec<Vec<&'a ContainerInfo>> {
        waves
            .into_iter()
            .map(|wave| wave.into_iter().map(|i| self.nodes[i]).collect())
            .collect()
    }
}

/// Kahn's algorithm by layers over `nodes` (already in tie-break order); `preds[i]` must be
/// placed before `i`. A cycle is broken deterministically and logged.
fn layers(nodes: &[&ContainerInfo], preds: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let mut placed = vec![false; nodes.len()];
    let mut remaining = nodes.len();
    let mut waves = Vec::new();
    while remaining > 0 {
        let unplaced_preds = |i: usize| preds[i].iter().filter(|&&p| !placed[p]).count();
        let mut wave: Vec<usize> = (0..nodes.len())
            .filter(|&i| !placed[i] && unplaced_preds(i) == 0)
            .collect();
        if wave.is_empty() {
            let breaker = (0..nodes.len())
                .filter(|&i| !placed[i])
                .min_by_key(|&i| (unplaced_preds(i), i))
                .expect("remaining > 0");
            tracing::warn!(
                container = %nodes[breaker].name,
                "dependency cycle between containers; ordering {} first",
                nodes[breaker].name
            );
            wave.push(breaker);
        }
        for &i in &wave {
            placed[i] = true;
        }
        remaining -= wave.len();
        waves.push(wave);
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, service: Option<&str>, state: &str, policy: &str) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            service: service.map(String::from),
            state: state.into(),
            health: None,
            restart_policy: policy.to_string(),
            image: "img".into(),
            image_id: "sha256:0".into(),
            depends_on: Vec::new(),
            stop_timeout: None,
            project: Some("p".into()),
        }
    }

    fn with_deps(mut c: ContainerInfo, deps: &[&str]) -> ContainerInfo {
        c.depends_on = deps.iter().map(|s| s.to_string()).collect();
        c
    }

    fn service(restart: Option<&str>) -> ComposeService {
        ComposeService {
            restart: restart.map(String::from),
            ..ComposeService::default()
        }
    }

    fn names(list: &[&ContainerInfo]) -> Vec<String> {
        list.iter().map(|c| c.name.clone()).collect()
    }

    #[test]
    fn one_shot_needs_compose_and_engine_to_agree() {
        let no = service(Some("no"));
        let stopped_no = container("job", Some("job"), "exited", "no");
        let stopped_empty = container("job", Some("job"), "exited", "");
        let always = container("job", Some("job"), "exited", "always");
        assert!(is_one_shot(Some(&no), &stopped_no));
        assert!(is_one_shot(Some(&no), &stopped_empty));
        // The engine disagrees with the file: persistent.
        assert!(!is_one_shot(Some(&no), &always));
        // No `restart:` key: persistent even though the engine policy is `no`.
        assert!(!is_one_shot(Some(&service(None)), &stopped_no));
        assert!(!is_one_shot(Some(&service(Some("always"))), &stopped_no));
        assert!(!is_one_shot(
            Some(&service(Some("on-failure:3"))),
            &stopped_no
        ));
        // Service no longer in the compose file: persistent.
        assert!(!is_one_shot(None, &stopped_no));
    }

    #[test]
    fn hot_gate_lets_dumped_and_hot_safe_services_run() {
        let mut compose = ComposeProject {
            name: "p".into(),
            ..ComposeProject::default()
        };
        compose.services.insert("job".into(), service(Some("no")));
        let containers = vec![
            container("p-web-1", Some("web"), "running", "always"),
            container("p-db-1", Some("db"), "running", "always"),
            container("p-cache-1", Some("cache"), "running", "always"),
            container("p-job-1", Some("job"), "running", "no"),
            container("p-old-1", Some("old"), "exited", "always"),
        ];
        let blocking = hot_blocking(&compose, &containers, &["db"], &["cache"]);
        assert_eq!(names(&blocking), ["p-web-1"]);
        assert!(hot_blocking(&compose, &containers, &["db", "web"], &["cache"]).is_empty());
    }

    #[test]
    fn gate_classifies_states() {
        let mut compose = ComposeProject {
            name: "p".into(),
            ..ComposeProject::default()
        };
        compose
            .services
            .insert("db".into(), service(Some("always")));
        compose.services.insert("web".into(), service(None));
        compose.services.insert("job".into(), service(Some("no")));
        compose.services.insert("done".into(), service(Some("no")));
        let containers = vec![
            container("p-web-1", Some("web"), "paused", "no"),
            container("p-db-1", Some("db"), "running", "always"),
            container("p-cache-1", Some("cache"), "restarting", "always"),
            container("p-job-1", Some("job"), "running", "no"),
            container("p-done-1", Some("done"), "exited", "no"),
            container("p-old-1", Some("gone"), "running", "no"),
            container("p-made-1", Some("db"), "created", "always"),
            container("p-dead-1", Some("db"), "dead", "always"),
        ];
        let report = gate("p", &compose, &containers);
        assert_eq!(report.project, "p");
        let n = |v: &[GateEntry]| {
            v.iter()
                .map(|e| e.container.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            n(&report.blocking),
            ["p-cache-1", "p-db-1", "p-old-1", "p-web-1"]
        );
        assert_eq!(n(&report.warnings), ["p-job-1"]);
        assert!(report.warnings[0].one_shot);
        assert_eq!(n(&report.stopped), ["p-dead-1", "p-done-1", "p-made-1"]);
        assert!(!report.passes());

        let all_stopped: Vec<_> = containers
            .iter()
            .map(|c| ContainerInfo {
                state: "exited".into(),
                ..c.clone()
            })
            .collect();
        assert!(gate("p", &compose, &all_stopped).passes());
        assert!(gate("p", &compose, &[]).passes());
    }

    #[test]
    fn orders_follow_dependencies_and_break_ties_by_name() {
        let containers = vec![
            with_deps(container("web", Some("web"), "running", "always"), &["app"]),
            container("db", Some("db"), "running", "always"),
            with_deps(
                container("app", Some("app"), "running", "always"),
                &["db", "cache", "absent"],
            ),
            container("cache", Some("cache"), "running", "always"),
            container("adminer", Some("adminer"), "running", "always"),
            container("loose", None, "running", "no"),
        ];
        assert_eq!(
            names(&start_order(&containers)),
            ["adminer", "cache", "db", "loose", "app", "web"]
        );
        assert_eq!(
            names(&stop_order(&containers)),
            ["adminer", "loose", "web", "app", "cache", "db"]
        );
        let waves: Vec<Vec<String>> = stop_waves(&containers).iter().map(|w| names(w)).collect();
        assert_eq!(
            waves,
            [
                vec!["adminer", "loose", "web"],
                vec!["app"],
                vec!["cache", "db"]
            ]
        );
    }

    #[test]
    fn replicas_depend_on_every_container_of_a_service() {
        let containers = vec![
            with_deps(
                container("app-1", Some("app"), "running", "always"),
                &["db", "app"],
            ),
            with_deps(
                container("app-2", Some("app"), "running", "always"),
                &["db"],
            ),
            container("db-2", Some("db"), "running", "always"),
            container("db-1", Some("db"), "running", "always"),
        ];
        assert_eq!(
            names(&start_order(&containers)),
            ["db-1", "db-2", "app-1", "app-2"]
        );
        assert_eq!(
            names(&stop_order(&containers)),
            ["app-1", "app-2", "db-1", "db-2"]
        );
    }

    #[test]
    fn cycles_are_broken_deterministically() {
        let containers = vec![
            with_deps(container("b", Some("b"), "running", "always"), &["a"]),
            with_deps(container("a", Some("a"), "running", "always"), &["c"]),
            with_deps(container("c", Some("c"), "running", "always"), &["b"]),
            with_deps(container("d", Some("d"), "running", "always"), &["a"]),
        ];
        let start = names(&start_order(&containers));
        // `a` breaks the cycle (fewest unplaced dependencies, then name); `b` and `d` follow it.
        assert_eq!(start, ["a", "b", "d", "c"]);
        assert_eq!(names(&start_order(&containers)), start, "stable");
        // `d` depends on the cycle and nothing depends on it: it stops first.
        assert_eq!(names(&stop_order(&containers)), ["d", "a", "c", "b"]);
        // A self-cycle through replicas never blocks.
        let twins = vec![
            with_deps(container("x-1", Some("x"), "running", "always"), &["x"]),
            with_deps(container("x-2", Some("x"), "running", "always"), &["x"]),
        ];
        assert_eq!(names(&start_order(&twins)), ["x-1", "x-2"]);
    }

    #[test]
    fn compose_file_fills_missing_labels() {
        let mut compose = ComposeProject::default();
        compose.services.insert(
            "app".into(),
            ComposeService {
                depends_on: vec!["db".into()],
                ..ComposeService::default()
            },
        );
        compose.services.insert(
            "web".into(),
            ComposeService {
                depends_on: vec!["app".into()],
                ..ComposeService::default()
            },
        );
        let mut containers = vec![
            container("app", Some("app"), "running", "always"),
            with_deps(container("web", Some("web"), "running", "always"), &["db"]),
            container("db", Some("db"), "running", "always"),
        ];
        fill_missing_dependencies(&mut containers, &compose);
        assert_eq!(containers[0].depends_on, ["db"]);
        assert_eq!(containers[1].depends_on, ["db"], "label wins over the file");
        assert!(containers[2].depends_on.is_empty());
    }
}
