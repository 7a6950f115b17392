//! A small SIP phone over UDP, with an RTP socket: registers with digest
//! auth, places and answers calls, speaks in dialogs.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use yihaotong::sip::auth::{challenge_params, Algorithm, DigestClient};
use yihaotong::sip::message::{parse, Message, Request, Response};

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
}
