//! The test kit of yihaotong's integration tests: the real server binary
//! on loopback with a temp data folder ([`server`]), small SIP phones that
//! speak real SIP ([`phone`]) and RTP ([`rtp`]), calls in a few steps
//! ([`calls`]), the HTTP API and the event stream ([`http`]), and the
//! independent peers some tests drive ([`baresip`], [`browser`]). Tests
//! take it as `use yihaotong_testkit as common;`.

pub mod baresip;
pub mod browser;
pub mod calls;
pub mod http;
pub mod phone;
pub mod rtp;
pub mod server;

pub use calls::*;
pub use http::*;
pub use phone::*;
pub use rtp::*;
pub use server::*;
