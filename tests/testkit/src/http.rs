//! The HTTP API and the event stream, as a client sees them.

use std::time::{Duration, Instant};

use crate::TestServer;

impl TestServer {
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
