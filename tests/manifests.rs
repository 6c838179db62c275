//! The Kubernetes manifests (`deploy/kubernetes`, `deploy/examples`) checked against loam itself.
//!
//! `tests/manifests_check.py` loads every document, validates it against the Kubernetes OpenAPI schemas
//! (kubernetes-validate, strict) and prints what it found as JSON. These tests then check what no schema can:
//! that `loam serve`'s real parser accepts the DaemonSet's arguments, that the ConfigMap's config parses, that
//! loam and all three sidecars use the same socket file and kubelet is told its host path, that names and
//! ports agree, and that the provisioner runs per node with capacity tracking and the RBAC it needs.
//!
//! The commented-out examples are checked too: the ConfigMap's pools uncommented must parse, and the manifests
//! in `deploy/kubernetes` with their commented objects uncommented (the device pools' StorageClasses) are run
//! through the same script and must be valid, name pools the uncommented config declares, and reach the
//! disks of those pools through the DaemonSet's mounts.
//!
//! Without python3, PyYAML or kubernetes-validate the tests print `SKIP` and pass, unless `LOAM_STRICT=1`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    sync::OnceLock,
};

use clap::{CommandFactory, FromArgMatches};
use loam::{
    cli::{Cli, Command as LoamCommand, ServeArgs},
    config::FileConfig,
};
use loam_engine::spec::{PoolSpec, VolumeMode};
use serde_json::Value;

/// The node name `$(NODE_NAME)` stands for.
const NODE: &str = "node-1";
const LOAM: &str = "loam";
const PROVISIONER: &str = "csi-provisioner";
const REGISTRAR: &str = "node-driver-registrar";
const LIVENESS: &str = "liveness-probe";
const KUBELET_PODS: &str = "/var/lib/kubelet/pods";
const KUBELET_PLUGINS: &str = "/var/lib/kubelet/plugins";
/// Kinds that live outside any namespace.
const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "StorageClass",
];

/// The script's report, or `None` when it cannot run here (skipped).
fn report() -> Option<&'static Value> {
    static REPORT: OnceLock<Option<Value>> = OnceLock::new();
    REPORT.get_or_init(run_check).as_ref()
}

/// The script's report on the manifests with their commented-out objects uncommented (see [`uncomment_yaml`]),
/// or `None` when it cannot run here (skipped).
fn example_report() -> Option<&'static Value> {
    static REPORT: OnceLock<Option<Value>> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let root = env!("CARGO_MANIFEST_DIR");
            let tree = tempfile::tempdir().unwrap();
            for dir in ["deploy/kubernetes", "deploy/examples"] {
                std::fs::create_dir_all(tree.path().join(dir)).unwrap();
                for entry in std::fs::read_dir(Path::new(root).join(dir)).unwrap() {
                    let entry = entry.unwrap();
                    let text = std::fs::read_to_string(entry.path()).unwrap();
                    let text = if dir == "deploy/kubernetes" {
                        uncomment_yaml(&text)
                    } else {
                        text
                    };
                    std::fs::write(tree.path().join(dir).join(entry.file_name()), text).unwrap();
                }
            }
            run_check_at(tree.path())
        })
        .as_ref()
}

fn run_check() -> Option<Value> {
    run_check_at(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Runs `tests/manifests_check.py` on the manifests under `root` (`deploy/kubernetes`, `deploy/examples`).
fn run_check_at(root: &Path) -> Option<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests_check.py");
    let out = match Command::new("python3").arg(script).arg(root).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return skip("python3 is not installed"),
        Err(e) => panic!("running python3: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "manifests_check.py printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })),
        Some(3) => skip(stderr.trim()),
        _ => panic!("manifests_check.py failed ({}):\n{stderr}", out.status),
    }
}

fn skip(why: &str) -> Option<Value> {
    loam_sys::testutil::skip("manifests", &format!("{why}; pip install kubernetes-validate"));
    None
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v}"))
}

fn object<'a>(r: &'a Value, key: &str) -> &'a Value {
    r["objects"]
        .get(key)
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {key}"))
}

