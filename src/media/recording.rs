//! Call recording: the caller on the left, the agent on the right, in a
//! stereo WAV that is a valid file at every second of the call.
//!
//! Room: the tape recorder of one bridged call. [`Recorder`] is fed the RTP
//! packets the relay forwards (sans-IO apart from its file): it decodes
//! G.711, lines the two sides up by arrival (a side that sends nothing, on
//! hold or with silence suppression, is filled with silence once the other
//! is [`MAX_SKEW`] ahead), and writes 16-bit stereo frames. Every
//! [`Recorder::checkpoint`] (the relay calls it each second) rewrites the
//! RIFF and data sizes and hands the bytes to the OS, so a crash of the
//! process loses at most the last second and leaves a playable file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rtc_shared::marshal::{MarshalSize, Unmarshal};

use super::player::Law;
use super::relay::Side;

/// Samples one side may run ahead before the other is filled with silence (250 ms).
pub const MAX_SKEW: usize = 2_000;
/// Samples per second.
const RATE: u32 = 8_000;
/// Bytes of the canonical WAV header.
const HEADER: u64 = 44;

/// A recording in progress.
pub struct Recorder {
    file: BufWriter<File>,
    path: PathBuf,
    law: Law,
    /// Each side's decoded samples not yet paired (plain vectors: taking
    /// from the front moves the rest, at most [`MAX_SKEW`] samples, and
    /// both filling and pairing run over flat slices).
    pending: [Vec<i16>; 2],
    data_bytes: u64,
    /// The stereo frames of one drain, kept between packets: a packet's
    /// recording allocates nothing.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("data_bytes", &self.data_bytes)
            .finish_non_exhaustive()
    }
}

