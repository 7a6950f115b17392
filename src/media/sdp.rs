//! SDP for a B2BUA with anchored media (RFC 3264 offer/answer), sans-IO.
//!
//! Parsing uses webrtc-rs's sans-IO `rtc-sdp`; we write our own SDP as text
//! because ours is always the same small shape (one audio stream, G.711 and
//! telephone-event).

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::description::session::SessionDescription;

/// Most `m=` sections we look at; more is refused (hostile input bound).
pub const MAX_MEDIA_SECTIONS: usize = 8;
/// Largest SDP body we parse.
pub const MAX_SDP_BYTES: usize = 8 * 1024;
/// Most lines in an SDP body; more is refused (hostile input bound).
pub const MAX_SDP_LINES: usize = 256;

/// Stream direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// sendrecv (the default)
    SendRecv,
    /// sendonly: the offerer puts the other side on hold
    SendOnly,
    /// recvonly
    RecvOnly,
    /// inactive
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn token(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answerer mirrors (sendonly ↔ recvonly).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether this describes a hold (no media expected from one side).
    pub fn is_hold(self) -> bool {
        self != Direction::SendRecv
    }
}

/// What we need from a peer's SDP: where to send, which payloads it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    /// RTP destination (c= address, m= port). Port 0 means the stream is refused.
    pub addr: SocketAddr,
    /// G.711 payload types in the peer's order of preference (0 = PCMU, 8 = PCMA).
    pub codecs: Vec<u8>,
    /// telephone-event payload type, if offered.
    pub telephone_event: Option<u8>,
    /// Direction.
    pub direction: Direction,
}

/// Why an SDP body was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not parseable SDP.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream with PCMU or PCMA.
    #[error("no acceptable audio codec (PCMU/PCMA)")]
    NoCodec,
    /// The audio stream asks for a media profile we cannot meet: RFC 3264
    /// wants the answer in the offer's profile, and answering an SRTP or
    /// DTLS-SRTP offer with plain RTP/AVP would let the phone send its
    /// audio in the clear.
    #[error("media profile {0} is not supported: encrypted media (SRTP, DTLS-SRTP) is not served here; offer RTP/AVP")]
    Profile(String),
}

impl SdpError {
    /// The RFC 3261 warn-code for a 488 carrying this reason.
    pub fn warn_code(&self) -> u16 {
        match self {
            SdpError::Malformed(_) => 399,
            SdpError::NoCodec => 305,
            SdpError::Profile(_) => 302,
        }
    }
}

/// Parses a peer's SDP and picks the first audio stream.
pub fn parse_audio(body: &[u8]) -> Result<AudioOffer, SdpError> {
    if body.len() > MAX_SDP_BYTES {
        return Err(SdpError::Malformed("too large".into()));
    }
    if body.split(|b| *b == b'\n').count() > MAX_SDP_LINES + 1 {
        return Err(SdpError::Malformed("too many lines".into()));
    }
    let sdp = SessionDescription::unmarshal(&mut Cursor::new(body))
        .map_err(|e| SdpError::Malformed(e.to_string()))?;
    if sdp.media_descriptions.len() > MAX_MEDIA_SECTIONS {
        return Err(SdpError::Malformed("too many media sections".into()));
    }
    let session_addr = sdp
        .connection_information
        .as_ref()
        .and_then(|c| c.address.as_ref())
        .map(|a| a.address.clone());
    let session_dir = direction_of(sdp.attributes.iter().map(|a| a.key.as_str()));
    for m in &sdp.media_descriptions {
        if m.media_name.media != "audio" {
            continue;
        }
        let profile = m.media_name.protos.join("/");
        if !profile.eq_ignore_ascii_case("RTP/AVP") {
            // The first live audio stream decides: we answer one stream.
            if m.media_name.port.value == 0 {
                continue;
            }
            return Err(SdpError::Profile(profile.chars().take(64).collect()));
        }
        let addr_text = m
            .connection_information
            .as_ref()
            .and_then(|c| c.address.as_ref())
            .map(|a| a.address.clone())
            .or_else(|| session_addr.clone())
            .ok_or_else(|| SdpError::Malformed("no c= address".into()))?;
        // Strip a multicast TTL suffix; a host name is refused (we never resolve names).
        let ip: IpAddr = addr_text
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| {
                SdpError::Malformed(format!("c= address {addr_text:?} is not an IP address"))
            })?;
        let port = u16::try_from(m.media_name.port.value)
            .map_err(|_| SdpError::Malformed("bad m= port".into()))?;
        let rtpmaps = m.codecs();
        let mut codecs = Vec::new();
        let mut telephone_event = None;
        for f in &m.media_name.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            let name = rtpmaps.get(&pt).map(|c| c.name.to_ascii_uppercase());
            // G.711 is always static (0, 8); a dynamic number for it would
            // need payload-type rewriting, which no phone we know requires.
            match (pt, name.as_deref()) {
                (0, None | Some("PCMU")) => codecs.push(0),
                (8, None | Some("PCMA")) => codecs.push(8),
                (96..=127, Some("TELEPHONE-EVENT")) => telephone_event = Some(pt),
                _ => {}
            }
        }
        codecs.dedup();
        if codecs.is_empty() {
            return Err(SdpError::NoCodec);
        }
        let media_dir = direction_of(m.attributes.iter().map(|a| a.key.as_str()));
        let mut direction = if media_dir != Direction::SendRecv {
            media_dir
        } else {
            session_dir
        };
        if ip.is_unspecified() && direction == Direction::SendRecv {
            // RFC 2543 hold: c=0.0.0.0.
            direction = Direction::SendOnly;
        }
        return Ok(AudioOffer {
            addr: SocketAddr::new(ip, port),
            codecs,
            telephone_event,
            direction,
        });
    }
    Err(SdpError::NoCodec)
}