fn objects_of<'a>(r: &'a Value, section: &str, kind: &str) -> Vec<&'a Value> {
    r[section]
        .as_object()
        .unwrap()
        .values()
        .filter(|o| o["kind"] == kind)
        .collect()
}

fn container<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["containers"]
        .get(name)
        .unwrap_or_else(|| panic!("the DaemonSet has no container {name}"))
}

fn daemonset(r: &Value) -> &Value {
    let ds = objects_of(r, "objects", "DaemonSet");
    assert_eq!(ds.len(), 1, "one DaemonSet");
    ds[0]
}

/// A Go flag of a sidecar: `Some("")` for a bare boolean flag, `None` when absent.
fn flag(c: &Value, name: &str) -> Option<String> {
    c["flags"].get(name).map(|v| match v {
        Value::Bool(true) => String::new(),
        Value::String(s) => s.clone(),
        other => panic!("flag {name}: unexpected {other}"),
    })
}

/// Whether a Go boolean flag is on (`--x` or `--x=true`).
fn bool_flag(c: &Value, name: &str) -> bool {
    matches!(flag(c, name).as_deref(), Some("" | "true"))
}

/// The port of an `--http-endpoint` such as `:9808`.
fn endpoint_port(c: &Value) -> u64 {
    let ep = flag(c, "http-endpoint").expect("--http-endpoint");
    let (_, port) = ep
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("--http-endpoint={ep} has no port"));
    port.parse()
        .unwrap_or_else(|_| panic!("--http-endpoint={ep}: bad port"))
}

/// Where `path` in container `c` really is: the volume mounted there and the path inside that volume.
fn resolve(r: &Value, c: &str, path: &str) -> (String, String) {
    let mut best: Option<(&str, &Value)> = None;
    for m in container(r, c)["mounts"].as_array().unwrap() {
        let mp = s(m, "/path").trim_end_matches('/');
        let inside = path == mp || path.starts_with(&format!("{mp}/"));
        if inside && best.is_none_or(|(b, _)| mp.len() > b.len()) {
            best = Some((mp, m));
        }
    }
    let (mp, m) = best.unwrap_or_else(|| panic!("{path} is on no volume of container {c}"));
    let mut rel = path[mp.len()..].trim_start_matches('/').to_owned();
    if let Some(sub) = m["sub_path"].as_str() {
        rel = format!("{sub}/{rel}").trim_end_matches('/').to_owned();
    }
    (s(m, "/volume").to_owned(), rel)
}

/// The host path behind `path` in container `c`, which must be on a hostPath volume.
fn host_path(r: &Value, c: &str, path: &str) -> String {
    let (vol, rel) = resolve(r, c, path);
    let host = r["volumes"][&vol]["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} in {c} is on volume {vol}, which is not a hostPath"));
    if rel.is_empty() {
        host.to_owned()
    } else {
        format!("{}/{rel}", host.trim_end_matches('/'))
    }
}

/// The mount of container `c` at exactly `path`.
fn mount_at<'a>(r: &'a Value, c: &str, path: &str) -> &'a Value {
    container(r, c)["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == path)
        .unwrap_or_else(|| panic!("container {c} mounts nothing at {path}"))
}

