//! SIP messages: the facade over rsipstack's `sip` module.
//!
//! Room: the bottom of the SIP house. It turns bytes into [`Message`]s and
//! [`Message`]s into bytes, and nothing else: no sockets, no clocks, no state.
//! Everything above (transactions, registrar, calls) sees only these types, so
//! the parser behind them can be swapped without touching the rest.
//!
//! The header section is split here (folding, compact names, size and count
//! limits, non-UTF-8 bytes kept as replacement characters instead of silently
//! dropping the header). Structured values (URIs, Via, From/To, Contact) are
//! parsed by rsipstack's typed parsers. rsipstack is lenient where RFC 3261 is
//! not (it accepts `SIP/7.0`, status 1000, a CSeq whose method differs from the
//! request's), so those checks are made here, and each failure says which
//! response RFC 3261 wants for it ([`Rejection::status`]).

use std::fmt::Write as _;

use bytes::Bytes;
use rsipstack::sip::headers::typed;

/// Largest message we accept on any transport. UDP cannot carry more anyway;
/// TCP framing refuses larger bodies before buffering them.
pub const MAX_MESSAGE_SIZE: usize = 65_535;
/// Most header fields in one message (after splitting comma lists this bounds
/// the work any one message can cause).
pub const MAX_HEADERS: usize = 128;
/// Most Via entries we accept; a request looping through proxies is refused.
pub const MAX_VIAS: usize = 70;

/// A SIP method. Unknown methods are kept by name so they can get a 501.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// REFER
    Refer,
    /// NOTIFY
    Notify,
    /// SUBSCRIBE
    Subscribe,
    /// MESSAGE
    Message,
    /// PRACK
    Prack,
    /// PUBLISH
    Publish,
    /// Any other token: answered 501 by the server.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 3261 says).
    pub fn from_token(token: &str) -> Option<Method> {
        if token.is_empty() || !token.bytes().all(is_token_byte) {
            return None;
        }
        Some(match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PRACK" => Method::Prack,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        })
    }

    /// The token as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Prack => "PRACK",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `host[:port]` where host is a name, an IPv4 address or a bracketed IPv6 address.
fn valid_host_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        // RFC 5118 §4.10: `x:::y` (allowed by RFC 3261's ABNF) is read as `x::y`.
        let v6 = &rest[..end];
        if v6.parse::<std::net::Ipv6Addr>().is_err()
            && v6
                .replacen(":::", "::", 1)
                .parse::<std::net::Ipv6Addr>()
                .is_err()
        {
            return false;
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => ("v6", Some(p)),
            None if after.is_empty() => ("v6", None),
            None => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Header fields in wire order. Names are stored in their long, lowercase form
/// (`v` becomes `via`) so lookups are simple; values are trimmed and unfolded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of a header, by long lowercase name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, each comma-separated entry on its own
    /// (except for headers whose values contain commas themselves: the
    /// credentials and challenges, and dates).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let whole = matches!(
            name,
            "www-authenticate"
                | "authorization"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "date"
        );
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(move |(_, v)| {
                let parts: Box<dyn Iterator<Item = &str>> = if whole {
                    Box::new(std::iter::once(v.as_str()))
                } else {
                    Box::new(split_list(v))
                };
                parts
            })
    }

    /// Whether any header of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// All headers, for pass-through.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn push(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }
}

/// Most `X-` headers taken from a peer centre's INVITE.
const MAX_PEER_DATA: usize = 16;

/// A peer centre's call data (分中心 互转: its keys, ticket, hotline, call
/// ID), from the `X-` headers of its INVITE, each renamed `X-Peer-…` so it
/// can never pass for data of ours. Bounded: at most 16 headers, names of
/// up to 48 letters, digits and dashes, values of up to 256 characters
/// without control characters; anything else is left out.
pub fn peer_call_data(headers: &Headers) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in headers.iter() {
        let Some(rest) = name.strip_prefix("x-") else {
            continue;
        };
        let name_ok = !rest.is_empty()
            && rest.len() <= 48
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.chars().count() <= 256 && !value.chars().any(char::is_control);
        if !name_ok || !value_ok {
            continue;
        }
        let rest = rest.strip_prefix("peer-").unwrap_or(rest);
        let titled: Vec<String> = rest
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let ours = format!("X-Peer-{}", titled.join("-"));
        if out.iter().any(|(n, _)| *n == ours) {
            continue;
        }
        out.push((ours, value.trim().to_string()));
        if out.len() == MAX_PEER_DATA {
            break;
        }
    }
    out
}

/// Most History-Info entries passed on (RFC 7044 §9.2 lets an intermediary
/// drop entries; a caller must not grow our INVITEs without bound).
const MAX_HISTORY_ENTRIES: usize = 16;

