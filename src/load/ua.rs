//! The harness's user agents: caller (trunk) calls and agent seats.
//!
//! Deliberately simple UAs: each call is a task with a channel fed by its
//! socket's reader (by Call-ID); retransmissions are Timer A/E-like
//! doublings from 500 ms; every wait is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::rtp::{self, Pacer};
use super::{CallPlan, LoadOptions, Metrics};
use crate::media::sdp::{self, Direction};
use crate::sip::auth::{challenge_params, Algorithm, DigestClient};
use crate::sip::message::{self, Message, Method, Request, Response};
use crate::sip::random_token;

const T1: Duration = Duration::from_millis(500);
const GIVE_UP: Duration = Duration::from_secs(32);

/// A UDP socket shared by many dialogs, demultiplexed by Call-ID.
pub(crate) struct Endpoint {
    socket: UdpSocket,
    pub(crate) addr: SocketAddr,
    server: SocketAddr,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
}

impl Endpoint {
    async fn bind(
        at: SocketAddr,
        server: SocketAddr,
        new_requests: Option<mpsc::UnboundedSender<Request>>,
    ) -> anyhow::Result<Arc<Endpoint>> {
        anyhow::ensure!(at.ip().is_loopback(), "{at}: loopback only");
        let socket = UdpSocket::bind(at).await?;
        let addr = socket.local_addr()?;
        let ep = Arc::new(Endpoint {
            socket,
            addr,
            server,
            routes: Mutex::new(HashMap::new()),
        });
        let reader = ep.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, _)) = reader.socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(msg) = message::parse(&buf[..n]) else {
                    continue;
                };
                let route = reader
                    .routes
                    .lock()
                    .ok()
                    .and_then(|r| r.get(&msg.core().call_id).cloned());
                match (route, msg, &new_requests) {
                    (Some(tx), msg, _) => {
                        let _ = tx.send(msg);
                    }
                    (None, Message::Request(req), Some(new)) if req.method == Method::Invite => {
                        let _ = new.send(req);
                    }
                    (None, Message::Request(req), _) if req.method != Method::Ack => {
                        // Stray in-dialog requests (a BYE after we gave up): answer, do not leave the server waiting.
                        let status = if req.method == Method::Options {
                            200
                        } else {
                            481
                        };
                        reader.send(&req.response(status, Some(&random_token()), &[], b""));
                    }
                    _ => {}
                }
            }
        });
        Ok(ep)
    }

    fn route(&self, call_id: &str) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut r) = self.routes.lock() {
            r.insert(call_id.to_string(), tx);
        }
        rx
    }

    fn unroute(&self, call_id: &str) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(call_id);
        }
    }

    fn send(&self, bytes: &[u8]) {
        let _ = self.socket.try_send_to(bytes, self.server);
    }

    fn via(&self, branch: &str) -> String {
        format!("UDP {};branch={branch};rport", self.addr)
    }
}

/// Waits for the next message on `rx` until `until`.
async fn next(rx: &mut mpsc::UnboundedReceiver<Message>, until: Instant) -> Option<Message> {
    tokio::time::timeout_at(until, rx.recv())
        .await
        .ok()
        .flatten()
}

/// Sends `bytes` and retransmits (500 ms doubling, to 4 s) until a response
/// with `min_status` or more for `method` arrives, or 32 s pass.
async fn transact(
    ep: &Endpoint,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    bytes: &[u8],
    method: &Method,
    min_status: u16,
) -> Option<Response> {
    ep.send(bytes);
    let give_up = Instant::now() + GIVE_UP;
    let mut interval = T1;
    let mut retransmit = Instant::now() + interval;
    loop {
        let until = retransmit.min(give_up);
        match next(rx, until).await {
            Some(Message::Response(r))
                if r.core.cseq_method == *method && r.status >= min_status =>
            {
                return Some(r)
            }
            Some(_) => {}
            None if Instant::now() >= give_up => return None,
            None => {
                ep.send(bytes);
                interval = (interval * 2).min(Duration::from_secs(4));
                retransmit = Instant::now() + interval;
            }
        }
    }
}

/// An RTP socket: the pacing thread sends on a clone, the listener thread
/// reads another, and the call's task sends its key presses on a third.
/// None of them is in tokio's poll: one registered there would wake the
/// runtime at every packet that arrives, for nothing.
struct RtpSocket {
    recv: Arc<std::net::UdpSocket>,
    send: std::net::UdpSocket,
}

