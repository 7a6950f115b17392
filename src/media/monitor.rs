//! Supervision of a bridged call: listen, whisper, barge.
//!
//! Room: one call's media anchor, its third ear. [`Mixer`] is sans-IO: the
//! relay hands it every packet it relays and every packet the supervisor's
//! phone sends, and gets back the packets to send. There is no clock of its
//! own: the supervisor hears the caller and the agent mixed, one frame from
//! each side per packet sent, and a side whose partner falls silent (on
//! hold) is flushed alone one packet later, so the stream never stalls.
//! Whisper mixes the supervisor into what the agent hears; barge into both.
//! Only G.711 frames are mixed; anything else passes untouched.

use super::player::Law;
use super::relay::Side;

/// What the supervisor may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hear both, say nothing.
    Listen,
    /// Hear both, speak to the agent only.
    Whisper,
    /// Hear both, speak to both.
    Barge,
}

impl Mode {
    /// The feature-code name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Listen => "listen",
            Mode::Whisper => "whisper",
            Mode::Barge => "barge",
        }
    }
}

/// Where an RTP packet's payload is (header, CSRCs, extension and padding
/// skipped), if it is a version-2 packet of payload type `pt`.
fn payload(pkt: &[u8], pt: u8) -> Option<std::ops::Range<usize>> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 || pkt[1] & 0x7f != pt {
        return None;
    }
    let mut start = 12 + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([
            *pkt.get(start + 2)?,
            *pkt.get(start + 3)?,
        ]));
        start += 4 + 4 * words;
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*pkt.last()?))?;
    }
    (start < end).then_some(start..end)
}