/// The History-Info (RFC 7044) of a leg we place for a call: the entries the
/// call came with (at most [`MAX_HISTORY_ENTRIES`], the newest kept; entries
/// without a usable index dropped), or else one for the number dialed as it
/// reached us (`dialed_uri`); then `target_uri` indexed under the last, tagged
/// `rc` when only the host changed (a hand-off to the same number's own
/// system) or `mp` when the number did (a transfer, a seat).
pub fn history_info(incoming: &[&str], dialed_uri: &str, target_uri: &str) -> String {
    let entries: Vec<&str> = incoming
        .iter()
        .flat_map(|v| split_list(v))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let index_of = |e: &str| {
        e.rsplit_once('>')
            .map(|(_, params)| params)
            .into_iter()
            .flat_map(|p| p.split(';'))
            .find_map(|p| p.trim().strip_prefix("index="))
            .map(|i| i.trim().to_string())
            .filter(|i| {
                !i.is_empty() && i.len() <= 32 && i.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
    };
    let kept = &entries[entries.len().saturating_sub(MAX_HISTORY_ENTRIES)..];
    let mut out: Vec<String> = Vec::with_capacity(kept.len() + 2);
    let mut last = None;
    for e in kept {
        if let Some(i) = index_of(e) {
            out.push((*e).to_string());
            last = Some(i);
        }
    }
    let parent = match last {
        Some(i) => i,
        None => {
            out.clear();
            out.push(format!("<{dialed_uri}>;index=1"));
            "1".to_string()
        }
    };
    let user = |uri: &str| {
        uri.split_once(':')
            .map(|(_, rest)| rest.split('@').next().unwrap_or_default().to_string())
    };
    let tag = if user(target_uri) == user(dialed_uri) {
        "rc"
    } else {
        "mp"
    };
    out.push(format!("<{target_uri}>;index={parent}.1;{tag}={parent}"));
    out.join(", ")
}

/// The Diversion (RFC 5806) of a leg we place for a call dialed to
/// `dialed_uri`: ours first, then those the call came with (bounded).
pub fn diversion(incoming: &[&str], dialed_uri: &str) -> String {
    let mut out = vec![format!("<{dialed_uri}>;reason=unconditional;counter=1")];
    out.extend(
        incoming
            .iter()
            .flat_map(|v| split_list(v))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .take(MAX_HISTORY_ENTRIES - 1)
            .map(str::to_string),
    );
    out.join(", ")
}

/// Splits a comma-separated header value into entries, respecting quotes and
/// angle brackets (a URI or display name may contain commas).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut angle = false;
    let mut out = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(value[start.min(value.len())..].trim());
    out.into_iter().filter(|s| !s.is_empty())
}

/// One Via entry, reduced to what transactions and responses need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The entry as received, echoed back unchanged in responses.
    pub raw: String,
    /// Transport token (UDP, TCP, ...), uppercase.
    pub transport: String,
    /// `sent-by` as written (host[:port]), part of the RFC 3261 transaction key.
    pub sent_by: String,
    /// The branch parameter, if any.
    pub branch: Option<String>,
    /// Whether the client asked for `rport` (RFC 3581).
    pub rport: bool,
}

impl Via {
    /// Parses one Via entry: `SIP / 2.0 / transport sent-by *( ; param )`.
    /// Written here rather than taken from rsipstack, whose parser refuses
    /// transports it does not know (RFC 3261 allows any token).
    fn parse(raw: &str) -> Option<Via> {
        let mut parts = raw.splitn(3, '/');
        let proto = parts.next()?.trim();
        let version = parts.next()?.trim();
        if !proto.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return None;
        }
        let rest = parts.next()?.trim_start();
        let split = rest.find(|c: char| c.is_ascii_whitespace())?;
        let transport = &rest[..split];
        if transport.is_empty() || !transport.bytes().all(is_token_byte) {
            return None;
        }
        let rest = rest[split..].trim_start();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim(), &rest[i + 1..]),
            None => (rest.trim(), ""),
        };
        if !valid_host_port(sent_by) {
            return None;
        }
        let mut branch = None;
        let mut rport = false;
        for param in params.split(';').filter(|_| !params.trim().is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (param.trim(), None),
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return None;
            }
            if name.eq_ignore_ascii_case("branch") {
                let v = value.filter(|v| !v.is_empty() && v.bytes().all(is_token_byte))?;
                branch = Some(v.to_string());
            } else if name.eq_ignore_ascii_case("rport") {
                rport = true;
            }
        }
        Some(Via {
            raw: raw.to_string(),
            transport: transport.to_ascii_uppercase(),
            sent_by: sent_by.to_string(),
            branch,
            rport,
        })
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|b| b.starts_with("z9hG4bK"))
    }
}

/// A From or To value: the raw text (echoed in responses), its URI and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The value as received.
    pub raw: String,
    /// The URI alone, as text.
    pub uri: String,
    /// The user part of the URI, if any.
    pub user: Option<String>,
    /// The `tag` parameter, if any.
    pub tag: Option<String>,
}

/// Whether a name-addr / addr-spec value is well formed where rsipstack is
/// liberal (RFC 3261 §25.1): the display name is a quoted string (closed) or
/// tokens; nothing but the URI sits inside `<>`; an addr-spec without `<>`
/// carries no `?` headers or `,`.
fn name_addr_shape_ok(raw: &str) -> bool {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('"') {
        // quoted-string: ends at the first unescaped quote.
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { return false };
        let after = rest[end + 1..].trim_start();
        return after.starts_with('<') && addr_in_brackets_ok(after);
    }
    // A `<` after the scheme's colon belongs to a parameter of an addr-spec.
    match raw.find('<').filter(|open| !raw[..*open].contains(':')) {
        Some(open) => {
            // Tokens (UTF-8 names are let through: phones send them unquoted).
            let display = &raw[..open];
            display
                .bytes()
                .all(|b| is_token_byte(b) || b == b' ' || b == b'\t' || b >= 0x80)
                && addr_in_brackets_ok(&raw[open..])
        }
        None => {
            let addr = raw.split(';').next().unwrap_or_default().trim_end();
            !addr.contains(['?', ',', ' ', '"', '<', '>'])
        }
    }
}

