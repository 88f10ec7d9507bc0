//! `flotilla bench` itself: a short run against a cluster it spawns
//! returns sane figures, valid JSON in the documented shape, and a plot.
//! (The figures themselves live in the README, never in tests.)

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_flotilla");

/// Runs `workload` for 2 s against 3 nodes it spawns under `dir` (4
/// clients, 200 keys, 4 groups, `extra` options); returns the output and
/// the JSON document, once the run succeeded.
fn short_run(
    dir: &std::path::Path,
    workload: &str,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let json = dir.join("result.json");
    let out = Command::new(EXE)
        .args(["bench", workload, "--spawn", "3", "--duration", "2s"])
        .args(["--clients", "4", "--keys", "200", "--groups", "4"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .arg("--dir")
        .arg(dir.join("cluster"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (out, doc)
}

#[test]
fn a_short_run_against_a_spawned_cluster_reports_sane_figures() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("result.svg");
    let plot = ["--plot", svg.to_str().unwrap()];
    let (out, doc) = short_run(dir.path(), "mixed", &plot);
    let f = &doc["flotilla"];
    let ops = f["ops_per_sec"].as_f64().unwrap();
    assert!(ops > 0.0, "{doc}");
    let lat = |q: &str| f["latency_ms"][q].as_f64().unwrap();
    assert!(lat("p50") > 0.0, "{doc}");
    assert!(
        lat("p50") <= lat("p90") && lat("p90") <= lat("p99"),
        "{doc}"
    );
    assert!(
        lat("p99") <= lat("p999") && lat("p999") <= lat("max"),
        "{doc}"
    );
    assert!(f["errors"].is_object(), "{doc}");
    assert!(f["ops"].as_u64().unwrap() > 0);
    let secs = f["per_second"].as_array().unwrap();
    assert!(!secs.is_empty(), "{doc}");
    assert_eq!(doc["workload"]["kind"], "mixed");
    assert_eq!(doc["workload"]["clients"], 4);
    assert_eq!(doc["workload"]["value_size"], 256);
    assert!(doc.get("etcd").is_none());
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg"), "not an SVG");
    assert!(drawn.contains("flotilla"));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("ops/s"), "{shown}");
}

#[test]
fn a_ycsb_workload_runs_with_zipfian_keys_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_, doc) = short_run(dir.path(), "ycsb-f", &[]);
    assert_eq!(doc["workload"]["kind"], "ycsb-f", "{doc}");
    assert_eq!(doc["workload"]["distribution"], "zipfian", "{doc}");
    assert_eq!(doc["workload"]["read_ratio"], 0.5, "{doc}");
    assert!(doc["flotilla"]["ops"].as_u64().unwrap() > 0, "{doc}");
}

#[test]
fn bad_bench_options_are_refused_clearly() {
    let out = Command::new(EXE)
        .args([
            "bench",
            "write",
            "--read-ratio",
            "2",
            "--endpoints",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--read-ratio"));
    let out = Command::new(EXE)
        .args(["bench", "sideways"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A comparison this build cannot run is refused before any cluster
/// starts, not after Flotilla's whole run.
#[cfg(not(feature = "etcd"))]
#[test]
fn a_comparison_without_the_etcd_client_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let out = Command::new(EXE)
        .args(["bench", "write", "--spawn", "3", "--duration", "30s"])
        .args(["--compare", "etcd", "--dir"])
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without the etcd client"), "{err}");
    assert!(
        !cluster.join("flotilla").exists(),
        "nodes were started before the refusal"
    );
}

#[test]
fn a_tiny_load_reports_rates_memory_disk_rebuild_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let out = Command::new(EXE)
        .args(["bench", "load", "--spawn", "3", "--bytes", "4MiB"])
        .args(["--value-size", "64KiB", "--clients", "4", "--groups", "4"])
        .args(["--phase-timeout", "60s", "--json"])
        .arg(&json)
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["workload"]["kind"], "load");
    assert_eq!(doc["workload"]["bytes"], 4 << 20);
    assert_eq!(doc["workload"]["keys"], 64);
    let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|x| x > 0.0);
    assert!(positive(&doc["load"]["mb_per_s"]), "{doc}");
    assert!(positive(&doc["disk"]["per_logical_byte"]), "{doc}");
    assert!(positive(&doc["rebuild"]["mb_per_s"]), "{doc}");
    assert!(positive(&doc["restart"]["serving_s"]), "{doc}");
    for phase in ["load", "rebuild", "restart"] {
        let peaks = doc[phase]["peak_rss_bytes"].as_array().unwrap();
        assert_eq!(peaks.len(), 3, "{doc}");
        assert!(peaks.iter().all(positive), "{phase}: {doc}");
    }
    assert_eq!(doc["disk"]["bytes"].as_array().unwrap().len(), 3);
    assert!(shown.contains("peak RSS MiB, rebuild"), "{shown}");
}
