//! `flintlog serve`: three real processes on loopback that reach each other and their
//! clients over TCP, with no router around them; `flintlog client` against them.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flintlog::client::{CallError, Client};
use flintlog::proxy::Proxy;
use serde_json::{Value, json};

use crate::support::binary;

/// Ports free a moment ago (the listeners are closed when this returns).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

struct Group {
    dir: tempfile::TempDir,
    peer_ports: Vec<u16>,
    client_ports: Vec<u16>,
    /// Each member serves its metrics here.
    metrics_ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    /// Flags every member gets after the common ones.
    extra: Vec<String>,
    /// `proxies[i][j]`: the link from member `i` to member `j`, when the group runs
    /// behind proxies (member `i` dials `j` through it).
    proxies: Vec<Vec<Option<Proxy>>>,
    /// The first `founders` members found the group; the others join it.
    founders: usize,
}

impl Group {
    fn start(n: usize, extra: &[&str]) -> Group {
        let g = Group::new(n, extra, false);
        g.start_all()
    }

    /// A group whose members reach each other only through proxies, one per link.
    fn start_proxied(n: usize, extra: &[&str]) -> Group {
        Group::new(n, extra, true).start_all()
    }

    fn new(n: usize, extra: &[&str], proxied: bool) -> Group {
        // All at once: ports freed by one call may come back from the next.
        let ports = free_ports(3 * n);
        let peer_ports = ports[..n].to_vec();
        let proxies = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (proxied && i != j)
                            .then(|| Proxy::start(&format!("127.0.0.1:{}", peer_ports[j])).unwrap())
                    })
                    .collect()
            })
            .collect();
        Group {
            dir: tempfile::tempdir().unwrap(),
            peer_ports,
            client_ports: ports[n..2 * n].to_vec(),
            metrics_ports: ports[2 * n..].to_vec(),
            procs: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proxies,
            founders: n,
        }
    }

    fn start_all(mut self) -> Group {
        for i in 0..self.procs.len() {
            self.start_member(i);
        }
        self
    }

    /// The `--peers` of member `i`: the others at their proxies, if there are.
    fn peers(&self, i: usize) -> String {
        self.peer_ports[..self.founders]
            .iter()
            .enumerate()
            .map(|(j, p)| match &self.proxies[i][j] {
                Some(proxy) => format!("n{}={}", j + 1, proxy.addr()),
                None => format!("n{}=127.0.0.1:{p}", j + 1),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts (or heals) every link to and from member `i`.
    fn isolate(&self, i: usize, cut: bool) {
        for j in 0..self.procs.len() {
            for (a, b) in [(i, j), (j, i)] {
                if let Some(p) = &self.proxies[a][b] {
                    p.block(cut);
                }
            }
        }
    }

    fn command(&self, i: usize) -> Command {
        let mut c = Command::new(binary());
        c.arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--node-id", &format!("n{}", i + 1)])
            .args([
                "--peer-listen",
                &format!("127.0.0.1:{}", self.peer_ports[i]),
            ])
            .args([
                "--client-listen",
                &format!("127.0.0.1:{}", self.client_ports[i]),
            ])
            .args(["--peers", &self.peers(i)])
            .args(if i < self.founders {
                &[][..]
            } else {
                &["--join"][..]
            })
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", self.metrics_ports[i]),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(i));
        c
    }

    /// Member `i`'s log, appended to by each of its runs (a pipe nobody reads would
    /// stop the member once full).
    fn log_file(&self, i: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{}.log", i + 1)))
            .unwrap()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{}.log", i + 1))).unwrap_or_default()
    }

    fn start_member(&mut self, i: usize) {
        let child = self.command(i).spawn().unwrap();
        self.procs[i] = Some(child);
    }

    fn metrics(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.metrics_ports[i])
    }

    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[i])
    }

    fn client(&self, members: &[usize]) -> Client {
        let mut c = Client::new(members.iter().map(|&i| self.endpoint(i)).collect(), "t");
        c.timeout = Duration::from_secs(20);
        c
    }

    /// The member that leads, as every live member's status agrees.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.client(&[]);
            let leaders: Vec<Option<String>> = (0..self.procs.len())
                .filter(|&i| self.procs[i].is_some())
                .map(|i| {
                    c.call_at(&self.endpoint(i), json!({"type": "wal_status"}))
                        .ok()
                        .and_then(|a| a.body["status"]["leader"].as_str().map(String::from))
                })
                .collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| x.as_ref() == Some(l))
            {
                return l[1..].parse::<usize>().unwrap() - 1;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.procs[i].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM; returns the exit code and what the member logged.
    fn terminate(&mut self, i: usize) -> (Option<i32>, String) {
        let child = self.procs[i].take().unwrap();
        let pid = child.id() as i32;
        // SAFETY: a plain system call on a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait_with_output().unwrap().status;
        (status.code(), self.log(i))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn get(c: &mut Client, key: &str) -> Value {
    c.call(json!({"type": "read", "key": key})).unwrap().body["value"].clone()
}

#[test]
fn a_served_group_answers_on_every_member_and_outlives_its_leader() {
    let mut g = Group::start(3, &[]);
    // Writes through every member (a follower forwards to the leader).
    for i in 0..30 {
        let mut c = g.client(&[i % 3]);
        c.call(json!({"type": "write", "key": format!("k{i}"), "value": i}))
            .unwrap();
    }
    for i in 0..3 {
        let mut c = g.client(&[i]);
        assert_eq!(get(&mut c, "k29"), json!(29), "read on n{}", i + 1);
    }
    let leader = g.leader();
    g.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut c = g.client(&others);
    for i in 30..60 {
        c.call(json!({"type": "write", "key": format!("k{i}"), "value": i}))
            .unwrap();
    }
    // The old leader comes back with its data and catches up.
    g.start_member(leader);
    let mut back = g.client(&[leader]);
    assert_eq!(get(&mut back, "k59"), json!(59));
    assert_eq!(get(&mut back, "k0"), json!(0));
    for i in 0..3 {
        let (code, log) = g.terminate(i);
        assert_eq!(code, Some(0), "n{} on SIGTERM:\n{log}", i + 1);
    }
}

/// Sends every line on one connection, then reads as many replies.
fn pipeline(endpoint: &str, lines: &[String]) -> Vec<Value> {
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let all: String = lines.iter().map(|l| format!("{l}\n")).collect();
    s.write_all(all.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    (0..lines.len())
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect()
}

#[test]
fn a_clients_name_is_its_own_within_its_connection() {
    let g = Group::start(3, &[]);
    g.leader();
    let requests = |tag: &str| -> Vec<String> {
        (0..100)
            .map(|i| {
                json!({"src": "c1", "body": {"type": "wal_append", "msg_id": i + 1,
                    "payload": format!("set {tag}{i}=v")}})
                .to_string()
            })
            .collect()
    };
    // Two connections both call themselves c1, each with 100 requests in flight.
    let (a, b) = (g.endpoint(0), g.endpoint(1));
    let (ra, rb) = (requests("a"), requests("b"));
    let other = std::thread::spawn(move || pipeline(&b, &rb));
    let mine = pipeline(&a, &ra);
    let theirs = other.join().unwrap();
    for replies in [&mine, &theirs] {
        let mut last = None;
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r["dest"], "c1");
            assert_eq!(r["body"]["type"], "wal_append_ok", "{r}");
            assert_eq!(r["body"]["in_reply_to"], json!(i + 1), "in request order");
            let offset = r["body"]["offset"].as_u64().unwrap();
            assert!(last.is_none_or(|l| offset > l));
            last = Some(offset);
        }
    }
    // Each entry is the one its own connection appended.
    let mut c = g.client(&[2]);
    let at = mine[7]["body"]["offset"].as_u64().unwrap();
    let entry = c.call(json!({"type": "wal_read", "offset": at})).unwrap();
    assert_eq!(entry.body["payload"], "set a7=v");
}

#[test]
fn a_client_that_does_not_read_is_cut_off_and_the_others_are_served() {
    let g = Group::start(3, &[]);
    g.leader();
    // A client that sends requests and never reads: its replies pile up.
    let mut hog = TcpStream::connect(g.endpoint(0)).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let line = format!(
        "{}\n",
        json!({"src": "hog", "body": {"type": "wal_segment_info", "msg_id": 1}})
    );
    let burst = line.repeat(2000);
    let started = Instant::now();
    let mut cut_off = false;
    let mut c = g.client(&[0]);
    c.timeout = Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(60) {
        if hog.write_all(burst.as_bytes()).is_err() {
            cut_off = true;
            break;
        }
        // Another client on the same member is answered meanwhile.
        c.call(json!({"type": "write", "key": "k", "value": 1}))
            .unwrap();
    }
    assert!(
        cut_off,
        "the client that reads nothing was never disconnected"
    );
    assert_eq!(get(&mut c, "k"), json!(1));
}

#[test]
fn connections_beyond_the_limit_are_refused_with_error_11() {
    let g = Group::start(3, &["--client-connections-max", "2"]);
    g.leader();
    let endpoint = g.endpoint(1);
    let held: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::new(vec![endpoint.clone()], "h");
            c.call(json!({"type": "wal_info"})).unwrap();
            c
        })
        .collect();
    let mut third = Client::new(vec![endpoint.clone()], "x");
    third.timeout = Duration::from_millis(500);
    match third.call(json!({"type": "wal_info"})) {
        Err(CallError::Refused { code: 11, text, .. }) => {
            assert!(text.contains("too many connections"), "{text}")
        }
        Err(CallError::Unknown(why)) => {
            // The refusal line raced the request: the connection was closed.
            assert!(why.contains("closed") || why.contains("answered"), "{why}")
        }
        other => panic!("a third connection was served: {other:?}"),
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = Client::new(vec![endpoint], "y");
    while again.call(json!({"type": "wal_info"})).is_err() {
        assert!(
            Instant::now() < deadline,
            "closing connections freed no room"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_member_started_with_another_groups_flags_is_refused() {
    let mut g = Group::start(3, &[]);
    let mut c = g.client(&[0, 1, 2]);
    c.call(json!({"type": "write", "key": "a", "value": 1}))
        .unwrap();
    let (code, _) = g.terminate(0);
    assert_eq!(code, Some(0));
    let mut refused = g
        .command(0)
        .args(["--group-token", "another"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!("n1 under another group's flags started:\n{}", g.log(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = g.log(0);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("belongs to group"), "{log}");
    // With its own flags it comes back and serves.
    g.start_member(0);
    let mut back = g.client(&[0]);
    assert_eq!(get(&mut back, "a"), json!(1));
}

#[test]
fn the_command_line_client_follows_the_group() {
    let g = Group::start(3, &[]);
    g.leader();
    let endpoints = (0..3).map(|i| g.endpoint(i)).collect::<Vec<_>>().join(",");
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args(["client", "--endpoints", &endpoints])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(cli(&["put", "color", "blue"]).0, Some(0));
    assert_eq!(cli(&["get", "color"]).1, "blue\n");
    let (code, _, err) = cli(&["cas", "color", "red", "green"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("error 22"), "{err}");
    assert_eq!(cli(&["cas", "color", "blue", "green"]).0, Some(0));
    assert_eq!(cli(&["append", "hello"]).0, Some(0));
    let (_, log, _) = cli(&["read-log", "0", "3"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[2].ends_with("\thello"), "{log}");
    let (code, table, _) = cli(&["status"]);
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(table.matches("leader ").count(), 1, "{table}");
    assert_eq!(table.matches("follower ").count(), 2, "{table}");
    let (_, members, _) = cli(&["members"]);
    assert!(members.contains("voters: n1, n2, n3"), "{members}");
    let (_, json_out, _) = cli(&["--json", "get", "color"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["reply"]["value"], "green");
    // Membership changes go to the leader, wherever the client starts.
    let (code, added, err) = cli(&["member", "add", "n4"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(added.contains("learners: n4"), "{added}");
    let (code, _, err) = cli(&["member", "remove", "n4"]);
    assert_eq!(code, Some(0), "{err}");
    // Nobody listening: exit 2, saying so.
    let out = Command::new(binary())
        .args([
            "client",
            "--endpoints",
            "127.0.0.1:1",
            "--timeout",
            "0.5",
            "get",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
}

/// `GET path` on `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut s, &mut all).unwrap();
    let code = all.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = all.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

/// The value of the sample `name` (with its labels, as printed) in a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_health_show_the_group() {
    let mut g = Group::start(3, &[]);
    let metrics: Vec<String> = (0..3).map(|i| g.metrics(i)).collect();
    let leader = g.leader();
    let mut c = g.client(&[leader]);
    for i in 0..20 {
        c.call(json!({"type": "wal_append", "payload": format!("set k{i}=v")}))
            .unwrap();
    }
    snapshot_and_compact(&g, &mut c, leader);
    let (code, page) = http_get(&metrics[leader], "/metrics");
    assert_eq!(code, 200, "{page}");
    // Every line is a comment (`# HELP`, `# TYPE`, `# EOF`) or `name{labels} value`.
    for line in page.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                ["HELP ", "TYPE ", "UNIT "]
                    .iter()
                    .any(|k| comment.starts_with(k))
                    || comment == "EOF",
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.starts_with("flintlog_")
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert_eq!(
            name.matches('{').count(),
            name.matches('}').count(),
            "{line}"
        );
    }
    for histogram in ["fsync", "snapshot", "compaction", "write"] {
        let count = format!("flintlog_{histogram}_seconds_count");
        assert!(sample(&page, &count).unwrap() >= 1.0, "{count}: {page}");
    }
    let up = page
        .lines()
        .filter(|l| l.starts_with("flintlog_peer_connected{") && l.ends_with(" 1"))
        .count();
    assert_eq!(up, 2, "{page}");
    assert_eq!(sample(&page, "flintlog_up"), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, "flintlog_role{role=\"leader\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(
        sample(&page, "flintlog_commit_index").unwrap() >= 20.0,
        "{page}"
    );
    assert!(
        page.contains("flintlog_replication_lag_entries{peer=\""),
        "{page}"
    );
    assert!(page.contains("flintlog_peer_dials_total"), "{page}");
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    for addr in &metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = http_get(addr, "/health");
            if code == 200 {
                assert_eq!(body, "ok\n");
                break;
            }
            assert!(Instant::now() < deadline, "{addr}: {code} {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(http_get(&metrics[0], "/nothing").0, 404);
    // A member cut off from the others knows no leader after a while: 503, saying so.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    g.kill(others[0]);
    g.kill(others[1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http_get(&metrics[leader], "/health");
        if code == 503 {
            assert!(body.contains("no leader"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still healthy alone: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA, a certificate for each member naming its node id and 127.0.0.1, one for a
/// client, and one of that CA that names n2 for n1 to use: PEM files in `dir`.
fn certificates(dir: &std::path::Path, members: usize) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let authority = |file: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        write(file, params.self_signed(&key).unwrap().pem());
        Issuer::new(params, key)
    };
    let ca = authority("ca.pem");
    let issue = |name: &str, sans: Vec<String>, by: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, by)
            .unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    };
    for i in 1..=members {
        let sans = vec![format!("n{i}"), "127.0.0.1".into(), "localhost".into()];
        issue(&format!("n{i}"), sans, &ca);
    }
    // A certificate of the right CA that names another member.
    issue("n1-as-n2", vec!["n2".into(), "127.0.0.1".into()], &ca);
    issue("client", vec!["client".into()], &ca);
}

fn tls_flags(certs: &std::path::Path, cert: &str) -> Vec<String> {
    let f = |name: &str| certs.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        f(&format!("{cert}.pem")),
        "--tls-key".into(),
        f(&format!("{cert}.key")),
        "--tls-ca".into(),
        f("ca.pem"),
        "--client-ca".into(),
        f("ca.pem"),
    ]
}

#[test]
fn over_tls_members_prove_their_ids_and_clients_their_certificates() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path(), 3);
    let mut g = Group::start(3, &[]);
    // Every member again, over TLS.
    for i in 0..3 {
        g.kill(i);
    }
    for i in 0..3 {
        let child = g
            .command(i)
            .args(tls_flags(certs.path(), &format!("n{}", i + 1)))
            .spawn()
            .unwrap();
        g.procs[i] = Some(child);
    }
    let ca = certs.path().join("ca.pem");
    let identity = (
        certs.path().join("client.pem"),
        certs.path().join("client.key"),
    );
    let tls =
        flintlog::transport::tls::client_config(&ca, Some((&identity.0, &identity.1))).unwrap();
    let mut c = g.client(&[0, 1, 2]);
    c.tls = Some(tls.clone());
    if let Err(e) = c.call(json!({"type": "write", "key": "k", "value": "secret"})) {
        panic!("{e}\n{}", g.log(0));
    }
    let mut each = g.client(&[2]);
    each.tls = Some(tls);
    assert_eq!(get(&mut each, "k"), json!("secret"));
    // A client without a certificate, and one in the clear, are not served.
    let mut anonymous = g.client(&[0]);
    anonymous.timeout = Duration::from_secs(2);
    anonymous.tls = Some(flintlog::transport::tls::client_config(&ca, None).unwrap());
    assert!(anonymous.call(json!({"type": "wal_info"})).is_err());
    let mut plain = g.client(&[0]);
    plain.timeout = Duration::from_secs(2);
    assert!(plain.call(json!({"type": "wal_info"})).is_err());
    // n1 again, with a certificate of the right CA that names n2: it cannot prove it is
    // n1, so its peers refuse its connections, and it never joins the group again.
    g.kill(0);
    let impostor = g
        .command(0)
        .args(tls_flags(certs.path(), "n1-as-n2"))
        .spawn()
        .unwrap();
    g.procs[0] = Some(impostor);
    let mut others = g.client(&[1, 2]);
    others.tls = each.tls.clone();
    others
        .call(json!({"type": "write", "key": "k", "value": "newer"}))
        .unwrap();
    // Once n2 has refused it, n1 still knows no leader but itself.
    assert!(logged(&g, 1, "does not name n1"), "{}", g.log(1));
    let mut direct = Client::new(vec![g.endpoint(0)], "d");
    direct.timeout = Duration::from_secs(3);
    direct.tls = each.tls.clone();
    let status = direct
        .call_at(&g.endpoint(0), json!({"type": "wal_status"}))
        .unwrap();
    let leader = status.body["status"]["leader"].clone();
    assert!(
        leader.is_null() || leader == "n1",
        "n1 under another's certificate joined the group: {status:?}"
    );
    let (_, log) = g.terminate(1);
    assert!(
        log.contains("does not name n1"),
        "n2 did not say why it refused n1:\n{log}"
    );
}

fn status(g: &Group, i: usize) -> Value {
    let mut c = g.client(&[i]);
    c.timeout = Duration::from_secs(5);
    c.call_at(&g.endpoint(i), json!({"type": "wal_status"}))
        .unwrap()
        .body["status"]
        .clone()
}

#[test]
fn a_leader_cut_off_by_the_network_is_replaced_and_catches_up_once_healed() {
    let g = Group::start_proxied(3, &[]);
    let leader = g.leader();
    let mut c = g.client(&[leader]);
    c.call(json!({"type": "write", "key": "k", "value": 1}))
        .unwrap();
    g.isolate(leader, true);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut majority = g.client(&others);
    majority
        .call(json!({"type": "write", "key": "k", "value": 2}))
        .unwrap();
    // The cut-off leader cannot commit, and cannot serve a read.
    let mut alone = g.client(&[leader]);
    alone.timeout = Duration::from_secs(4);
    assert!(alone.call(json!({"type": "read", "key": "k"})).is_err());
    g.isolate(leader, false);
    let mut back = g.client(&[leader]);
    assert_eq!(get(&mut back, "k"), json!(2));
    assert_ne!(g.leader(), usize::MAX);
}

/// Member `i` writes a snapshot and compacts its log behind it; its compaction's
/// answer.
fn snapshot_and_compact(g: &Group, c: &mut Client, i: usize) -> flintlog::client::Answer {
    let snap = c
        .call_at(&g.endpoint(i), json!({"type": "wal_snapshot"}))
        .unwrap();
    let at = snap.body["snapshot_offset"].as_u64().unwrap();
    c.call_at(
        &g.endpoint(i),
        json!({"type": "wal_compact", "snapshot_at_offset": at}),
    )
    .unwrap()
}

/// Waits up to 20 s for member `i`'s log to say `what`.
fn logged(g: &Group, i: usize, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !g.log(i).contains(what) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn heartbeats_reach_a_follower_on_time_while_a_snapshot_crawls_to_it() {
    // The leader sends its snapshot as fast as it can; the link to the follower
    // carries each connection at `rate` bytes per second. Sizes can be raised to
    // measure (FLINTLOG_TRANSFER_MB, FLINTLOG_TRANSFER_RATE; a rate of 0: no limit).
    let mb: u64 = std::env::var("FLINTLOG_TRANSFER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rate: u64 = std::env::var("FLINTLOG_TRANSFER_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let g = Group::new(
        3,
        &[
            "--snapshot-send-bytes-per-sec",
            "0",
            "--snapshot-entries",
            "0",
            "--trailing-entries",
            "10",
        ],
        true,
    );
    let mut g = g.start_all();
    let leader = g.leader();
    let follower = (leader + 1) % 3;
    let bystander = (leader + 2) % 3;
    g.kill(follower);
    // Past an election timeout: the leader no longer keeps its log for the follower.
    std::thread::sleep(Duration::from_secs(2));
    let mut c = g.client(&[leader]);
    let value = "v".repeat(100 * 1024);
    for i in 0..mb * 10 {
        c.call(json!({"type": "write", "key": format!("big{i}"), "value": value}))
            .unwrap();
    }
    let compacted = snapshot_and_compact(&g, &mut c, leader);
    assert!(
        compacted.body["entries_after"].as_u64().unwrap() < 20,
        "{compacted:?}"
    );
    // The appends queued for the follower while it was down are dropped at the link's
    // next failed dial (at most 2 s apart): after that, only a snapshot can bring it
    // back.
    std::thread::sleep(Duration::from_secs(3));
    let term = status(&g, leader)["term"].clone();
    let commit = status(&g, leader)["commit_index"].as_u64().unwrap();
    if let Some(p) = &g.proxies[leader][follower] {
        p.limit(rate);
    }
    let started = Instant::now();
    g.start_member(follower);
    let deadline = started + Duration::from_secs(30 + 2 * mb * (1 << 20) / rate.max(1 << 20));
    loop {
        let s = g
            .client(&[follower])
            .call_at(&g.endpoint(follower), json!({"type": "wal_status"}))
            .ok()
            .map(|a| a.body["status"].clone());
        if let Some(s) = s
            && s["applied_index"].as_u64().unwrap_or(0) >= commit
        {
            assert!(
                s["snapshot_transfers"]["completed"].as_u64().unwrap() >= 1,
                "the follower caught up without a snapshot: {s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let page = |i: usize| http_get(&g.metrics(i), "/metrics").1;
    let from_leader = format!(
        "flintlog_peer_longest_silence_seconds{{peer=\"n{}\"}}",
        leader + 1
    );
    let late = sample(&page(follower), &from_leader).unwrap();
    let bystander_late = sample(&page(bystander), &from_leader).unwrap();
    crate::support::say(&format!(
        "{mb} MiB snapshot at {rate} B/s per connection took {took:?}: longest wait for a \
         Raft message from the leader {:.0} ms on the receiving follower, {:.0} ms on the other",
        late * 1000.0,
        bystander_late * 1000.0
    ));
    assert_eq!(status(&g, leader)["term"], term, "an election happened");
    assert_eq!(status(&g, leader)["role"], "leader");
    assert!(
        late < 0.4,
        "heartbeats waited {late} s behind the snapshot on the follower receiving it"
    );
    assert!(
        bystander_late < 0.4,
        "{bystander_late} s on the other follower"
    );
    g.kill(follower);
}

#[test]
fn a_new_member_joins_over_tcp_by_snapshot_votes_and_restarts() {
    let mut g = Group::new(4, &["--trailing-entries", "10"], false);
    g.founders = 3;
    let mut g = {
        for i in 0..3 {
            g.start_member(i);
        }
        g
    };
    let leader = g.leader();
    let mut c = g.client(&[0, 1, 2]);
    for i in 0..50 {
        c.call(json!({"type": "write", "key": format!("k{i}"), "value": i}))
            .unwrap();
    }
    // The log behind a snapshot is gone: the new member can only start from one.
    snapshot_and_compact(&g, &mut c, leader);
    // Started before the group added it, n4 is refused by every member it dials.
    g.start_member(3);
    let mut early = g.client(&[3]);
    early.timeout = Duration::from_secs(2);
    assert!(
        logged(&g, leader, "n4 (Raft id 0) is not a member"),
        "{}",
        g.log(leader)
    );
    match early.call(json!({"type": "read", "key": "k0"})) {
        Err(CallError::Refused { code: 11, text, .. }) => {
            assert!(text.contains("not a member yet"), "{text}")
        }
        other => panic!("n4 served before it was added: {other:?}"),
    }
    let added = c
        .call(json!({"type": "member_add", "member": "n4"}))
        .unwrap();
    assert_eq!(added.body["learners"], json!(["n4"]), "{added:?}");
    let mut n4 = g.client(&[3]);
    n4.timeout = Duration::from_secs(30);
    assert_eq!(get(&mut n4, "k49"), json!(49), "{}", g.log(3));
    let s = status(&g, 3);
    assert!(
        s["snapshot_transfers"]["completed"].as_u64().unwrap() >= 1,
        "{s}"
    );
    c.call(json!({"type": "member_promote", "member": "n4"}))
        .unwrap();
    // Four voters: a founder down leaves three, a majority only with n4's vote.
    let down = (leader + 1) % 3;
    g.kill(down);
    let up: Vec<usize> = (0..4).filter(|&i| i != down).collect();
    let mut rest = g.client(&up);
    rest.call(json!({"type": "write", "key": "after", "value": 1}))
        .unwrap();
    // n4 restarted with the same flags is the member its directory says it is.
    g.kill(3);
    g.start_member(3);
    let mut back = g.client(&[3]);
    back.timeout = Duration::from_secs(30);
    assert_eq!(get(&mut back, "after"), json!(1), "{}", g.log(3));
    let s = status(&g, 3);
    assert_eq!(s["raft_id"], 4, "{s}");
    assert!(
        s["voters"].as_array().unwrap().contains(&json!("n4")),
        "{s}"
    );
}

#[test]
fn a_leader_stopped_with_sigterm_hands_over_without_waiting_for_an_election() {
    let mut g = Group::start(3, &[]);
    let leader = g.leader();
    let mut c = g.client(&[0, 1, 2]);
    c.call(json!({"type": "write", "key": "k", "value": 1}))
        .unwrap();
    let (code, log) = g.terminate(leader);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("took over as leader"), "{log}");
    // The follower it chose campaigned at once, told to by the leader, instead of
    // waiting out an election timeout.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    assert!(
        others
            .iter()
            .any(|&i| g.log(i).contains("received MsgTimeoutNow")),
        "no follower was told to take over"
    );
    let mut rest = g.client(&others);
    rest.call(json!({"type": "write", "key": "k", "value": 2}))
        .unwrap();
}
