//! The protocol path: durable appends through the node binary's standard input and
//! output, driven by `flintlog-load`, against `flintlog-echo` (which parses each line
//! into a generic JSON value and answers at once, storing nothing) driven the same way, side by
//! side in one run: what the node keeps of what the JSON-lines path allows.

use std::process::{Command, Stdio};

use super::*;

/// A program built beside this one.
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    exe.parent().expect("a directory").join(name)
}

/// Appends per second `flintlog-load` measured against `node`: 64 clients, `depth` in
/// flight each, an empty state, no snapshot requests (the node's own policy runs),
/// under `fsync`.
fn load(node: &Path, depth: usize, seconds: f64, fsync: &str, out: &Path) -> f64 {
    let status = Command::new(sibling("flintlog-load"))
        .args(["--duration", &seconds.to_string()])
        .args(["--fsync", fsync])
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
             {seconds} s; then `flintlog-echo`, which parses each line into a generic JSON \
             value (the node's typed parse of appends, given to the echo, made the driver \
             slower against it: see its source) and answers at once, storing nothing, with \
             the same driver. Beside them, the node \
             with no disk wait and no snapshot (`--fsync never`, the policy's snapshots \
             off): what the protocol path, the actors' hand-offs and the state machine \
             cost alone. Runs interleaved, median of {}.",
            args.runs
        ),
    );
    let (node, echo) = (sibling("flintlog"), sibling("flintlog-echo"));
    // The node with the policy's snapshots off, through a wrapper that adds the flags.
    let bare = args.dir.join("k-node-without-snapshots.sh");
    std::fs::write(
        &bare,
        format!(
            "#!/bin/sh\nexec '{}' --snapshot-entries 0 --snapshot-bytes 0 \"$@\"\n",
            node.display()
        ),
    )
    .expect("the wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755))
            .expect("the wrapper is executable");
    }
    let mut rows = Vec::new();
    for (depth, target) in [(16usize, 0.7), (1, 0.5)] {
        let (mut n, mut e, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut bare_ratios = Vec::new();
        for run in 0..args.runs {
            let out = |what: &str| fresh(&args.dir, &format!("k-{what}-{run}"));
            let a = load(&node, depth, seconds, "always", &out("node"));
            let b = load(&echo, depth, seconds, "always", &out("echo"));
            let c = load(&bare, depth, seconds, "never", &out("bare"));
            n.push(a);
            e.push(b);
            ratios.push(a / b);
            bare_ratios.push(c / b);
        }
        let ratio = median(ratios.clone());
        let bare_ratio = median(bare_ratios);
        rows.push(vec![
            format!("64 x {depth}"),
            format!("{:.0}", median(n)),
            format!("{:.0}", median(e)),
            format!("{ratio:.2}x"),
            format!("{:.2?}", ratios),
            format!("{bare_ratio:.2}x"),
        ]);
        r.target(
            &format!("appends through the protocol, 64 clients x {depth} in flight, vs echo"),
            format!("{ratio:.2}x"),
            &format!(">= {target}x"),
            ratio >= target,
        );
        if ratio < target {
            r.note(format!(
                "Appends through the protocol with 64 clients x {depth} in flight reach \
                 {ratio:.2}x of the echo node. Without any disk wait or snapshot the node \
                 reaches {bare_ratio:.2}x: the rest of the gap is the node's own path on \
                 two cores shared with the driver (a line passes three threads, standard \
                 input, the router and the appender, where the echo node's passes one, \
                 and each append is applied to the state machine's ordered map). What \
                 separates {ratio:.2}x from {bare_ratio:.2}x is the fdatasync per batch \
                 and the policy's snapshots (after each cut, the writes copy the nodes of \
                 the map they touch while the snapshotter still holds the cut)."
            ));
        }
    }
    r.table(
        &[
            "clients x in flight",
            "node appends/s",
            "echo appends/s",
            "node / echo",
            "runs",
            "no fsync, no snapshots / echo",
        ],
        &rows,
    );
}
