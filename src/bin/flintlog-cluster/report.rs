//! The report: latency percentiles and the plot with the nemesis windows shaded.

use std::path::Path;

use flintlog::lincheck::{self, Event};
use serde_json::{Value, json};

use crate::Args;
use crate::checks::{Appends, event_json};
use crate::clients::{ClientLog, Sample};
use crate::nemesis::{Fault, Replacement};
use crate::processes::Shared;

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The kinds of nemesis window, as the plot shades them: (the `what` prefix, label, colour).
pub(crate) const FAULT_KINDS: [(&str, &str, (u8, u8, u8)); 3] = [
    ("partition", "partition", (66, 133, 244)),
    ("kill", "kill -9 until restart", (230, 145, 56)),
    ("pause", "SIGSTOP pause", (142, 68, 173)),
];

pub(crate) fn plot(
    path: &Path,
    samples: &[Sample],
    faults: &[Fault],
    elapsed: f64,
    timeout_ms: u64,
) -> Result<(), String> {
    use plotters::prelude::*;
    // Log scale: the requests below, each kind of nemesis window in a band above them.
    let data_max = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max) * 1.5;
    let y_max = data_max * 1.6f64.powi(4);
    let y_min = 0.1;
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency of each request against the time it was sent (log scale)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..elapsed.max(1.0), (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    // Each kind of nemesis window in a band of its own at the top, and shaded lightly
    // over the whole height: overlapping kinds stay readable in their bands.
    for (k, (prefix, label, (r, g, b))) in FAULT_KINDS.iter().enumerate() {
        let colour = RGBColor(*r, *g, *b);
        let mine: Vec<&Fault> = faults
            .iter()
            .filter(|f| f.what.starts_with(prefix))
            .collect();
        let band_top = y_max / 1.6f64.powi(k as i32);
        let band_bottom = band_top / 1.5;
        chart
            .draw_series(mine.iter().map(|f| {
                Rectangle::new(
                    [(f.from_s, y_min), (f.to_s.max(f.from_s + 0.05), y_max)],
                    colour.mix(0.08).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(mine.iter().map(|f| {
                Rectangle::new(
                    [
                        (f.from_s, band_bottom),
                        (f.to_s.max(f.from_s + 0.05), band_top),
                    ],
                    colour.mix(0.7).filled(),
                )
            }))
            .map_err(|e| err(&e))?
            .label(format!(
                "{label}: {} windows, band {} from the top, shaded below",
                mine.len(),
                k + 1
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.7).filled())
            });
    }
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok && !s.unknown).collect();
    let unknown: Vec<&Sample> = samples.iter().filter(|s| s.unknown).collect();
    chart
        .draw_series(ok.iter().map(|s| {
            Circle::new(
                (s.at_s, s.latency_ms.max(y_min)),
                2,
                GREEN.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err(&e))?
        .label(format!("acknowledged ({})", ok.len()))
        .legend(|(x, y)| Circle::new((x + 7, y), 3, GREEN.filled()));
    chart
        .draw_series(
            failed
                .iter()
                .map(|s| Cross::new((s.at_s, s.latency_ms.max(y_min)), 4, BLACK.stroke_width(1))),
        )
        .map_err(|e| err(&e))?
        .label(format!(
            "failed for sure: an error that says nothing was done ({})",
            failed.len()
        ))
        .legend(|(x, y)| Cross::new((x + 7, y), 4, BLACK.stroke_width(1)));
    chart
        .draw_series(
            unknown
                .iter()
                .map(|s| TriangleMarker::new((s.at_s, s.latency_ms.max(y_min)), 4, RED.filled())),
        )
        .map_err(|e| err(&e))?
        .label(format!(
            "unknown outcome: error 13 (at the node's 3 s request timeout) or no reply \
             within the client's {timeout_ms} ms ({})",
            unknown.len()
        ))
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Everything a run found, for the summary and `report.json`.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a Args,
    pub(crate) shared: &'a Shared,
    pub(crate) members: &'a [usize],
    pub(crate) logs: &'a [ClientLog],
    pub(crate) history: &'a [Event],
    pub(crate) faults: &'a [Fault],
    pub(crate) replacement: Option<&'a Replacement>,
    pub(crate) statuses: &'a [Value],
    pub(crate) converged: bool,
    pub(crate) appends: &'a Appends,
}

/// Prints the summary and writes `report.json`, `history.json` and the plot to
/// `--out`; whether the run passed.
pub(crate) fn report(run: &Run<'_>) -> bool {
    let Run {
        args,
        shared,
        members,
        logs,
        history,
        faults,
        replacement,
        statuses,
        converged,
        appends,
    } = *run;
    let Appends {
        acknowledged,
        ref by_offset,
        duplicate_offsets,
        lost,
        ref compacted,
        ref read_back,
        ref read_somewhere,
    } = *appends;
    let verdict = lincheck::check(history);
    let linearizable = matches!(verdict, lincheck::Verdict::Linearizable { .. });
    let (ok, failed, unknown): (u64, u64, u64) = logs.iter().fold((0, 0, 0), |a, l| {
        (a.0 + l.ok, a.1 + l.failed, a.2 + l.unknown)
    });
    let total = (ok + failed + unknown).max(1);
    let samples: Vec<Sample> = logs.iter().flat_map(|l| l.samples.clone()).collect();
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let digests_equal = converged;
    let replaced = replacement.is_none_or(|r| r.done && r.refused > 0);
    let pass = linearizable && lost == 0 && duplicate_offsets == 0 && digests_equal && replaced;
    println!(
        "requests        {total} ({ok} ok, {failed} failed for sure, {unknown} unknown): availability {:.1}%",
        ok as f64 * 100.0 / total as f64
    );
    println!(
        "latency (ok)    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!("nemesis         {} events", faults.len());
    println!(
        "linearizable    {} ({} operations checked): {verdict:?}",
        if linearizable { "yes" } else { "NO" },
        history.len()
    );
    let names: Vec<String> = members.iter().map(|&i| shared.ids[i].clone()).collect();
    let per_node = |values: &[u64]| -> String {
        names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "appends         {} acknowledged at distinct offsets ({duplicate_offsets} offsets acknowledged twice); \
         each node asked for every one:",
        by_offset.len()
    );
    println!(
        "                read back with their payload: {}",
        per_node(read_back)
    );
    println!(
        "                compacted away behind a snapshot, so not read (the oldest ones): {}",
        per_node(compacted)
    );
    println!(
        "                verified by reading on at least one node: {} of {}; the other {} were \
         compacted away on every node before the check, counted and not read; missing or \
         wrong where a log still holds them: {lost}",
        read_somewhere.len(),
        by_offset.len(),
        by_offset.len() - read_somewhere.len()
    );
    let count = |field: &str| -> Vec<u64> {
        statuses
            .iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .collect()
    };
    let (snapshots, compactions) = (count("snapshots_written"), count("compactions"));
    let transfers: Vec<Value> = statuses
        .iter()
        .map(|s| s["snapshot_transfers"].clone())
        .collect();
    let transfer_total = |field: &str| -> u64 {
        transfers
            .iter()
            .map(|t| t[field].as_u64().unwrap_or(0))
            .sum()
    };
    println!(
        "log management  snapshots written: {}; compactions: {}; first index: {}",
        per_node(&snapshots),
        per_node(&compactions),
        per_node(&count("first_index"))
    );
    println!(
        "transfers       snapshots received: {} started, {} resumed from a part file, {} chunk windows asked again, {} restarted from zero, {} completed; {} bytes of chains held already, not sent again",
        transfer_total("started"),
        transfer_total("resumed"),
        transfer_total("asked_again"),
        transfer_total("restarted"),
        transfer_total("completed"),
        transfer_total("bytes_held")
    );
    println!(
        "replicas        {} at applied index {} (digest {})",
        if digests_equal { "agree" } else { "DISAGREE" },
        statuses
            .first()
            .map_or(Value::Null, |s| s["applied_index"].clone()),
        statuses
            .first()
            .map_or(Value::Null, |s| s["state_digest"].clone())
    );
    if let Some(r) = replacement {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|(what, at)| format!("{at:.1} s {what}"))
            .collect();
        println!(
            "replacement     {}: {} messages from {} refused after its disk was lost; {}; {} caught up with {} snapshot(s) from the leader{}; members now {:?}",
            if r.done { "done" } else { "NOT DONE" },
            r.refused,
            r.lost,
            steps.join(", "),
            r.new,
            r.transfers,
            if r.from_store {
                ", after loading one from the store"
            } else {
                ""
            },
            members
                .iter()
                .map(|&i| shared.ids[i].clone())
                .collect::<Vec<_>>()
        );
    }
    println!("verdict         {}", if pass { "PASS" } else { "FAIL" });
    let report = json!({
        "nodes": args.nodes,
        "duration_s": args.duration,
        "nemesis": faults.iter().map(|f| json!({"what": f.what, "from_s": f.from_s, "to_s": f.to_s})).collect::<Vec<_>>(),
        "requests": {"total": total, "ok": ok, "failed": failed, "unknown": unknown},
        "latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "linearizable": linearizable,
        "checker": format!("{verdict:?}"),
        "appends": {"acknowledged": acknowledged, "lost": lost, "duplicate_offsets": duplicate_offsets,
            "nodes": names, "read_back_per_node": read_back, "compacted_per_node": compacted,
            "read_back_somewhere": read_somewhere.len()},
        "snapshots_written": snapshots,
        "compactions": compactions,
        "snapshot_transfers": {
            "started": transfer_total("started"),
            "resumed": transfer_total("resumed"),
            "asked_again": transfer_total("asked_again"),
            "restarted": transfer_total("restarted"),
            "completed": transfer_total("completed"),
            "bytes_held": transfer_total("bytes_held"),
        },
        "replicas_agree": digests_equal,
        "members": members.iter().map(|&i| shared.ids[i].clone()).collect::<Vec<_>>(),
        "replacement": replacement.map(|r| json!({
            "lost": r.lost,
            "new": r.new,
            "refused_messages": r.refused,
            "steps": r.steps.iter().map(|(w, at)| json!({"what": w, "at_s": at})).collect::<Vec<_>>(),
            "snapshots_installed": r.transfers,
            "bootstrapped_from_store": r.from_store,
            "done": r.done,
        })),
        "statuses": statuses,
        "pass": pass,
    });
    std::fs::write(
        args.out.join("history.json"),
        serde_json::to_string_pretty(&history.iter().map(event_json).collect::<Vec<_>>())
            .expect("json"),
    )
    .expect("write history.json");
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write report.json");
    if let Err(e) = plot(
        &args.out.join("latency.svg"),
        &samples,
        faults,
        shared.started.elapsed().as_secs_f64(),
        args.timeout_ms,
    ) {
        eprintln!("{e}");
    }
    println!(
        "files           {}: report.json (these figures and every node's status), history.json \
         (every operation, for --check), latency.svg (the plot), {} (each node's log), data/ (the nodes' directories)",
        args.out.display(),
        shared
            .ids
            .iter()
            .map(|id| format!("{id}.log"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    pass
}
