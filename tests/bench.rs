//! `loam bench` against a real loam over its real socket: a short run completes every cycle with no error and
//! accounts for every RPC; the floor does its work and undoes it; failures are counted by RPC and code and make
//! the exit status non-zero; nothing is left behind. A smoke run, never a speed check.

mod common;

use std::process::Output;

use common::*;
use loam::bench::RPCS;
use loam_sys::{mountinfo::MountTable, testutil::require_root};
use serde_json::Value;

fn bench(srv: &Server, args: &[&str]) -> (Output, Value) {
    let work = srv.root.join("bench-work");
    let out = loam_command()
        .args([
            "bench",
            "--json",
            "--endpoint",
            &srv.endpoint,
            "--work-dir",
            &s(&work),
        ])
        .args(args)
        .output()
        .expect("running loam bench");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loam bench printed no JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, doc)
}

fn us(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a number of microseconds: {v}"))
}

#[test]
fn bench_runs_full_cycles_with_no_errors_and_times_every_rpc() {
    if !require_root("bench_runs_full_cycles_with_no_errors_and_times_every_rpc") {
        return;
    }
    private_mount_namespace();
    let srv = Server::start(NODE, &[]);
    let pid = srv.pid.to_string();
    let floor = srv.root.join("floor");
    std::fs::create_dir(&floor).unwrap();
    let (out, doc) = bench(
        &srv,
        &[
            "--cycles",
            "24",
            "--concurrency",
            "4",
            "--pid",
            &pid,
            "--floor",
            &s(&floor),
            // 5, 5, 5, 5 and 4 cycles, the driver's and the floor's in turn.
            "--rounds",
            "5",
        ],
    );
    assert!(out.status.success(), "{doc:#}");
    assert_eq!(doc["rounds"], 5, "{doc:#}");
    assert_eq!(doc["cycles_done"], 24, "{doc:#}");
    assert_eq!(doc["cycles_failed"], 0);
    assert_eq!(doc["errors"], serde_json::json!({}));
    assert!(doc["cycles_per_second"].as_f64().unwrap() > 0.0);
    for rpc in RPCS {
        let r = &doc["rpcs"][rpc];
        assert_eq!(r["count"], 24, "{rpc}: {r}");
        let (p50, p99, max) = (us(&r["p50_us"]), us(&r["p99_us"]), us(&r["max_us"]));
        assert!(p50 <= p99 && p99 <= max && max > 0, "{rpc}: {r}");
    }
    let driver = &doc["driver"];
    assert!(us(&driver["cpu_per_cycle_us"]) > 0, "{driver}");
    assert!(us(&driver["peak_rss_bytes"]) >= us(&driver["rss_bytes"]));
    let f = &doc["floor"];
    assert_eq!(f["kind"], "dir");
    assert_eq!(f["cycles_done"], 24, "{f}");
    assert_eq!(f["errors"], 0, "{f}");
    assert!(f["speed_ratio"].as_f64().unwrap() > 0.0 && f["cpu_ratio"].as_f64().unwrap() > 0.0);
    // As many empty calls as the cycles made calls, and the ceiling they set with the floor: below the floor's
    // own speed, since six calls' time is added to the floor's cycle.
    let t = &doc["transport"];
    assert_eq!(t["calls"], 24 * RPCS.len() as u64, "{t}");
    assert_eq!(t["latency"]["count"], 24 * RPCS.len() as u64, "{t}");
    assert!(t["calls_per_second"].as_f64().unwrap() > 0.0, "{t}");
    let ceiling = t["ceiling_cycles_per_second"].as_f64().unwrap();
    let floor_speed = f["cycles_per_second"].as_f64().unwrap();
    assert!(
        ceiling > 0.0 && ceiling < floor_speed,
        "{t} against the floor's {floor_speed}"
    );
    let ratio = t["ceiling_ratio"].as_f64().unwrap();
    assert!((ratio - ceiling / floor_speed).abs() < 1e-9, "{t}");
    // Given the pid, the driver's CPU for those calls too (in clock ticks, so possibly 0 for so few), and the
    // least CPU per cycle any driver doing the floor's work in six such calls could reach: at least the floor's.
    let per_call = t["driver_cpu_per_call_us"].as_f64().unwrap();
    let cpu_ceiling = t["cpu_ceiling_ratio"].as_f64().unwrap();
    let floor_cpu = f["cpu_per_cycle_us"].as_f64().unwrap();
    assert!(per_call >= 0.0 && cpu_ceiling >= 1.0, "{t}");
    if floor_cpu > 0.0 {
        assert!(
            (cpu_ceiling - (floor_cpu + RPCS.len() as f64 * per_call) / floor_cpu).abs() < 0.01,
            "{t} against the floor's {floor_cpu} µs a cycle"
        );
    }
    // Every volume was deleted, every mount undone, and the floor's and the work dir's leftovers removed.
    assert!(entries(&srv.records_dir()).is_empty(), "volumes left behind");
    srv.assert_no_mounts();
    assert!(entries(&floor).is_empty(), "{:?}", entries(&floor));
    assert!(entries(&srv.root.join("bench-work")).is_empty());
    let table = MountTable::read_self().unwrap();
    assert!(mounts_under(&table, &floor).is_empty());
}