/// `<uri>` with no white space just inside the brackets.
fn addr_in_brackets_ok(s: &str) -> bool {
    let Some(close) = s.find('>') else {
        return false;
    };
    let inner = &s[1..close];
    !inner.is_empty() && inner.trim() == inner
}

impl NameAddr {
    fn parse(raw: &str) -> Option<NameAddr> {
        if !name_addr_shape_ok(raw) {
            return None;
        }
        // RFC 5118 §4.10: tolerate the `x:::y` IPv6 form RFC 3261's ABNF
        // allowed, by reading it as `x::y` (the value is echoed as received).
        let parsed = match typed::From::parse(raw) {
            Ok(p) => p,
            Err(_) if raw.contains(":::") => typed::From::parse(&raw.replace(":::", "::")).ok()?,
            Err(_) => return None,
        };
        let tag = parsed.tag().map(|t| t.to_string());
        if raw.contains(";tag") && tag.is_none() {
            // A bare or empty `;tag` is malformed, not absent.
            return None;
        }
        Some(NameAddr {
            raw: raw.to_string(),
            uri: parsed.uri.to_string(),
            user: parsed.uri.user().map(str::to_string),
            tag,
        })
    }
}

/// The headers every request and response must carry (RFC 3261 §8.1.1),
/// already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Via entries, top first.
    pub vias: Vec<Via>,
    /// From.
    pub from: NameAddr,
    /// To.
    pub to: NameAddr,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
    /// CSeq method.
    pub cseq_method: Method,
}

impl Core {
    /// The top Via: present by construction.
    pub fn top_via(&self) -> &Via {
        // `parse` refuses a message without a Via, so index 0 exists.
        &self.vias[0]
    }
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method from the request line.
    pub method: Method,
    /// Request-URI as written.
    pub uri: String,
    /// User part of the Request-URI (the dialed number for INVITE).
    pub uri_user: Option<String>,
    /// The checked mandatory headers.
    pub core: Core,
    /// Every header, including those in `core`.
    pub headers: Headers,
    /// The body (exactly Content-Length bytes).
    pub body: Bytes,
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code, 100..=699.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// The checked mandatory headers.
    pub core: Core,
    /// Every header.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

/// A parsed SIP message.
#[derive(Debug, Clone)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// The mandatory headers of either kind.
    pub fn core(&self) -> &Core {
        match self {
            Message::Request(r) => &r.core,
            Message::Response(r) => &r.core,
        }
    }
}

/// Why a message was refused, and whether (and how) to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status RFC 3261 asks for (400, 505, ...), or `None` when the
    /// message must be dropped silently (a response, or nothing to answer to).
    pub status: Option<u16>,
    /// A short, human-readable reason; also used in a `Warning`-free reason phrase.
    pub reason: String,
    /// For answerable requests: enough of the request to write a stateless
    /// response (Via, From, To, Call-ID, CSeq as received).
    pub echo: Option<Box<Echo>>,
}

/// Raw header values of a refused request, enough to build a stateless answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    /// Via values in order.
    pub vias: Vec<String>,
    /// From value.
    pub from: String,
    /// To value.
    pub to: String,
    /// Call-ID value.
    pub call_id: String,
    /// CSeq value.
    pub cseq: String,
}

impl Echo {
    /// A response to the request these values came from, serialized: one
    /// kept to be answered later (a re-INVITE waiting for the other leg)
    /// needs only them.
    pub fn response(
        &self,
        status: u16,
        to_tag: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        write_response(self, status, None, to_tag, extra, body)
    }
}

