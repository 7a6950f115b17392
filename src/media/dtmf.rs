//! DTMF: RFC 4733 telephone-events and in-band tone detection (ITU-T Q.23/Q.24).
//!
//! Room: the sound room's ears. Both detectors are pure state machines fed
//! with packets or samples; they report each key press once. No crate does
//! either well enough (the `dtmf` crate misses 40 ms tones and has no twist
//! check), so they are written here.
//!
//! In-band detection follows the usual Goertzel design: blocks of 102 samples
//! (12.75 ms at 8 kHz, so a 40 ms tone always covers at least two whole
//! blocks); per block the eight DTMF frequencies' energies are computed and a
//! block "hears" a digit when
//! - the strongest row and column tones stand out from the other tones of
//!   their group (by [`Detector::RELATIVE_PEAK`]),
//! - the twist is inside Q.24 limits (column up to 4 dB above the row:
//!   "reverse"; row up to 8 dB above the column: "normal"),
//! - the two tones carry most of the block's energy (speech and music spread
//!   theirs), and the signal is not too quiet.
//!
//! A digit is reported after two consecutive blocks hear it (≥ 25.5 ms), so
//! 40 ms tones pass and short bursts (< 23 ms, Q.24's must-reject bound)
//! cannot; it is released after two blocks without it.

/// Keys, in RFC 4733 event order (0–9, *, #, A–D).
const KEYS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// The key for an RFC 4733 event code, if it is a DTMF key.
pub fn key_of_event(event: u8) -> Option<char> {
    KEYS.get(event as usize).copied()
}

/// One RFC 4733 telephone-event payload (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0–15 for DTMF).
    pub event: u8,
    /// End bit: the last packet(s) of the event.
    pub end: bool,
    /// Volume, in −dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the 4-byte payload; `None` if it is too short.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let p = payload.get(..4)?;
        Some(TelephoneEvent {
            event: p[0],
            end: p[1] & 0x80 != 0,
            volume: p[1] & 0x3f,
            duration: u16::from_be_bytes([p[2], p[3]]),
        })
    }

    /// Writes the payload.
    pub fn write(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// Turns a stream of telephone-event packets into key presses, each once:
/// an event is identified by its RTP timestamp (§2.5.1.2: all packets of one
/// event share it), so retransmitted start and end packets are ignored.
#[derive(Debug, Default)]
pub struct EventReceiver {
    last_timestamp: Option<u32>,
}

impl EventReceiver {
    /// Feeds one packet's RTP timestamp and payload; returns a newly pressed key.
    pub fn handle(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let ev = TelephoneEvent::parse(payload)?;
        let key = key_of_event(ev.event)?;
        if self.last_timestamp == Some(timestamp) {
            return None;
        }
        self.last_timestamp = Some(timestamp);
        Some(key)
    }
}

/// Spots a key sequence (a feature code, such as `*0` to leave a backend
/// for the seats) among a caller's keys: its keys must come in order, each
/// within `gap` of the one before; any other key starts over (and may begin
/// the sequence itself). Time comes from the caller, so it runs on a fake
/// clock in tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeySequence {
    want: Vec<char>,
    matched: usize,
    /// When the last key came (an instant is this process's own: written
    /// down, it is left out, and the next key starts the gap afresh).
    #[serde(skip)]
    last: Option<std::time::Instant>,
    gap: std::time::Duration,
}

impl KeySequence {
    /// Watches for `keys`; `None` when there are none.
    pub fn new(keys: &str, gap: std::time::Duration) -> Option<KeySequence> {
        let want: Vec<char> = keys.chars().collect();
        (!want.is_empty()).then_some(KeySequence {
            want,
            matched: 0,
            last: None,
            gap,
        })
    }

    /// Feeds one key pressed at `now`; `true` when it completes the sequence
    /// (which then starts over).
    pub fn key(&mut self, key: char, now: std::time::Instant) -> bool {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) > self.gap)
        {
            self.matched = 0;
        }
        self.last = Some(now);
        if self.want.get(self.matched) == Some(&key) {
            self.matched += 1;
        } else {
            self.matched = usize::from(self.want.first() == Some(&key));
        }
        if self.matched == self.want.len() {
            self.matched = 0;
            return true;
        }
        false
    }
}

