//! What `flintlog-bench` and the peers comparison share: the report (printed tables
//! and their Markdown), medians, scratch directories and the raw `fdatasync` baseline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use flintlog::wal::record;

pub const PAYLOAD: &str = "set key0000000=vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"; // 64 bytes

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

pub fn fresh(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench directory");
    d
}

/// Output: a title, then rows of cells; printed and kept for Markdown.
#[derive(Default)]
pub struct Report {
    pub md: String,
    /// (what, measured, target, met)
    pub targets: Vec<(String, String, String, bool)>,
    /// Analyses of missed targets, from what the run measured.
    pub notes: Vec<String>,
}

impl Report {
    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }
    pub fn target(&mut self, what: &str, measured: String, target: &str, met: bool) {
        self.targets
            .push((what.to_string(), measured, target.to_string(), met));
    }
    pub fn section(&mut self, title: &str, note: &str) {
        println!("\n== {title}\n{note}");
        self.md.push_str(&format!("\n### {title}\n\n{note}\n\n"));
    }
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!(
            "{}",
            line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        );
        for r in rows {
            println!("{}", line(r));
        }
        self.md.push_str(&format!(
            "| {} |\n|{}|\n",
            header.join(" | "),
            header.iter().map(|_| "---:").collect::<Vec<_>>().join("|")
        ));
        for r in rows {
            self.md.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        self.md.push('\n');
    }
}

/// The raw baseline: records of the same size written `batch` at a time into a file,
/// each write followed by fdatasync. `prealloc`: the file is zero-filled and synced first
/// (else it grows with every write). `aligned`: each batch starts on a 4 KiB boundary,
/// as flintlog's group commits do. Returns records/s.
pub fn raw(dir: &Path, batch: usize, seconds: f64, prealloc: bool, aligned: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    let path = dir.join("raw.dat");
    let size = 128 * 1024 * 1024u64;
    let file = raw_file(&path, prealloc.then_some(size));
    let buf = raw_batch(batch);
    let started = Instant::now();
    let (mut pos, mut n) = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds && pos + (buf.len() as u64) < size {
        file.write_all_at(&buf, pos).expect("write");
        file.sync_data().expect("fdatasync");
        pos += buf.len() as u64;
        if aligned {
            pos = pos.next_multiple_of(4096);
        }
        n += batch as u64;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    rate
}

/// The least a group commit can do: `writers` threads each hand one record to a
/// syncing thread over a channel and wait for its answer asleep (parked at once, with
/// no spinning, as flintlog's blocking callers wait); the syncing thread takes every
/// record queued, writes them with one `pwrite` at a 4 KiB boundary (as flintlog
/// does) into a zero-filled file, fdatasyncs and answers each writer. No state machine,
/// no request types: the threads' hand-offs and the alignment alone. Returns (records/s,
/// records per fdatasync).
pub fn raw_group_commit(dir: &Path, writers: usize, seconds: f64) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    let path = dir.join("raw-group.dat");
    let size = 256 * 1024 * 1024u64;
    let file = raw_file(&path, Some(size));
    // Each writer's answer: a flag set, then the writer unparked.
    type Answer = (std::thread::Thread, Arc<AtomicBool>);
    let (tx, rx) = crossbeam_channel::unbounded::<Answer>();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                let answered = Arc::new(AtomicBool::new(false));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    answered.store(false, Ordering::Relaxed);
                    if tx.send((std::thread::current(), answered.clone())).is_err() {
                        break;
                    }
                    while !answered.load(Ordering::Acquire) {
                        std::thread::park();
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    drop(tx);
    let (mut pos, mut syncs) = (0u64, 0u64);
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        buf.clear();
        for i in 0..waiting.len() {
            record::encode(&mut buf, i as u64, PAYLOAD.as_bytes());
        }
        if pos + buf.len() as u64 > size {
            pos = 0;
        }
        file.write_all_at(&buf, pos).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
        pos = (pos + buf.len() as u64).next_multiple_of(4096);
        for (writer, answered) in waiting {
            answered.store(true, Ordering::Release);
            writer.unpark();
        }
        if started.elapsed().as_secs_f64() >= seconds {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let total: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    let rate = total as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (rate, total as f64 / syncs.max(1) as f64)
}

/// A new file at `path` for a raw log, zero-filled to `zeroed` bytes and synced if
/// given (else empty, to grow with each write).
pub fn raw_file(path: &Path, zeroed: Option<u64>) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("raw file");
    if let Some(size) = zeroed {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..size >> 20 {
            file.write_all_at(&zeros, i << 20).expect("zero fill");
        }
        file.sync_all().expect("sync");
    }
    file
}

/// `batch` records of the benchmarks' payload, encoded as the log encodes them.
pub fn raw_batch(batch: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..batch {
        record::encode(&mut buf, i as u64, PAYLOAD.as_bytes());
    }
    buf
}

/// The machine and the day, for the head of a generated section.
pub fn machine(dir: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| (kib as f64 / 1024.0 / 1024.0).round() as u64)
        .unwrap_or(0);
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dir = dir.to_string_lossy();
    let fs = run("df", &["--output=fstype,source", &dir]);
    let fs = fs
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" on "))
        .unwrap_or_else(|| "unknown filesystem".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let command: Vec<String> = std::env::args().collect();
    format!(
        "run on {} as `{}`. Machine: {cores} cores ({cpu}), {mem_gib} GiB of memory, {fs}; \
         shared and noisy, hence ratios measured side by side, medians of several runs after \
         a warm-up.",
        run("date", &["-u", "+%Y-%m-%d"]),
        command.join(" ")
    )
}

/// What this run can read about the disk under `dir`: its I/O scheduler and whether
/// its filesystem discards online, from /sys and /proc. For the notes on missed
/// targets, which must only say what was measured or read in the run.
pub fn disk_facts(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return "the disk could not be identified".into();
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let scheduler = [
        format!("{sys}/queue/scheduler"),
        format!("{sys}/../queue/scheduler"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| {
        s.split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
    })
    .unwrap_or_else(|| "unknown".into());
    let discard = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.split_whitespace().nth(2) == Some(&format!("{major}:{minor}")))
                .map(|l| l.contains("discard"))
        });
    let discard = match discard {
        Some(true) => "mounted with online discard",
        Some(false) => "mounted without online discard",
        None => "mount options unknown",
    };
    format!("the disk (device {major}:{minor}) uses the {scheduler} I/O scheduler and is {discard}")
}

/// Replaces the part of the Markdown file `path` between `<!-- begin NAME -->` and
/// `<!-- end NAME -->` with `body` (appending the part if the file lacks it), so that
/// each benchmark program rewrites only what it measured.
pub fn splice(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let (begin, end) = (
        format!("<!-- begin {name} -->\n"),
        format!("<!-- end {name} -->\n"),
    );
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let part = format!("{begin}{body}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{part}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n{part}", old.trim_end_matches('\n')),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(tmp, path)
}
