//! yihaotong (一号通): the telephony core of a city's 12345 citizen hotline.
//!
//! # Layout
//!
//! - [`config`]: settings from defaults, a file and `YIHAOTONG_*` variables.
//! - [`sip`]: sans-IO SIP (messages over rsipstack, transactions, dialogs,
//!   digest auth) and the UDP/TCP transport edge.
//! - [`registrar`]: agent REGISTER and authentication, with lock-out.
//! - [`store`]: redb: agents, bindings, the number plan, records.
//! - [`routing`]: number normalization and plan files.
//! - [`acd`]: who takes the next call: the desk, its actor, records and reports.
//! - [`ivr`]: flow files, their checks, the sans-IO flow interpreter.
//! - [`media`]: SDP, RTP ports, the relay, prompts, DTMF, the media engine.
//! - [`call`]: the B2BUA, one task per call.
//! - [`server`]: sockets, SIP workers, dispatch.
//! - [`outbound`]: what agents may dial out through the trunk (toll-fraud
//!   guard).
//! - [`admin`]: CLI commands, locally or via the running server.
//! - [`api`]: the HTTP admin and CTI API, bearer tokens with roles.
//! - [`meters`]: the Prometheus figures at `/metrics`.
//! - [`notify`]: systemd's notify protocol: ready, stopping, watchdog.
//! - [`events`]: the CTI event stream (numbered, replayable, bounded).
//! - [`webhooks`]: the event stream as signed HTTP POSTs, retried, with
//!   dead letters counted.
//! - [`boxed`]: channels whose messages travel boxed (small per-call channels).
//! - [`load`]: the load harness (`yihaotong load`), a client of the server.

#![warn(missing_docs, unreachable_pub)]

pub mod acd;
pub mod admin;
pub mod api;
pub mod backends;
pub mod boxed;
pub mod call;
pub mod config;
pub mod events;
pub mod fuzzing;
pub mod ivr;
pub mod load;
pub mod media;
pub mod meters;
pub mod notify;
pub mod outbound;
pub mod overload;
pub mod registrar;
pub mod routing;
pub mod server;
pub mod sip;
pub mod store;
pub mod webhooks;
