//! Supervisors listening to, whispering to, or barging into agents' calls.
//!
//! Room: the call, and the supervisor's own short call. A supervisor's phone
//! dials `*31<agent>` (listen), `*32<agent>` (whisper: the agent hears them,
//! the caller does not) or `*33<agent>` (barge: both hear them). Only an
//! account marked `--supervisor` may. The agent's call, while it is bridged,
//! is found in [`super::LiveCalls`] by the agent's ID; it gives the supervisor's
//! socket to its relay, whose [`crate::media::monitor::Mixer`] does the
//! mixing. The supervisor's call then only answers, and ends when either
//! side does: the supervisor hangs up, or the agent's call ends or moves on.
//! It may touch the registry, the agent's relay (through its call), and the
//! supervisor's dialog.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tracing::{info, info_span, Instrument};

use super::sip_out::{deliver, SipOut};
use super::{offer_or_488, respond, Call, CallCtx, CallEvent};
use crate::endpoint::WorkerInput;
use crate::media::monitor::{Mixer, Mode};
use crate::media::player::Law;
use crate::media::relay::{RelayCmd, Supervisor};
use crate::media::sdp::{self, Direction};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request};
use crate::sip::random_token;
use crate::sip::transaction::TxKey;
use crate::sip::Peer;

/// A supervisor asks an agent's call to be let in.
/// (Sent boxed: a channel's block holds 32 of what it carries, and every
/// bridged agent call has one of these channels.)
pub(super) struct MonitorReq {
    mode: Mode,
    supervisor: String,
    socket: std::net::UdpSocket,
    remote: SocketAddr,
    offered: Vec<u8>,
    stop: oneshot::Receiver<()>,
    ended: oneshot::Sender<()>,
    /// The payload type to answer with, or the socket back and why not.
    reply: oneshot::Sender<Result<u8, (std::net::UdpSocket, &'static str)>>,
}

/// The mode a feature code asks for (`31`, `32`, `33`), and the agent.
pub fn parse_code(code: &str) -> Option<(Mode, &str)> {
    let mode = match code.get(..2)? {
        "31" => Mode::Listen,
        "32" => Mode::Whisper,
        "33" => Mode::Barge,
        _ => return None,
    };
    let agent = &code[2..];
    (!agent.is_empty() && agent.len() <= 32).then_some((mode, agent))
}

impl Call {
    /// A supervisor asks to join this (bridged) call.
    pub(super) async fn let_supervisor_in(&mut self, req: Box<MonitorReq>) {
        let req = *req;
        let law =
            Law::from_pt(self.voice.codec).filter(|_| req.offered.contains(&self.voice.codec));
        let Some(law) = law else {
            let _ = req.reply.send(Err((
                req.socket,
                "the supervisor's phone does not offer the call's codec",
            )));
            return;
        };
        let Some(relay) = &self.relay else {
            let _ = req
                .reply
                .send(Err((req.socket, "the call has no media to join")));
            return;
        };
        info!(supervisor = %req.supervisor, mode = req.mode.name(), "supervisor joins the call");
        let sup = Supervisor {
            socket: req.socket,
            remote: req.remote,
            mixer: Mixer::new(req.mode, law),
            stop: req.stop,
            ended: req.ended,
        };
        if relay
            .cmd
            .send(RelayCmd::Monitor(Box::new(sup)))
            .await
            .is_ok()
        {
            let _ = req.reply.send(Ok(self.voice.codec));
        }
        // If the relay is gone, the supervisor's call sees its reply
        // dropped and `ended` closed, and gives up.
    }
}

/// The supervisor's call: `*31`/`*32`/`*33` + agent from `supervisor`'s phone.
#[allow(clippy::too_many_arguments)]
pub async fn supervise(
    ctx: CallCtx,
    mut events: crate::boxed::Receiver<CallEvent>,
    key: TxKey,
    invite: Request,
    peer: Peer,
    supervisor: String,
    agent: String,
    mode: Mode,
) {
    let span = info_span!("supervise", call_id = %invite.core.call_id, supervisor = %supervisor, agent = %agent, mode = mode.name());
    async move {
        let shared = ctx.shared.clone();
        shared.live_calls.fetch_add(1, Ordering::Relaxed);
        let tag = random_token();
        let refuse = |status: u16, why: &str| {
            info!(status, why, "supervision refused");
            let warning = crate::sip::warning(why);
            respond(
                &ctx,
                &key,
                &invite,
                &tag,
                status,
                &[("Warning", &warning)],
                b"",
            );
        };
        'call: {
            let Some(offer) = offer_or_488(&ctx, &key, &invite, &tag) else {
                break 'call;
            };
            let Some(agent_call) = shared.calls.monitor_of(&agent) else {
                refuse(480, "the agent is not on a call");
                break 'call;
            };
            let Some(socket) = shared.ports.bind() else {
                refuse(503, "no RTP port");
                break 'call;
            };
            let Ok(local) = socket.local_addr() else {
                refuse(500, "RTP port unusable");
                break 'call;
            };
            let (stop_tx, stop) = oneshot::channel();
            let (ended, mut ended_rx) = oneshot::channel();
            let (reply, answer) = oneshot::channel();
            let req = MonitorReq {
                mode,
                supervisor: supervisor.clone(),
                socket,
                remote: offer.addr,
                offered: offer.codecs.clone(),
                stop,
                ended,
                reply,
            };
            if agent_call.send(Box::new(req)).await.is_err() {
                // The request (and the socket in it) was dropped with the call.
                shared.ports.release(local.port());
                refuse(480, "the agent's call ended");
                break 'call;
            }
            let pt = match answer.await {
                Ok(Ok(pt)) => pt,
                Ok(Err((_socket, why))) => {
                    shared.ports.release(local.port());
                    refuse(488, why);
                    break 'call;
                }
                Err(_) => {
                    shared.ports.release(local.port());
                    refuse(480, "the agent's call ended");
                    break 'call;
                }
            };
            let direction = if mode == Mode::Listen {
                Direction::SendOnly
            } else {
                Direction::SendRecv
            };
            let body = sdp::write(
                rand::random::<u32>().into(),
                1,
                local,
                &[pt],
                None,
                direction,
            );
            let contact = format!(
                "<sip:yihaotong@{};transport={}>",
                shared.host,
                peer.transport.via_token().to_ascii_lowercase()
            );
            respond(
                &ctx,
                &key,
                &invite,
                &tag,
                200,
                &[("Contact", &contact), ("Content-Type", "application/sdp")],
                body.as_bytes(),
            );
            let mut dialog = Dialog::uas(&invite, &tag);
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        None | Some(CallEvent::AckTimeout) => break,
                        Some(CallEvent::Request { key, request, .. }) => {
                            if !super::in_order(&ctx, &mut dialog, &key, &request) {
                                continue;
                            }
                            match request.method {
                                Method::Bye => {
                                    respond(&ctx, &key, &request, &tag, 200, &[], b"");
                                    info!("supervisor hung up");
                                    break;
                                }
                                Method::Invite | Method::Update => respond(
                                    &ctx,
                                    &key,
                                    &request,
                                    &tag,
                                    200,
                                    &[("Contact", &contact), ("Content-Type", "application/sdp")],
                                    body.as_bytes(),
                                ),
                                Method::Info | Method::Options => {
                                    respond(&ctx, &key, &request, &tag, 200, &[], b"")
                                }
                                _ => respond(&ctx, &key, &request, &tag, 405, &[], b""),
                            }
                        }
                        Some(_) => {}
                    },
                    _ = &mut ended_rx => {
                        info!("the supervised call ended");
                        let bye = SipOut::bye(&shared.host, &mut dialog, peer);
                        deliver(&shared, Some(&ctx.events_tx), bye);
                        break;
                    }
                }
            }
            // The relay lets the supervisor go and takes the port back.
            drop(stop_tx);
        }
        let _ = ctx
            .worker
            .send(WorkerInput::Unbind {
                call_id: invite.core.call_id.clone(),
            })
            .await;
        shared.live_calls.fetch_sub(1, Ordering::Relaxed);
    }
    .instrument(span)
    .await
}