/// Where the header section ends and how long the whole message is, for
/// stream framing: `Ok(None)` means more bytes are needed.
pub fn frame_length(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    // Keep-alive CRLFs between messages are skipped by the caller (the TCP
    // reader), which also answers a CRLFCRLF ping (RFC 5626 §3.5.1).
    let Some(end) = find_header_end(buf) else {
        if buf.len() > MAX_MESSAGE_SIZE {
            return Err("header section too large");
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut content_length = None;
    for line in head.split(|b| *b == b'\n') {
        let line = trim_cr(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim_bytes(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(trim_bytes(&line[colon + 1..]))
                .map_err(|_| "bad Content-Length")?;
            let n: usize = value.parse().map_err(|_| "bad Content-Length")?;
            content_length = Some(n);
        }
    }
    // RFC 3261 §18.3: over a stream, Content-Length is mandatory.
    let n = content_length.ok_or("missing Content-Length on a stream")?;
    // A Content-Length near usize::MAX must not wrap (found by fuzzing).
    let total = end
        .checked_add(n)
        .filter(|t| *t <= MAX_MESSAGE_SIZE)
        .ok_or("message too large")?;
    Ok((buf.len() >= total).then_some(total))
}

/// The 400 owed to a request whose stream framing failed (a negative or
/// missing Content-Length, RFC 4475 §3.1.2.3), written from its header
/// section; `None` when that is not an answerable request.
pub fn unframeable_answer(buf: &[u8], why: &str) -> Option<Vec<u8>> {
    let end = find_header_end(buf)?;
    let echo = match parse(&buf[..end]) {
        Ok(Message::Request(req)) => req.echo(),
        Ok(Message::Response(_)) => return None,
        Err(rej) => *rej.echo.filter(|_| rej.status.is_some())?,
    };
    if echo.cseq.ends_with("ACK") {
        return None;
    }
    let reason = if why.contains("Content-Length") {
        "Bad Content-Length"
    } else {
        "Bad Request"
    };
    let tag = crate::sip::random_token();
    Some(write_response(
        &echo,
        400,
        Some(reason),
        Some(&tag),
        &[],
        b"",
    ))
}

/// Offset just past the blank line that ends the header section.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end.max(start)]
}

/// Long lowercase form of a header name (compact forms expanded).
fn long_name(name: &str) -> String {
    let long = match name {
        "i" | "I" => "call-id",
        "m" | "M" => "contact",
        "e" | "E" => "content-encoding",
        "l" | "L" => "content-length",
        "c" | "C" => "content-type",
        "f" | "F" => "from",
        "s" | "S" => "subject",
        "k" | "K" => "supported",
        "t" | "T" => "to",
        "v" | "V" => "via",
        "o" | "O" => "event",
        "r" | "R" => "refer-to",
        "b" | "B" => "referred-by",
        "x" | "X" => "session-expires",
        "u" | "U" => "allow-events",
        other => return other.to_ascii_lowercase(),
    };
    long.to_string()
}

fn bad(status: Option<u16>, reason: &str, echo: Option<Box<Echo>>) -> Rejection {
    Rejection {
        status,
        reason: reason.to_string(),
        echo,
    }
}

/// Parses one complete message (a datagram, or one framed stream message).
pub fn parse(buf: &[u8]) -> Result<Message, Rejection> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(bad(None, "message too large", None));
    }
    // Leading CRLFs are keep-alives or stream padding (RFC 3261 §7.5).
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let Some(head_end) = find_header_end(buf) else {
        return Err(bad(None, "no end of header section", None));
    };
    let head = &buf[..head_end];
    let body = &buf[head_end..];

    let mut lines = head.split(|b| *b == b'\n').map(trim_cr);
    let start_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();

    // Split header lines, unfolding continuation lines.
    let mut headers = Headers::default();
    let mut pending: Option<(String, String)> = None;
    let mut malformed_line = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match pending.as_mut() {
                Some((_, value)) => {
                    value.push(' ');
                    value.push_str(String::from_utf8_lossy(trim_bytes(line)).as_ref());
                }
                None => malformed_line = true,
            }
            continue;
        }
        if let Some((n, v)) = pending.take() {
            headers.push(n, v);
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            malformed_line = true;
            continue;
        };
        let name = String::from_utf8_lossy(trim_bytes(&line[..colon]));
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            malformed_line = true;
            continue;
        }
        let value = String::from_utf8_lossy(trim_bytes(&line[colon + 1..])).into_owned();
        pending = Some((long_name(&name), value));
        if headers.0.len() >= MAX_HEADERS {
            return Err(bad(None, "too many headers", None));
        }
    }
    if let Some((n, v)) = pending.take() {
        headers.push(n, v);
    }

    let is_response = start_line.starts_with("SIP/");
    let echo = echo_of(&headers).map(Box::new);
    // Only requests are ever answered (never an ACK); a broken response is dropped.
    let answer = |status: u16| {
        if is_response || echo.is_none() || start_line.starts_with("ACK ") {
            None
        } else {
            Some(status)
        }
    };
    let reject = |status: u16, reason: &str| bad(answer(status), reason, echo.clone());

    // Body length: Content-Length must be a number and not exceed the bytes we have.
    let body = match headers.get("content-length") {
        Some(v) => {
            let n: usize = v.parse().map_err(|_| reject(400, "Bad Content-Length"))?;
            if n > body.len() {
                return Err(reject(400, "Content-Length larger than body"));
            }
            &body[..n]
        }
        None => body,
    };
    if malformed_line {
        return Err(reject(400, "Malformed header line"));
    }
    if headers
        .0
        .iter()
        .filter(|(n, _)| n == "content-length")
        .count()
        > 1
    {
        return Err(reject(400, "Duplicate Content-Length"));
    }
    // A request in another SIP version gets 505 even if its headers differ too.
    if !is_response {
        if let Some(version) = start_line.rsplit(' ').next() {
            if version.starts_with("SIP/") && version != "SIP/2.0" {
                return Err(reject(505, "Version Not Supported"));
            }
        }
    }

    let core = parse_core(&headers).map_err(|why| reject(400, why))?;

    if is_response {
        let mut parts = start_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().to_string();
        if version != "SIP/2.0" {
            return Err(bad(None, "bad version in status line", None));
        }
        let status: u16 = match code.parse() {
            Ok(n) if (100..=699).contains(&n) && code.len() == 3 => n,
            _ => return Err(bad(None, "bad status code", None)),
        };
        return Ok(Message::Response(Response {
            status,
            reason,
            core,
            headers,
            body: Bytes::copy_from_slice(body),
        }));
    }

    // Request-Line: Method SP Request-URI SP SIP-Version, single spaces.
    let mut parts = start_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "Malformed Request-Line"));
    };
    let Some(method) = Method::from_token(method) else {
        return Err(reject(400, "Malformed method"));
    };
    if !version.starts_with("SIP/") {
        return Err(reject(400, "Malformed SIP version"));
    }
    if version != "SIP/2.0" {
        return Err(reject(505, "Version Not Supported"));
    }
    if uri.starts_with('<') || uri.is_empty() {
        return Err(reject(400, "Malformed Request-URI"));
    }
    let scheme_ok = uri.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if !scheme_ok {
        return Err(reject(400, "Malformed Request-URI"));
    }
    let lower = uri.to_ascii_lowercase();
    let uri_user = if lower.starts_with("sip:") || lower.starts_with("sips:") {
        // rsipstack accepts an unbracketed IPv6 host; RFC 3261 does not.
        let after_scheme = &uri[uri.find(':').map_or(0, |i| i + 1)..];
        let host_port = after_scheme.rsplit('@').next().unwrap_or_default();
        let host_port = host_port.split([';', '?']).next().unwrap_or_default();
        if !valid_host_port(host_port) {
            return Err(reject(400, "Malformed Request-URI host"));
        }
        let parsed = rsipstack::sip::uri::parse_uri(uri)
            .or_else(|e| match uri.contains(":::") {
                true => rsipstack::sip::uri::parse_uri(&uri.replacen(":::", "::", 1)),
                false => Err(e),
            })
            .map_err(|_| reject(400, "Malformed Request-URI"))?;
        parsed.user().map(str::to_string)
    } else if lower.starts_with("tel:") {
        Some(uri[4..].split(';').next().unwrap_or_default().to_string())
    } else {
        // Well-formed but a scheme we do not serve (RFC 3261 §8.2.2.1).
        return Err(reject(416, "Unsupported URI Scheme"));
    };
    if core.cseq_method != method && !(method == Method::Ack && core.cseq_method == Method::Invite)
    {
        // A method we do not implement is refused as such first (RFC 4475 §3.1.2.18).
        if matches!(method, Method::Other(_)) {
            return Err(reject(501, "Not Implemented"));
        }
        return Err(reject(400, "CSeq method does not match"));
    }
    // RFC 3261 §19.1.1: a Request-URI carries no header fields (a `?` in
    // the user part is only a character).
    if uri
        .rsplit('@')
        .next()
        .is_some_and(|host| host.contains('?'))
    {
        return Err(reject(400, "Headers not allowed in Request-URI"));
    }
    // A Contact URI with headers or several values must be in <> (§20).
    for contact in headers.get_all("contact") {
        if contact != "*" && !name_addr_shape_ok(contact) {
            return Err(reject(400, "Malformed Contact"));
        }
    }
    // §20.17: Date is always in GMT.
    if headers
        .get("date")
        .is_some_and(|d| !d.trim_end().ends_with(" GMT"))
    {
        return Err(reject(400, "Malformed Date"));
    }
    if let Some(mf) = headers.get("max-forwards") {
        if mf.parse::<u8>().is_err() {
            return Err(reject(400, "Bad Max-Forwards"));
        }
    }
    Ok(Message::Request(Request {
        method,
        uri: uri.to_string(),
        uri_user,
        core,
        headers,
        body: Bytes::copy_from_slice(body),
    }))
}

