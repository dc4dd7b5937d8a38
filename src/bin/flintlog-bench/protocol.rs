//! The protocol path: durable appends through the node binary's standard input and
//! output, driven by `flintlog-load`, against `flintlog-echo` (which parses each line
//! as the node does and answers at once, storing nothing) driven the same way, side by
//! side in one run: what the node keeps of what the JSON-lines path allows.

use std::process::{Command, Stdio};

use super::*;

/// A program built beside this one.
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    exe.parent().expect("a directory").join(name)
}

/// Appends per second `flintlog-load` measured against `node`: 64 clients, `depth` in
/// flight each, an empty state, no snapshot requests (the node's own policy runs).
fn load(node: &Path, depth: usize, seconds: f64, out: &Path) -> f64 {
    let status = Command::new(sibling("flintlog-load"))
        .args(["--duration", &seconds.to_string()])
        .args(["--clients", "64", "--depth", &depth.to_string()])
        .args(["--prefill-keys", "0", "--snapshot-every", "0"])
        .arg("--out")
        .arg(out)
        .arg("--node")
        .arg(node)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("flintlog-load starts (build it: make build)");
    assert!(status.success(), "flintlog-load against {}", node.display());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("the load report"))
            .expect("JSON");
    report["appends_per_s"].as_f64().expect("appends_per_s")
}

pub(crate) fn bench_protocol(args: &Args, r: &mut Report) {
    let seconds = 5.0;
    r.section(
        "k. The protocol path against an echo node",
        &format!(
            "`flintlog-load` drives the node binary (`--fsync always`, the default policy, \
             an empty state) with 64 clients, each keeping 16 or 1 appends in flight, for \
             {seconds} s; then `flintlog-echo`, which parses each line as the node does and \
             answers at once, storing nothing, with the same driver. Runs interleaved, \
             median of {}.",
            args.runs
        ),
    );
    let (node, echo) = (sibling("flintlog"), sibling("flintlog-echo"));
    let mut rows = Vec::new();
    for (depth, target) in [(16usize, 0.7), (1, 0.5)] {
        let (mut n, mut e, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            let a = load(
                &node,
                depth,
                seconds,
                &fresh(&args.dir, &format!("k-node-{run}")),
            );
            let b = load(
                &echo,
                depth,
                seconds,
                &fresh(&args.dir, &format!("k-echo-{run}")),
            );
            n.push(a);
            e.push(b);
            ratios.push(a / b);
        }
        let ratio = median(ratios.clone());
        rows.push(vec![
            format!("64 x {depth}"),
            format!("{:.0}", median(n)),
            format!("{:.0}", median(e)),
            format!("{ratio:.2}x"),
            format!("{:.2?}", ratios),
        ]);
        r.target(
            &format!("appends through the protocol, 64 clients x {depth} in flight, vs echo"),
            format!("{ratio:.2}x"),
            &format!(">= {target}x"),
            ratio >= target,
        );
    }
    r.table(
        &[
            "clients x in flight",
            "node appends/s",
            "echo appends/s",
            "node / echo",
            "runs",
        ],
        &rows,
    );
}
