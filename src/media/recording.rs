//! Call recording: the caller on the left, the agent on the right, in a
//! stereo WAV that is a valid file at every second of the call.
//!
//! Room: the tape recorder of bridged calls, and its one disk writer.
//! [`Recorder`] is fed the RTP packets the relay forwards, on the media
//! engine's real-time threads, and does no file I/O there: it decodes G.711,
//! lines the two sides up by arrival (a side that sends nothing, on hold or
//! with silence suppression, is filled with silence once the other is
//! [`MAX_SKEW`] ahead), and packs 16-bit stereo frames into quarter-second
//! chunks. The chunks, each with its place in the file, go to the
//! `recordings` thread, which writes them (`pwrite`), rewrites the RIFF and
//! data sizes at every [`Recorder::checkpoint`] (the relay calls it each
//! second) and syncs and closes the file when the recording ends (dropped or
//! [`Recorder::finish`]ed). A crash of the process loses at most the last
//! second and leaves a playable file. When the disk falls behind by more
//! than [`MAX_QUEUED`] bytes over all recordings, new chunks are dropped, not
//! waited for: their span of the file stays silent (a hole the file system
//! reads as zeros) and the count shows in [`dropped_bytes`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use rtc_shared::marshal::{MarshalSize, Unmarshal};

use super::player::Law;
use super::relay::Side;

/// Samples one side may run ahead before the other is filled with silence (250 ms).
pub const MAX_SKEW: usize = 2_000;
/// Samples per second.
const RATE: u32 = 8_000;
/// Bytes of the canonical WAV header.
const HEADER: u64 = 44;
/// Bytes handed to the writer at most at a time: an eighth of a second of
/// the 16-bit stereo file (32,000 bytes a second), so about eight hand-offs
/// a second per recorded call (a channel send each, no wake-up), and 4 KiB
/// per call held here (at 16 KiB the buffer was the largest single piece of
/// a bridged call's heap, BENCHMARKS.md).
const CHUNK: usize = 4 * 1024;
/// How often the writer thread takes what was handed to it.
const WRITER_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);
/// Audio waiting for the disk, over all recordings, past which new chunks
/// are dropped: 128 MiB, about 2.8 s of 1,500 recorded calls.
pub const MAX_QUEUED: usize = 128 << 20;

/// A recording's file, shared with the writer thread.
struct Tape {
    file: File,
    /// A write failed: the recording is over (its owner hears so at the next packet).
    failed: AtomicBool,
}

/// A recording in progress. Dropping it closes the file (on the writer thread).
pub struct Recorder {
    tape: Arc<Tape>,
    path: PathBuf,
    law: Law,
    /// Each side's decoded samples not yet paired (plain vectors: taking
    /// from the front moves the rest, at most [`MAX_SKEW`] samples, and
    /// both filling and pairing run over flat slices).
    pending: [Vec<i16>; 2],
    /// Audio bytes in the file so far (dropped chunks included: their span is silence).
    data_bytes: u64,
    /// Stereo frames not yet handed to the writer; they start at
    /// `HEADER + data_bytes - out.len()` in the file.
    out: Vec<u8>,
    /// Audio bytes dropped because the disk was behind.
    dropped: u64,
    writer: &'static Writer,
    closed: bool,
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
    /// ([`Recorder::path`] says which). Blocking: not on a real-time thread.
    pub fn create(path: &Path, pt: u8) -> std::io::Result<Option<Recorder>> {
        Self::create_for(path, pt, writer())
    }

