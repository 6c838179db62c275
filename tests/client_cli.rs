//! `loam client` end to end: the real binary serves a temporary socket and the real binary's client calls it
//! with `--json`. Controller and identity commands only (node commands need root and mounts; the lifecycle
//! tests cover those), plus the errors a person sees: the gRPC code name on stderr and exit status 1.

mod common;

use std::process::Output;

use common::{GIB, MIB, loam_command};
use serde_json::Value;

const NODE: &str = "client-test";

/// `loam client` against a `loam serve` of the common harness with a 1 GiB pool.
struct Cli(common::Server);

impl Cli {
    fn start() -> Cli {
        Cli(common::Server::start(NODE, &["--capacity", "1Gi"]))
    }

    /// Runs `loam client --endpoint <ours> [--json] <args>`.
    fn client(&self, json: bool, args: &[&str]) -> Output {
        loam_command()
            .args(["client", "--endpoint", &self.0.endpoint, "--timeout", "10"])
            .args(json.then_some("--json"))
            .args(args)
            .output()
            .expect("running loam client")
    }

    /// Runs a client command that must succeed and returns its text output.
    fn text(&self, args: &[&str]) -> String {
        let out = self.client(false, args);
        assert!(
            out.status.success(),
            "loam client {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs a client command that must succeed and returns its JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.client(true, args);
        assert!(
            out.status.success(),
            "loam client {args:?} failed ({}):\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.0.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "loam client {args:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs a client command that must fail with exit status 1; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.client(true, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "loam client {args:?} should fail; stderr:\n{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "a failed command printed to stdout: {:?}",
            out.stdout
        );
        stderr
    }
}

fn available(server: &Cli) -> i64 {
    server.json(&["capacity"])["available_capacity"]
        .as_i64()
        .expect("available_capacity")
}

#[test]
fn controller_and_identity_commands() {
    let s = Cli::start();

    let info = s.json(&["info"]);
    assert_eq!(info["name"], "loam.csi");
    assert_eq!(info["vendor_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["ready"], true);
    let pool = info["manifest"]["pool/default"]
        .as_str()
        .expect("the default pool's state");
    assert!(pool.starts_with("ready: kind dir, 0 volumes"), "{pool}");
    let text = s.text(&["info"]);
    assert!(text.contains("pool default: ready: kind dir"), "{text}");
    let plugin_caps = info["capabilities"].as_array().expect("capabilities");
    assert!(plugin_caps.contains(&"CONTROLLER_SERVICE".into()), "{info}");
    assert!(
        plugin_caps.contains(&"VOLUME_ACCESSIBILITY_CONSTRAINTS".into()),
        "{info}"
    );

    let caps = s.json(&["caps"]);
    for want in [
        "CREATE_DELETE_VOLUME",
        "LIST_VOLUMES",
        "GET_CAPACITY",
        "GET_VOLUME",
    ] {
        assert!(
            caps["controller"].as_array().unwrap().contains(&want.into()),
            "{want} missing: {caps}"
        );
    }
    assert!(
        caps["node"]
            .as_array()
            .unwrap()
            .contains(&"STAGE_UNSTAGE_VOLUME".into()),
        "{caps}"
    );

    let node = s.json(&["node-info"]);
    assert_eq!(node["node_id"], NODE);
    assert_eq!(node["accessible_topology"]["segments"]["loam.csi/node"], NODE);

    assert_eq!(available(&s), GIB);

    // Create, then create again with the same name: the same volume.
    let vol = s.json(&[
        "create",
        "pvc-1",
        "--size",
        "64Mi",
        "--requisite",
        "loam.csi/node=client-test",
    ]);
    let id = vol["volume_id"].as_str().expect("volume_id").to_owned();
    assert!(id.starts_with("client-test_default_"), "{id}");
    assert_eq!(vol["capacity_bytes"], 64 * MIB);
    assert_eq!(vol["accessible_topology"][0]["segments"]["loam.csi/node"], NODE);
    let again = s.json(&["create", "pvc-1", "--size", "64Mi"]);
    assert_eq!(again["volume_id"], id.as_str());
    assert_eq!(again["capacity_bytes"], 64 * MIB);
    assert_eq!(available(&s), GIB - 64 * MIB);

    // Plain output is for people: aligned keys, sizes in bytes and binary units, tables.
    let plain = s.text(&["capacity"]);
    assert!(
        plain.contains("available_capacity:  1006632960 (960.0 MiB)\n"),
        "{plain}"
    );
    let plain = s.text(&["get", &id]);
    assert!(plain.contains(&format!("volume_id:           {id}\n")), "{plain}");
    assert!(
        plain.contains("capacity_bytes:      67108864 (64.0 MiB)\n"),
        "{plain}"
    );
    let plain = s.text(&["list"]);
    assert!(plain.starts_with("VOLUME_ID "), "{plain}");
    assert!(plain.contains(&id), "{plain}");

    let list = s.json(&["list"]);
    let entries = list["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["volume"]["volume_id"], id.as_str());
    assert_eq!(entries[0]["status"]["volume_condition"]["abnormal"], false);
    assert_eq!(list["next_token"], "");

    // A second volume, listed one per page: --all follows the token, --max 1 stops after one page.
    let vol2 = s.json(&["create", "pvc-2", "--size", "1Mi", "--param", "pool=default"]);
    let all = s.json(&["list", "--max", "1", "--all"]);
    let mut ids: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["volume"]["volume_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![id.as_str(), vol2["volume_id"].as_str().unwrap()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(all["next_token"], "");
    let page = s.json(&["list", "--max", "1"]);
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert_ne!(page["next_token"], "", "{page}");

    let got = s.json(&["get", &id]);
    assert_eq!(got["volume"]["volume_id"], id.as_str());
    assert_eq!(got["volume"]["capacity_bytes"], 64 * MIB);
    assert_eq!(got["status"]["volume_condition"]["abnormal"], false);

    let valid = s.json(&["validate", &id, "--mode", "single-node-reader-only"]);
    assert_eq!(
        valid["confirmed"]["volume_capabilities"][0]["access_mode"]["mode"],
        "SINGLE_NODE_READER_ONLY"
    );
    assert!(
        valid["confirmed"]["volume_capabilities"][0]["mount"].is_object(),
        "{valid}"
    );

    // Mistakes: each prints the RPC and the gRPC code name and exits with status 1.
    let err = s.fails(&["create", "pvc-1", "--size", "128Mi"]);
    assert!(err.contains("CreateVolume failed: ALREADY_EXISTS"), "{err}");
    let err = s.fails(&["create", "x", "--param", "bogus=1"]);
    assert!(err.contains("CreateVolume failed: INVALID_ARGUMENT"), "{err}");
    assert!(err.contains("bogus"), "{err}");
    let unknown = "client-test_default_00000000000000000000000000000000";
    let err = s.fails(&["get", unknown]);
    assert!(err.contains("ControllerGetVolume failed: NOT_FOUND"), "{err}");
    let err = s.fails(&["stats", unknown, "/nonexistent/target"]);
    assert!(err.contains("NodeGetVolumeStats failed: NOT_FOUND"), "{err}");
    let err = s.fails(&["list", "--token", "not-a-token"]);
    assert!(err.contains("ListVolumes failed: ABORTED"), "{err}");

    // Delete is idempotent; afterwards the volume is gone and its space is back.
    assert_eq!(s.json(&["delete", &id])["volume_id"], id.as_str());
    s.json(&["delete", &id]);
    s.json(&["delete", vol2["volume_id"].as_str().unwrap()]);
    let err = s.fails(&["get", &id]);
    assert!(err.contains("NOT_FOUND"), "{err}");
    assert_eq!(s.json(&["list"])["entries"].as_array().unwrap().len(), 0);
    assert_eq!(available(&s), GIB);
}

#[test]
fn no_server_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("missing.sock").display());
    let out = loam_command()
        .args(["client", "--endpoint", &endpoint, "--timeout", "5", "info"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("loam: connecting to unix://"), "{err}");
}
