//! Metrics and logs of a real loam: `--metrics-address` serves Prometheus text whose call counters, latency
//! histograms and pool gauges follow the calls made; each call logs one line with its outcome; the JSON form
//! has each key once per object.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
};

use common::*;
use loam::csi;
use serde::de::{Deserializer, MapAccess, Visitor};

/// A free port on the loopback interface (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.1: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    // hyper sends small bodies with a length, large ones chunked: undo the chunking if there is any.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The value of the sample `series` (name and labels exactly as printed) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Fails on a JSON object (at any depth) holding a key twice, which serde_json would silently collapse.
fn assert_keys_once(line: &str) {
    struct Check;
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("key {key:?} appears twice")));
                }
                map.next_value::<Nested>()?;
            }
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_string<E>(self, _: String) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<Nested>()?.is_some() {}
            Ok(())
        }
    }
    struct Nested;
    impl<'de> serde::Deserialize<'de> for Nested {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Check).map(|()| Nested)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    if let Err(e) = de.deserialize_any(Check) {
        panic!("log line is not JSON with each key once ({e}): {line}");
    }
}

#[tokio::test]
async fn metrics_follow_the_calls_and_the_pools() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let srv = Server::start(NODE, &["--metrics-address", &addr, "--capacity", "1Gi"]);
    let mut ctl = srv.controller().await;
    let v = create(&mut ctl, "metered", 1 << 20).await;
    expect_code(
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: "node-1_default_00000000000000000000000000000000".into(),
        })
        .await,
        tonic::Code::NotFound,
    );
    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let ok = r#"loam_rpc_calls_total{rpc="CreateVolume",code="OK"}"#;
    assert_eq!(sample(&text, ok), Some(1.0), "{text}");
    let missing = r#"loam_rpc_calls_total{rpc="ControllerGetVolume",code="NOT_FOUND"}"#;
    assert_eq!(sample(&text, missing), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"loam_rpc_duration_seconds_count{rpc="CreateVolume"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "loam_rpc_in_flight"), Some(0.0));
    let pool = r#"{pool="default",kind="dir"}"#;
    assert_eq!(
        sample(&text, &format!("loam_pool_capacity_bytes{pool}")),
        Some(1073741824.0)
    );
    assert_eq!(
        sample(&text, &format!("loam_pool_reserved_bytes{pool}")),
        Some(1048576.0)
    );
    let avail = sample(&text, &format!("loam_pool_available_bytes{pool}")).unwrap();
    assert!(avail <= 1073741824.0 - 1048576.0, "{avail}");
    assert_eq!(
        sample(&text, r#"loam_pool_volumes{pool="default",state="ready"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"loam_pool_degraded{pool="default",reason=""}"#),
        Some(0.0)
    );
    assert!(text.contains("# HELP loam_reconcile_repairs"), "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    delete(&mut ctl, &v.volume_id).await;
    let (_, text) = get(port, "/metrics");
    assert_eq!(
        sample(&text, r#"loam_pool_reserved_bytes{pool="default",kind="dir"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"loam_rpc_calls_total{rpc="DeleteVolume",code="OK"}"#),
        Some(1.0)
    );
    assert_eq!(get(port, "/").0, 404);
}

#[tokio::test]
async fn each_call_logs_one_line_with_its_outcome_and_json_keys_appear_once() {
    let srv = Server::start(NODE, &["--log-format", "json"]);
    let mut ctl = srv.controller().await;
    let v = create(&mut ctl, "logged", 1 << 20).await;
    let gone = "node-1_default_11111111111111111111111111111111";
    expect_code(
        ctl.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: gone.into(),
        })
        .await,
        tonic::Code::NotFound,
    );
    delete(&mut ctl, &v.volume_id).await;
    let log = srv.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            assert_keys_once(l);
            serde_json::from_str(l).unwrap()
        })
        .collect();
    let calls = |rpc: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["rpc"] == rpc && l["target"] == "loam::server::observe")
            .collect()
    };
    let created = calls("CreateVolume");
    assert_eq!(created.len(), 1, "one line per call: {created:?}");
    assert_eq!(created[0]["code"], "OK");
    assert_eq!(created[0]["level"], "INFO");
    assert_eq!(created[0]["span"]["volume.id"], v.volume_id.as_str());
    assert_eq!(created[0]["span"]["volume.name"], "logged");
    assert!(created[0]["ms"].as_f64().unwrap() > 0.0);
    let refused = calls("ControllerGetVolume");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["code"], "NOT_FOUND");
    assert_eq!(refused[0]["span"]["volume.id"], gone);
    assert!(
        refused[0]["error"].as_str().unwrap().contains("does not exist"),
        "{}",
        refused[0]
    );
    assert_eq!(refused[0]["message"], "refused");
    assert_eq!(calls("DeleteVolume").len(), 1);
}

#[test]
fn text_logs_carry_the_rpc_the_volume_and_the_code() {
    let srv = Server::start(NODE, &[]);
    let out = loam_command()
        .args([
            "client",
            "--endpoint",
            &srv.endpoint,
            "get",
            "node-1_default_22222222222222222222222222222222",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = srv.log();
    let line = log
        .lines()
        .find(|l| l.contains("rpc=ControllerGetVolume") && l.contains("refused"))
        .unwrap_or_else(|| panic!("no line for the call in:\n{log}"));
    assert!(
        line.contains("volume.id=node-1_default_22222222222222222222222222222222"),
        "{line}"
    );
    assert!(
        line.contains("code=\"NOT_FOUND\"") || line.contains("code=NOT_FOUND"),
        "{line}"
    );
    assert!(line.contains("error="), "{line}");
}
