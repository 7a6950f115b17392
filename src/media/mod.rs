//! Media: SDP offer/answer, RTP ports, and the relay that anchors a bridged call.
//!
//! Room: the sound room. `sdp` is pure (text in, text out); `ports` is a
//! shared pool behind a short lock; `relay` owns the two RTP sockets of one
//! call and nothing else. Prompts, DTMF and recording join in the IVR issue.

pub mod dtmf;
pub mod ports;
pub mod prompts;
pub mod relay;
pub mod sdp;
