//! RTP as the phones send and hear it: recording, keys (RFC 4733, SIP
//! INFO, in-band tones), talking both ways, and the audio heard.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc_shared::marshal::{Marshal, Unmarshal};

use crate::{Phone, PhoneDialog, RtpIn};

impl Phone {
    /// Records the RTP arriving for `secs`: (payload type, seq, ts, marker, ssrc, payload).
    pub fn record_rtp(&self, secs: f64) -> Vec<RtpIn> {
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            out.extend(self.recv_rtp());
        }
        out
    }

    /// One RTP packet from the media socket, if one comes within its
    /// read timeout and parses.
    fn recv_rtp(&self) -> Option<RtpIn> {
        let mut buf = [0u8; 2048];
        let (n, _) = self.rtp.recv_from(&mut buf).ok()?;
        let mut view = &buf[..n];
        let p = rtc_rtp::packet::Packet::unmarshal(&mut view).ok()?;
        Some(RtpIn {
            pt: p.header.payload_type,
            seq: p.header.sequence_number,
            ts: p.header.timestamp,
            marker: p.header.marker,
            ssrc: p.header.ssrc,
            payload: p.payload.to_vec(),
        })
    }

    /// Presses `key` as RFC 4733 telephone-events (payload type `pt`): three
    /// updates and three end packets, one event timestamp.
    pub fn press_rfc4733(&self, to: SocketAddr, key: char, pt: u8, ts: u32) {
        let event = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("key"),
        };
        for i in 0..6u16 {
            let end = i >= 3;
            let duration = 160 * (i.min(3) + 1);
            let mut p = vec![0x80, pt | if i == 0 { 0x80 } else { 0 }];
            p.extend_from_slice(&(1000 + i).to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&0x5eed_u32.to_be_bytes());
            p.extend_from_slice(&[event, (u8::from(end) << 7) | 10]);
            p.extend_from_slice(&duration.to_be_bytes());
            self.rtp.send_to(&p, to).expect("rtp send");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Presses `key` by SIP INFO (application/dtmf-relay) in dialog `d`;
    /// returns the INFO's final status.
    pub fn press_info(
        &mut self,
        server: SocketAddr,
        d: &mut PhoneDialog,
        key: char,
    ) -> Option<u16> {
        let body = format!("Signal={key}\r\nDuration=160\r\n");
        self.in_dialog_typed(server, d, "INFO", "application/dtmf-relay", &body);
        self.final_status(&d.call_id, "INFO", 3.0)
    }

    /// Sends `key` as an in-band DTMF tone (70 ms, then 70 ms of silence) in PCMU.
    pub fn press_inband(&self, to: SocketAddr, key: char) {
        let (row, col) = match key {
            '1' => (697.0, 1209.0),
            '2' => (697.0, 1336.0),
            '5' => (770.0, 1336.0),
            '0' => (941.0, 1336.0),
            _ => panic!("key"),
        };
        let samples: Vec<i16> = (0..1120)
            .map(|i| {
                if i < 560 {
                    let t = i as f32 / 8000.0;
                    let w = |f: f32| (2.0 * std::f32::consts::PI * f * t).sin();
                    (5000.0 * (w(row) + w(col))) as i16
                } else {
                    0
                }
            })
            .collect();
        for (i, chunk) in samples.chunks(160).enumerate() {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(2000 + i as u16).to_be_bytes());
            p.extend_from_slice(&(160 * i as u32).to_be_bytes());
            p.extend_from_slice(&0x70e5_u32.to_be_bytes());
            p.extend(
                chunk
                    .iter()
                    .map(|s| audio_codec_algorithms::encode_ulaw(*s)),
            );
            self.rtp.send_to(&p, to).expect("rtp send");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `count` 20 ms G.711 packets to `to` while counting what arrives; returns packets received.
    pub fn exchange_rtp(&self, to: SocketAddr, count: u16, ssrc: u32) -> usize {
        self.exchange_rtp_of(to, count, ssrc, 0xff)
    }

    /// Like `exchange_rtp`, every payload byte `byte` (a steady G.711 level).
    pub fn exchange_rtp_of(&self, to: SocketAddr, count: u16, ssrc: u32, byte: u8) -> usize {
        self.exchange_rtp_heard(to, count, ssrc, byte).len()
    }

    /// Sends `count` 20 ms PCMU packets whose every byte is `byte` to `to`,
    /// and returns the RTP packets that arrive meanwhile and for 200 ms after.
    pub fn exchange_rtp_heard(
        &self,
        to: SocketAddr,
        count: u16,
        ssrc: u32,
        byte: u8,
    ) -> Vec<RtpIn> {
        let mut heard = Vec::new();
        for i in 0..count {
            let p = rtc_rtp::packet::Packet {
                header: rtc_rtp::header::Header {
                    version: 2,
                    payload_type: 0,
                    sequence_number: i,
                    timestamp: i as u32 * 160,
                    ssrc,
                    marker: i == 0,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(vec![byte; 160]),
            };
            self.rtp
                .send_to(&p.marshal().expect("marshal"), to)
                .expect("rtp send");
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(20) {
                heard.extend(self.recv_rtp());
            }
        }
        heard.extend(self.record_rtp(0.2));
        heard
    }
}

/// RTP both ways between two phones at once: (a received, b received) of 50 sent each.
pub fn talk(a: &Phone, a_to: SocketAddr, b: &Phone, b_to: SocketAddr) -> (usize, usize) {
    std::thread::scope(|s| {
        let other = s.spawn(|| b.exchange_rtp_of(b_to, 50, 0xb0b, 0x55));
        let mine = a.exchange_rtp_of(a_to, 50, 0xa11ce, 0x77);
        (mine, other.join().expect("thread"))
    })
}

/// Both phones hear each other through the server: more than 30 of the 50
/// packets each sends reach the other.
pub fn assert_talking(a: &Phone, a_to: SocketAddr, b: &Phone, b_to: SocketAddr, what: &str) {
    let (a_got, b_got) = talk(a, a_to, b, b_to);
    assert!(
        a_got > 30 && b_got > 30,
        "{what}: {a_got} and {b_got} of 50 packets"
    );
}
/// μ-law payloads in arrival order, decoded to linear samples.
pub fn decode_pcmu(packets: &[RtpIn]) -> Vec<f64> {
    packets
        .iter()
        .filter(|p| p.pt == 0)
        .flat_map(|p| p.payload.iter())
        .map(|b| audio_codec_algorithms::decode_ulaw(*b) as f64)
        .collect()
}

/// The bundled prompt `name` decoded as the server plays it (8 kHz).
pub fn prompt_source(name: &str) -> Vec<i16> {
    let path = crate::repo_root()
        .join("sounds")
        .join(format!("{name}.flac"));
    yihaotong::media::prompts::decode_to_8k(&path).expect("bundled prompt decodes")
}

/// How well `heard` matches the start of the bundled prompt `name`: the
/// best normalized cross-correlation over the shorter length, at lags of
/// whole 20 ms frames up to `max_lag_frames` into the prompt (0: the stream
/// starts with the prompt's first frame; more: a recording that begins a
/// few packets late).
pub fn prompt_correlation(heard: &[f64], name: &str, max_lag_frames: usize) -> f64 {
    let source = prompt_source(name);
    (0..=max_lag_frames)
        .map(|frames| {
            let src = &source[(frames * 160).min(source.len())..];
            let n = heard.len().min(src.len());
            assert!(n > 4000, "too little audio to compare: {n} samples");
            let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
            for i in 0..n {
                let (x, y) = (heard[i], src[i] as f64);
                xy += x * y;
                xx += x * x;
                yy += y * y;
            }
            xy / (xx.sqrt() * yy.sqrt()).max(1.0)
        })
        .fold(f64::MIN, f64::max)
}
