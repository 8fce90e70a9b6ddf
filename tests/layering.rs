//! The architecture invariants of ARCHITECTURE.md that a dependency graph can show, checked
//! against `cargo metadata` (the idea of TigerBeetle's tidy checks): each crate is a layer, and
//! a layer does not reach, directly or through another crate, what it must not know.
//!
//! Only normal dependencies count: build scripts (spool-proto's code generator) and tests may
//! use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// What a crate must not depend on, directly or transitively, and why.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "spool-storage",
        &["tokio", "tonic", "prost", "hyper", "axum", "spool-broker", "spool-proto"],
        "storage is synchronous and knows no runtime, network, protobuf or topics",
    ),
    (
        "spool-broker",
        &["tokio", "tonic", "prost", "hyper", "axum", "spool-proto", "spool-server"],
        "the broker is a deterministic state machine over storage, with no runtime or wire",
    ),
    (
        "spool-proto",
        &["spool-broker", "spool-server", "spool-client"],
        "the wire crate knows the wire only",
    ),
    (
        "spool-client",
        &["spool-broker", "spool-server"],
        "the client knows the wire and the batch format, not the server's internals",
    ),
    (
        "spool-replication",
        &["tonic", "prost", "hyper", "axum", "spool-proto", "spool-broker", "spool-server"],
        "replication is the Raft log over storage; the network and the wire are the server's",
    ),
];

/// The one workspace crate that may depend on openraft directly: every openraft type stays
/// in it, so an upgrade of openraft (pinned exactly) touches one crate.
const OPENRAFT_USER: &str = "spool-replication";

/// The only workspace crates the `spool` binary may use directly. spool-storage is here for
/// `spool dump` and `spool verify`, which read segment and index files offline with storage's
/// own decoders.
const CLI_ALLOWED: &[&str] =
    &["spool-client", "spool-server", "spool-bench", "spool-proto", "spool-storage"];

struct Graph {
    /// Package id to name.
    names: BTreeMap<String, String>,
    /// Package id to the ids of its normal (not dev, not build) dependencies.
    normal: BTreeMap<String, Vec<String>>,
    /// Workspace package name to its id.
    workspace: BTreeMap<String, String>,
}

impl Graph {
    fn load() -> Graph {
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
        let text = |v: &Value| v.as_str().expect("a string").to_owned();
        let names = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (text(&p["id"]), text(&p["name"])))
            .collect::<BTreeMap<_, _>>();
        let workspace = metadata["workspace_members"]
            .as_array()
            .expect("workspace members")
            .iter()
            .map(|id| (names[&text(id)].clone(), text(id)))
            .collect();
        let mut normal = BTreeMap::new();
        for node in metadata["resolve"]["nodes"].as_array().expect("a resolved graph") {
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .expect("dep kinds")
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|dep| text(&dep["pkg"]))
                .collect();
            normal.insert(text(&node["id"]), deps);
        }
        Graph { names, normal, workspace }
    }

    fn id(&self, name: &str) -> &str {
        self.workspace.get(name).unwrap_or_else(|| panic!("{name} is not a workspace crate"))
    }

    fn direct(&self, name: &str) -> BTreeSet<&str> {
        self.normal[self.id(name)].iter().map(|id| self.names[id].as_str()).collect()
    }

    /// Every crate `name` reaches through normal dependencies, each with one path to it.
    fn reachable<'a>(&'a self, name: &'a str) -> BTreeMap<&'a str, Vec<&'a str>> {
        let start = self.id(name);
        let mut paths: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
        let mut queue = vec![(start, vec![name])];
        let mut seen = BTreeSet::from([start]);
        while let Some((id, path)) = queue.pop() {
            for dep in &self.normal[id] {
                if seen.insert(dep.as_str()) {
                    let mut next = path.clone();
                    next.push(self.names[dep].as_str());
                    paths.entry(self.names[dep].as_str()).or_insert_with(|| next.clone());
                    queue.push((dep.as_str(), next));
                }
            }
        }
        paths
    }
}

#[test]
fn layers_do_not_reach_what_they_must_not_know() {
    let graph = Graph::load();
    let mut broken = Vec::new();
    for (krate, forbidden, why) in FORBIDDEN {
        let reachable = graph.reachable(krate);
        for name in *forbidden {
            if let Some(path) = reachable.get(name) {
                broken.push(format!("{krate} depends on {name} ({}): {why}", path.join(" -> ")));
            }
        }
    }
    assert!(broken.is_empty(), "architecture invariants broken:\n{}", broken.join("\n"));
}

#[test]
fn the_binary_uses_the_client_not_the_internals() {
    let graph = Graph::load();
    let workspace: BTreeSet<&str> = graph.workspace.keys().map(String::as_str).collect();
    let used: Vec<&str> = graph
        .direct("spool-cli")
        .into_iter()
        .filter(|name| workspace.contains(name) && !CLI_ALLOWED.contains(name))
        .collect();
    assert!(
        used.is_empty(),
        "the spool binary depends directly on {used:?}; its client commands go through \
         spool-client, `serve` through spool-server (allowed: {CLI_ALLOWED:?})"
    );
}

#[test]
fn only_the_replication_crate_uses_openraft() {
    let graph = Graph::load();
    let users: Vec<&str> = graph
        .workspace
        .keys()
        .map(String::as_str)
        .filter(|name| *name != OPENRAFT_USER && graph.direct(name).contains("openraft"))
        .collect();
    assert!(
        users.is_empty(),
        "{users:?} depend on openraft directly; openraft's types stay in {OPENRAFT_USER}"
    );
}