/// Expands Kubernetes `$(VAR)` references as the kubelet would for a pod named loam-node-x on node-1.
fn expand(arg: &str, env: &Value) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(tail) = rest.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = rest.strip_prefix("$(").and_then(|t| t.split_once(')')) {
            let var = env
                .get(name)
                .unwrap_or_else(|| panic!("{arg}: $({name}) is not in the container's env"));
            let value = match (var.get("value"), var.get("fieldRef").and_then(Value::as_str)) {
                (Some(v), _) => v.as_str().unwrap().to_owned(),
                (_, Some("spec.nodeName")) => NODE.to_owned(),
                (_, Some("metadata.namespace")) => "loam-system".to_owned(),
                (_, Some("metadata.name")) => "loam-node-x".to_owned(),
                _ => panic!("{arg}: $({name}) comes from {var}"),
            };
            out.push_str(&value);
            rest = tail;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The DaemonSet's arguments to loam, `$(VAR)`s expanded.
fn loam_argv(r: &Value) -> Vec<String> {
    let env = &r["loam_env"];
    let args = r["loam_args"].as_array().expect("loam_args");
    std::iter::once(LOAM.to_owned())
        .chain(args.iter().map(|a| expand(a.as_str().unwrap(), env)))
        .collect()
}

/// `Cli::try_parse_from`, except that the environment running these tests is ignored (`CSI_ENDPOINT`,
/// `LOAM_*`): in the pod only the container's env counts, and it sets none of those (checked below).
fn parse_loam(argv: &[String]) -> Result<Cli, clap::Error> {
    let cmd = Cli::command().mut_subcommand("serve", |serve| serve.mut_args(|a| a.env(None)));
    let mut matches = cmd.try_get_matches_from(argv)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// `loam serve`'s arguments as its own parser reads the DaemonSet's args.
fn serve_args(r: &Value) -> ServeArgs {
    let argv = loam_argv(r);
    let cli =
        parse_loam(&argv).unwrap_or_else(|e| panic!("loam rejects the DaemonSet's arguments {argv:?}:\n{e}"));
    match cli.command {
        LoamCommand::Serve(args) => args,
        other => panic!("the DaemonSet runs {other:?}, not `loam serve`"),
    }
}

/// The config file from the ConfigMap, with the commented examples uncommented when `examples`.
fn config_text(r: &Value, examples: bool) -> String {
    let text = r["config_toml"]
        .as_str()
        .expect("loam's --config names a key of a ConfigMap mounted into the loam container");
    if !examples {
        return text.to_owned();
    }
    // Example lines are `# [[table]]` and `# key = value`; prose comments are neither.
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(code)
                if code.starts_with("[[")
                    || code.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                code
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A manifest with its commented-out objects uncommented. A commented object starts at a `# ---` line at column 0
/// and goes on over the `# ` lines that follow with an indented line or a `key:` whose key is letters and
/// digits; the first other line ends it.
fn uncomment_yaml(text: &str) -> String {
    let is_key = |code: &str| {
        code.split_once(':').is_some_and(|(k, rest)| {
            k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && k.chars().all(|c| c.is_ascii_alphanumeric())
                && (rest.is_empty() || rest.starts_with(' '))
        })
    };
    let mut inside = false;
    let mut out: Vec<&str> = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some("---") => {
                inside = true;
                "---"
            }
            Some(code) if inside && (code.starts_with(' ') || is_key(code)) => code,
            _ => {
                inside = false;
                l
            }
        })
        .collect();
    out.push("");
    out.join("\n")
}

fn load_config(text: &str) -> FileConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    FileConfig::load(&path).unwrap_or_else(|e| panic!("loam rejects the ConfigMap's config: {e:#}\n{text}"))
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let Some(r) = report() else { return };
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "manifests invalid for Kubernetes {} (kubernetes-validate {}):\n{}",
        r["kube_versions"],
        r["kubernetes_validate_version"],
        errors.join("\n")
    );
    assert!(
        !r["examples"].as_object().unwrap().is_empty(),
        "deploy/examples has manifests"
    );
}

#[test]
fn kustomization_installs_every_manifest_into_one_namespace() {
    let Some(r) = report() else { return };
    let k = &r["kustomization"];
    assert!(k.is_object(), "deploy/kubernetes/kustomization.yaml exists");
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> = r["manifest_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources vs the files in deploy/kubernetes"
    );

    let ns = s(k, "/namespace");
    assert!(
        r["objects"].get(format!("Namespace/{ns}")).is_some(),
        "the namespace {ns} is created"
    );
    for (key, o) in r["objects"].as_object().unwrap() {
        let kind = s(o, "/kind");
        let own = o.pointer("/metadata/namespace").and_then(Value::as_str);
        if CLUSTER_KINDS.contains(&kind) {
            assert_eq!(own, None, "{key} is cluster-scoped");
        } else {
            // Also right for `kubectl apply -f`, without kustomize.
            assert_eq!(own, Some(ns), "{key} namespace");
        }
    }

    let image = s(container(r, LOAM), "/image");
    let repo = image.rsplit_once(':').map_or(image, |(repo, _)| repo);
    let images = k["images"].as_array().expect("kustomization images");
    assert!(
        images.iter().any(|i| i["name"] == repo),
        "kustomization images: has an entry for {repo}"
    );
}

