//! The load generator, briefly: it runs, checks offsets, writes its report and plot.

use serde_json::Value;

#[test]
fn the_load_generator_reports_and_plots_a_short_run() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flintlog-load"))
        .args([
            "--duration",
            "1.5",
            "--prefill-keys",
            "2000",
            "--keys",
            "500",
            "--clients",
            "4",
            "--depth",
            "2",
        ])
        .args([
            "--snapshot-every",
            "0.4",
            "--trailing-entries",
            "10",
            "--max-segment-bytes",
            "65536",
        ])
        .arg("--node")
        .arg(env!("CARGO_BIN_EXE_flintlog"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        stdout.contains("appends acknowledged") && stdout.contains("during snapshots"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["offsets_contiguous"], true);
    assert_eq!(report["duplicate_offsets"], 0);
    assert!(report["appends_acknowledged"].as_u64().unwrap() > 0);
    assert!(report["snapshots"].as_u64().unwrap() >= 1, "{report}");
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(
        svg.contains("latency (ms, log scale)") && svg.contains("seconds since the load started"),
        "the plot has labelled axes"
    );
    // A legend names every kind of window and every line, and the bucket width is said.
    for label in [
        "snapshot asked by the admin",
        "compaction asked by the admin",
        "snapshot cut by the node",
        "compaction by the node",
        "p50 of the bucket",
        "p99 of the bucket",
        "max of the bucket",
        "each 250 ms",
    ] {
        assert!(svg.contains(label), "the plot's legend lacks {label:?}");
    }
}
