//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the
//! fuzz targets use, on stable Rust: every input that once mattered stays harmless.
//! `cargo test --test it write_fuzz_seeds -- --ignored` writes valid seed inputs.

use std::path::{Path, PathBuf};

use flintlog::core::kv::KvState;
use flintlog::fs::FileSystem;
use flintlog::fs::sim::SimFs;
use flintlog::fuzz_entry;

/// A fuzz entry point.
type Target = fn(&[u8]);

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let targets: [(&str, Target); 3] = [
        ("wire_line", fuzz_entry::wire_line),
        ("record", fuzz_entry::record),
        ("snapshot", fuzz_entry::snapshot),
    ];
    let mut total = 0;
    for (target, run) in targets {
        let dir = corpus(target);
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!entries.is_empty(), "{} is empty", dir.display());
        for path in &entries {
            run(&std::fs::read(path).unwrap());
        }
        total += entries.len();
    }
    println!("fuzz corpus: {total} inputs replayed");
}

#[test]
#[ignore = "writes seed files; run by hand"]
fn write_fuzz_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(corpus(target)).unwrap();
        std::fs::write(corpus(target).join(name), bytes).unwrap();
    };
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    for (i, line) in std::fs::read_to_string(testdata.join("errors.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
    {
        write("wire_line", &format!("seed-errors-{i:02}"), line.as_bytes());
    }
    for (i, line) in std::fs::read_to_string(testdata.join("kv.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .take(12)
    {
        write("wire_line", &format!("seed-kv-{i:02}"), line.as_bytes());
    }
    for (i, payload) in [&b""[..], b"set a=1", b"del a", &[0xff; 40][..]]
        .iter()
        .enumerate()
    {
        let offset = i as u64 * 1000 + 7;
        let mut bytes = offset.to_le_bytes().to_vec();
        flintlog::wal::record::encode(&mut bytes, offset, payload);
        write("record", &format!("seed-{i}"), &bytes);
    }
    let fs = SimFs::new();
    let dir = Path::new("/seeds");
    fs.create_dir_all(dir).unwrap();
    for (i, n) in [0usize, 1, 5, 40].into_iter().enumerate() {
        let mut state = KvState::default();
        for k in 0..n {
            state.apply(format!("set key{k}=value {k} é").as_bytes());
        }
        state.apply(b"noise");
        let snap = flintlog::snapshot::write(
            &fs,
            dir,
            flintlog::Offset::new(100 + i as u64),
            &state,
            &flintlog::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        write(
            "snapshot",
            &format!("seed-{i}"),
            &fs.contents()[&dir.join(snap.file)],
        );
    }
}