/// What a stateless answer can echo. Via and CSeq are needed to route and
/// match it; a missing From, To or Call-ID is left out of the answer (RFC
/// 4475 §3.3.1 still wants a 400 for such a request).
fn echo_of(headers: &Headers) -> Option<Echo> {
    let vias: Vec<String> = headers.get_all("via").map(str::to_string).collect();
    if vias.is_empty() {
        return None;
    }
    let value = |name: &str| headers.get(name).unwrap_or_default().to_string();
    Some(Echo {
        vias,
        from: value("from"),
        to: value("to"),
        call_id: value("call-id"),
        cseq: headers.get("cseq")?.to_string(),
    })
}

fn parse_core(headers: &Headers) -> Result<Core, &'static str> {
    let mut vias = Vec::new();
    for raw in headers.get_all("via") {
        if vias.len() >= MAX_VIAS {
            return Err("Too many Via entries");
        }
        vias.push(Via::parse(raw).ok_or("Malformed Via")?);
    }
    if vias.is_empty() {
        return Err("Missing Via");
    }
    let single = |name: &'static str, missing: &'static str| -> Result<&str, &'static str> {
        let mut it = headers.0.iter().filter(|(n, _)| n == name);
        let first = it.next().ok_or(missing)?;
        if it.next().is_some() {
            return Err("Duplicate header");
        }
        Ok(first.1.as_str())
    };
    let from = NameAddr::parse(single("from", "Missing From")?).ok_or("Malformed From")?;
    let to = NameAddr::parse(single("to", "Missing To")?).ok_or("Malformed To")?;
    let call_id = single("call-id", "Missing Call-ID")?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err("Malformed Call-ID");
    }
    let cseq = single("cseq", "Missing CSeq")?;
    let mut parts = cseq.split_whitespace();
    let (Some(num), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("Malformed CSeq");
    };
    // RFC 3261 §8.1.1.5: the number is a 32-bit unsigned integer below 2^31.
    let seq: u32 = num.parse().map_err(|_| "Malformed CSeq")?;
    if seq >= 1 << 31 {
        return Err("Malformed CSeq");
    }
    let cseq_method = Method::from_token(method).ok_or("Malformed CSeq")?;
    Ok(Core {
        vias,
        from,
        to,
        call_id: call_id.to_string(),
        cseq: seq,
        cseq_method,
    })
}

/// The standard reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// What we call ourselves in `Server` and `User-Agent`, once set; unset (the
/// default) sends neither header, so a scanner learns nothing from us.
static PRODUCT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the `Server` / `User-Agent` value for the life of the process
/// (`[sip] product`); empty keeps both headers off. Only the first call counts.
pub fn set_product(product: &str) {
    let clean: String = product
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    if !clean.trim().is_empty() {
        let _ = PRODUCT.set(clean.trim().to_string());
    }
}

