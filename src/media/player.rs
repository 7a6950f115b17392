//! The prompt player of one stream: which 20 ms frame goes out next.
//!
//! Room: the sound room's turntable, sans-IO. [`Player::tick`] is called once
//! per 20 ms by the media engine's clock and writes at most one RTP packet.
//! The RTP timestamp advances on every tick, whether a frame is sent or not,
//! so a pause between prompts is a gap in time (RFC 3550 §5.1); the first
//! packet after a gap carries the marker bit (RFC 3551 §4.1), as does the
//! first packet of the stream. Sequence numbers advance per packet sent.

use std::collections::VecDeque;
use std::sync::Arc;

use super::prompts::{Prompt, FRAME};

/// RTP header length we write (no CSRCs, no extension).
pub const HEADER: usize = 12;
/// Bytes of one packet we write.
pub const PACKET: usize = HEADER + FRAME;

/// Which G.711 law the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// μ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Law {
    /// From a static payload type.
    pub fn from_pt(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Pcmu),
            8 => Some(Law::Pcma),
            _ => None,
        }
    }

    /// Its payload type.
    pub fn pt(self) -> u8 {
        match self {
            Law::Pcmu => 0,
            Law::Pcma => 8,
        }
    }

    /// Decodes one byte.
    pub fn decode(self, b: u8) -> i16 {
        match self {
            Law::Pcmu => audio_codec_algorithms::decode_ulaw(b),
            Law::Pcma => audio_codec_algorithms::decode_alaw(b),
        }
    }

    /// Encodes one sample.
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Pcmu => audio_codec_algorithms::encode_ulaw(sample),
            Law::Pcma => audio_codec_algorithms::encode_alaw(sample),
        }
    }
}

/// Where the player's numbering stands (to continue it in the relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbering {
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number of the next packet.
    pub next_seq: u16,
    /// Timestamp of the next tick.
    pub next_ts: u32,
}

/// What one tick produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Length of the packet written into the buffer, if one was.
    pub packet: Option<usize>,
    /// A play request that finished on this tick.
    pub done: Option<u64>,
}

/// One stream's player.
#[derive(Debug)]
pub struct Player {
    law: Law,
    numbering: Numbering,
    queue: VecDeque<Arc<Prompt>>,
    frame: usize,
    looped: Vec<Arc<Prompt>>,
    play_id: Option<u64>,
    barge_in: bool,
    gap: bool,
}

impl Player {
    /// A silent player.
    pub fn new(law: Law, ssrc: u32, seq: u16, ts: u32) -> Player {
        Player {
            law,
            numbering: Numbering {
                ssrc,
                next_seq: seq,
                next_ts: ts,
            },
            queue: VecDeque::new(),
            frame: 0,
            looped: Vec::new(),
            play_id: None,
            barge_in: false,
            gap: true,
        }
    }

    /// Starts playing `prompts` (replacing what played). With `looped` they
    /// repeat until stopped (music on hold) and never report done.
    pub fn play(&mut self, id: u64, prompts: Vec<Arc<Prompt>>, barge_in: bool, looped: bool) {
        self.looped = if looped { prompts.clone() } else { Vec::new() };
        self.queue = prompts.into();
        self.frame = 0;
        self.play_id = Some(id);
        self.barge_in = barge_in;
    }

    /// Stops at once; returns the id of what was playing.
    pub fn stop(&mut self) -> Option<u64> {
        self.queue.clear();
        self.looped.clear();
        self.frame = 0;
        self.play_id.take()
    }

    /// Whether a key should stop what plays now.
    pub fn barge_in(&self) -> bool {
        self.barge_in && self.play_id.is_some()
    }

    /// Where the numbering stands.
    pub fn numbering(&self) -> Numbering {
        self.numbering
    }