#[test]
fn loam_accepts_the_daemonset_arguments() {
    let Some(r) = report() else { return };
    let c = container(r, LOAM);
    assert!(
        c["command"].is_null(),
        "the image's entrypoint is loam; args start with `serve`"
    );
    let args = serve_args(r);
    assert_eq!(
        args.node_id.as_deref(),
        Some(NODE),
        "--node-id is the Kubernetes node name"
    );
    let node_var = r["loam_args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| {
            a.as_str()
                .unwrap()
                .strip_prefix("--node-id=$(")?
                .strip_suffix(')')
        })
        .expect("--node-id=$(VAR)");
    assert_eq!(
        r["loam_env"][node_var]["fieldRef"], "spec.nodeName",
        "{node_var} is the node's name"
    );
    assert_eq!(args.log_format, "json");
    // Metrics are on, on the port the container declares and the scrape annotations name.
    let metrics = args.metrics_address.expect("--metrics-address is set");
    assert_eq!(
        c["ports"]["metrics"].as_u64(),
        Some(u64::from(metrics.port())),
        "the container port named metrics is loam's --metrics-address port"
    );
    assert!(
        metrics.ip().is_unspecified(),
        "metrics listen on every address of the pod"
    );
    let ann = &r["pod_annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], metrics.port().to_string().as_str());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert!(args.data_dir.is_absolute(), "--data-dir is absolute");
    assert!(args.config.is_some(), "--config is passed");
    assert!(args.capacity.is_none(), "--capacity conflicts with --config");
    loam::endpoint::socket_path(&args.endpoint).expect("--endpoint is a unix:// path");

    // Every setting comes from args: the container sets none of the variables loam's parser reads.
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").unwrap();
    for a in serve.get_arguments() {
        if let Some(var) = a.get_env().and_then(|v| v.to_str()) {
            assert!(
                r["loam_env"].get(var).is_none(),
                "the loam container sets {var}; pass --{} instead",
                a.get_id()
            );
        }
    }
}