fn header(data_bytes: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    let data = u32::try_from(data_bytes).unwrap_or(u32::MAX - 64);
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36u32.saturating_add(data)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&2u16.to_le_bytes()); // stereo
    h[24..28].copy_from_slice(&RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(RATE * 4).to_le_bytes()); // byte rate
    h[32..34].copy_from_slice(&4u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

impl Recorder {
    /// Creates `path` (and its folders) for a call whose media uses payload
    /// type `pt`. `None` for a codec we cannot decode (only G.711 is recorded).
    /// An existing file is never overwritten: a recording stopped and started
    /// again within the same second goes to `NAME-2.wav`, `NAME-3.wav`…
    /// ([`Recorder::path`] says which).
    pub fn create(path: &Path, pt: u8) -> std::io::Result<Option<Recorder>> {
        let Some(law) = Law::from_pt(pt) else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (file, path) = create_new_numbered(path)?;
        // A quarter second of the 16-bit stereo file (32,000 bytes a
        // second): four writes a second, and 8 KiB per recorded call (at
        // 16 KiB the buffer was the largest single piece of a bridged
        // call's heap, BENCHMARKS.md).
        let mut file = BufWriter::with_capacity(8 * 1024, file);
        file.write_all(&header(0))?;
        Ok(Some(Recorder {
            file,
            path,
            law,
            pending: [Vec::new(), Vec::new()],
            data_bytes: 0,
            scratch: Vec::new(),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seconds recorded so far.
    pub fn seconds(&self) -> f64 {
        self.data_bytes as f64 / f64::from(RATE * 4)
    }

    /// A packet `side` sent. Anything that is not audio in our law (DTMF
    /// events, comfort noise, garbage) is skipped.
    pub fn push(&mut self, side: Side, pkt: &[u8]) -> std::io::Result<()> {
        let mut view = pkt;
        let Ok(h) = rtc_rtp::header::Header::unmarshal(&mut view) else {
            return Ok(());
        };
        if h.payload_type != self.law.pt() {
            return Ok(());
        }
        let start = h.marshal_size();
        let mut end = pkt.len();
        if h.padding {
            let pad = pkt.last().map_or(0, |p| *p as usize);
            end = end.saturating_sub(pad);
        }
        let Some(payload) = pkt.get(start..end) else {
            return Ok(());
        };
        let q = &mut self.pending[side as usize];
        q.extend(payload.iter().map(|b| self.law.decode(*b)));
        self.drain(false)
    }

    /// Writes every frame both sides have; fills a side that lags by more
    /// than [`MAX_SKEW`] (or all of it, when `all`) with silence.
    fn drain(&mut self, all: bool) -> std::io::Result<()> {
        let [a, b] = &mut self.pending;
        let both = a.len().min(b.len());
        let ahead = a.len().max(b.len()) - both;
        // Keep a little of the leading side back, so jitter does not turn into gaps.
        let fill = if all {
            ahead
        } else if ahead > MAX_SKEW {
            ahead - MAX_SKEW / 2
        } else {
            0
        };
        let frames = both + fill;
        if frames == 0 {
            return Ok(());
        }
        // Left samples into the first half of each 4-byte frame, right into
        // the second; a side that has fewer keeps the zeros (silence).
        let out = &mut self.scratch;
        out.clear();
        out.resize(frames * 4, 0);
        let (from_a, from_b) = (a.len().min(frames), b.len().min(frames));
        for (o, l) in out.chunks_exact_mut(4).zip(&a[..from_a]) {
            o[..2].copy_from_slice(&l.to_le_bytes());
        }
        for (o, r) in out.chunks_exact_mut(4).zip(&b[..from_b]) {
            o[2..].copy_from_slice(&r.to_le_bytes());
        }
        a.drain(..from_a);
        b.drain(..from_b);
        self.file.write_all(out)?;
        self.data_bytes += out.len() as u64;
        Ok(())
    }

    /// Makes the file whole up to now: sizes in the header, bytes to the OS.
    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        // One positioned write (pwrite): the file's offset stays at the end.
        self.file
            .get_ref()
            .write_all_at(&header(self.data_bytes), 0)
    }

    /// Ends the recording (what is pending is written, paired with silence).
    pub fn finish(mut self) -> std::io::Result<f64> {
        self.drain(true)?;
        self.checkpoint()?;
        self.file.get_ref().sync_data()?;
        Ok(self.seconds())
    }
}

/// Most names tried for one recording before giving up.
const MAX_NUMBERED: u32 = 100;

/// Creates `path`, or the first of `stem-2.ext`, `stem-3.ext`… that does not
/// exist yet.
fn create_new_numbered(path: &Path) -> std::io::Result<(File, PathBuf)> {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    for n in 1..=MAX_NUMBERED {
        let candidate = if n == 1 {
            path.to_path_buf()
        } else {
            path.with_file_name(format!("{stem}-{n}.{ext}"))
        };
        match File::options()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => return Ok((f, candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} and {MAX_NUMBERED} numbered names after it exist",
            path.display()
        ),
    ))
}

/// Where a new recording goes: `dir/YYYY/MM/DD/HHMMSS-<call-id>.wav`, the
/// Call-ID reduced to file-name-safe characters.
pub fn path_for(dir: &Path, local: chrono::NaiveDateTime, call_id: &str) -> PathBuf {
    let safe: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    dir.join(local.format("%Y/%m/%d").to_string())
        .join(format!("{}-{safe}.wav", local.format("%H%M%S")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_shared::marshal::Marshal;

    fn rtp(pt: u8, seq: u16, payload: Vec<u8>) -> Vec<u8> {
        rtc_rtp::packet::Packet {
            header: rtc_rtp::header::Header {
                version: 2,
                payload_type: pt,
                sequence_number: seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 7,
                ..Default::default()
            },
            payload: bytes::Bytes::from(payload),
        }
        .marshal()
        .expect("marshal")
        .to_vec()
    }

    fn samples(path: &Path) -> (Vec<u8>, Vec<(i16, i16)>) {
        let bytes = std::fs::read(path).expect("read");
        let data = bytes[44..]
            .chunks_exact(4)
            .map(|c| {
                (
                    i16::from_le_bytes([c[0], c[1]]),
                    i16::from_le_bytes([c[2], c[3]]),
                )
            })
            .collect();
        (bytes[..44].to_vec(), data)
    }

    #[test]
    fn caller_left_agent_right_and_valid_at_every_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("2026/11/28/x.wav");
        let mut rec = Recorder::create(&path, 0).expect("create").expect("PCMU");
        let loud = audio_codec_algorithms::encode_ulaw(8000);
        let quiet = audio_codec_algorithms::encode_ulaw(-300);
        for seq in 0..10 {
            rec.push(Side::A, &rtp(0, seq, vec![loud; 160]))
                .expect("push");
            rec.push(Side::B, &rtp(0, seq, vec![quiet; 160]))
                .expect("push");
            // DTMF events and other payload types are not audio.
            rec.push(Side::B, &rtp(101, seq, vec![1, 2, 3, 4]))
                .expect("push");
        }
        rec.checkpoint().expect("checkpoint");
        // Valid now, before the end: sizes match what is on disk.
        let (h, data) = samples(&path);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 2, "stereo");
        assert_eq!(u32::from_le_bytes([h[24], h[25], h[26], h[27]]), 8000);
        assert_eq!(
            u32::from_le_bytes([h[40], h[41], h[42], h[43]]) as usize,
            data.len() * 4
        );
        assert_eq!(data.len(), 1600);
        assert!(data
            .iter()
            .all(|(l, r)| *l > 7000 && (-400..-200).contains(r)));
        // The agent goes silent (hold): the caller keeps being recorded, the
        // agent's channel filled with silence once the caller is far ahead.
        for seq in 10..40 {
            rec.push(Side::A, &rtp(0, seq, vec![loud; 160]))
                .expect("push");
        }
        let secs = rec.finish().expect("finish");
        let (_, data) = samples(&path);
        assert_eq!(data.len(), 40 * 160);
        assert!((secs - 0.8).abs() < 1e-9);
        assert!(data[1600..].iter().all(|(l, r)| *l > 7000 && *r == 0));
    }

    #[test]
    fn only_g711_is_recorded_and_paths_are_dated_and_safe() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Recorder::create(&dir.path().join("g729.wav"), 18)
            .expect("io")
            .is_none());
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 28)
            .and_then(|d| d.and_hms_opt(9, 5, 7))
            .expect("time");
        let p = path_for(Path::new("/r"), at, "a/b@../c");
        assert_eq!(p, Path::new("/r/2026/11/28/090507-a_b____c.wav"));
    }

    #[test]
    fn a_second_recording_in_the_same_second_gets_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("2026/11/28/090507-call.wav");
        let mut first = Recorder::create(&path, 0).expect("create").expect("PCMU");
        assert_eq!(first.path(), path);
        for seq in 1..=2 {
            first
                .push(Side::A, &rtp(0, seq, vec![0x55; 160]))
                .expect("push");
        }
        first.finish().expect("finish");
        let second = Recorder::create(&path, 0).expect("create").expect("PCMU");
        let third = Recorder::create(&path, 8).expect("create").expect("PCMA");
        assert_eq!(
            second.path(),
            dir.path().join("2026/11/28/090507-call-2.wav")
        );
        assert_eq!(
            third.path(),
            dir.path().join("2026/11/28/090507-call-3.wav")
        );
        // The first file still holds its audio.
        let (_, data) = samples(&path);
        assert!(!data.is_empty());
    }
}
