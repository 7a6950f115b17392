//! The real server binary on loopback, with a temp data folder; free
//! ports; whether an independent peer is installed.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Phone;

/// The repository's root (the kit lives in `tests/testkit`): where the
/// bundled `sounds/`, `ivr-flows/` and `config/` are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `yihaotong` binary cargo built beside the test running now (cargo
/// builds a package's binaries before its integration tests, in the same
/// profile folder: the test is `target/PROFILE/deps/NAME-HASH`).
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/PROFILE/deps/TEST");
        let bin = profile.join("yihaotong");
        assert!(
            bin.is_file(),
            "{} is missing: run the tests through cargo test",
            bin.display()
        );
        bin
    })
}

/// A free UDP+TCP port on 127.0.0.1, never the same one twice in a process
/// (the kernel may hand a just-released port 0 out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = u.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A media port for a peer (SIPp's `-mp`), with the two above it free too
/// (RTCP, and SIPp's video port): handed out once per process from a range
/// below the kernel's ephemeral ports, so no socket bound to port 0 and no
/// other test can take it between the check and the peer's bind.
pub fn media_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        let port = 12_000 + (std::process::id() % 80) as u16 * 100 + slot * 4;
        let free = (port..port + 3).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return port;
        }
    }
}

/// RTP ranges per test so parallel tests do not collide.
fn rtp_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 30_000 + (std::process::id() % 50) as u16 * 400 + slot * 40;
    (base, base + 38)
}

pub struct TestServer {
    pub child: Child,
    pub sip: SocketAddr,
    /// The HTTP API ([admin] listen).
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra_env: &[(&str, &str)]) -> TestServer {
        Self::start_logging(extra_env, None)
    }

    /// Like `start_with`; with `log`, the server's standard output and
    /// error go to that file (not a terminal), with RUST_LOG unset so
    /// `[log]` decides.
    pub fn start_logging(extra_env: &[(&str, &str)], log: Option<&std::path::Path>) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let http_port = free_port();
        let (lo, hi) = rtp_range();
        let mut env: Vec<(String, String)> = vec![
            ("YIHAOTONG_SIP__LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "YIHAOTONG_ADMIN__LISTEN".into(),
                format!("127.0.0.1:{http_port}"),
            ),
            (
                "YIHAOTONG_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("YIHAOTONG_RTP__PORT_MIN".into(), lo.to_string()),
            ("YIHAOTONG_RTP__PORT_MAX".into(), hi.to_string()),
            ("YIHAOTONG_QUEUE__RING_TIMEOUT".into(), "3".into()),
            ("YIHAOTONG_QUEUE__RETRY".into(), "1".into()),
            ("YIHAOTONG_SIP__WORKERS".into(), "2".into()),
        ];
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let child = match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                Command::new(bin())
                    .arg("run")
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .env_remove("RUST_LOG")
                    .stdout(file.try_clone().expect("log file"))
                    .stderr(file)
                    .spawn()
                    .expect("spawn server")
            }
            None => spawn_server(&env),
        };
        let mut server = TestServer {
            child,
            sip: format!("127.0.0.1:{port}").parse().expect("addr"),
            http: format!("127.0.0.1:{http_port}").parse().expect("addr"),
            dir,
            env,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let probe = Phone::new("probe");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(code) = probe.options(self.sip) {
                assert_eq!(code, 200);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited early: {status}");
            }
        }
        panic!("server did not answer OPTIONS");
    }

    /// Stops and starts the server on the same data dir and port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_server(&self.env);
        self.wait_ready();
    }

    /// Runs the CLI with this server's settings; returns (success,
    /// stdout+stderr). Lists come as JSON (what scripts read) unless `args`
    /// name a `--format`.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let json: &[&str] = if args.contains(&"--format") {
            &[]
        } else {
            &["--format", "json"]
        };
        let out = Command::new(bin())
            .args(json)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl TestServer {
    /// A new API token of `role` (and `agent`); returns its secret.
    pub fn token(&self, name: &str, role: &str, agent: Option<&str>) -> String {
        let mut args = vec!["tokens", "add", name, "--role", role];
        if let Some(a) = agent {
            args.extend(["--agent", a]);
        }
        let (ok, out) = self.cli(&args);
        assert!(ok, "tokens add: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        v["token"].as_str().expect("a secret").to_string()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`) to the server process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([format!("-{name}"), pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    pub fn add_agent(&self, id: &str, password: &str, queues: &str) {
        let (ok, out) = self.cli(&[
            "agents",
            "add",
            id,
            "--password",
            password,
            "--queues",
            queues,
        ]);
        assert!(ok, "agents add failed: {out}");
    }

    /// The actions in the audit log (read with an admin token made here).
    pub fn audit_actions(&self) -> Vec<String> {
        let admin = self.token("audit-reader", "admin", None);
        let (_, audit) = self.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
        audit["items"]
            .as_array()
            .expect("audit items")
            .iter()
            .filter_map(|e| e["action"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until no call is alive and every RTP port is back in the pool:
    /// every per-call task and relay ended with its call.
    pub fn assert_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out) = self.cli(&["status"]);
            assert!(ok, "status failed: {out}");
            let v: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
            if v["live_calls"] == 0 && v["rtp_ports_free"] == v["rtp_ports_total"] {
                return;
            }
            last = out;
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("calls or relays still alive after the calls ended: {last}");
    }

    /// The CDR of `call_id`, waiting (5 s at most) for the batch that
    /// writes it (`record_flush`).
    pub fn wait_cdr(&self, call_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, out) = self.cli(&["cdrs"]);
            let cdrs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
            if let Some(c) = cdrs.into_iter().find(|c| c["call_id"] == call_id) {
                return c;
            }
            assert!(Instant::now() < deadline, "no CDR for {call_id}: {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

pub fn spawn_server(env: &[(String, String)]) -> Child {
    Command::new(bin())
        .arg("run")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if std::env::var("TEST_SERVER_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(if std::env::var("TEST_SERVER_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn server")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `tool` runs here (`probe` is an argument it answers quickly,
/// such as `-h`). Under CI, where `.ci/run` installs `package`, its absence
/// fails the test; elsewhere the test says it was skipped.
pub fn installed(tool: &str, probe: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} must be installed under CI (.ci/run installs {package})"
        );
        eprintln!("SKIPPED: {tool} not installed (apt-get install {package})");
    }
    found
}