#[test]
fn config_map_is_a_valid_loam_config() {
    let Some(r) = report() else { return };
    let args = serve_args(r);
    let config_path = args.config.as_ref().unwrap().to_str().unwrap().to_owned();
    let (vol, key) = resolve(r, LOAM, &config_path);
    assert!(
        r["volumes"][&vol]["configMap"].is_object(),
        "--config is on a ConfigMap volume"
    );

    let text = config_text(r, false);
    let node = load_config(&text)
        .for_node(NODE)
        .unwrap_or_else(|e| panic!("config for {NODE}: {e:#}"));
    assert!(
        node.pools.iter().any(|p| p.name() == node.default_pool),
        "default pool is declared"
    );

    // What `loam serve` builds from it (the file at a path of our own).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(&key);
    std::fs::write(&file, &text).unwrap();
    let engine = loam::cli::engine_config(&ServeArgs {
        config: Some(file),
        ..serve_args(r)
    })
    .unwrap_or_else(|e| panic!("loam serve would fail: {e:#}"));
    assert_eq!(engine.node_id, NODE);
    assert_eq!(engine.pools, node.pools);

    // Pools and state must be on the node's disk, writable, not in the container's own filesystem.
    let data_dir = args.data_dir.to_str().unwrap();
    let writable_host = |path: &str| {
        host_path(r, LOAM, path);
        let (vol, _) = resolve(r, LOAM, path);
        let m = container(r, LOAM)["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["volume"] == vol)
            .unwrap();
        assert_eq!(m["read_only"], false, "{path} is writable");
    };
    writable_host(data_dir);
    for p in &node.pools {
        writable_host(p.path().to_str().unwrap());
    }

    // Every StorageClass names a pool that exists and no parameter loam refuses.
    for sc in objects_of(r, "objects", "StorageClass") {
        let name = s(sc, "/metadata/name");
        for (k, v) in sc["parameters"].as_object().into_iter().flatten() {
            assert!(
                loam_engine::engine::KNOWN_PARAMETERS.contains(&k.as_str())
                    || k.starts_with("csi.storage.k8s.io/"),
                "StorageClass {name}: loam refuses parameter {k}"
            );
            if k == loam_engine::engine::PARAM_POOL {
                assert!(
                    node.pools.iter().any(|p| p.name() == v.as_str().unwrap()),
                    "StorageClass {name}: pool {v}"
                );
            }
        }
    }

    // The commented examples are valid too, and the per-node override applies.
    let examples = config_text(r, true);
    assert_ne!(examples, text, "the ConfigMap has commented examples");
    let c = load_config(&examples);
    assert!(c.pools.len() >= 2, "example of a second pool");
    let overridden = &c.nodes.first().expect("example of a [[nodes]] override").names[0];
    let o = c.for_node(overridden).unwrap();
    assert_ne!(
        o.pools,
        c.for_node(NODE).unwrap().pools,
        "the override changes {overridden}'s pools"
    );
}

#[test]
fn all_containers_use_one_socket_that_kubelet_knows() {
    let Some(r) = report() else { return };
    let endpoint = serve_args(r).endpoint;
    let loam_sock = loam::endpoint::socket_path(&endpoint)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r["socket_paths"][LOAM], loam_sock.as_str());

    let mut seen = BTreeMap::new();
    seen.insert(LOAM, resolve(r, LOAM, &loam_sock));
    for c in [PROVISIONER, REGISTRAR, LIVENESS] {
        let addr = flag(container(r, c), "csi-address").unwrap_or_else(|| panic!("{c} has --csi-address"));
        seen.insert(c, resolve(r, c, &addr));
    }
    let first = &seen[LOAM];
    for (c, at) in &seen {
        assert_eq!(at, first, "{c}'s socket vs loam's (volume, path inside it)");
    }

    let host = host_path(r, LOAM, &loam_sock);
    let reg =
        flag(container(r, REGISTRAR), "kubelet-registration-path").expect("--kubelet-registration-path");
    assert_eq!(reg, host, "kubelet is told the socket's host path");
    assert_eq!(r["registration_path"], reg.as_str());
    let dir = s(&r["volumes"][&first.0], "/hostPath/path");
    assert_eq!(
        reg,
        format!("{dir}/csi.sock"),
        "registration path = socket-dir hostPath + /csi.sock"
    );
    assert_eq!(r["socket_volume_host_path"], dir);
    assert!(
        dir.starts_with(&format!("{KUBELET_PLUGINS}/")),
        "socket dir under kubelet's plugins dir"
    );

    let registration = flag(container(r, REGISTRAR), "plugin-registration-path");
    let registration = registration.as_deref().unwrap_or("/registration");
    assert_eq!(
        host_path(r, REGISTRAR, registration),
        "/var/lib/kubelet/plugins_registry"
    );
}