/// The key in a SIP INFO body: `application/dtmf-relay` (`Signal=5`,
/// `Duration=160` lines, as Cisco and most PBXs send) or `application/dtmf`
/// (the bare key). Anything else, or a key outside 0-9 * # A-D, is `None`.
pub fn info_key(content_type: &str, body: &[u8]) -> Option<char> {
    let ct = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let text = std::str::from_utf8(body.get(..body.len().min(256))?).ok()?;
    let raw = match ct.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    let key = match raw {
        // Some phones send the RFC 4733 event number for * and #.
        "10" => '*',
        "11" => '#',
        _ => {
            let mut c = raw.chars();
            match (c.next(), c.next()) {
                (Some(k), None) => k.to_ascii_uppercase(),
                _ => return None,
            }
        }
    };
    (key.is_ascii_digit() || "*#ABCD".contains(key)).then_some(key)
}

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const PAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// In-band DTMF detector for 8 kHz linear PCM.
#[derive(Debug, Clone)]
pub struct Detector {
    coefficients: [f32; 8],
    block: [f32; Detector::BLOCK],
    filled: usize,
    /// What the last block heard.
    last_heard: Option<char>,
    /// How many consecutive blocks heard `last_heard`.
    run: u32,
    /// The digit currently held down (reported once).
    down: Option<char>,
    /// Blocks without the held digit.
    gap: u32,
}

impl Default for Detector {
    fn default() -> Self {
        Detector::new()
    }
}

impl Detector {
    /// Samples per analysis block (12.75 ms at 8 kHz).
    pub const BLOCK: usize = 102;
    /// Largest allowed "reverse" twist (column above row), as a power ratio: 4 dB.
    pub const REVERSE_TWIST: f32 = 2.511_886;
    /// Largest allowed "normal" twist (row above column), as a power ratio: 8 dB.
    pub const NORMAL_TWIST: f32 = 6.309_573;
    /// The peak must exceed every other tone of its group by this ratio (8 dB).
    pub const RELATIVE_PEAK: f32 = 6.309_573;
    /// Share of the block's energy the two tones must carry.
    pub const TONE_SHARE: f32 = 0.6;
    /// Quietest accepted block: mean square of samples (about −36 dBm0 for i16 PCM).
    pub const MIN_POWER: f32 = 1.0e4;

    /// A detector in the idle state.
    pub fn new() -> Detector {
        let mut coefficients = [0.0; 8];
        for (i, f) in ROWS.iter().chain(COLS.iter()).enumerate() {
            // Goertzel with the exact frequency (not the nearest bin): the
            // block is short, and a non-integer k keeps tolerance symmetric.
            coefficients[i] = 2.0 * (2.0 * std::f32::consts::PI * f / 8000.0).cos();
        }
        Detector {
            coefficients,
            block: [0.0; Detector::BLOCK],
            filled: 0,
            last_heard: None,
            run: 0,
            down: None,
            gap: 0,
        }
    }