/// Writes a response to `req`'s headers as received (Via, From, To, Call-ID,
/// CSeq are echoed; `to_tag` is added to To when the request had none).
/// `extra` headers are written as given; Content-Length is always written.
pub fn write_response(
    echo: &Echo,
    status: u16,
    reason: Option<&str>,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = String::with_capacity(512 + body.len());
    let _ = write!(
        out,
        "SIP/2.0 {} {}\r\n",
        status,
        reason.unwrap_or_else(|| reason_phrase(status))
    );
    for via in &echo.vias {
        let _ = write!(out, "Via: {via}\r\n");
    }
    if !echo.from.is_empty() {
        let _ = write!(out, "From: {}\r\n", echo.from);
    }
    match to_tag {
        _ if echo.to.is_empty() => {}
        Some(tag) if !echo.to.contains(";tag=") && status > 100 => {
            let _ = write!(out, "To: {};tag={}\r\n", echo.to, tag);
        }
        _ => {
            let _ = write!(out, "To: {}\r\n", echo.to);
        }
    }
    if !echo.call_id.is_empty() {
        let _ = write!(out, "Call-ID: {}\r\n", echo.call_id);
    }
    let _ = write!(out, "CSeq: {}\r\n", echo.cseq);
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(product) = PRODUCT.get() {
        let _ = write!(out, "Server: {product}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

impl Request {
    /// The Max-Forwards a request we send on this one's behalf carries: one
    /// less (a B2BUA is a hop too, so a loop through gateways ends; RFC 3261
    /// §16.6 step 3), never more than 70.
    pub fn onward_max_forwards(&self) -> u8 {
        self.headers
            .get("max-forwards")
            .and_then(|v| v.trim().parse::<u8>().ok())
            .map_or(70, |mf| mf.saturating_sub(1).min(70))
    }

    /// The raw values needed to answer this request.
    pub fn echo(&self) -> Echo {
        Echo {
            vias: self.core.vias.iter().map(|v| v.raw.clone()).collect(),
            from: self.core.from.raw.clone(),
            to: self.core.to.raw.clone(),
            call_id: self.core.call_id.clone(),
            cseq: format!("{} {}", self.core.cseq, self.core.cseq_method),
        }
    }

    /// A response to this request, serialized.
    pub fn response(
        &self,
        status: u16,
        to_tag: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        self.echo().response(status, to_tag, extra, body)
    }
}

/// Everything needed to write a request we originate.
#[derive(Debug, Clone)]
pub struct OutgoingRequest<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request-URI.
    pub uri: &'a str,
    /// Our Via entry without `SIP/2.0/`: e.g. `UDP 127.0.0.1:5060;branch=z9hG4bK..;rport`.
    pub via: &'a str,
    /// From value (with tag).
    pub from: &'a str,
    /// To value (with tag once in a dialog).
    pub to: &'a str,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number.
    pub cseq: u32,
    /// Extra headers (Contact, Route, Content-Type, X-...).
    pub extra: &'a [(&'a str, &'a str)],
    /// Body.
    pub body: &'a [u8],
}

impl OutgoingRequest<'_> {
    /// Serializes the request.
    pub fn write(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        let cseq_method = if *self.method == Method::Ack {
            "ACK"
        } else {
            self.method.as_str()
        };
        let _ = write!(
            out,
            "{} {} SIP/2.0\r\nVia: SIP/2.0/{}\r\n",
            self.method, self.uri, self.via
        );
        // 70 (RFC 3261 §8.1.1.6) unless the caller passes one on.
        if !self
            .extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("max-forwards"))
        {
            out.push_str("Max-Forwards: 70\r\n");
        }
        let _ = write!(
            out,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, cseq_method
        );
        for (name, value) in self.extra {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if let Some(product) = PRODUCT.get() {
            let _ = write!(out, "User-Agent: {product}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body);
        bytes
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn history_info_and_diversion_name_the_dialed_number() {
        use super::{diversion, history_info};
        let (dialed, backend) = ("sip:12333@10.0.0.1:5060", "sip:12333@10.0.0.5:5091");
        assert_eq!(
            history_info(&[], dialed, backend),
            "<sip:12333@10.0.0.1:5060>;index=1, <sip:12333@10.0.0.5:5091>;index=1.1;rc=1"
        );
        // Another number (a seat, a transfer): mapped, not just retargeted.
        assert!(history_info(&[], dialed, "sip:1001@10.0.0.9").ends_with(";index=1.1;mp=1"));
        // The carrier's entries are kept and ours go under the last.
        let carrier =
            ["<sip:12333@carrier.example>;index=1, <sip:12333@10.0.0.1:5060>;index=1.1;rc=1"];
        let hi = history_info(&carrier, dialed, backend);
        assert!(
            hi.starts_with("<sip:12333@carrier.example>;index=1, "),
            "{hi}"
        );
        assert!(
            hi.ends_with("<sip:12333@10.0.0.5:5091>;index=1.1.1;rc=1.1"),
            "{hi}"
        );
        // Hostile input: unbounded entries are cut, junk indices dropped.
        let many = vec!["<sip:x@h>;index=1"; 100].join(", ");
        let junk = "<sip:y@h>;index=1;x, <sip:z@h>;index=<script>";
        let hi = history_info(&[&many, junk], dialed, backend);
        assert_eq!(hi.split(", ").count(), 16, "{hi}");
        assert!(!hi.contains("script"), "{hi}");
        assert_eq!(
            diversion(&["<sip:96123@old>;reason=unconditional"], "sip:12345@10.0.0.1"),
            "<sip:12345@10.0.0.1>;reason=unconditional;counter=1, <sip:96123@old>;reason=unconditional"
        );
    }

    use super::*;

    const INVITE: &str = "INVITE sip:12345@hotline.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:12345@hotline.example>\r\n\
f: \"Citizen\" <sip:13800000000@trunk.example>;tag=1928301774\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:13800000000@127.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn a_peer_centres_data_is_renamed_and_bounded() {
        let junk = "j".repeat(300);
        let text = INVITE.replacen(
            "Content-Type:",
            &format!(
                "X-IVR-Keys: 3\r\nX-Ticket: T-1001\r\nX-Peer-Hotline: centre A\r\nX-Long: {junk}\r\nX-: empty\r\nX-Ticket: T-again\r\nContent-Type:"
            ),
            1,
        );
        let Ok(Message::Request(req)) = parse(text.as_bytes()) else {
            panic!("INVITE should parse");
        };
        let data = peer_call_data(&req.headers);
        let names: Vec<(&str, &str)> = data.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            names,
            [
                ("X-Peer-Ivr-Keys", "3"),
                ("X-Peer-Ticket", "T-1001"),
                ("X-Peer-Hotline", "centre A")
            ]
        );
        let many: String = (0..40).map(|i| format!("X-K{i}: v\r\n")).collect();
        let text = INVITE.replacen("Content-Type:", &format!("{many}Content-Type:"), 1);
        let Ok(Message::Request(req)) = parse(text.as_bytes()) else {
            panic!("INVITE should parse");
        };
        assert_eq!(peer_call_data(&req.headers).len(), MAX_PEER_DATA);
    }

    #[test]
    fn parses_invite_with_compact_headers() {
        let Ok(Message::Request(req)) = parse(INVITE.as_bytes()) else {
            panic!("INVITE should parse");
        };
        assert_eq!(req.method, Method::Invite);
        assert_eq!(req.uri_user.as_deref(), Some("12345"));
        assert_eq!(req.core.call_id, "a84b4c76e66710");
        // A global number keeps its '+' (RFC 3966 style user part).
        let global = INVITE.replacen("sip:12345@", "sip:+442071234567@", 1);
        let Ok(Message::Request(req)) = parse(global.as_bytes()) else {
            panic!("INVITE to a global number should parse");
        };
        assert_eq!(req.uri_user.as_deref(), Some("+442071234567"));
        assert_eq!(req.core.from.tag.as_deref(), Some("1928301774"));
        assert_eq!(req.core.to.tag, None);
        assert_eq!(
            req.core.top_via().branch.as_deref(),
            Some("z9hG4bK776asdhds")
        );
        assert!(req.core.top_via().rport);
        assert_eq!(&req.body[..], b"v=0\n");
    }

    #[test]
    fn wrong_version_is_505() {
        let msg = INVITE.replace(
            "12345@hotline.example SIP/2.0",
            "12345@hotline.example SIP/7.0",
        );
        let err = parse(msg.as_bytes()).expect_err("must be refused");
        assert_eq!(err.status, Some(505));
    }

    #[test]
    fn unknown_method_parses_for_501() {
        let msg = INVITE
            .replace("INVITE sip", "NEWMETHOD sip")
            .replace("314159 INVITE", "314159 NEWMETHOD");
        let Ok(Message::Request(req)) = parse(msg.as_bytes()) else {
            panic!("should parse");
        };
        assert_eq!(req.method, Method::Other("NEWMETHOD".into()));
    }

    #[test]
    fn cseq_mismatch_is_400_and_missing_call_id_still_gets_400() {
        let msg = INVITE.replace("314159 INVITE", "314159 OPTIONS");
        assert_eq!(
            parse(msg.as_bytes()).err().map(|e| e.status),
            Some(Some(400))
        );
        // RFC 4475 §3.3.1: answered 400 with what there is to echo.
        let msg = INVITE.replace("i: a84b4c76e66710\r\n", "");
        let err = parse(msg.as_bytes()).expect_err("must be refused");
        assert_eq!(err.status, Some(400));
        let echo = err.echo.expect("Via and CSeq are there to answer");
        let answer =
            String::from_utf8(write_response(&echo, 400, None, None, &[], b"")).expect("ASCII");
        assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
        assert!(!answer.contains("Call-ID"), "{answer}");
        assert!(answer.contains("CSeq: 314159 INVITE\r\n"), "{answer}");
        // Without a Via nothing can carry an answer.
        let msg = INVITE.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n",
            "",
        );
        assert_eq!(parse(msg.as_bytes()).err().map(|e| e.status), Some(None));
        // An unknown method is refused as such before its CSeq is compared.
        let msg = INVITE
            .replace("INVITE sip:", "NEWMETHOD sip:")
            .replace("314159 INVITE", "314159 foobar");
        assert_eq!(
            parse(msg.as_bytes()).err().map(|e| e.status),
            Some(Some(501))
        );
    }

    /// The RFC 4475 §3.1.2 shapes rsipstack lets through, refused with 400.
    #[test]
    fn malformed_name_addrs_uris_and_dates_are_400() {
        let to = "To: <sip:12345@hotline.example>\r\n";
        let refused = [
            // Unterminated quoted display name.
            INVITE.replace(to, "To: \"Mr. J. User <sip:j.user@example.com>\r\n"),
            // Spaces inside <addr-spec>.
            INVITE.replace(
                to,
                "To: \"Watson, Thomas\" < sip:t.watson@example.org >\r\n",
            ),
            // Unquoted display name with a comma.
            INVITE.replace(to, "To: Watson, Thomas <sip:t.watson@example.org>\r\n"),
            // Escaped headers in the Request-URI.
            INVITE.replace(
                "sip:12345@hotline.example SIP",
                "sip:12345@hotline.example?Route=%3Csip:x%3E SIP",
            ),
            // A Contact URI with headers outside <>.
            INVITE.replace(
                "Contact: <sip:13800000000@127.0.0.1:5070>",
                "Contact: sip:u@example.com?Route=%3Csip:x%3E",
            ),
            // Date not in GMT.
            INVITE.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nDate: Fri, 01 Jan 2010 16:00:00 EST\r\n",
            ),
        ];
        for msg in refused {
            let err = parse(msg.as_bytes()).expect_err(&msg);
            assert_eq!(err.status, Some(400), "{msg}");
        }
        let accepted = [
            INVITE.replace(
                to,
                "To: \"Mr. \\\"J\\\" User\" <sip:12345@hotline.example>\r\n",
            ),
            INVITE.replace(to, "To: Hotline.Desk <sip:12345@hotline.example>\r\n"),
            INVITE.replace(to, "To: 热线 <sip:12345@hotline.example>\r\n"),
            INVITE.replace(to, "To: sip:12345@hotline.example;tag=7\r\n"),
            // `?` in the user part is a character, not headers.
            INVITE.replace(
                "sip:12345@hotline.example SIP",
                "sip:12345?x@hotline.example SIP",
            ),
            INVITE.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nDate: Sat, 13 Nov 2010 23:29:00 GMT\r\n",
            ),
            // RFC 5118 §4.10: the three-colon IPv6 form is tolerated.
            INVITE
                .replace(
                    "sip:12345@hotline.example SIP",
                    "sip:12345@[2001:db8:::192.0.2.1] SIP",
                )
                .replace(to, "To: sip:12345@[2001:db8:::192.0.2.1]\r\n"),
        ];
        for msg in accepted {
            assert!(parse(msg.as_bytes()).is_ok(), "{msg}");
        }
    }

    #[test]
    fn stream_framing_survives_a_content_length_near_usize_max() {
        let msg = INVITE.replace(
            "Content-Length: 4",
            &format!("Content-Length: {}", usize::MAX - 3),
        );
        assert_eq!(frame_length(msg.as_bytes()), Err("message too large"));
    }

    #[test]
    fn unframeable_stream_requests_get_400() {
        let msg = INVITE.replace("Content-Length: 4", "Content-Length: -999");
        assert!(frame_length(msg.as_bytes()).is_err());
        let answer = unframeable_answer(msg.as_bytes(), "bad Content-Length").expect("a 400");
        let answer = String::from_utf8(answer).expect("ASCII");
        assert!(
            answer.starts_with("SIP/2.0 400 Bad Content-Length\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Call-ID: a84b4c76e66710\r\n"), "{answer}");
        let ack = msg
            .replace("INVITE sip", "ACK sip")
            .replace("314159 INVITE", "314159 ACK");
        assert_eq!(
            unframeable_answer(ack.as_bytes(), "bad Content-Length"),
            None
        );
    }

    #[test]
    fn bad_responses_are_dropped() {
        let msg = "SIP/2.0 1000 Huge\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let err = parse(msg.as_bytes()).expect_err("refused");
        assert_eq!(err.status, None);
    }

    #[test]
    fn response_echoes_headers_and_adds_tag() {
        let Ok(Message::Request(req)) = parse(INVITE.as_bytes()) else {
            panic!("parse");
        };
        let bytes = req.response(180, Some("abc"), &[], b"");
        let Ok(Message::Response(resp)) = parse(&bytes) else {
            panic!("own response must parse");
        };
        assert_eq!(resp.status, 180);
        assert_eq!(resp.core.to.tag.as_deref(), Some("abc"));
        assert_eq!(resp.core.call_id, req.core.call_id);
    }

    #[test]
    fn stream_framing() {
        let bytes = INVITE.as_bytes();
        assert_eq!(frame_length(&bytes[..20]), Ok(None));
        assert_eq!(frame_length(&bytes[..bytes.len() - 1]), Ok(None));
        assert_eq!(frame_length(bytes), Ok(Some(bytes.len())));
        let no_length = INVITE.replace("Content-Length: 4\r\n", "");
        assert!(frame_length(no_length.as_bytes()).is_err());
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP / 2.0 / UNKNOWN t4.example.com").expect("any transport token");
        assert_eq!(v.transport, "UNKNOWN");
        assert_eq!(v.branch, None);
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKa;rport").expect("ipv6");
        assert_eq!(v.sent_by, "[2001:db8::9:1]:5070");
        assert!(v.rport);
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_none());
        assert!(Via::parse("SIP/2.0/UDP 2001:db8::1").is_none());
        assert!(Via::parse("SIP/3.0/UDP host").is_none());
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        let v: Vec<_> = split_list("\"a, b\" <sip:x@y;p=1,2>, <sip:z@w>").collect();
        assert_eq!(v, vec!["\"a, b\" <sip:x@y;p=1,2>", "<sip:z@w>"]);
    }
}