fn direction_of<'a>(keys: impl Iterator<Item = &'a str>) -> Direction {
    let mut dir = Direction::SendRecv;
    for k in keys {
        dir = match k {
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            "sendrecv" => Direction::SendRecv,
            _ => continue,
        };
    }
    dir
}

/// Our SDP: one audio stream at `addr` with `codecs` (and telephone-event).
pub fn write(
    session_id: u64,
    version: u64,
    addr: SocketAddr,
    codecs: &[u8],
    telephone_event: Option<u8>,
    direction: Direction,
) -> String {
    let ip_kind = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let ip = addr.ip();
    let mut formats: Vec<String> = codecs.iter().map(|c| c.to_string()).collect();
    if let Some(te) = telephone_event {
        formats.push(te.to_string());
    }
    let mut s = format!(
        "v=0\r\no=yihaotong {session_id} {version} IN {ip_kind} {ip}\r\ns=yihaotong\r\nc=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {}\r\n",
        addr.port(),
        formats.join(" ")
    );
    for c in codecs {
        match c {
            0 => s.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            8 => s.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            _ => {}
        }
    }
    if let Some(te) = telephone_event {
        s.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    s.push_str("a=ptime:20\r\n");
    s.push_str(&format!("a={}\r\n", direction.token()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

    #[test]
    fn offer_parsing_keeps_preference_and_dtmf() {
        let o = parse_audio(OFFER.as_bytes()).expect("valid offer");
        assert_eq!(o.addr, "127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(o.codecs, vec![8, 0]);
        assert_eq!(o.telephone_event, Some(101));
        assert_eq!(o.direction, Direction::SendRecv);
    }

    #[test]
    fn hold_forms() {
        let o = parse_audio(OFFER.replace("a=sendrecv", "a=sendonly").as_bytes()).expect("parse");
        assert_eq!(o.direction, Direction::SendOnly);
        let o = parse_audio(
            OFFER
                .replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
                .as_bytes(),
        )
        .expect("parse");
        assert_eq!(o.direction, Direction::SendOnly);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse_audio(OFFER.replace("8 0 96 101", "96").as_bytes()),
            Err(SdpError::NoCodec)
        );
        assert!(matches!(
            parse_audio(b"garbage"),
            Err(SdpError::Malformed(_))
        ));
        // Bounds: media sections and lines (each under the byte bound).
        let many_sections = format!(
            "{OFFER}{}",
            "m=audio 0 RTP/AVP 0\r\n".repeat(MAX_MEDIA_SECTIONS)
        );
        assert!(many_sections.len() < MAX_SDP_BYTES);
        assert_eq!(
            parse_audio(many_sections.as_bytes()),
            Err(SdpError::Malformed("too many media sections".into()))
        );
        let many_lines = format!("{OFFER}{}", "a=x\r\n".repeat(MAX_SDP_LINES));
        assert!(many_lines.len() < MAX_SDP_BYTES);
        assert_eq!(
            parse_audio(many_lines.as_bytes()),
            Err(SdpError::Malformed("too many lines".into()))
        );
        let named = OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 media.example.com");
        assert!(matches!(
            parse_audio(named.as_bytes()),
            Err(SdpError::Malformed(_))
        ));
    }

    #[test]
    fn secure_profiles_are_refused_never_answered_in_the_clear() {
        let sdes = OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
            "a=sendrecv",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\na=sendrecv",
        );
        assert_eq!(
            parse_audio(sdes.as_bytes()),
            Err(SdpError::Profile("RTP/SAVP".into()))
        );
        let webrtc = OFFER.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
        let refused = parse_audio(webrtc.as_bytes()).expect_err("DTLS-SRTP refused");
        assert_eq!(refused, SdpError::Profile("UDP/TLS/RTP/SAVPF".into()));
        assert_eq!(refused.warn_code(), 302);
        assert!(
            refused.to_string().contains("UDP/TLS/RTP/SAVPF"),
            "{refused}"
        );
        // Feedback without encryption is still another profile.
        let avpf = OFFER.replace("RTP/AVP", "RTP/AVPF");
        assert!(matches!(
            parse_audio(avpf.as_bytes()),
            Err(SdpError::Profile(_))
        ));
        // A secure stream already declined (port 0) does not decide.
        let declined_first = OFFER.replace(
            "m=audio 40000 RTP/AVP",
            "m=audio 0 RTP/SAVP 0\r\nm=audio 40000 RTP/AVP",
        );
        let o = parse_audio(declined_first.as_bytes()).expect("plain stream taken");
        assert_eq!(o.addr.port(), 40000);
    }

    #[test]
    fn our_sdp_round_trips() {
        let text = write(
            1,
            2,
            "127.0.0.1:20000".parse().expect("addr"),
            &[0],
            Some(101),
            Direction::RecvOnly,
        );
        let o = parse_audio(text.as_bytes()).expect("own SDP parses");
        assert_eq!(o.codecs, vec![0]);
        assert_eq!(o.telephone_event, Some(101));
        assert_eq!(o.direction, Direction::RecvOnly);
    }
}
