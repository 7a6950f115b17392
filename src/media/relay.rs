//! The RTP relay of one bridged call: its handle, its commands, and the
//! rewriting that keeps each side's stream continuous.
//!
//! Room: one call's media anchor, as the call sees it. The sans-IO part is
//! [`Rewriter`]: it gives the packets leaving one side a single SSRC and
//! continuous sequence numbers and timestamps, even when the far side's
//! stream changes (another agent, a re-INVITE). The call holds a [`Relay`]
//! and speaks [`RelayCmd`]s to it; the packets themselves are moved by a
//! media engine thread (`engine::Engine::bridge`, `bridge::Bridge`), which
//! latches each side to the first source that sends to it (symmetric RTP, for
//! phones behind NAT) and reports a side that falls silent for `rtp_timeout`.
//! A recording ends when the bridge drops it: its file is finished on the
//! recordings writer thread (`recording.rs`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use rtc_shared::marshal::Unmarshal;
use tokio::sync::mpsc;

/// Rewrites SSRC, sequence number and timestamp of packets leaving one side.
#[derive(Debug, Clone)]
pub struct Rewriter {
    out_ssrc: u32,
    in_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last_out_seq: u16,
    last_out_ts: u32,
}

impl Rewriter {
    /// A rewriter that sends with `out_ssrc`.
    pub fn new(out_ssrc: u32) -> Rewriter {
        Rewriter {
            out_ssrc,
            in_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: rand::random(),
            last_out_ts: rand::random(),
        }
    }

    /// Where this side's outgoing numbering stands (for the next sender).
    pub fn numbering(&self) -> crate::media::player::Numbering {
        crate::media::player::Numbering {
            ssrc: self.out_ssrc,
            next_seq: self.last_out_seq.wrapping_add(1),
            next_ts: self.last_out_ts.wrapping_add(160),
        }
    }

    /// A rewriter that continues a stream we already sent (the IVR player's),
    /// so the caller's phone sees one stream across the hand-over.
    pub fn continuing(numbering: crate::media::player::Numbering) -> Rewriter {
        Rewriter {
            out_ssrc: numbering.ssrc,
            in_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: numbering.next_seq.wrapping_sub(1),
            last_out_ts: numbering.next_ts.wrapping_sub(160),
        }
    }

    /// Rewrites `pkt` in place. Returns `false` (leave the packet alone and
    /// drop it) when it is not a well-formed RTP packet.
    pub fn rewrite(&mut self, pkt: &mut [u8]) -> bool {
        let mut view: &[u8] = pkt;
        if rtc_rtp::header::Header::unmarshal(&mut view).is_err() || pkt[0] >> 6 != 2 {
            return false;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        if self.in_ssrc != Some(ssrc) {
            // A new source: continue our numbering from where we left off.
            self.in_ssrc = Some(ssrc);
            self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
            self.ts_offset = self.last_out_ts.wrapping_add(160).wrapping_sub(ts);
            pkt[1] |= 0x80; // marker: a new talk spurt for the receiver's jitter buffer
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Only move "last" forward (reordered packets keep their place).
        if out_seq.wrapping_sub(self.last_out_seq) < 0x8000 {
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
        }
        pkt[2..4].copy_from_slice(&out_seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&out_ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&self.out_ssrc.to_be_bytes());
        true
    }
}

/// Which side of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// The caller (trunk) side.
    A,
    /// The agent side.
    B,
}

/// Commands to a running relay.
#[derive(Debug)]
pub enum RelayCmd {
    /// Where a side's RTP should go (from its SDP); resets latching.
    Remote(Side, SocketAddr),
    /// Start watching for silence (after answer) or stop (on hold).
    Watch(bool),
    /// Record both sides from now on (ended when the relay ends).
    Record(Box<super::recording::Recorder>),
    /// Finish the recording being written (the call goes on unrecorded).
    StopRecording,
    /// Stop relaying and hand both sockets back (a transfer: the caller goes
    /// back to the media engine while the next far leg is found). The ports
    /// stay taken: their owner now is whoever receives them.
    Release(tokio::sync::oneshot::Sender<Released>),
    /// A supervisor joins (listen, whisper or barge); replaces one already there.
    Monitor(Box<Supervisor>),
    /// Report the caller's (side A's) RFC 4733 keys of payload type `pt` to
    /// `to` (they are still relayed): a key sequence that hands the caller
    /// back from a backend. Replaces an earlier watch.
    Keys {
        /// The telephone-event payload type the caller sends.
        pt: u8,
        /// Where each new key goes (dropped when full).
        to: mpsc::Sender<char>,
    },
}

/// A supervisor's phone joining the call's media.
#[derive(Debug)]
pub struct Supervisor {
    /// Our socket facing the supervisor's phone (bound from the pool; the
    /// relay returns its port when the supervisor leaves or the call ends).
    pub socket: std::net::UdpSocket,
    /// Where the supervisor's SDP said to send.
    pub remote: SocketAddr,
    /// What they may do, and the call's codec.
    pub mixer: super::monitor::Mixer,
    /// Dropped by the supervisor's call when the supervisor hangs up.
    pub stop: tokio::sync::oneshot::Receiver<()>,
    /// Dropped here when the monitoring ends (the call ended or moved on).
    pub ended: tokio::sync::oneshot::Sender<()>,
}

/// What a released relay hands back.
#[derive(Debug)]
pub struct Released {
    /// Our socket facing the caller.
    pub a: std::net::UdpSocket,
    /// Our socket facing the far leg.
    pub b: std::net::UdpSocket,
    /// Where the caller's RTP came from (or was to go).
    pub a_remote: Option<SocketAddr>,
    /// What the caller was last sent, so whoever speaks to them next
    /// continues the same stream.
    pub numbering: super::player::Numbering,
}

/// Packet counters, readable while the relay runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Packets relayed from A to B.
    pub a_to_b: AtomicU64,
    /// Packets relayed from B to A.
    pub b_to_a: AtomicU64,
    /// Packets dropped (not RTP, wrong source, or no destination yet).
    pub dropped: AtomicU64,
    /// How the caller's (side A's) packets arrive.
    pub a_quality: super::quality::QualityCell,
    /// How the far leg's (side B's) packets arrive.
    pub b_quality: super::quality::QualityCell,
}