#[test]
fn driver_names_agree() {
    let Some(r) = report() else { return };
    let name = serve_args(r).driver_name;
    assert_eq!(
        r["driver_names"]["csidriver"],
        serde_json::json!([name]),
        "CSIDriver name"
    );
    let classes = r["driver_names"]["storageclasses"].as_object().unwrap();
    assert!(!classes.is_empty(), "a StorageClass");
    for (sc, provisioner) in classes {
        assert_eq!(provisioner, name.as_str(), "StorageClass {sc} provisioner");
    }
    assert!(s(&r["volumes"]["socket-dir"], "/hostPath/path").ends_with(&format!("/{name}")));
    // The examples use the StorageClass.
    let mut claims: Vec<&Value> = objects_of(r, "examples", "PersistentVolumeClaim");
    let templates: Vec<&Value> = objects_of(r, "examples", "StatefulSet")
        .into_iter()
        .flat_map(|st| st["spec"]["volumeClaimTemplates"].as_array().unwrap())
        .collect();
    claims.extend(templates);
    assert!(!claims.is_empty());
    // Or defines among its commented-out examples, such as the device pools' classes.
    let commented = example_report().map(|x| x["driver_names"]["storageclasses"].clone());
    for c in claims {
        let sc = s(c, "/spec/storageClassName");
        assert!(
            classes.contains_key(sc) || commented.as_ref().is_some_and(|x| x.get(sc).is_some()),
            "examples use StorageClass {sc}, which deploy/kubernetes defines (or its commented examples do)"
        );
    }
}

#[test]
fn commented_manifests_are_valid_kubernetes_objects() {
    let (Some(r), Some(x)) = (report(), example_report()) else {
        return;
    };
    let errors: Vec<&str> = x["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "deploy/kubernetes with its examples uncommented is invalid:\n{}",
        errors.join("\n")
    );
    let name = serve_args(r).driver_name;
    let examples = config_text(r, true);
    let config = load_config(&examples)
        .for_node(NODE)
        .unwrap_or_else(|e| panic!("uncommented config for {NODE}: {e:#}"));
    let new_classes: Vec<&Value> = objects_of(x, "objects", "StorageClass")
        .into_iter()
        .filter(|sc| {
            r["objects"]
                .get(format!("StorageClass/{}", s(sc, "/metadata/name")))
                .is_none()
        })
        .collect();
    assert!(
        !new_classes.is_empty(),
        "storageclass.yaml has commented StorageClasses for the commented pools"
    );
    for sc in new_classes {
        let class = s(sc, "/metadata/name");
        assert_eq!(
            sc["provisioner"],
            name.as_str(),
            "StorageClass {class} provisioner"
        );
        assert_eq!(
            sc["volumeBindingMode"], "WaitForFirstConsumer",
            "StorageClass {class}"
        );
        for k in sc["parameters"].as_object().into_iter().flatten().map(|(k, _)| k) {
            assert!(
                loam_engine::engine::KNOWN_PARAMETERS.contains(&k.as_str())
                    || k.starts_with("csi.storage.k8s.io/"),
                "StorageClass {class}: loam refuses parameter {k}"
            );
        }
        let pool = s(sc, "/parameters/pool");
        assert!(
            config.pools.iter().any(|p| p.name() == pool),
            "StorageClass {class}: pool {pool} is among the ConfigMap's uncommented pools"
        );
    }
}

