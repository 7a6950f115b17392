//! SIP dialogs (RFC 3261 §12), sans-IO.
//!
//! Room: the SIP house's memory of a conversation. A [`Dialog`] holds the
//! identifiers, sequence numbers, remote target and route set of one leg, and
//! writes the next in-dialog request. It checks incoming in-dialog requests
//! (CSeq must grow) and applies target refreshes (re-INVITE Contact). It owns
//! no socket and no timer.

use super::message::{Method, OutgoingRequest, Request, Response};
use super::{new_branch, random_token};

/// One dialog, from our side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our From/To value without tag (the name-addr).
    pub local_uri: String,
    /// The peer's From/To value without tag.
    pub remote_uri: String,
    /// Our CSeq for the next request.
    pub local_cseq: u32,
    /// The highest CSeq the peer used.
    pub remote_cseq: Option<u32>,
    /// Where in-dialog requests go (the peer's Contact URI).
    pub remote_target: String,
    /// Route set, in the order requests must carry it.
    pub route_set: Vec<String>,
}

/// Strips `;tag=...` from a From/To value.
pub fn without_tag(value: &str) -> String {
    // A tag sits after the name-addr's closing '>', or after the URI.
    let search_from = value.rfind('>').unwrap_or(0);
    match value[search_from..].find(";tag=") {
        Some(pos) => {
            let start = search_from + pos;
            let rest = &value[start + 5..];
            let end = rest.find(';').map_or(value.len(), |e| start + 5 + e);
            format!("{}{}", &value[..start], &value[end..])
        }
        None => value.to_string(),
    }
}

/// The URI inside a Contact value (`<sip:..>` or bare).
pub fn contact_uri(value: &str) -> Option<String> {
    let value = value.trim();
    if let Some(start) = value.find('<') {
        let end = value[start..].find('>')? + start;
        return Some(value[start + 1..end].to_string());
    }
    let bare = value.split(';').next()?.trim();
    (!bare.is_empty()).then(|| bare.to_string())
}

impl Dialog {
    /// The dialog a UAS creates when it answers `req` with `local_tag`.
    pub fn uas(req: &Request, local_tag: &str) -> Dialog {
        Dialog {
            call_id: req.core.call_id.clone(),
            local_tag: local_tag.to_string(),
            remote_tag: req.core.from.tag.clone().unwrap_or_default(),
            local_uri: without_tag(&req.core.to.raw),
            remote_uri: without_tag(&req.core.from.raw),
            local_cseq: rand::random::<u16>() as u32 + 1,
            remote_cseq: Some(req.core.cseq),
            remote_target: req
                .headers
                .get("contact")
                .and_then(contact_uri)
                .unwrap_or_else(|| req.core.from.uri.clone()),
            route_set: req
                .headers
                .get_all("record-route")
                .map(str::to_string)
                .collect(),
        }
    }

    /// A dialog we are about to start as UAC (not yet confirmed: the remote
    /// tag is filled by [`Dialog::confirm`]).
    pub fn uac(call_id: String, local_uri: String, remote_uri: String, target: String) -> Dialog {
        Dialog {
            call_id,
            local_tag: random_token(),
            remote_tag: String::new(),
            local_uri,
            remote_uri,
            local_cseq: 1,
            remote_cseq: None,
            remote_target: target,
            route_set: Vec::new(),
        }
    }

    /// Applies a 1xx/2xx with a To tag: the remote tag, target and route set
    /// (reversed Record-Route, §12.1.2).
    pub fn confirm(&mut self, resp: &Response) {
        if let Some(tag) = &resp.core.to.tag {
            self.remote_tag = tag.clone();
        }
        if let Some(target) = resp.headers.get("contact").and_then(contact_uri) {
            self.remote_target = target;
        }
        let mut routes: Vec<String> = resp
            .headers
            .get_all("record-route")
            .map(str::to_string)
            .collect();
        routes.reverse();
        if !routes.is_empty() {
            self.route_set = routes;
        }
    }

