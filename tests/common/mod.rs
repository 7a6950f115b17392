//! Test harness: the real server binary on loopback with a temp data dir, and
//! small SIP phones that speak real SIP and RTP over UDP sockets.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rtc_shared::marshal::{Marshal, Unmarshal};
use yihaotong::sip::auth::{challenge_params, Algorithm, DigestClient};
use yihaotong::sip::message::{parse, Message, Request, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_yihaotong");

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
                Command::new(BIN)
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
        let out = Command::new(BIN)
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

    /// One HTTP/1.1 request to the API (`token`: a bearer token); returns
    /// the status and the body as JSON (`Null` when it is not JSON).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.http_text(method, path, token, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Like [`TestServer::http`], with the body as text.
    pub fn http_text(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let (status, _, body) = self.http_raw(method, path, token, "", body.unwrap_or(""));
        (status, String::from_utf8_lossy(&body).to_string())
    }

    /// One HTTP/1.1 request with `extra` header lines (each ending in
    /// CRLF); returns the status, the response's head (lower-cased) and the
    /// body's bytes, de-chunked.
    pub fn http_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &str,
        body: &str,
    ) -> (u16, String, Vec<u8>) {
        use std::io::{Read, Write};
        // The API binds a moment after SIP answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conn = loop {
            match std::net::TcpStream::connect(self.http) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("connect to the API: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.http,
            body.len()
        );
        conn.write_all(request.as_bytes()).expect("send");
        let mut raw = Vec::new();
        let _ = conn.read_to_end(&mut raw);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let rest = &raw[split + 4..];
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = if head.contains("transfer-encoding: chunked") {
            let mut out = Vec::new();
            let mut left = rest;
            while let Some(eol) = left.windows(2).position(|w| w == b"\r\n") {
                let size = String::from_utf8_lossy(&left[..eol]);
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let after = &left[eol + 2..];
                if n == 0 || after.len() < n {
                    break;
                }
                out.extend_from_slice(&after[..n]);
                left = after[n..].strip_prefix(b"\r\n").unwrap_or(&after[n..]);
            }
            out
        } else {
            rest.to_vec()
        };
        (status, head, body)
    }

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
    Command::new(BIN)
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

fn token() -> String {
    format!("{:x}", rand::random::<u64>())
}

/// One RTP packet as received.
#[derive(Debug, Clone)]
pub struct RtpIn {
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// A dialog as the phone sees it.
#[derive(Debug, Clone)]
pub struct PhoneDialog {
    pub call_id: String,
    pub local: String,
    pub remote: String,
    pub target: String,
    pub cseq: u32,
    pub remote_rtp: Option<SocketAddr>,
    /// Branch of the INVITE (for CANCEL).
    pub branch: String,
}

/// A small SIP phone over UDP with an RTP socket.
pub struct Phone {
    pub user: String,
    pub sock: UdpSocket,
    pub rtp: UdpSocket,
    pub addr: SocketAddr,
    nc: u32,
    /// The realm and nonce of the last challenge answered, as a phone keeps
    /// them to authorize its next REGISTER without waiting for a 401.
    last_challenge: Option<(String, String)>,
    backlog: Vec<Message>,
}

impl Phone {
    pub fn new(user: &str) -> Phone {
        Self::bind(user, "127.0.0.1")
    }