fn rtp_socket(ip: std::net::IpAddr) -> Option<RtpSocket> {
    let socket = std::net::UdpSocket::bind((ip, 0)).ok()?;
    socket.set_nonblocking(true).ok()?;
    let send = socket.try_clone().ok()?;
    Some(RtpSocket {
        recv: Arc::new(socket),
        send,
    })
}

fn offer(socket: &std::net::UdpSocket) -> String {
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    sdp::write(
        rand::random::<u32>() as u64,
        1,
        addr,
        &[0, 8],
        Some(101),
        Direction::SendRecv,
    )
}

/// The agent seats: one socket, many registered users.
#[derive(Clone)]
pub(crate) struct Seats {
    ep: Arc<Endpoint>,
    metrics: Arc<Metrics>,
}

impl Seats {
    /// Seats (or, `at` a fixed address, a backend system) that answer
    /// whatever INVITE the server sends them.
    pub(crate) async fn start(
        opts: &LoadOptions,
        metrics: Arc<Metrics>,
        pacer: Arc<Pacer>,
        at: Option<SocketAddr>,
    ) -> anyhow::Result<Seats> {
        let (tx, mut new_calls) = mpsc::unbounded_channel::<Request>();
        let at = at.unwrap_or(SocketAddr::new(opts.bind, 0));
        let ep = Endpoint::bind(at, opts.server, Some(tx)).await?;
        let seats = Seats {
            ep: ep.clone(),
            metrics: metrics.clone(),
        };
        let (ring, bind) = (Duration::from_millis(opts.ring_ms), opts.bind);
        tokio::spawn(async move {
            while let Some(invite) = new_calls.recv().await {
                let (ep, metrics, pacer) = (ep.clone(), metrics.clone(), pacer.clone());
                // Counted until its figures are in (see Metrics::answering).
                metrics.answering.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    answer(ep, invite, ring, bind, metrics.clone(), pacer).await;
                    metrics.answering.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(seats)
    }

    async fn register(&self, user: &str, password: &str, expires: u32) -> Result<Duration, String> {
        let ep = &self.ep;
        let call_id = format!("{}-reg@load", random_token());
        let mut rx = ep.route(&call_id);
        let started = Instant::now();
        let server = ep.server;
        let write = |cseq: u32, auth: Option<&str>| {
            let auth_line = auth
                .map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default();
            format!(
                "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/{}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{server}>;tag={}\r\nTo: <sip:{user}@{server}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{}>\r\nExpires: {expires}\r\n{auth_line}Content-Length: 0\r\n\r\n",
                ep.via(&crate::sip::new_branch()),
                random_token(),
                ep.addr
            )
        };
        let result = async {
            let first = transact(
                ep,
                &mut rx,
                write(1, None).as_bytes(),
                &Method::Register,
                200,
            )
            .await
            .ok_or("timeout")?;
            if first.status != 401 {
                return Err(first.status.to_string());
            }
            let challenge = first
                .headers
                .get("www-authenticate")
                .ok_or("401 without challenge")?;
            let (realm, nonce, alg) = challenge_params(challenge).ok_or("bad challenge")?;
            let client = DigestClient {
                // The first challenge is the server's preference ([sip]
                // digest_algorithms).
                alg: Algorithm::from_token(&alg).ok_or("challenge with an unknown algorithm")?,
                user,
                password,
                realm: &realm,
                nonce: &nonce,
                cnonce: &random_token(),
            };
            let auth = client.authorization("REGISTER", &format!("sip:{server}"), 1);
            let second = transact(
                ep,
                &mut rx,
                write(2, Some(&auth)).as_bytes(),
                &Method::Register,
                200,
            )
            .await
            .ok_or("timeout")?;
            if second.status != 200 {
                return Err(second.status.to_string());
            }
            Ok(started.elapsed())
        }
        .await;
        ep.unroute(&call_id);
        result.map_err(|e: String| e)
    }

    /// Registers every seat; returns how many succeeded.
    pub(crate) async fn register_all(&self, opts: &LoadOptions) -> u32 {
        self.register_every(opts, 600).await
    }

    /// Removes every seat's registration (so the server is not left ringing a dead socket).
    pub(crate) async fn unregister_all(&self, opts: &LoadOptions) {
        self.register_every(opts, 0).await;
    }

    /// REGISTERs every seat with `expires`, 64 at a time; returns the successes.
    async fn register_every(&self, opts: &LoadOptions, expires: u32) -> u32 {
        let mut ok = 0;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..opts.agents {
            let me = self.clone();
            let (user, pw) = ((opts.agent_base + i).to_string(), opts.password.clone());
            set.spawn(async move { me.register(&user, &pw, expires).await.is_ok() });
            if set.len() >= 64 {
                if let Some(Ok(true)) = set.join_next().await {
                    ok += 1;
                }
            }
        }
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(true)) {
                ok += 1;
            }
        }
        ok
    }

    /// One registration of the storm (the register scenario).
    pub(crate) async fn register_one(&self, opts: &LoadOptions, i: u64) {
        let user = (opts.agent_base + (i % opts.agents.max(1) as u64) as u32).to_string();
        match self.register(&user, &opts.password, 600).await {
            Ok(took) => {
                Metrics::record(&self.metrics.setup_180, took);
                self.metrics.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => self.metrics.fail(why),
        }
    }
}

/// An agent's side of one call: ring, answer, talk until the BYE.
async fn answer(
    ep: Arc<Endpoint>,
    invite: Request,
    ring: Duration,
    bind: std::net::IpAddr,
    metrics: Arc<Metrics>,
    pacer: Arc<Pacer>,
) {
    let call_id = invite.core.call_id.clone();
    let mut rx = ep.route(&call_id);
    if let Some(caller) = invite.headers.get("x-caller-call-id") {
        metrics.seat_rung(caller);
    }
    let tag = random_token();
    let contact = format!(
        "<sip:{}@{}>",
        invite.uri_user.clone().unwrap_or_default(),
        ep.addr
    );
    let ringing = invite.response(180, Some(&tag), &[("Contact", &contact)], b"");
    ep.send(&ringing);
    let Some(rtp) = rtp_socket(bind) else {
        ep.send(&invite.response(503, Some(&tag), &[], b""));
        ep.unroute(&call_id);
        return;
    };
    // Ring, unless the caller gives up first.
    let answer_at = Instant::now() + ring;
    loop {
        match next(&mut rx, answer_at).await {
            Some(Message::Request(r)) if r.method == Method::Cancel => {
                ep.send(&r.response(200, Some(&tag), &[], b""));
                ep.send(&invite.response(487, Some(&tag), &[], b""));
                let _ = next(&mut rx, Instant::now() + Duration::from_secs(2)).await; // the ACK
                ep.unroute(&call_id);
                return;
            }
            Some(Message::Request(r)) if r.method == Method::Invite => ep.send(&ringing),
            Some(_) => {}
            None => break,
        }
    }
    let body = offer(&rtp.recv);
    let ok = invite.response(
        200,
        Some(&tag),
        &[("Contact", &contact), ("Content-Type", "application/sdp")],
        body.as_bytes(),
    );
    // 200 until ACK (RFC 3261 §13.3.1.4).
    ep.send(&ok);
    let give_up = Instant::now() + GIVE_UP;
    let mut interval = T1;
    let mut acked = false;
    let mut bye: Option<Request> = None;
    while Instant::now() < give_up {
        match next(&mut rx, Instant::now() + interval).await {
            Some(Message::Request(r)) if r.method == Method::Ack => {
                acked = true;
                break;
            }
            Some(Message::Request(r)) if r.method == Method::Bye => {
                bye = Some(r);
                break;
            }
            Some(_) => {}
            None => {
                ep.send(&ok);
                interval = (interval * 2).min(Duration::from_secs(4));
            }
        }
    }
    if !acked && bye.is_none() {
        metrics.fail("agent: no ACK");
        ep.unroute(&call_id);
        return;
    }
    let remote = sdp::parse_audio(&invite.body).map(|a| a.addr).ok();
    let mut media = None;
    if let Some(dest) = remote {
        let stop = pacer.send(rtp.send, dest);
        let recv = pacer.receive(&rtp.recv, stop.clone());
        media = Some((stop, recv));
    }
    // Talk until the caller's BYE arrives through the server (bounded).
    let limit = Instant::now() + Duration::from_secs(600);
    while bye.is_none() {
        match next(&mut rx, limit).await {
            Some(Message::Request(r)) if r.method == Method::Bye => bye = Some(r),
            Some(Message::Request(r)) if r.method != Method::Ack => {
                ep.send(&r.response(200, Some(&tag), &[], b""));
            }
            Some(_) => {}
            None => break,
        }
    }
    if let Some(b) = &bye {
        ep.send(&b.response(200, Some(&tag), &[], b""));
    }
    if let Some((stop, recv)) = media {
        stop.store(true, Ordering::Relaxed);
        if let Ok((stats, _)) = recv.await {
            if let Ok(mut s) = metrics.agent_rtp.lock() {
                s.merge(&stats);
            }
        }
    }
    // Linger briefly for BYE retransmissions, then forget the call.
    let _ = next(&mut rx, Instant::now() + Duration::from_millis(100)).await;
    ep.unroute(&call_id);
}

/// The trunk side: callers.
#[derive(Clone)]
pub(crate) struct Callers {
    ep: Arc<Endpoint>,
    metrics: Arc<Metrics>,
    pacer: Arc<Pacer>,
    bind: std::net::IpAddr,
}

impl Callers {
    pub(crate) async fn start(
        opts: &LoadOptions,
        metrics: Arc<Metrics>,
        pacer: Arc<Pacer>,
    ) -> anyhow::Result<Callers> {
        let at = SocketAddr::new(opts.bind, 0);
        Ok(Callers {
            ep: Endpoint::bind(at, opts.server, None).await?,
            metrics,
            pacer,
            bind: opts.bind,
        })
    }

    /// One citizen's call as `plan` says: dial, hear ringing, be answered,
    /// press keys, talk, hang up.
    pub(crate) async fn call(&self, i: u64, plan: CallPlan) {
        let m = &self.metrics;
        m.active.fetch_add(1, Ordering::Relaxed);
        m.count(plan.class, false);
        let call_id = format!("{}-{i}@load", random_token());
        let mut rx = self.ep.route(&call_id);
        let outcome = self.call_inner(&call_id, &mut rx, &plan).await;
        if let Ok(mut invited) = m.invited.lock() {
            invited.remove(&call_id);
        }
        match outcome {
            Ok(Outcome::Completed) => {
                m.completed.fetch_add(1, Ordering::Relaxed);
                m.count(plan.class, true);
            }
            Ok(Outcome::Abandoned) => {
                m.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => m.fail(why),
        }
        self.ep.unroute(&call_id);
        m.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn call_inner(
        &self,
        call_id: &str,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        plan: &CallPlan,
    ) -> Result<Outcome, String> {
        let abandon = plan.abandon;
        let ep = &self.ep;
        let rtp = rtp_socket(self.bind).ok_or("no local RTP port")?;
        let server = ep.server;
        let branch = crate::sip::new_branch();
        let mut leg = CallerLeg {
            ep,
            from: format!(
                "<sip:138{:08}@{}>;tag={}",
                rand::random::<u32>() % 100_000_000,
                ep.addr,
                random_token()
            ),
            call_id,
            to: format!("<sip:{}@{server}>", plan.number),
            target: format!("sip:{}@{server}", plan.number),
        };
        let body = offer(&rtp.recv);
        let contact = format!("<sip:caller@{}>", ep.addr);
        let invite = leg.write(
            &Method::Invite,
            &branch,
            1,
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            body.as_bytes(),
        );
        let started = Instant::now();
        if let Ok(mut invited) = self.metrics.invited.lock() {
            invited.insert(call_id.to_string(), started);
        }
        ep.send(&invite);
        let give_up = started + GIVE_UP + Duration::from_secs(60);
        let mut interval = T1;
        let mut retransmit = Some(started + interval);
        let mut rang = false;
        let mut cancelled = false;
        let ok = loop {
            let until = retransmit.unwrap_or(give_up).min(give_up);
            match next(rx, until).await {
                Some(Message::Response(r)) if r.core.cseq_method == Method::Invite => {
                    retransmit = None;
                    match r.status {
                        100..=199 => {
                            if r.status >= 180 && !rang {
                                rang = true;
                                Metrics::record(&self.metrics.setup_180, started.elapsed());
                                if abandon && !cancelled {
                                    cancelled = true;
                                    ep.send(&leg.write(&Method::Cancel, &branch, 1, &[], b""));
                                }
                            }
                        }
                        200..=299 => break r,
                        status => {
                            // The ACK of a non-2xx shares the INVITE's branch and takes the To tag.
                            leg.to = r.core.to.raw.clone();
                            ep.send(&leg.write(&Method::Ack, &branch, 1, &[], b""));
                            return if status == 487 && cancelled {
                                Ok(Outcome::Abandoned)
                            } else {
                                Err(status.to_string())
                            };
                        }
                    }
                }
                Some(_) => {}
                None if Instant::now() >= give_up => return Err("timeout".into()),
                None => {
                    ep.send(&invite);
                    interval *= 2;
                    retransmit = Some(Instant::now() + interval);
                }
            }
        };
        let answered = Instant::now();
        Metrics::record(&self.metrics.setup_200, started.elapsed());
        if let Some(target) = ok
            .headers
            .get("contact")
            .and_then(crate::sip::dialog::contact_uri)
        {
            leg.target = target;
        }
        leg.to = ok.core.to.raw.clone();
        let ack = leg.write(&Method::Ack, &crate::sip::new_branch(), 1, &[], b"");
        ep.send(&ack);
        let bye = leg.write(&Method::Bye, &crate::sip::new_branch(), 2, &[], b"");
        if cancelled {
            // The answer crossed our CANCEL: hang up at once.
            transact(ep, rx, &bye, &Method::Bye, 200).await;
            return Ok(Outcome::Abandoned);
        }
        let their = sdp::parse_audio(&ok.body).map_err(|e| format!("bad SDP in 200: {e}"))?;
        let dest = their.addr;
        let stop = self.pacer.send(rtp.send, dest);
        let recv = self.pacer.receive(&rtp.recv, stop.clone());
        // Keys at their times after the answer, as RFC 4733 events of their
        // own SSRC on the call's RTP socket.
        let mut keys: Vec<(char, Instant)> = plan
            .keys
            .iter()
            .map(|(k, at)| (*k, answered + *at))
            .collect();
        keys.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
        let pt = their.telephone_event.unwrap_or(101);
        let (ssrc, mut seq, mut timestamp) = (
            rand::random::<u32>(),
            rand::random::<u16>(),
            rand::random::<u32>(),
        );
        // Talk; the server may hang up first (that is a failure of the run).
        let hang_up_at = Instant::now() + plan.talk;
        let mut server_bye = false;
        loop {
            let until = keys
                .last()
                .map_or(hang_up_at, |(_, at)| (*at).min(hang_up_at));
            match next(rx, until).await {
                Some(Message::Request(r)) if r.method == Method::Bye => {
                    ep.send(&r.response(200, None, &[], b""));
                    server_bye = true;
                    break;
                }
                Some(Message::Response(r))
                    if r.status == 200 && r.core.cseq_method == Method::Invite =>
                {
                    // A retransmitted 200: our ACK was lost.
                    ep.send(&ack);
                }
                Some(_) => {}
                None if Instant::now() >= hang_up_at => break,
                None => {
                    let Some((key, _)) = keys.pop() else {
                        continue;
                    };
                    if let Some(packets) = rtp::key_press(key, pt, ssrc, seq, timestamp) {
                        let socket = rtp.recv.clone();
                        tokio::spawn(async move {
                            for p in packets {
                                // Loopback UDP does not block; a full buffer loses the packet.
                                let _ = socket.send_to(&p, dest);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        });
                    }
                    seq = seq.wrapping_add(6);
                    timestamp = timestamp.wrapping_add(1600);
                }
            }
        }
        let bye_ok = !server_bye
            && transact(ep, rx, &bye, &Method::Bye, 200)
                .await
                .is_some_and(|r| r.status == 200);
        stop.store(true, Ordering::Relaxed);
        if let Ok((stats, first)) = recv.await {
            if let Some(first) = first {
                Metrics::record(
                    &self.metrics.first_audio,
                    first.saturating_duration_since(answered),
                );
            }
            if let Ok(mut s) = self.metrics.caller_rtp.lock() {
                s.merge(&stats);
            }
        }
        match (server_bye, bye_ok) {
            (true, _) => Err("server hung up".into()),
            (false, false) => Err("BYE not answered".into()),
            _ => Ok(Outcome::Completed),
        }
    }
}

enum Outcome {
    Completed,
    Abandoned,
}

/// The fixed parts of a caller's requests; `to` and `target` follow the dialog.
struct CallerLeg<'a> {
    ep: &'a Endpoint,
    from: String,
    call_id: &'a str,
    to: String,
    /// Request-URI: the dialed number, then the answerer's Contact.
    target: String,
}

impl CallerLeg<'_> {
    fn write(
        &self,
        method: &Method,
        branch: &str,
        cseq: u32,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        message::OutgoingRequest {
            method,
            uri: &self.target,
            via: &self.ep.via(branch),
            from: &self.from,
            to: &self.to,
            call_id: self.call_id,
            cseq,
            extra,
            body,
        }
        .write()
    }
}
