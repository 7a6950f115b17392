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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

/// A Warning header value of ours (RFC 3261 §20.43, code 399): `text` as a
/// quoted string, its quotes and backslashes escaped and line breaks dropped.
pub fn warning(text: &str) -> String {
    warning_coded(399, text)
}

/// A `Warning` value with one of RFC 3261 §20.43's codes (302
/// incompatible transport protocol, 305 incompatible media format…).
pub fn warning_coded(code: u16, text: &str) -> String {
    let mut v = String::with_capacity(text.len() + 20);
    v.push_str(&code.to_string());
    v.push_str(" yihaotong \"");
    for c in text.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            v.push('\\');
        }
        v.push(c);
    }
    v.push('"');
    v
}

/// A random token for tags, branches and nonces (hex, 64 bits of entropy).
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A new RFC 3261 branch.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token())
}

/// Where a configured SIP URI (a backend, a transfer target) sends us: the
/// URI itself and the peer to send to. Only literal IP addresses are taken
/// (no DNS on the call path); the port defaults to 5060, the transport to UDP
/// unless `;transport=tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    /// The Request-URI to use.
    pub uri: String,
    /// The user part, if any.
    pub user: Option<String>,
    /// Where to send.
    pub peer: Peer,
}

impl SipTarget {
    /// Parses `sip:user@192.0.2.1:5070;transport=tcp`.
    pub fn parse(uri: &str) -> Option<SipTarget> {
        let rest = uri.strip_prefix("sip:")?;
        if uri.len() > 256
            || uri
                .chars()
                .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
        {
            return None;
        }
        let (main, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (user, host_port) = match main.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return None,
            None => (None, main),
        };
        let addr = host_port.parse::<SocketAddr>().ok().or_else(|| {
            let ip = host_port.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 5060))
        })?;
        let tcp = params
            .split(';')
            .any(|p| p.eq_ignore_ascii_case("transport=tcp"));
        let transport = if tcp {
            TransportKind::Tcp
        } else {
            TransportKind::Udp
        };
        Some(SipTarget {
            uri: uri.to_string(),
            user,
            peer: Peer::new(addr, transport, 0),
        })
    }

    /// This target as `user`'s, when its URI names no user (a gateway
    /// reached by the number dialed: `sip:10.0.0.5:5060` becomes
    /// `sip:85123456@10.0.0.5:5060`); a URI with a user stays as it is.
    pub fn or_user(self, user: &str) -> SipTarget {
        if self.user.is_some() || user.is_empty() {
            return self;
        }
        let rest = self.uri.strip_prefix("sip:").unwrap_or(&self.uri);
        SipTarget {
            uri: format!("sip:{user}@{rest}"),
            user: Some(user.to_string()),
            peer: self.peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_target_takes_the_number_dialed() {
        let gw = SipTarget::parse("sip:127.0.0.1:5093;transport=tcp").expect("parses");
        assert_eq!(gw.user, None);
        let t = gw.or_user("85123456");
        assert_eq!(t.uri, "sip:85123456@127.0.0.1:5093;transport=tcp");
        assert_eq!(t.user.as_deref(), Some("85123456"));
        assert_eq!(t.peer.transport, TransportKind::Tcp);
        let fixed = SipTarget::parse("sip:12333@127.0.0.1:5091").expect("parses");
        assert_eq!(fixed.or_user("85123456").uri, "sip:12333@127.0.0.1:5091");
    }

    #[test]
    fn targets() {
        let t = SipTarget::parse("sip:12333@127.0.0.1:5070").expect("target");
        assert_eq!(t.user.as_deref(), Some("12333"));
        assert_eq!(t.peer.addr, "127.0.0.1:5070".parse().expect("addr"));
        let t = SipTarget::parse("sip:127.0.0.1;transport=tcp").expect("target");
        assert_eq!(t.peer.addr.port(), 5060);
        assert_eq!(t.peer.transport, TransportKind::Tcp);
        assert!(SipTarget::parse("sip:x@backend.example").is_none());
        assert!(SipTarget::parse("tel:110").is_none());
        assert!(SipTarget::parse("sip:@127.0.0.1").is_none());
    }
}