/// A running relay: its ports, a command channel, its counters.
#[derive(Debug)]
pub struct Relay {
    /// Our port facing the caller.
    pub a_addr: SocketAddr,
    /// Our port facing the agent.
    pub b_addr: SocketAddr,
    /// Commands.
    pub cmd: crate::boxed::Sender<RelayCmd>,
    /// Counters.
    pub stats: Arc<RelayStats>,
    /// Last, so it drops after `cmd`: ends the bridge as soon as the call lets go.
    pub held: super::engine::BridgeHold,
}

/// Finishes the recording, if one runs: dropping it hands the close (the
/// last frames, the final sizes, the sync) to the recordings writer thread.
pub(super) fn close_recording(recorder: &mut Option<Box<super::recording::Recorder>>) {
    drop(recorder.take());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_shared::marshal::Marshal;

    fn packet(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        let p = rtc_rtp::packet::Packet {
            header: rtc_rtp::header::Header {
                version: 2,
                payload_type: 0,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0xffu8; 160]),
        };
        p.marshal().expect("marshal").to_vec()
    }

    fn fields(pkt: &[u8]) -> (u32, u16, u32) {
        let mut view = pkt;
        let h = rtc_rtp::header::Header::unmarshal(&mut view).expect("valid RTP");
        (h.ssrc, h.sequence_number, h.timestamp)
    }

    #[test]
    fn ssrc_switch_keeps_sequence_and_timestamp_continuous() {
        let mut r = Rewriter::new(0xabcd);
        let mut out = Vec::new();
        for i in 0..3u16 {
            let mut p = packet(1, 100 + i, 1000 + 160 * i as u32);
            assert!(r.rewrite(&mut p));
            out.push(fields(&p));
        }
        // The far side changes stream (new SSRC, unrelated numbers).
        let mut p = packet(2, 7, 555);
        assert!(r.rewrite(&mut p));
        out.push(fields(&p));
        assert!(out.iter().all(|(s, _, _)| *s == 0xabcd));
        for w in out.windows(2) {
            assert_eq!(w[1].1, w[0].1.wrapping_add(1));
            assert_eq!(w[1].2, w[0].2.wrapping_add(160));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut r = Rewriter::new(1);
        assert!(!r.rewrite(&mut [0u8; 5]));
        let mut v1 = packet(1, 1, 1);
        v1[0] = (v1[0] & 0x3f) | 0x40; // version 1
        assert!(!r.rewrite(&mut v1));
    }
}