    /// Checks an in-dialog request's CSeq (must grow, §12.2.2) and applies a
    /// target refresh. `false` means answer 500.
    pub fn accept_request(&mut self, req: &Request) -> bool {
        if req.method == Method::Ack || req.method == Method::Cancel {
            return true;
        }
        if let Some(last) = self.remote_cseq {
            if req.core.cseq <= last {
                return false;
            }
        }
        self.remote_cseq = Some(req.core.cseq);
        if matches!(req.method, Method::Invite | Method::Update) {
            if let Some(target) = req.headers.get("contact").and_then(contact_uri) {
                self.remote_target = target;
            }
        }
        true
    }

    /// Writes the next in-dialog request. Returns (bytes, branch, cseq).
    /// ACK reuses the INVITE's CSeq (`ack_cseq`).
    pub fn request(
        &mut self,
        method: &Method,
        via_host: &str,
        transport: &str,
        ack_cseq: Option<u32>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (Vec<u8>, String, u32) {
        let cseq = match ack_cseq {
            Some(n) => n,
            None => {
                self.local_cseq += 1;
                self.local_cseq
            }
        };
        let branch = new_branch();
        let via = format!("{transport} {via_host};branch={branch};rport");
        let from = format!("{};tag={}", self.local_uri, self.local_tag);
        let to = if self.remote_tag.is_empty() {
            self.remote_uri.clone()
        } else {
            format!("{};tag={}", self.remote_uri, self.remote_tag)
        };
        let mut headers: Vec<(&str, &str)> = self
            .route_set
            .iter()
            .map(|r| ("Route", r.as_str()))
            .collect();
        headers.extend_from_slice(extra);
        let bytes = OutgoingRequest {
            method,
            uri: &self.remote_target,
            via: &via,
            from: &from,
            to: &to,
            call_id: &self.call_id,
            cseq,
            extra: &headers,
            body,
        }
        .write();
        (bytes, branch, cseq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn req(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:12345@h SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
From: \"A\" <sip:138@h>;tag=from1\r\nTo: <sip:12345@h>\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\n\
Contact: <sip:138@127.0.0.1:5070;transport=udp>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn uas_dialog_and_in_dialog_bye() {
        let invite = req(INVITE);
        let mut d = Dialog::uas(&invite, "mytag");
        assert_eq!(d.remote_tag, "from1");
        assert_eq!(d.remote_target, "sip:138@127.0.0.1:5070;transport=udp");
        assert_eq!(d.route_set, vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
        let (bytes, branch, _) = d.request(&Method::Bye, "127.0.0.1:5060", "UDP", None, &[], b"");
        let bye = req(std::str::from_utf8(&bytes).expect("utf8"));
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri, "sip:138@127.0.0.1:5070;transport=udp");
        assert_eq!(bye.core.from.tag.as_deref(), Some("mytag"));
        assert_eq!(bye.core.to.tag.as_deref(), Some("from1"));
        assert_eq!(bye.core.top_via().branch.as_deref(), Some(branch.as_str()));
        assert_eq!(bye.headers.get_all("route").count(), 2);
    }

    #[test]
    fn cseq_must_grow() {
        let invite = req(INVITE);
        let mut d = Dialog::uas(&invite, "t");
        let bye = INVITE
            .replace("INVITE sip", "BYE sip")
            .replace("10 INVITE", "9 BYE");
        assert!(!d.accept_request(&req(&bye)));
        let bye = bye.replace("9 BYE", "11 BYE");
        assert!(d.accept_request(&req(&bye)));
    }

    #[test]
    fn tag_stripping() {
        assert_eq!(without_tag("<sip:a@b>;tag=x;foo=1"), "<sip:a@b>;foo=1");
        assert_eq!(
            without_tag("\"x;tag=y\" <sip:a@b>;tag=z"),
            "\"x;tag=y\" <sip:a@b>"
        );
        assert_eq!(without_tag("sip:a@b"), "sip:a@b");
    }
}