#[test]
fn bench_image_floor_and_block_cycles() {
    if !require_root("bench_image_floor_and_block_cycles") {
        return;
    }
    private_mount_namespace();
    let loops = LoopGuard::new();
    let srv = Server::start_with_config(
        NODE,
        |root| {
            format!(
                "default_pool = \"images\"\n{}",
                pool_toml("images", "image", &root.join("images"), "")
            )
        },
        &[],
    );
    loops.watch(&srv.root);
    let floor = srv.root.join("floor");
    std::fs::create_dir(&floor).unwrap();
    for mode in [&[][..], &["--block"][..]] {
        let mut args = vec![
            "--cycles",
            "4",
            "--concurrency",
            "2",
            "--size",
            "16Mi",
            "--floor",
            floor.to_str().unwrap(),
            "--floor-kind",
            "image",
        ];
        args.extend_from_slice(mode);
        let (out, doc) = bench(&srv, &args);
        assert!(out.status.success(), "{mode:?}: {doc:#}");
        assert_eq!(doc["cycles_done"], 4, "{doc:#}");
        assert_eq!(doc["mode"], if mode.is_empty() { "mount" } else { "block" });
        assert_eq!(doc["floor"]["cycles_done"], 4, "{doc:#}");
        assert_eq!(doc["floor"]["kind"], "image");
    }
    assert!(loops_under(&floor).is_empty(), "the floor left loop devices");
    assert!(entries(&floor).is_empty());
    srv.assert_no_mounts();
}

#[test]
fn bench_counts_failures_by_rpc_and_code_and_fails() {
    let srv = Server::start(NODE, &[]);
    let (out, doc) = bench(
        &srv,
        &["--cycles", "5", "--concurrency", "2", "--param", "pool=nope"],
    );
    assert!(!out.status.success(), "{doc:#}");
    assert_eq!(doc["cycles_done"], 0);
    assert_eq!(doc["cycles_failed"], 5);
    assert_eq!(doc["errors"]["CreateVolume"]["INVALID_ARGUMENT"], 5, "{doc:#}");
    assert_eq!(doc["rpcs"]["CreateVolume"]["count"], 0);
    let example = &doc["error_examples"][0];
    assert!(example["message"].as_str().unwrap().contains("nope"), "{example}");
    // Empty calls are timed only beside the floor, whose ceiling they are part of.
    assert!(doc.get("transport").is_none(), "{doc:#}");
    // A driver that is not there is an error before any cycle, naming the endpoint.
    let out = loam_command()
        .args([
            "bench",
            "--endpoint",
            "unix:///nonexistent/csi.sock",
            "--cycles",
            "1",
            "--timeout",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/csi.sock"));
}