    fn create_for(
        path: &Path,
        pt: u8,
        writer: &'static Writer,
    ) -> std::io::Result<Option<Recorder>> {
        let Some(law) = Law::from_pt(pt) else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (file, path) = create_new_numbered(path)?;
        file.write_all_at(&header(0), 0)?;
        Ok(Some(Recorder {
            tape: Arc::new(Tape {
                file,
                failed: AtomicBool::new(false),
            }),
            path,
            law,
            pending: [Vec::new(), Vec::new()],
            data_bytes: 0,
            out: Vec::with_capacity(CHUNK),
            dropped: 0,
            writer,
            closed: false,
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
    /// events, comfort noise, garbage) is skipped. An error means the file
    /// could not be written (the disk is full, or gone): the recording is over.
    pub fn push(&mut self, side: Side, pkt: &[u8]) -> std::io::Result<()> {
        if self.tape.failed.load(Relaxed) {
            return Err(std::io::Error::other("an earlier write to the file failed"));
        }
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
        self.drain(false);
        Ok(())
    }

    /// Packs every frame both sides have; fills a side that lags by more
    /// than [`MAX_SKEW`] (or all of it, when `all`) with silence. Full
    /// chunks go to the writer.
    fn drain(&mut self, all: bool) {
        let (len_a, len_b) = (self.pending[0].len(), self.pending[1].len());
        let both = len_a.min(len_b);
        let ahead = len_a.max(len_b) - both;
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
            return;
        }
        // A chunk goes before it would outgrow its buffer (a Vec that grew
        // would double, and keep the double for the call).
        if !self.out.is_empty() && self.out.len() + frames * 4 > CHUNK {
            self.hand_off();
        }
        let [a, b] = &mut self.pending;
        // Left samples into the first half of each 4-byte frame, right into
        // the second; a side that has fewer keeps the zeros (silence).
        let at = self.out.len();
        self.out.resize(at + frames * 4, 0);
        let out = &mut self.out[at..];
        let (from_a, from_b) = (a.len().min(frames), b.len().min(frames));
        for (o, l) in out.chunks_exact_mut(4).zip(&a[..from_a]) {
            o[..2].copy_from_slice(&l.to_le_bytes());
        }
        for (o, r) in out.chunks_exact_mut(4).zip(&b[..from_b]) {
            o[2..].copy_from_slice(&r.to_le_bytes());
        }
        a.drain(..from_a);
        b.drain(..from_b);
        self.data_bytes += frames as u64 * 4;
        if self.out.len() >= CHUNK {
            self.hand_off();
        }
    }

    /// Gives the frames packed so far to the writer (or drops them, when the
    /// disk is that far behind).
    fn hand_off(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let bytes = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK));
        let at = HEADER + self.data_bytes - bytes.len() as u64;
        let len = bytes.len() as u64;
        if !self.writer.write(&self.tape, at, bytes) {
            self.dropped += len;
        }
    }

    /// Makes the file whole up to now: the frames packed so far and the
    /// sizes in the header go to the writer.
    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        if self.tape.failed.load(Relaxed) {
            return Err(std::io::Error::other("an earlier write to the file failed"));
        }
        self.hand_off();
        self.writer.header(&self.tape, self.data_bytes);
        Ok(())
    }

    /// Ends the recording (what is pending is written, paired with silence)
    /// and waits for the writer to have synced the file; seconds recorded.
    pub fn finish(mut self) -> std::io::Result<f64> {
        let (tx, rx) = mpsc::channel();
        self.close(Some(tx));
        let closed = rx
            .recv()
            .map_err(|_| std::io::Error::other("the recordings writer is gone"))?;
        closed.map(|()| self.seconds())
    }

    fn close(&mut self, done: Option<mpsc::Sender<std::io::Result<()>>>) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        self.drain(true);
        self.hand_off();
        self.writer.send(Job::Close {
            tape: self.tape.clone(),
            path: std::mem::take(&mut self.path).into_boxed_path(),
            data_bytes: self.data_bytes,
            dropped: self.dropped,
            done,
        });
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close(None);
    }
}

/// What the writer thread does, in order.
enum Job {
    /// Audio at its place in the file.
    Write {
        tape: Arc<Tape>,
        at: u64,
        bytes: Vec<u8>,
    },
    /// The header with these sizes.
    Header { tape: Arc<Tape>, data_bytes: u64 },
    /// The final header, then sync; the file closes with its last handle.
    Close {
        tape: Arc<Tape>,
        path: Box<Path>,
        data_bytes: u64,
        dropped: u64,
        done: Option<mpsc::Sender<std::io::Result<()>>>,
    },
    /// Anything else that must wait for the jobs before it.
    Run(Box<dyn FnOnce() + Send>),
}

/// The recordings' disk writer: one thread taking jobs in order, and the
/// count of audio bytes waiting for it.
struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: AtomicU64,
}

/// The writer, started with the first recording.
static WRITER: OnceLock<Writer> = OnceLock::new();

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| Writer::start(MAX_QUEUED))
}

/// Audio bytes dropped since start because the disk was behind.
pub fn dropped_bytes() -> u64 {
    WRITER.get().map_or(0, |w| w.dropped.load(Relaxed))
}

/// Audio bytes waiting for the disk now.
pub fn queued_bytes() -> usize {
    WRITER.get().map_or(0, |w| w.queued.load(Relaxed))
}

/// Waits until the writer has done every job handed to it before this call.
pub fn settled() {
    writer().settled();
}