    /// One 20 ms step: writes a packet into `buf` if something plays.
    pub fn tick(&mut self, buf: &mut [u8; PACKET]) -> Tick {
        let mut out = Tick::default();
        // Skip empty prompts; refill a loop.
        while self.queue.front().is_some_and(|p| self.frame >= p.frames()) {
            self.queue.pop_front();
            self.frame = 0;
            if self.queue.is_empty() && !self.looped.is_empty() {
                self.queue = self.looped.iter().cloned().collect();
                if self.queue.iter().all(|p| p.frames() == 0) {
                    self.queue.clear();
                    self.looped.clear();
                }
            }
        }
        let ts = self.numbering.next_ts;
        self.numbering.next_ts = ts.wrapping_add(FRAME as u32);
        let Some(prompt) = self.queue.front() else {
            out.done = self.play_id.take();
            self.gap = true;
            return out;
        };
        let bytes = match self.law {
            Law::Pcmu => &prompt.pcmu,
            Law::Pcma => &prompt.pcma,
        };
        let at = self.frame * FRAME;
        buf[0] = 0x80;
        buf[1] = self.law.pt() | if self.gap { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.numbering.next_seq.to_be_bytes());
        buf[4..8].copy_from_slice(&ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.numbering.ssrc.to_be_bytes());
        buf[HEADER..].copy_from_slice(&bytes[at..at + FRAME]);
        self.numbering.next_seq = self.numbering.next_seq.wrapping_add(1);
        self.gap = false;
        self.frame += 1;
        out.packet = Some(PACKET);
        // Report done on the tick that sent the last frame.
        if self.frame >= prompt.frames() && self.queue.len() == 1 && self.looped.is_empty() {
            self.queue.clear();
            self.frame = 0;
            out.done = self.play_id.take();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(name: &str, frames: usize, value: i16) -> Arc<Prompt> {
        Arc::new(Prompt::from_linear(name, &vec![value; frames * FRAME]))
    }

    fn header(buf: &[u8]) -> (bool, u8, u16, u32, u32) {
        (
            buf[1] & 0x80 != 0,
            buf[1] & 0x7f,
            u16::from_be_bytes([buf[2], buf[3]]),
            u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        )
    }

    #[test]
    fn frames_timestamps_marker_and_done() {
        let mut p = Player::new(Law::Pcma, 7, 65534, 1000);
        let mut buf = [0u8; PACKET];
        // Idle: nothing sent, time still runs.
        assert_eq!(p.tick(&mut buf), Tick::default());
        p.play(
            1,
            vec![prompt("a", 2, 1000), prompt("b", 1, -1000)],
            false,
            false,
        );
        let mut sent = Vec::new();
        let mut done = None;
        for _ in 0..5 {
            let t = p.tick(&mut buf);
            if t.packet.is_some() {
                sent.push((header(&buf), buf[HEADER]));
            }
            done = done.or(t.done);
        }
        assert_eq!(done, Some(1));
        assert_eq!(sent.len(), 3);
        // Marker on the first, none after; seq wraps; ts in steps of 160 from 1160.
        assert_eq!(sent[0].0, (true, 8, 65534, 1160, 7));
        assert_eq!(sent[1].0, (false, 8, 65535, 1320, 7));
        assert_eq!(sent[2].0, (false, 8, 0, 1480, 7));
        assert_eq!(sent[0].1, audio_codec_algorithms::encode_alaw(1000));
        assert_eq!(sent[2].1, audio_codec_algorithms::encode_alaw(-1000));
        // After the gap the next prompt starts with the marker again.
        p.play(2, vec![prompt("c", 1, 0)], false, false);
        let t = p.tick(&mut buf);
        assert_eq!(t.done, Some(2));
        let (marker, _, seq, ts, _) = header(&buf);
        assert!(marker);
        assert_eq!(seq, 1);
        assert_eq!(ts, 1000 + 160 * 6);
    }

    #[test]
    fn stop_loop_and_empty() {
        let mut p = Player::new(Law::Pcmu, 1, 0, 0);
        let mut buf = [0u8; PACKET];
        p.play(5, vec![prompt("moh", 2, 300)], true, true);
        assert!(p.barge_in());
        for _ in 0..7 {
            let t = p.tick(&mut buf);
            assert!(t.packet.is_some());
            assert_eq!(t.done, None, "a loop never ends by itself");
        }
        assert_eq!(p.stop(), Some(5));
        assert_eq!(p.tick(&mut buf).packet, None);
        // An empty list finishes on the next tick.
        p.play(6, Vec::new(), false, false);
        assert_eq!(p.tick(&mut buf).done, Some(6));
    }
}
