//! Media: SDP offer/answer, RTP ports, and the relay that anchors a bridged call.
//!
//! Room: the sound room. `sdp` is pure (text in, text out); `ports` is a
//! shared pool behind a short lock; `relay` is a bridged call's handle on its
//! media and `bridge` the engine-side relay that owns its two RTP sockets;
//! `player` and `engine` play prompts to IVR callers and hear their keys, and
//! relay bridged calls, many per thread on one clock; `recording` writes a
//! bridged call's two sides into a stereo WAV from the relay.

pub mod bridge;
pub mod dtmf;
pub mod engine;
pub mod monitor;
pub mod player;
pub mod ports;
pub mod prompts;
pub mod quality;
pub mod recording;
pub mod relay;
pub mod sdp;
