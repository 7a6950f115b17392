//! yihaotong (一号通): the telephony core of a city's 12345 citizen hotline.
//!
//! # Layout
//!
//! The modules in their layers, bottom to top (ARCHITECTURE.md says more;
//! `tests/layers.rs` keeps imports pointing down).
//!
//! - Foundation: [`boxed`] (channels whose messages travel boxed),
//!   [`clock`] (wall time, deadlines), [`text`] (file positions, plain
//!   names, durations, text tables), [`notify`] (systemd's notify protocol).
//! - Protocol: [`sip`] (sans-IO messages over rsipstack, transactions,
//!   dialogs, digest auth; the UDP/TCP transport edge), [`media`] (SDP, RTP
//!   ports, prompts, DTMF, the media engine, relays, recording).
//! - SIP endpoint: [`endpoint`] (the SIP workers, one per core: what a
//!   worker is told, what a call hears from it, which worker owns a
//!   Call-ID, the door to admission).
//! - Number plan and limits: [`routing`] (numbers, routes, plan files),
//!   [`outbound`] (what agents may dial out: the toll-fraud guard),
//!   [`overload`] (when to refuse a new call).
//! - Settings: [`config`] (defaults, a file, `YIHAOTONG_*` variables).
//! - Records and instruments: [`store`] (redb: accounts, bindings, the plan,
//!   records and their types), [`events`] (the CTI event stream), [`meters`]
//!   (the Prometheus figures).
//! - Calls: [`registrar`] (REGISTER and agent auth, with lock-out), [`ivr`]
//!   (flow files, checks, the sans-IO interpreter), [`acd`] (the desk, its
//!   actor, the records writer, reports), [`call`] (the B2BUA, one task per
//!   call, and the `House` calls share), [`backends`] (the self-service systems' health).
//! - Back office: [`admin`] (CLI commands, locally or via the running
//!   server), [`api`] (the HTTP admin and CTI API), [`webhooks`] (events as
//!   signed HTTP POSTs).
//! - Wiring and tools: [`server`] (sockets, SIP workers, dispatch, background
//!   tasks), [`fuzzing`] (fuzz entry points), [`load`] (the load harness).

#![warn(missing_docs, unreachable_pub)]

pub mod acd;
pub mod admin;
pub mod api;
pub mod backends;
pub mod boxed;
pub mod call;
pub mod clock;
pub mod config;
pub mod endpoint;
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
pub mod text;
pub mod webhooks;
