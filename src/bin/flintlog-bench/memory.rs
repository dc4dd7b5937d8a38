//! Peak memory during a snapshot against the steady state.

use super::*;

pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

pub(crate) fn bench_rss(args: &Args, r: &mut Report) {
    r.section(
        &format!("f. Memory during a snapshot of {} keys", args.keys),
        "Resident memory of the process while a snapshot is written and eight writers keep \
         appending (so the persistent map copies the nodes they touch), against the steady \
         state just before it.",
    );
    let d = fresh(&args.dir, "f");
    let node = Node::open(config(&d)).expect("open");
    fill(&node, args.keys, args.keys);
    let steady = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(steady));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    latency_around(&node, Duration::from_millis(100), || {
        node.snapshotter().snapshot().expect("snapshot");
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    node.shutdown().expect("shutdown");
    let peak = peak.load(Ordering::Relaxed);
    let ratio = peak as f64 / steady as f64;
    r.target(
        "peak RSS during a snapshot vs steady",
        format!("{ratio:.2}x"),
        "<= 1.5x",
        ratio <= 1.5,
    );
    r.table(
        &["steady RSS (MiB)", "peak during snapshot (MiB)", "ratio"],
        &[vec![
            format!("{:.1}", steady as f64 / 1024.0),
            format!("{:.1}", peak as f64 / 1024.0),
            format!("{:.2}x", peak as f64 / steady as f64),
        ]],
    );
}