    pub fn bind(user: &str, ip: &str) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).expect("bind sip");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let rtp = UdpSocket::bind((ip, 0)).expect("bind rtp");
        rtp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        Phone {
            user: user.into(),
            sock,
            rtp,
            addr,
            nc: 0,
            last_challenge: None,
            backlog: Vec::new(),
        }
    }

    pub fn send(&self, to: SocketAddr, text: &str) {
        self.sock.send_to(text.as_bytes(), to).expect("send");
    }

    fn via(&self) -> String {
        format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", self.addr, token())
    }

    /// Receives the next message matching `pred` within `secs`.
    pub fn recv_where(&mut self, secs: f64, pred: impl Fn(&Message) -> bool) -> Option<Message> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Ok(m) = parse(&buf[..n]) {
                    if pred(&m) {
                        return Some(m);
                    }
                    if self.backlog.len() < 64 {
                        self.backlog.push(m);
                    }
                }
            }
        }
        None
    }

    /// The next response (final unless `provisional`) for `call_id` and method.
    pub fn response(
        &mut self,
        call_id: &str,
        method: &str,
        min_status: u16,
        secs: f64,
    ) -> Option<Response> {
        let call_id = call_id.to_string();
        let method = method.to_string();
        match self.recv_where(secs, |m| {
            matches!(m, Message::Response(r) if r.core.call_id == call_id && r.core.cseq_method.as_str() == method && r.status >= min_status)
        }) {
            Some(Message::Response(r)) => Some(r),
            _ => None,
        }
    }

    /// The status of the final response for `call_id` and method.
    pub fn final_status(&mut self, call_id: &str, method: &str, secs: f64) -> Option<u16> {
        self.response(call_id, method, 200, secs).map(|r| r.status)
    }

    /// Sends an out-of-dialog request with the given request-line version and extra headers.
    pub fn out_of_dialog(
        &self,
        server: SocketAddr,
        method: &str,
        version: &str,
        call_id: &str,
        extra: &str,
    ) {
        self.send(
            server,
            &format!(
                "{method} sip:x@{server} {version}\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{call_id}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
                a = self.addr
            ),
        );
    }

    pub fn request(&mut self, method: &str, secs: f64) -> Option<Request> {
        let method = method.to_string();
        match self.recv_where(
            secs,
            |m| matches!(m, Message::Request(r) if r.method.as_str() == method),
        ) {
            Some(Message::Request(r)) => Some(r),
            _ => None,
        }
    }

    pub fn options(&self, server: SocketAddr) -> Option<u16> {
        let call_id = token();
        self.send(
            server,
            &format!(
                "OPTIONS sip:{server} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                self.via()
            ),
        );
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Ok(Message::Response(r)) = parse(&buf[..n]) {
                    if r.core.call_id == call_id {
                        return Some(r.status);
                    }
                }
            }
        }
        None
    }

    fn register_once(
        &mut self,
        server: SocketAddr,
        call_id: &str,
        cseq: u32,
        expires: u32,
        auth: Option<&str>,
    ) -> Response {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let msg = format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: <sip:{u}@{server}>;tag={t}\r\nTo: <sip:{u}@{server}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{u}@{a}>\r\nExpires: {expires}\r\n{auth}Content-Length: 0\r\n\r\n",
            self.via(),
            u = self.user,
            t = token(),
            a = self.addr,
        );
        self.send(server, &msg);
        self.response(call_id, "REGISTER", 200, 3.0)
            .expect("REGISTER answered")
    }

    /// REGISTERs with digest auth; returns the final status.
    pub fn register(&mut self, server: SocketAddr, password: &str, alg: Algorithm) -> u16 {
        self.register_expires(server, password, alg, 300)
    }

    pub fn register_expires(
        &mut self,
        server: SocketAddr,
        password: &str,
        alg: Algorithm,
        expires: u32,
    ) -> u16 {
        let call_id = token();
        let first = self.register_once(server, &call_id, 1, expires, None);
        if first.status != 401 {
            return first.status;
        }
        let challenge = first
            .headers
            .get_all("www-authenticate")
            .find(|c| c.contains(&format!("algorithm={}", alg.token())))
            .expect("challenge for the algorithm")
            .to_string();
        let (realm, nonce, _) = challenge_params(&challenge).expect("challenge parses");
        self.last_challenge = Some((realm, nonce));
        let auth = self.authorization(alg, password, "REGISTER", &format!("sip:{server}"));
        self.register_once(server, &call_id, 2, expires, Some(&auth))
            .status
    }

    /// The digest answer to the last challenge for `method` on `uri`, the
    /// nonce's next use.
    fn authorization(&mut self, alg: Algorithm, password: &str, method: &str, uri: &str) -> String {
        let (realm, nonce) = self.last_challenge.clone().expect("a challenge first");
        self.nc += 1;
        DigestClient {
            alg,
            user: &self.user,
            password,
            realm: &realm,
            nonce: &nonce,
            cnonce: "cn0nce",
        }
        .authorization(method, uri, self.nc)
    }

    /// A refresh as phones send it: a REGISTER authorized at once with the
    /// last challenge's nonce (MD5, the next nonce-count); returns the answer.
    pub fn register_with_last_nonce(&mut self, server: SocketAddr, password: &str) -> Response {
        let auth = self.authorization(
            Algorithm::Md5,
            password,
            "REGISTER",
            &format!("sip:{server}"),
        );
        self.register_once(server, &token(), 1, 300, Some(&auth))
    }

    /// Sends an INVITE as the trunk to `number`; returns the dialog (no tag yet).
    pub fn invite(&mut self, server: SocketAddr, number: &str) -> PhoneDialog {
        let sdp = self.sdp();
        self.invite_sdp(server, number, &sdp)
    }

    /// Sends an INVITE with the given SDP offer.
    pub fn invite_sdp(&mut self, server: SocketAddr, number: &str, sdp: &str) -> PhoneDialog {
        let d = self.new_dialog(server, number);
        self.send_invite(server, &d, sdp, "");
        d
    }

    /// Sends an INVITE whose Request-URI names no user: the number dialed
    /// is only in To, as some trunks send it.
    pub fn invite_to_only(&mut self, server: SocketAddr, number: &str) -> PhoneDialog {
        let mut d = self.new_dialog(server, number);
        d.target = format!("sip:{server}");
        let sdp = self.sdp();
        self.send_invite(server, &d, &sdp, "");
        d
    }

    /// Sends an INVITE that has `max_forwards` hops left.
    pub fn invite_hops(
        &mut self,
        server: SocketAddr,
        number: &str,
        max_forwards: u8,
    ) -> PhoneDialog {
        self.invite_with(server, number, &format!("Max-Forwards: {max_forwards}\r\n"))
    }

    /// Sends an INVITE with `extra` header lines (each ending in CRLF).
    pub fn invite_with(&mut self, server: SocketAddr, number: &str, extra: &str) -> PhoneDialog {
        let d = self.new_dialog(server, number);
        let sdp = self.sdp();
        self.send_invite(server, &d, &sdp, extra);
        d
    }

    fn new_dialog(&self, server: SocketAddr, number: &str) -> PhoneDialog {
        PhoneDialog {
            branch: format!("z9hG4bK{}", token()),
            call_id: token(),
            local: format!("<sip:{}@127.0.0.1>;tag={}", self.user, token()),
            remote: format!("<sip:{number}@{server}>"),
            target: format!("sip:{number}@{server}"),
            cseq: 1,
            remote_rtp: None,
        }
    }

    /// `extra` headers end in CRLF; a Max-Forwards there replaces the 70.
    fn send_invite(&self, server: SocketAddr, d: &PhoneDialog, sdp: &str, extra: &str) {
        let mf = if extra.contains("Max-Forwards:") {
            ""
        } else {
            "Max-Forwards: 70\r\n"
        };
        let msg = format!(
            "INVITE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\n{mf}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\nContact: <sip:{}@{}>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            d.target,
            self.addr,
            d.branch,
            d.local,
            d.remote,
            d.call_id,
            d.cseq,
            self.user,
            self.addr,
            sdp.len()
        );
        self.send(server, &msg);
    }

    /// An INVITE from a registered agent's phone: answers the 407 challenge
    /// (MD5) and sends it again with Proxy-Authorization. Returns the dialog
    /// of the second INVITE.
    pub fn invite_as_agent(
        &mut self,
        server: SocketAddr,
        number: &str,
        password: &str,
    ) -> PhoneDialog {
        let mut d = self.invite(server, number);
        let challenge = self
            .response(&d.call_id, "INVITE", 407, 3.0)
            .expect("INVITE answered");
        assert_eq!(challenge.status, 407, "an agent's INVITE is challenged");
        // ACK the 407 (same branch; To with its tag).
        self.send(
            server,
            &format!(
                "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                d.target, self.addr, d.branch, d.local, challenge.core.to.raw, d.call_id
            ),
        );
        let value = challenge
            .headers
            .get_all("proxy-authenticate")
            .find(|c| c.contains("algorithm=MD5"))
            .expect("MD5 challenge")
            .to_string();
        let (realm, nonce, _) = challenge_params(&value).expect("challenge parses");
        self.last_challenge = Some((realm, nonce));
        let auth = self.authorization(Algorithm::Md5, password, "INVITE", &d.target.clone());
        d.cseq = 2;
        d.branch = format!("z9hG4bK{}", token());
        let sdp = self.sdp();
        self.send_invite(
            server,
            &d,
            &sdp,
            &format!("Proxy-Authorization: {auth}\r\n"),
        );
        d
    }

    /// Raw INVITE text for CANCEL construction.
    pub fn cancel(&mut self, server: SocketAddr, d: &PhoneDialog) {
        let invite_branch = &d.branch;
        let msg = format!(
            "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={invite_branch};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            d.target, self.addr, d.local, d.remote, d.call_id
        );
        self.send(server, &msg);
    }

    pub fn sdp(&self) -> String {
        self.sdp_dir("sendrecv")
    }

    pub fn sdp_dir(&self, dir: &str) -> String {
        let a = self.rtp.local_addr().expect("rtp addr");
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na={dir}\r\n",
            ip = a.ip(),
            port = a.port()
        )
    }

    /// An old trunk's offer: PCMU only, no telephone-event (keys come as
    /// tones in the audio).
    pub fn sdp_pcmu_only(&self) -> String {
        let a = self.rtp.local_addr().expect("rtp addr");
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            ip = a.ip(),
            port = a.port()
        )
    }

    /// Completes a UAC dialog from a 2xx: sends the ACK, learns tag and RTP address.
    pub fn ack(&self, server: SocketAddr, d: &mut PhoneDialog, ok: &Response) {
        d.remote = ok.core.to.raw.clone();
        if let Ok(a) = yihaotong::media::sdp::parse_audio(&ok.body) {
            d.remote_rtp = Some(a.addr);
        }
        if let Some(c) = ok
            .headers
            .get("contact")
            .and_then(yihaotong::sip::dialog::contact_uri)
        {
            d.target = c;
        }
        let msg = format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            d.target,
            self.via(),
            d.local,
            d.remote,
            d.call_id,
            ok.core.cseq
        );
        self.send(server, &msg);
    }

    /// Sends an in-dialog request (BYE, re-INVITE) with the next CSeq.
    pub fn in_dialog(&self, server: SocketAddr, d: &mut PhoneDialog, method: &str, body: &str) {
        self.in_dialog_typed(server, d, method, "application/sdp", body);
    }

    /// An in-dialog request with a body of the given type (INFO with DTMF).
    pub fn in_dialog_typed(
        &self,
        server: SocketAddr,
        d: &mut PhoneDialog,
        method: &str,
        content_type: &str,
        body: &str,
    ) {
        self.in_dialog_with(server, d, method, "", content_type, body);
    }

    /// An in-dialog request with extra header lines (each ending in CRLF).
    pub fn in_dialog_with(
        &self,
        server: SocketAddr,
        d: &mut PhoneDialog,
        method: &str,
        headers: &str,
        content_type: &str,
        body: &str,
    ) {
        d.cseq += 1;
        let ctype = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let msg = format!(
            "{method} {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\nContact: <sip:{}@{}>\r\n{headers}{ctype}Content-Length: {}\r\n\r\n{body}",
            d.target,
            self.via(),
            d.local,
            d.remote,
            d.call_id,
            d.cseq,
            self.user,
            self.addr,
            body.len()
        );
        self.send(server, &msg);
    }

    /// Answers a request with `status` (adding our tag and SDP for 2xx to INVITE).
    pub fn reply(&self, server: SocketAddr, req: &Request, status: u16, tag: &str) {
        let sdp = if status == 200 && req.method.as_str() == "INVITE" {
            self.sdp()
        } else {
            String::new()
        };
        self.reply_sdp(server, req, status, tag, &sdp);
    }

    /// Answers a request with `status` and `sdp` as its body (none if empty).
    pub fn reply_sdp(&self, server: SocketAddr, req: &Request, status: u16, tag: &str, sdp: &str) {
        let mut extra: Vec<(&str, &str)> = Vec::new();
        let contact = format!("<sip:{}@{}>", self.user, self.addr);
        extra.push(("Contact", &contact));
        if !sdp.is_empty() {
            extra.push(("Content-Type", "application/sdp"));
        }
        let bytes = req.response(status, Some(tag), &extra, sdp.as_bytes());
        self.sock.send_to(&bytes, server).expect("send");
    }

    /// The dialog an answered INVITE makes, from the callee's side.
    pub fn uas_dialog(req: &Request, tag: &str) -> PhoneDialog {
        PhoneDialog {
            call_id: req.core.call_id.clone(),
            local: format!("{};tag={tag}", req.core.to.raw),
            remote: req.core.from.raw.clone(),
            target: req
                .headers
                .get("contact")
                .and_then(yihaotong::sip::dialog::contact_uri)
                .expect("contact"),
            cseq: 100,
            branch: String::new(),
            remote_rtp: yihaotong::media::sdp::parse_audio(&req.body)
                .ok()
                .map(|a| a.addr),
        }
    }

    /// Records the RTP arriving for `secs`: (payload type, seq, ts, marker, ssrc, payload).
    pub fn record_rtp(&self, secs: f64) -> Vec<RtpIn> {
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            out.extend(self.recv_rtp());
        }
        out
    }

    /// One RTP packet from the media socket, if one comes within its
    /// read timeout and parses.
    fn recv_rtp(&self) -> Option<RtpIn> {
        let mut buf = [0u8; 2048];
        let (n, _) = self.rtp.recv_from(&mut buf).ok()?;
        let mut view = &buf[..n];
        let p = rtc_rtp::packet::Packet::unmarshal(&mut view).ok()?;
        Some(RtpIn {
            pt: p.header.payload_type,
            seq: p.header.sequence_number,
            ts: p.header.timestamp,
            marker: p.header.marker,
            ssrc: p.header.ssrc,
            payload: p.payload.to_vec(),
        })
    }

    /// Presses `key` as RFC 4733 telephone-events (payload type `pt`): three
    /// updates and three end packets, one event timestamp.
    pub fn press_rfc4733(&self, to: SocketAddr, key: char, pt: u8, ts: u32) {
        let event = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("key"),
        };
        for i in 0..6u16 {
            let end = i >= 3;
            let duration = 160 * (i.min(3) + 1);
            let mut p = vec![0x80, pt | if i == 0 { 0x80 } else { 0 }];
            p.extend_from_slice(&(1000 + i).to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&0x5eed_u32.to_be_bytes());
            p.extend_from_slice(&[event, (u8::from(end) << 7) | 10]);
            p.extend_from_slice(&duration.to_be_bytes());
            self.rtp.send_to(&p, to).expect("rtp send");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Presses `key` by SIP INFO (application/dtmf-relay) in dialog `d`;
    /// returns the INFO's final status.
    pub fn press_info(
        &mut self,
        server: SocketAddr,
        d: &mut PhoneDialog,
        key: char,
    ) -> Option<u16> {
        let body = format!("Signal={key}\r\nDuration=160\r\n");
        self.in_dialog_typed(server, d, "INFO", "application/dtmf-relay", &body);
        self.final_status(&d.call_id, "INFO", 3.0)
    }

    /// Sends `key` as an in-band DTMF tone (70 ms, then 70 ms of silence) in PCMU.
    pub fn press_inband(&self, to: SocketAddr, key: char) {
        let (row, col) = match key {
            '1' => (697.0, 1209.0),
            '2' => (697.0, 1336.0),
            '5' => (770.0, 1336.0),
            '0' => (941.0, 1336.0),
            _ => panic!("key"),
        };
        let samples: Vec<i16> = (0..1120)
            .map(|i| {
                if i < 560 {
                    let t = i as f32 / 8000.0;
                    let w = |f: f32| (2.0 * std::f32::consts::PI * f * t).sin();
                    (5000.0 * (w(row) + w(col))) as i16
                } else {
                    0
                }
            })
            .collect();
        for (i, chunk) in samples.chunks(160).enumerate() {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(2000 + i as u16).to_be_bytes());
            p.extend_from_slice(&(160 * i as u32).to_be_bytes());
            p.extend_from_slice(&0x70e5_u32.to_be_bytes());
            p.extend(
                chunk
                    .iter()
                    .map(|s| audio_codec_algorithms::encode_ulaw(*s)),
            );
            self.rtp.send_to(&p, to).expect("rtp send");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `count` 20 ms G.711 packets to `to` while counting what arrives; returns packets received.
    pub fn exchange_rtp(&self, to: SocketAddr, count: u16, ssrc: u32) -> usize {
        self.exchange_rtp_of(to, count, ssrc, 0xff)
    }

    /// Like `exchange_rtp`, every payload byte `byte` (a steady G.711 level).
    pub fn exchange_rtp_of(&self, to: SocketAddr, count: u16, ssrc: u32, byte: u8) -> usize {
        self.exchange_rtp_heard(to, count, ssrc, byte).len()
    }

    /// Sends `count` 20 ms PCMU packets whose every byte is `byte` to `to`,
    /// and returns the RTP packets that arrive meanwhile and for 200 ms after.
    pub fn exchange_rtp_heard(
        &self,
        to: SocketAddr,
        count: u16,
        ssrc: u32,
        byte: u8,
    ) -> Vec<RtpIn> {
        let mut heard = Vec::new();
        for i in 0..count {
            let p = rtc_rtp::packet::Packet {
                header: rtc_rtp::header::Header {
                    version: 2,
                    payload_type: 0,
                    sequence_number: i,
                    timestamp: i as u32 * 160,
                    ssrc,
                    marker: i == 0,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(vec![byte; 160]),
            };
            self.rtp
                .send_to(&p.marshal().expect("marshal"), to)
                .expect("rtp send");
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(20) {
                heard.extend(self.recv_rtp());
            }
        }
        heard.extend(self.record_rtp(0.2));
        heard
    }
}

/// RTP both ways between two phones at once: (a received, b received) of 50 sent each.
pub fn talk(a: &Phone, a_to: SocketAddr, b: &Phone, b_to: SocketAddr) -> (usize, usize) {
    std::thread::scope(|s| {
        let other = s.spawn(|| b.exchange_rtp_of(b_to, 50, 0xb0b, 0x55));
        let mine = a.exchange_rtp_of(a_to, 50, 0xa11ce, 0x77);
        (mine, other.join().expect("thread"))
    })
}

/// Both phones hear each other through the server: more than 30 of the 50
/// packets each sends reach the other.
pub fn assert_talking(a: &Phone, a_to: SocketAddr, b: &Phone, b_to: SocketAddr, what: &str) {
    let (a_got, b_got) = talk(a, a_to, b, b_to);
    assert!(
        a_got > 30 && b_got > 30,
        "{what}: {a_got} and {b_got} of 50 packets"
    );
}

/// The agent's phone sends REFER to `refer_to` (a name-addr) on `leg`;
/// returns the final response to the REFER.
pub fn refer(
    server: &TestServer,
    phone: &mut Phone,
    leg: &mut PhoneDialog,
    refer_to: &str,
) -> Response {
    phone.in_dialog_with(
        server.sip,
        leg,
        "REFER",
        &format!(
            "Refer-To: {refer_to}\r\nReferred-By: <sip:{}@127.0.0.3>\r\n",
            phone.user
        ),
        "",
        "",
    );
    phone
        .response(&leg.call_id, "REFER", 200, 3.0)
        .expect("REFER answered")
}

/// A call to `number` that a flow answers (with our offer `sdp`, or the
/// phone's usual one), ACKed: the caller's dialog.
pub fn answer_ivr(
    server: &TestServer,
    trunk: &mut Phone,
    number: &str,
    sdp: Option<&str>,
) -> PhoneDialog {
    let mut d = match sdp {
        Some(s) => trunk.invite_sdp(server.sip, number, s),
        None => trunk.invite(server.sip, number),
    };
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the flow answers");
    assert_eq!(ok.status, 200);
    trunk.ack(server.sip, &mut d, &ok);
    d
}

/// Answers `inv` on `phone`, expects the ACK, and returns the callee's dialog.
pub fn answer(server: &TestServer, phone: &mut Phone, inv: &Request, tag: &str) -> PhoneDialog {
    phone.reply(server.sip, inv, 200, tag);
    phone.request("ACK", 3.0).expect("ACK for the answer");
    Phone::uas_dialog(inv, tag)
}

/// The caller hangs up; the agent's phone gets and answers the BYE.
pub fn caller_hangs_up(
    server: &TestServer,
    trunk: &mut Phone,
    d: &mut PhoneDialog,
    phone: &mut Phone,
    tag: &str,
) {
    trunk.in_dialog(server.sip, d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, tag);
}

/// A trunk call to 123450 answered by `phone`: (caller's dialog, agent's dialog).
pub fn connected_call(
    server: &TestServer,
    trunk: &mut Phone,
    phone: &mut Phone,
    tag: &str,
) -> (PhoneDialog, PhoneDialog) {
    let mut d = trunk.invite(server.sip, "123450");
    let inv = phone.request("INVITE", 5.0).expect("agent rung");
    let agent_leg = answer(server, phone, &inv, tag);
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    trunk.ack(server.sip, &mut d, &ok);
    (d, agent_leg)
}

/// μ-law payloads in arrival order, decoded to linear samples.
pub fn decode_pcmu(packets: &[RtpIn]) -> Vec<f64> {
    packets
        .iter()
        .filter(|p| p.pt == 0)
        .flat_map(|p| p.payload.iter())
        .map(|b| audio_codec_algorithms::decode_ulaw(*b) as f64)
        .collect()
}

/// The bundled prompt `name` decoded as the server plays it (8 kHz).
pub fn prompt_source(name: &str) -> Vec<i16> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sounds")
        .join(format!("{name}.flac"));
    yihaotong::media::prompts::decode_to_8k(&path).expect("bundled prompt decodes")
}

/// How well `heard` matches the start of the bundled prompt `name`: the
/// best normalized cross-correlation over the shorter length, at lags of
/// whole 20 ms frames up to `max_lag_frames` into the prompt (0: the stream
/// starts with the prompt's first frame; more: a recording that begins a
/// few packets late).
pub fn prompt_correlation(heard: &[f64], name: &str, max_lag_frames: usize) -> f64 {
    let source = prompt_source(name);
    (0..=max_lag_frames)
        .map(|frames| {
            let src = &source[(frames * 160).min(source.len())..];
            let n = heard.len().min(src.len());
            assert!(n > 4000, "too little audio to compare: {n} samples");
            let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
            for i in 0..n {
                let (x, y) = (heard[i], src[i] as f64);
                xy += x * y;
                xx += x * x;
                yy += y * y;
            }
            xy / (xx.sqrt() * yy.sqrt()).max(1.0)
        })
        .fold(f64::MIN, f64::max)
}

/// The event stream over a WebSocket (`/events?QUERY`, bearer `token`):
/// the socket and the upgrade's status, or the refusal's HTTP status.
pub fn events_socket(
    server: &TestServer,
    token: &str,
    query: &str,
) -> Result<(tungstenite::WebSocket<std::net::TcpStream>, u16), u16> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/events?{query}", server.http)
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    let tcp = std::net::TcpStream::connect(server.http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    match tungstenite::client(request, tcp) {
        Ok((socket, response)) => Ok((socket, response.status().as_u16())),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}