#[test]
fn device_pools_reach_their_disks() {
    let (Some(r), Some(x)) = (report(), example_report()) else {
        return;
    };
    let config = load_config(&config_text(r, true));
    let devices: Vec<&PoolSpec> = config
        .pools
        .iter()
        .chain(config.nodes.iter().flat_map(|n| &n.pools))
        .filter(|p| matches!(p, PoolSpec::Device(_)))
        .collect();
    for mode in [VolumeMode::Filesystem, VolumeMode::Block] {
        assert!(
            devices
                .iter()
                .any(|p| matches!(p, PoolSpec::Device(d) if d.volume_mode == mode)),
            "the ConfigMap has a commented device pool with volume_mode {mode:?}"
        );
    }
    for p in &devices {
        // The discovery directory at the same path as on the host, with the disks mounted there later, and
        // writable: a mounted disk is emptied when its volume is deleted.
        let dir = p.path().to_str().unwrap();
        assert_eq!(
            host_path(r, LOAM, dir),
            dir,
            "pool {}: {dir} is the host's",
            p.name()
        );
        let (vol, _) = resolve(r, LOAM, dir);
        let m = container(r, LOAM)["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["volume"] == vol)
            .unwrap();
        assert!(
            matches!(
                m["propagation"].as_str(),
                Some("HostToContainer" | "Bidirectional")
            ),
            "pool {}: disks mounted under {dir} after loam starts must reach the container ({m})",
            p.name()
        );
        assert_eq!(m["read_only"], false, "pool {}: {dir} is writable", p.name());
    }
    // Device nodes and by-id links, and udev's serials, as the host has them.
    assert_eq!(host_path(r, LOAM, "/dev/disk/by-id"), "/dev/disk/by-id");
    assert_eq!(host_path(r, LOAM, "/run/udev/data"), "/run/udev/data");

    // A claim of a device pool's class asks for the volume mode that pool serves.
    let pools: BTreeMap<&str, &PoolSpec> = devices.iter().map(|p| (p.name(), *p)).collect();
    let class_pool: BTreeMap<&str, &str> = objects_of(x, "objects", "StorageClass")
        .into_iter()
        .filter_map(|sc| Some((s(sc, "/metadata/name"), sc.pointer("/parameters/pool")?.as_str()?)))
        .collect();
    let mut device_claims = 0;
    for c in objects_of(r, "examples", "PersistentVolumeClaim") {
        let class = s(c, "/spec/storageClassName");
        let Some(PoolSpec::Device(d)) = class_pool.get(class).and_then(|p| pools.get(p)) else {
            continue;
        };
        device_claims += 1;
        let block = c.pointer("/spec/volumeMode").and_then(Value::as_str) == Some("Block");
        assert_eq!(
            block,
            d.volume_mode == VolumeMode::Block,
            "{}: class {class}'s pool {} serves volume_mode {:?}",
            s(c, "/metadata/name"),
            d.name,
            d.volume_mode
        );
    }
    assert!(device_claims > 0, "deploy/examples has a claim on a device pool");
}

#[test]
fn liveness_probes_reach_their_servers() {
    let Some(r) = report() else { return };
    let probe = &container(r, LOAM)["liveness"];
    assert_eq!(probe["path"], "/healthz");
    assert_eq!(
        probe["port"].as_u64(),
        Some(endpoint_port(container(r, LIVENESS))),
        "loam's liveness port"
    );
    let registrar = container(r, REGISTRAR);
    assert_eq!(registrar["liveness"]["path"], "/healthz");
    assert_eq!(
        registrar["liveness"]["port"].as_u64(),
        Some(endpoint_port(registrar)),
        "registrar port"
    );
}

#[test]
fn provisioner_runs_per_node_with_capacity_tracking() {
    let Some(r) = report() else { return };
    let p = container(r, PROVISIONER);
    for f in ["node-deployment", "enable-capacity", "strict-topology"] {
        assert!(bool_flag(p, f), "csi-provisioner --{f}");
    }
    assert_eq!(flag(p, "immediate-topology").as_deref(), Some("false"));
    assert!(
        !bool_flag(p, "leader-election"),
        "no leader election in node deployment"
    );
    assert_eq!(
        flag(p, "capacity-ownerref-level").as_deref(),
        Some("1"),
        "objects owned by the DaemonSet"
    );
    for (var, field) in [
        ("NODE_NAME", "spec.nodeName"),
        ("NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        assert_eq!(p["env"][var]["fieldRef"], field, "csi-provisioner env {var}");
    }
    for sc in objects_of(r, "objects", "StorageClass") {
        // Capacity is only tracked (and the scheduler only uses it) for late binding.
        assert_eq!(
            sc["volumeBindingMode"], "WaitForFirstConsumer",
            "{}",
            sc["metadata"]["name"]
        );
    }

    let d = object(r, "CSIDriver/loam.csi");
    assert_eq!(d["spec"]["storageCapacity"], true);
    assert_eq!(
        d["spec"]["attachRequired"], false,
        "loam has no PUBLISH_UNPUBLISH_VOLUME"
    );
    assert_eq!(d["spec"]["podInfoOnMount"], true);
    assert_eq!(d["spec"]["fsGroupPolicy"], "File");
    assert_eq!(
        d["spec"]["volumeLifecycleModes"],
        serde_json::json!(["Persistent"]),
        "no inline volumes yet"
    );

    // RBAC: the pod's ServiceAccount is bound to both roles, which grant what the provisioner needs.
    let ds = daemonset(r);
    let ns = s(ds, "/metadata/namespace");
    let sa = s(ds, "/spec/template/spec/serviceAccountName");
    object(r, &format!("ServiceAccount/{sa}"));
    let granted = |binding_kind: &str, role_kind: &str| -> Vec<Value> {
        let mut rules = Vec::new();
        for b in objects_of(r, "objects", binding_kind) {
            let subjects = b["subjects"].as_array().unwrap();
            if subjects
                .iter()
                .any(|x| x["kind"] == "ServiceAccount" && x["name"] == sa && x["namespace"] == ns)
            {
                assert_eq!(b["roleRef"]["kind"], role_kind);
                let role = object(r, &format!("{role_kind}/{}", s(b, "/roleRef/name")));
                if role_kind == "Role" {
                    assert_eq!(role["metadata"]["namespace"], b["metadata"]["namespace"]);
                    assert_eq!(
                        role["metadata"]["namespace"], ns,
                        "the Role is in the pods' namespace"
                    );
                }
                rules.extend(role["rules"].as_array().unwrap().iter().cloned());
            }
        }
        rules
    };
    let allows = |rules: &[Value], group: &str, resource: &str, verbs: &[&str]| {
        verbs.iter().all(|verb| {
            rules.iter().any(|rule| {
                let has = |k: &str, v: &str| rule[k].as_array().unwrap().iter().any(|x| x == v || x == "*");
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            })
        })
    };
    let cluster = granted("ClusterRoleBinding", "ClusterRole");
    let local = granted("RoleBinding", "Role");
    for (group, resource, verbs) in [
        (
            "",
            "persistentvolumes",
            &["get", "list", "watch", "create", "patch", "delete"][..],
        ),
        ("", "persistentvolumeclaims", &["get", "list", "watch", "update"]),
        ("storage.k8s.io", "storageclasses", &["get", "list", "watch"]),
        ("", "events", &["list", "watch", "create", "update", "patch"]),
    ] {
        assert!(
            allows(&cluster, group, resource, verbs),
            "ClusterRole: {resource} {verbs:?}"
        );
    }
    let capacity_verbs = ["get", "list", "watch", "create", "update", "patch", "delete"];
    assert!(
        allows(&local, "storage.k8s.io", "csistoragecapacities", &capacity_verbs),
        "Role: csistoragecapacities"
    );
    assert!(
        allows(&local, "", "pods", &["get"]),
        "Role: pods get (owner lookup)"
    );
}

#[test]
fn loam_is_privileged_and_its_kubelet_mounts_propagate() {
    let Some(r) = report() else { return };
    let c = container(r, LOAM);
    assert_eq!(c["privileged"], true, "loam mounts");
    for dir in [KUBELET_PODS, KUBELET_PLUGINS] {
        let m = mount_at(r, LOAM, dir);
        assert_eq!(m["propagation"], "Bidirectional", "{dir} propagation");
        assert_eq!(host_path(r, LOAM, dir), dir, "{dir} is the host's");
    }
    assert_eq!(host_path(r, LOAM, "/dev"), "/dev");
    for (name, c) in r["containers"].as_object().unwrap() {
        for m in c["mounts"].as_array().unwrap() {
            if m["propagation"] == "Bidirectional" {
                assert_eq!(c["privileged"], true, "{name}: Bidirectional needs privileged");
            }
        }
    }
    let spec = &daemonset(r)["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    let tolerations = spec["template"]["spec"]["tolerations"].as_array().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()),
        "tolerates every taint"
    );
}

#[test]
fn argument_expansion() {
    let env = serde_json::json!({"A": {"value": "x"}, "N": {"fieldRef": "spec.nodeName"}});
    assert_eq!(expand("--a=$(A)-$(N)", &env), "--a=x-node-1");
    assert_eq!(expand("$$(A) $ b", &env), "$(A) $ b");
}