impl Writer {
    fn start(limit: usize) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("recordings".into())
            .spawn(move || loop {
                // Polled, not woken: a producer's send never has to wake
                // this thread (a futex wake per chunk cost the engine thread
                // more than the chunk's packing, `cargo bench --bench media`).
                loop {
                    match rx.try_recv() {
                        Ok(job) => do_job(job, &q),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
                std::thread::sleep(WRITER_PERIOD);
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                // Without the thread each job runs where it is handed over.
                tracing::error!(error = %e, "no recordings writer thread: recordings write inline");
                None
            }
        };
        Writer {
            tx,
            queued,
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    fn send(&self, job: Job) {
        let job = match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            None => job,
        };
        do_job(job, &self.queued);
    }

    /// Queues audio, or drops it (false) when the disk is behind by more than the limit.
    fn write(&self, tape: &Arc<Tape>, at: u64, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.queued.fetch_add(len, Relaxed) + len > self.limit {
            self.queued.fetch_sub(len, Relaxed);
            self.dropped.fetch_add(len as u64, Relaxed);
            return false;
        }
        let tape = tape.clone();
        self.send(Job::Write { tape, at, bytes });
        true
    }

    /// Queues a header rewrite, unless the disk is behind (the next one will do).
    fn header(&self, tape: &Arc<Tape>, data_bytes: u64) {
        if self.queued.load(Relaxed) < self.limit {
            let tape = tape.clone();
            self.send(Job::Header { tape, data_bytes });
        }
    }

    fn settled(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Run(Box::new(move || {
            let _ = tx.send(());
        })));
        let _ = rx.recv();
    }
}

fn do_job(job: Job, queued: &AtomicUsize) {
    let fail = |tape: &Tape, e: &std::io::Error| {
        if !tape.failed.swap(true, Relaxed) {
            tracing::error!(error = %e, "recording write failed");
        }
    };
    match job {
        Job::Write { tape, at, bytes } => {
            if let Err(e) = tape.file.write_all_at(&bytes, at) {
                fail(&tape, &e);
            }
            queued.fetch_sub(bytes.len(), Relaxed);
        }
        Job::Header { tape, data_bytes } => {
            if let Err(e) = tape.file.write_all_at(&header(data_bytes), 0) {
                fail(&tape, &e);
            }
        }
        Job::Close {
            tape,
            path,
            data_bytes,
            dropped,
            done,
        } => {
            let closed = if tape.failed.load(Relaxed) {
                Err(std::io::Error::other("an earlier write to the file failed"))
            } else {
                // A last chunk dropped for a slow disk leaves the file short
                // of what the header says: the rest is silence.
                let whole = HEADER + data_bytes;
                tape.file
                    .write_all_at(&header(data_bytes), 0)
                    .and_then(|()| tape.file.metadata())
                    .and_then(|m| {
                        if m.len() < whole {
                            tape.file.set_len(whole)
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| tape.file.sync_data())
            };
            let path = path.display();
            let seconds = data_bytes as f64 / f64::from(RATE * 4);
            match &closed {
                Ok(()) if dropped > 0 => tracing::warn!(
                    %path,
                    seconds,
                    dropped_seconds = dropped as f64 / f64::from(RATE * 4),
                    "recording closed with gaps: the disk fell behind"
                ),
                Ok(()) => tracing::info!(%path, seconds, "recording closed"),
                Err(e) => tracing::error!(%path, error = %e, "recording could not be closed"),
            }
            if let Some(done) = done {
                let _ = done.send(closed);
            }
        }
        Job::Run(f) => f(),
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
        settled();
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
    fn a_disk_that_falls_behind_costs_audio_not_waiting_and_the_file_stays_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slow.wav");
        // A writer that lets two chunks wait, and a disk that stalls.
        let writer: &'static Writer = Box::leak(Box::new(Writer::start(2 * CHUNK)));
        let (go_on, stalled) = mpsc::channel::<()>();
        writer.send(Job::Run(Box::new(move || {
            let _ = stalled.recv();
        })));
        let mut rec = Recorder::create_for(&path, 0, writer)
            .expect("create")
            .expect("PCMU");
        let loud = audio_codec_algorithms::encode_ulaw(8000);
        // Two seconds of both sides: 64,000 bytes, about eight chunks. None
        // of it waits for the disk; what does not fit is dropped.
        for seq in 0..100 {
            rec.push(Side::A, &rtp(0, seq, vec![loud; 160]))
                .expect("push");
            rec.push(Side::B, &rtp(0, seq, vec![loud; 160]))
                .expect("push");
        }
        rec.checkpoint().expect("checkpoint");
        let dropped = rec.dropped;
        assert!(dropped >= 4 * CHUNK as u64, "dropped {dropped}");
        assert_eq!(writer.dropped.load(Relaxed), dropped);
        go_on.send(()).expect("the disk comes back");
        assert!((rec.finish().expect("finish") - 2.0).abs() < 1e-9);
        // The header and the length agree; the chunks that waited hold the
        // audio, the dropped span is silence.
        let (h, data) = samples(&path);
        assert_eq!(data.len(), 16_000);
        assert_eq!(
            u32::from_le_bytes([h[40], h[41], h[42], h[43]]) as usize,
            data.len() * 4
        );
        let written = data.iter().filter(|(l, r)| *l > 7000 && *r > 7000).count();
        let silent = data.iter().filter(|(l, r)| *l == 0 && *r == 0).count();
        assert_eq!(written + silent, data.len());
        assert_eq!(silent as u64 * 4, dropped);
        // The first two chunks (six packets each, just under CHUNK) waited;
        // the third would not fit.
        assert!(data[..CHUNK / 4].iter().all(|(l, _)| *l > 7000));
        assert_eq!(writer.queued.load(Relaxed), 0);
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