    /// Feeds samples; returns the keys pressed within them, in order.
    pub fn feed(&mut self, samples: &[i16]) -> Vec<char> {
        let mut keys = Vec::new();
        for &s in samples {
            self.block[self.filled] = s as f32;
            self.filled += 1;
            if self.filled == Detector::BLOCK {
                self.filled = 0;
                let heard = self.analyse();
                if let Some(k) = self.step(heard) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    fn step(&mut self, heard: Option<char>) -> Option<char> {
        if heard == self.last_heard {
            self.run += 1;
        } else {
            self.last_heard = heard;
            self.run = 1;
        }
        match (self.down, heard) {
            (Some(d), Some(h)) if d == h => {
                self.gap = 0;
                None
            }
            (Some(_), _) => {
                self.gap += 1;
                if self.gap >= 2 {
                    self.down = None;
                    self.gap = 0;
                    // A different digit already confirmed in the same blocks.
                    return self.confirm();
                }
                None
            }
            (None, _) => self.confirm(),
        }
    }

    fn confirm(&mut self) -> Option<char> {
        match self.last_heard {
            Some(k) if self.run >= 2 && self.down.is_none() => {
                self.down = Some(k);
                self.gap = 0;
                Some(k)
            }
            _ => None,
        }
    }

    /// Energy at each of the eight frequencies, and the block's total energy.
    fn energies(&self) -> ([f32; 8], f32) {
        let mut out = [0.0; 8];
        for (i, c) in self.coefficients.iter().enumerate() {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &x in &self.block {
                let s0 = x + c * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            out[i] = s1 * s1 + s2 * s2 - c * s1 * s2;
        }
        let total: f32 = self.block.iter().map(|x| x * x).sum();
        (out, total)
    }

    fn analyse(&self) -> Option<char> {
        let (e, total) = self.energies();
        let n = Detector::BLOCK as f32;
        if total / n < Detector::MIN_POWER {
            return None;
        }
        let best = |group: &[f32]| -> (usize, f32) {
            group
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |acc, (i, v)| if v > acc.1 { (i, v) } else { acc },
                )
        };
        let (r, row) = best(&e[..4]);
        let (c, col) = best(&e[4..]);
        // Twist limits.
        if col > row * Detector::REVERSE_TWIST || row > col * Detector::NORMAL_TWIST {
            return None;
        }
        // Each peak stands out within its group.
        let stands_out = |group: &[f32], peak_i: usize, peak: f32| {
            group
                .iter()
                .enumerate()
                .all(|(i, v)| i == peak_i || v * Detector::RELATIVE_PEAK < peak)
        };
        if !stands_out(&e[..4], r, row) || !stands_out(&e[4..], c, col) {
            return None;
        }
        // Goertzel energy of a pure tone of amplitude A over N samples is
        // about (A·N/2)²; the block's energy is A²·N/2. So the two tones'
        // share of the total is (row + col)·2 / (N · total).
        let share = (row + col) * 2.0 / (n * total);
        if share < Detector::TONE_SHARE {
            return None;
        }
        Some(PAD[r][c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_sequence_needs_its_keys_in_order_and_in_time() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut seq = KeySequence::new("*0", Duration::from_secs(3)).expect("keys");
        assert!(!seq.key('*', at(0)));
        assert!(seq.key('0', at(500)), "in order and in time");
        // The backend's own menu keys do not trigger it.
        assert!(!seq.key('1', at(600)));
        assert!(!seq.key('0', at(700)));
        // Too slow: the '*' is forgotten.
        assert!(!seq.key('*', at(1000)));
        assert!(!seq.key('0', at(4500)));
        // A repeated '*' still starts it.
        assert!(!seq.key('*', at(5000)));
        assert!(!seq.key('*', at(5100)));
        assert!(seq.key('0', at(5200)));
        assert!(KeySequence::new("", Duration::from_secs(3)).is_none());
        let mut one = KeySequence::new("#", Duration::from_secs(3)).expect("keys");
        assert!(one.key('#', at(0)) && one.key('#', at(10)));
    }

    #[test]
    fn sip_info_bodies() {
        assert_eq!(
            info_key("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            info_key("Application/DTMF-Relay", b"signal= #\r\n"),
            Some('#')
        );
        assert_eq!(
            info_key("application/dtmf-relay", b"Signal=11\r\n"),
            Some('#')
        );
        assert_eq!(info_key("application/dtmf", b"7"), Some('7'));
        assert_eq!(info_key("application/dtmf", b"77"), None);
        assert_eq!(info_key("application/dtmf-relay", b"Duration=160"), None);
        assert_eq!(info_key("application/dtmf-relay", b"Signal=x"), None);
        assert_eq!(info_key("text/plain", b"5"), None);
        assert_eq!(info_key("application/dtmf", &[0xff, 0xfe]), None);
    }

    fn tone(key: char, ms: usize, amplitude: f32, twist_db: f32, freq_error: f32) -> Vec<i16> {
        let (r, c) = (0..4)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .find(|&(r, c)| PAD[r][c] == key)
            .expect("a DTMF key");
        let (fr, fc) = (ROWS[r] * (1.0 + freq_error), COLS[c] * (1.0 + freq_error));
        let col_amp = amplitude * 10f32.powf(twist_db / 20.0);
        (0..ms * 8)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let v = amplitude * (2.0 * std::f32::consts::PI * fr * t).sin()
                    + col_amp * (2.0 * std::f32::consts::PI * fc * t).sin();
                v as i16
            })
            .collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    fn detect(samples: &[i16]) -> String {
        let mut d = Detector::new();
        d.feed(samples).into_iter().collect()
    }

    #[test]
    fn every_key_at_40_ms() {
        for key in "0123456789*#ABCD".chars() {
            let mut s = silence(30);
            s.extend(tone(key, 40, 6000.0, 0.0, 0.0));
            s.extend(silence(40));
            assert_eq!(detect(&s), key.to_string(), "key {key}");
        }
    }

    #[test]
    fn a_40_ms_tone_is_caught_at_any_block_alignment() {
        for offset in 0..Detector::BLOCK {
            let mut s = vec![0i16; offset];
            s.extend(tone('0', 40, 6000.0, 0.0, 0.0));
            s.extend(silence(40));
            assert_eq!(detect(&s), "0", "offset {offset}");
        }
    }

    #[test]
    fn a_sequence_with_40_ms_pauses() {
        let mut s = Vec::new();
        for key in "12345#".chars() {
            s.extend(tone(key, 50, 5000.0, 0.0, 0.0));
            s.extend(silence(40));
        }
        assert_eq!(detect(&s), "12345#");
    }

    #[test]
    fn short_bursts_are_rejected() {
        let mut s = silence(20);
        s.extend(tone('5', 20, 6000.0, 0.0, 0.0));
        s.extend(silence(60));
        assert_eq!(detect(&s), "");
    }

    #[test]
    fn twist_limits() {
        let at = |twist: f32| {
            let mut s = tone('8', 60, 4000.0, twist, 0.0);
            s.extend(silence(40));
            detect(&s)
        };
        assert_eq!(at(3.0), "8", "reverse twist 3 dB is accepted");
        assert_eq!(at(-7.0), "8", "normal twist 7 dB is accepted");
        assert_eq!(at(7.0), "", "reverse twist 7 dB is refused");
        assert_eq!(at(-12.0), "", "normal twist 12 dB is refused");
    }

    #[test]
    fn frequency_tolerance() {
        let at = |err: f32| {
            let mut s = tone('9', 60, 5000.0, 0.0, err);
            s.extend(silence(40));
            detect(&s)
        };
        assert_eq!(at(0.015), "9", "1.5% off must be accepted (Q.23)");
        assert_eq!(at(-0.015), "9");
        assert_eq!(at(0.035), "", "3.5% off must be rejected");
        assert_eq!(at(-0.035), "");
    }

    #[test]
    fn quiet_noise_and_single_tones_are_not_digits() {
        assert_eq!(detect(&tone('1', 100, 20.0, 0.0, 0.0)), "", "too quiet");
        // One tone alone (a dial tone or a whistle) is not a key.
        let single: Vec<i16> = (0..800)
            .map(|i| {
                (8000.0 * (2.0 * std::f32::consts::PI * 941.0 * i as f32 / 8000.0).sin()) as i16
            })
            .collect();
        assert_eq!(detect(&single), "");
        // Broadband noise.
        let mut x: u32 = 12345;
        let noise: Vec<i16> = (0..8000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) as i16) / 2
            })
            .collect();
        assert_eq!(detect(&noise), "");
    }

    /// Q.24 talk-off: speech must not make digits. Every bundled speech
    /// prompt (Mandarin and English) and the hold music, decoded, through
    /// G.711 and back as a caller's audio would be, must yield none.
    #[test]
    fn no_digits_from_speech_and_music() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sounds");
        let (cache, errors) = crate::media::prompts::PromptCache::load(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(cache.len() >= 10, "bundled prompts present");
        let mut seconds = 0.0;
        for name in cache.names() {
            let p = cache.get(&name).expect("prompt");
            for law in [&p.pcmu, &p.pcma] {
                let mut d = Detector::new();
                let pcm: Vec<i16> = law
                    .iter()
                    .map(|b| {
                        if std::ptr::eq(law, &p.pcmu) {
                            audio_codec_algorithms::decode_ulaw(*b)
                        } else {
                            audio_codec_algorithms::decode_alaw(*b)
                        }
                    })
                    .collect();
                let keys: Vec<char> = pcm.chunks(160).flat_map(|f| d.feed(f)).collect();
                assert!(keys.is_empty(), "talk-off in {name}: {keys:?}");
                seconds += pcm.len() as f64 / 8000.0;
            }
        }
        assert!(seconds > 60.0, "only {seconds} s of audio checked");
    }

    #[test]
    fn rfc4733_events_reported_once() {
        let mut rx = EventReceiver::default();
        let start = TelephoneEvent {
            event: 5,
            end: false,
            volume: 10,
            duration: 160,
        }
        .write();
        let end = TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        }
        .write();
        assert_eq!(rx.handle(1000, &start), Some('5'));
        assert_eq!(rx.handle(1000, &start), None, "same event, next packet");
        assert_eq!(
            rx.handle(1000, &end),
            None,
            "end packets (sent three times)"
        );
        assert_eq!(rx.handle(1000, &end), None);
        let hash = TelephoneEvent {
            event: 11,
            end: false,
            volume: 10,
            duration: 160,
        }
        .write();
        assert_eq!(
            rx.handle(2000, &hash),
            Some('#'),
            "a new timestamp is a new press"
        );
        assert_eq!(rx.handle(3000, &[16, 0, 0, 160]), None, "not a DTMF event");
        assert_eq!(rx.handle(4000, &[1, 2]), None, "truncated");
        assert_eq!(
            TelephoneEvent::parse(&end),
            Some(TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 800
            })
        );
    }
}