/// The supervisor's mixer for one call.
#[derive(Debug)]
pub struct Mixer {
    mode: Mode,
    law: Law,
    /// A frame from one side not yet sent to the supervisor.
    pending: Option<(Side, Vec<u8>)>,
    /// Supervisor frames not yet mixed into what A / B hears (whole packets).
    for_a: Option<Vec<u8>>,
    for_b: Option<Vec<u8>>,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Mixer {
    /// A mixer for `mode` on a call whose codec is `law`.
    pub fn new(mode: Mode, law: Law) -> Mixer {
        Mixer {
            mode,
            law,
            pending: None,
            for_a: None,
            for_b: None,
            ssrc: rand::random(),
            seq: rand::random(),
            ts: rand::random(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn mix_into(&self, target: &mut [u8], other: &[u8]) {
        for (t, o) in target.iter_mut().zip(other) {
            let sum = i32::from(self.law.decode(*t)) + i32::from(self.law.decode(*o));
            *t = self
                .law
                .encode(sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
        }
    }

    /// A packet for the supervisor carrying `frame`.
    fn packet_for_supervisor(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + frame.len());
        p.extend_from_slice(&[0x80, self.law.pt()]);
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(frame);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(frame.len() as u32);
        p
    }

    /// A packet from side `from` about to be relayed to the other side:
    /// supervisor audio is mixed into it in place when the mode says so.
    /// Returns what the supervisor is to hear now.
    pub fn relayed(&mut self, from: Side, pkt: &mut [u8]) -> Vec<Vec<u8>> {
        let Some(range) = payload(pkt, self.law.pt()) else {
            return Vec::new();
        };
        let frame = pkt[range.clone()].to_vec();
        let mut out = Vec::new();
        match self.pending.take() {
            Some((side, other)) if side != from => {
                let mut mixed = frame.clone();
                self.mix_into(&mut mixed, &other);
                out.push(self.packet_for_supervisor(&mixed));
            }
            Some((_, older)) => {
                // The other side is silent: what waited goes alone.
                out.push(self.packet_for_supervisor(&older));
                self.pending = Some((from, frame.clone()));
            }
            None => self.pending = Some((from, frame.clone())),
        }
        let whisper = match (self.mode, from) {
            (Mode::Whisper | Mode::Barge, Side::A) => self.for_b.take(),
            (Mode::Barge, Side::B) => self.for_a.take(),
            _ => None,
        };
        if let Some(sup) = whisper {
            if let Some(r) = payload(&sup, self.law.pt()) {
                self.mix_into(&mut pkt[range], &sup[r]);
            }
        }
        out
    }

    /// A packet from the supervisor's phone. Returns packets to send alone
    /// to a side whose own stream did not carry the previous one (that side's
    /// partner is silent).
    pub fn from_supervisor(&mut self, pkt: &[u8]) -> Vec<(Side, Vec<u8>)> {
        if self.mode == Mode::Listen || payload(pkt, self.law.pt()).is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(old) = self.for_b.replace(pkt.to_vec()) {
            out.push((Side::B, old));
        }
        if self.mode == Mode::Barge {
            if let Some(old) = self.for_a.replace(pkt.to_vec()) {
                out.push((Side::A, old));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, level: i16, law: Law) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        p.extend(std::iter::repeat_n(law.encode(level), 160));
        p
    }

    fn level(pkt: &[u8], law: Law) -> i16 {
        law.decode(pkt[12])
    }

    #[test]
    fn listen_hears_both_sides_mixed_and_says_nothing() {
        let law = Law::Pcmu;
        let mut m = Mixer::new(Mode::Listen, law);
        let mut a = packet(0, 1000, law);
        assert!(
            m.relayed(Side::A, &mut a).is_empty(),
            "waits for the agent's frame"
        );
        let mut b = packet(0, 2000, law);
        let out = m.relayed(Side::B, &mut b);
        assert_eq!(out.len(), 1);
        let heard = level(&out[0], law);
        assert!((2900..=3100).contains(&heard), "{heard}");
        // Nothing the supervisor says reaches anyone, and the relayed audio is untouched.
        assert!(m.from_supervisor(&packet(0, 5000, law)).is_empty());
        let mut a = packet(0, 1000, law);
        m.relayed(Side::A, &mut a);
        assert!((950..=1050).contains(&level(&a, law)));
        // One side silent (on hold): the other is flushed alone.
        let mut a2 = packet(0, 1000, law);
        let out = m.relayed(Side::A, &mut a2);
        assert_eq!(out.len(), 1);
        assert!((950..=1050).contains(&level(&out[0], law)));
        // Other payload types (telephone-event) are not mixed.
        let mut ev = packet(101, 0, law);
        assert!(m.relayed(Side::B, &mut ev).is_empty());
    }

    #[test]
    fn whisper_reaches_the_agent_only_and_barge_both() {
        let law = Law::Pcma;
        let mut m = Mixer::new(Mode::Whisper, law);
        assert!(m.from_supervisor(&packet(8, 3000, law)).is_empty());
        let mut to_caller = packet(8, 1000, law);
        m.relayed(Side::B, &mut to_caller);
        assert!(
            (950..=1050).contains(&level(&to_caller, law)),
            "the caller does not hear it"
        );
        let mut to_agent = packet(8, 1000, law);
        m.relayed(Side::A, &mut to_agent);
        assert!(
            (3800..=4200).contains(&level(&to_agent, law)),
            "the agent does"
        );
        // The caller silent: the supervisor's frames reach the agent alone.
        assert!(m.from_supervisor(&packet(8, 3000, law)).is_empty());
        let out = m.from_supervisor(&packet(8, 3000, law));
        assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [Side::B]);

        let mut m = Mixer::new(Mode::Barge, law);
        m.from_supervisor(&packet(8, 3000, law));
        let mut to_caller = packet(8, 1000, law);
        m.relayed(Side::B, &mut to_caller);
        assert!((3800..=4200).contains(&level(&to_caller, law)));
        let mut to_agent = packet(8, 1000, law);
        m.relayed(Side::A, &mut to_agent);
        assert!((3800..=4200).contains(&level(&to_agent, law)));
        // Loud sums saturate instead of wrapping.
        m.from_supervisor(&packet(8, 30000, law));
        let mut loud = packet(8, 30000, law);
        m.relayed(Side::A, &mut loud);
        assert!(level(&loud, law) > 30000);
    }

    #[test]
    fn malformed_packets_are_left_alone() {
        let law = Law::Pcmu;
        let mut m = Mixer::new(Mode::Barge, law);
        for bad in [
            vec![],
            vec![0x80, 0],
            vec![0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![0x9f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xb0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 255],
        ] {
            let mut p = bad.clone();
            assert!(m.relayed(Side::A, &mut p).is_empty());
            assert_eq!(p, bad);
            assert!(m.from_supervisor(&bad).is_empty());
        }
    }
}
