//! The SIP stack: messages, transactions, dialogs, digest auth, transports.
//!
//! Everything below `transport` is sans-IO: it takes bytes, parsed messages
//! and instants, and returns bytes and events. `transport` is the only part
//! that owns sockets.

pub mod auth;
pub mod dialog;
pub mod message;
pub mod transaction;
pub mod transport;

use std::net::SocketAddr;

/// The transport a message came in on, or must leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// UDP: unreliable, retransmissions needed.
    Udp,
    /// TCP: reliable, stream framing.
    Tcp,
}

impl TransportKind {
    /// The Via token.
    pub fn via_token(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
        }
    }
}

/// The far end of a message: address, transport and, for TCP, which
/// connection (responses go back on the connection a request came in on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Source address of what we received, or destination of what we send.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: TransportKind,
    /// TCP connection id (0 for UDP, or "open a new connection").
    pub conn: u64,
}

impl Peer {
    /// A peer.
    pub fn new(addr: SocketAddr, transport: TransportKind, conn: u64) -> Peer {
        Peer {
            addr,
            transport,
            conn,
        }
    }

    /// Whether the transport is reliable (no retransmissions).
    pub fn reliable(&self) -> bool {
        self.transport == TransportKind::Tcp
    }
}

/// A random token for tags, branches and nonces (hex, 64 bits of entropy).
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A new RFC 3261 branch.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token())
}
