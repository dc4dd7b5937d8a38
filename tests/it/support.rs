//! Running the real binary and checking what it writes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_flintlog")
}

/// What one run of the node printed.
pub struct Run {
    pub lines: Vec<String>,
    parsed: Vec<Value>,
    /// (dest, in_reply_to) -> index in `parsed`; the first reply wins.
    index: HashMap<(String, u64), usize>,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Run {
    /// Replies parsed as JSON.
    pub fn replies(&self) -> &[Value] {
        &self.parsed
    }

    /// The body of the reply to `msg_id` from `src`.
    pub fn reply_to(&self, src: &str, msg_id: u64) -> Value {
        match self.index.get(&(src.to_string(), msg_id)) {
            Some(&i) => self.parsed[i]["body"].clone(),
            None => panic!(
                "no reply to {src}/{msg_id} in:\n{}\nstderr:\n{}",
                self.lines.join("\n"),
                self.stderr
            ),
        }
    }
}

/// A layer of the tests cannot run here (a tool is missing, the sandbox forbids what
/// it needs). Under CI (`CI=true`) that fails the test with the reason: CI installs
/// what the layers need, and a layer that did not run is no pass. Elsewhere the test
/// says it skipped, on a line that `make crash` shows.
pub fn cannot_run(layer: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{layer}: cannot run under CI: {why}");
    }
    println!("{layer}: SKIPPED, {why}");
}

/// Says on the terminal what a long test is doing, past the test harness's capture
/// (which holds a passing test's output back): `make test` shows it as it starts.
pub fn say(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "    (long test) {what}");
}

/// Starts the node with `args`, optionally on `data_dir`.
pub fn spawn(args: &[&str], data_dir: Option<&Path>) -> Child {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("FLINTLOG_DATA_DIR")
        .env("RUST_LOG", "info");
    if let Some(dir) = data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary")
}

/// Runs the node over `input` to end of input.
pub fn run(args: &[&str], data_dir: Option<&Path>, input: &[u8]) -> Run {
    let mut child = spawn(args, data_dir);
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for the binary");
    writer.join().unwrap();
    finish(out)
}

/// Runs the node over `first`, waits until it has answered `src`'s request
/// `msg_id`, then sends `rest` and runs to end of input: the requests in `rest` reach
/// the node only after everything before that answer was handled.
pub fn run_after_answer(
    args: &[&str],
    data_dir: Option<&Path>,
    first: &[u8],
    (src, msg_id): (&str, u64),
    rest: &[u8],
) -> Run {
    use std::io::{BufRead, Read};
    let mut child = spawn(args, data_dir);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let first = first.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&first);
        stdin
    });
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).expect("read stdout") == 0 {
            break;
        }
        out.extend_from_slice(line.as_bytes());
        let reply: Value = serde_json::from_str(&line).expect("reply is JSON");
        if reply["dest"] == src && reply["body"]["in_reply_to"] == msg_id {
            break;
        }
    }
    let mut stdin = writer.join().unwrap();
    let _ = stdin.write_all(rest);
    drop(stdin);
    stdout.read_to_end(&mut out).expect("read stdout");
    let status = child.wait().expect("wait for the binary");
    finish(Output {
        status,
        stdout: out,
        stderr: errors.join().unwrap(),
    })
}

pub fn finish(out: Output) -> Run {
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("reply is JSON"))
        .collect();
    let mut index = HashMap::new();
    for (i, r) in parsed.iter().enumerate() {
        if let (Some(dest), Some(id)) = (r["dest"].as_str(), r["body"]["in_reply_to"].as_u64()) {
            index.entry((dest.to_string(), id)).or_insert(i);
        }
    }
    Run {
        index,
        parsed,
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// A request line from `src`.
pub fn msg(src: &str, body: Value) -> String {
    serde_json::json!({"src": src, "dest": "n1", "body": body}).to_string()
}

/// The init line for node n1.
pub fn init(msg_id: u64) -> String {
    msg(
        "c0",
        serde_json::json!({"type": "init", "msg_id": msg_id, "node_id": "n1", "node_ids": ["n1"]}),
    )
}

/// Joins lines into an input stream.
pub fn lines(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

/// The node's directory under a data dir.
pub fn node_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("n1")
}

/// XORs the byte at `index` of the file at `path` with `mask` (negative: from the end).
pub fn flip_byte(path: &Path, index: isize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = if index < 0 {
        bytes.len() - index.unsigned_abs()
    } else {
        index as usize
    };
    bytes[i] ^= mask;
    std::fs::write(path, &bytes).unwrap();
}

/// Files in the node's directory, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks every line with Python: `json.dumps(json.loads(line)) == line`.
pub fn assert_python_round_trip(lines: &[String]) {
    let script = "import json,sys\nbad=[l for l in sys.stdin.read().split('\\n') if l and json.dumps(json.loads(l))!=l]\nprint(len(bad))\nprint('\\n'.join(bad[:5]))\nsys.exit(1 if bad else 0)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check the output format");
    let mut stdin = child.stdin.take().unwrap();
    let text = lines.join("\n");
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "lines differ from Python's json.dumps:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
