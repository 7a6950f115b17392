//! The prompt cache: every file under `sounds/`, decoded once at start and
//! kept pre-encoded as G.711 (both laws) in memory.
//!
//! Room: the sound room's shelf. Decoding uses symphonia (WAV, MP3, FLAC,
//! Ogg/Vorbis; a broken file is an error naming the file, never a panic);
//! stereo is down-mixed; any rate is resampled to 8 kHz with rubato's
//! band-limited FFT resampler (not by dropping samples). A prompt is named by
//! its path under `sounds/` without the extension (`common/invalid` →
//! `sounds/common/invalid.wav`). Calls share prompts by `Arc`, so a thousand
//! callers hearing the same greeting cost one copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

/// Samples per 20 ms frame at 8 kHz (and bytes per G.711 frame).
pub const FRAME: usize = 160;
/// The telephone rate.
pub const RATE: u32 = 8000;
/// Longest prompt accepted, in seconds (music on hold included).
pub const MAX_SECONDS: usize = 600;

/// One prompt, ready to send: whole 20 ms frames in both laws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Name (path under `sounds/` without extension).
    pub name: String,
    /// μ-law bytes, a multiple of [`FRAME`] (the tail padded with silence).
    pub pcmu: Vec<u8>,
    /// A-law bytes, same length.
    pub pcma: Vec<u8>,
}

impl Prompt {
    /// Number of 20 ms frames.
    pub fn frames(&self) -> usize {
        self.pcmu.len() / FRAME
    }

    /// Builds a prompt from 8 kHz linear samples.
    pub fn from_linear(name: &str, samples: &[i16]) -> Prompt {
        let frames = samples.len().div_ceil(FRAME).max(1);
        let mut pcmu = Vec::with_capacity(frames * FRAME);
        let mut pcma = Vec::with_capacity(frames * FRAME);
        for i in 0..frames * FRAME {
            let s = samples.get(i).copied().unwrap_or(0);
            pcmu.push(audio_codec_algorithms::encode_ulaw(s));
            pcma.push(audio_codec_algorithms::encode_alaw(s));
        }
        Prompt {
            name: name.to_string(),
            pcmu,
            pcma,
        }
    }
}

/// Names beginning with this are silence of the given length, not files.
pub const SILENCE: &str = "silence/";

/// Frames of silence a `silence/<N>ms` or `silence/<N>s` name asks for
/// (whole 20 ms frames, rounded up; 1 ms to 60 s), or `None` if the name is
/// not one.
pub fn silence_frames(name: &str) -> Option<usize> {
    let d = name.strip_prefix(SILENCE)?;
    let (num, ms_per) = match d.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => (d.strip_suffix('s')?, 1000),
    };
    if num.is_empty() || num.len() > 6 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = num.parse::<usize>().ok()? * ms_per;
    (1..=60_000).contains(&ms).then(|| ms.div_ceil(20))
}

/// A file that could not become a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct PromptError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// All prompts, by name.
#[derive(Debug, Default, Clone)]
pub struct PromptCache {
    prompts: HashMap<String, Arc<Prompt>>,
}

const EXTENSIONS: [&str; 5] = ["wav", "mp3", "flac", "ogg", "oga"];

impl PromptCache {
    /// Decodes every sound file under `dir`. Files that fail are returned as
    /// errors beside the prompts that loaded (`yihaotong check` and a reload
    /// refuse on any error; a call never sees a half-loaded prompt).
    pub fn load(dir: &Path) -> (PromptCache, Vec<PromptError>) {
        let mut cache = PromptCache::default();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        collect(dir, &mut files, &mut errors);
        files.sort();
        for path in files {
            let Some(name) = prompt_name(dir, &path) else {
                continue;
            };
            match decode_to_8k(&path) {
                Ok(samples) => {
                    cache
                        .prompts
                        .insert(name.clone(), Arc::new(Prompt::from_linear(&name, &samples)));
                }
                Err(reason) => errors.push(PromptError { path, reason }),
            }
        }
        (cache, errors)
    }

    /// A prompt by name; `silence/500ms` (or `silence/2s`, up to 60 s) is
    /// that much silence, made on the spot.
    pub fn get(&self, name: &str) -> Option<Arc<Prompt>> {
        if let Some(frames) = silence_frames(name) {
            return Some(Arc::new(Prompt::from_linear(
                name,
                &vec![0i16; frames * FRAME],
            )));
        }
        self.prompts.get(name).cloned()
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Prompt names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.prompts.keys().cloned().collect();
        v.sort();
        v
    }
}

/// The names of the sound files under `dir`, without decoding them (what
/// the CLI checks a queue's prompts against while no server runs).
pub fn names_on_disk(dir: &Path) -> std::collections::BTreeSet<String> {
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    collect(dir, &mut files, &mut errors);
    files.iter().filter_map(|p| prompt_name(dir, p)).collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<PromptError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(PromptError {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files, errors);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            files.push(path);
        }
    }
}

/// `sounds/common/invalid.wav` → `common/invalid`.
fn prompt_name(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.with_extension("");
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Decodes a file to mono 8 kHz 16-bit samples.
pub fn decode_to_8k(path: &Path) -> Result<Vec<i16>, String> {
    let (mono, rate) = decode_mono(path)?;
    let resampled = resample(&mono, rate)?;
    Ok(resampled
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
        .collect())
}

/// Decodes the first audio track of a file to mono f32 at its own rate.
fn decode_mono(path: &Path) -> Result<(Vec<f32>, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mss = MediaSourceStream::new(Box::new(file), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut reader = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| format!("not a recognised audio file ({e})"))?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err("no audio codec parameters".into());
    };
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| format!("unsupported codec ({e})"))?;
    let mut mono: Vec<f32> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut interleaved: Vec<f32> = Vec::new();
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(format!("read error: {e}")),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // A damaged packet: skip it, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(format!("decode error: {e}")),
        };
        rate = buf.spec().rate();
        let channels = buf.spec().channels().count().max(1);
        interleaved.clear();
        buf.copy_to_vec_interleaved(&mut interleaved);
        for frame in interleaved.chunks(channels) {
            mono.push(frame.iter().sum::<f32>() / channels as f32);
        }
        if rate > 0 && mono.len() > MAX_SECONDS * rate as usize {
            return Err(format!("longer than {MAX_SECONDS} s"));
        }
    }
    if rate == 0 {
        return Err("unknown sample rate".into());
    }
    if mono.is_empty() {
        return Err("no audio in file".into());
    }
    Ok((mono, rate))
}

/// Band-limited resampling to 8 kHz.
fn resample(mono: &[f32], rate: u32) -> Result<Vec<f32>, String> {
    if rate == RATE {
        return Ok(mono.to_vec());
    }
    let mut resampler = Fft::<f32>::new(rate as usize, RATE as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| format!("cannot resample from {rate} Hz: {e}"))?;
    let input =
        InterleavedOwned::new_from(mono.to_vec(), 1, mono.len()).map_err(|e| e.to_string())?;
    let out = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| format!("resampling failed: {e}"))?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_names() {
        assert_eq!(silence_frames("silence/500ms"), Some(25));
        assert_eq!(silence_frames("silence/2s"), Some(100));
        assert_eq!(silence_frames("silence/1ms"), Some(1));
        assert_eq!(silence_frames("silence/0ms"), None);
        assert_eq!(silence_frames("silence/61s"), None);
        assert_eq!(silence_frames("silence/-1s"), None);
        assert_eq!(silence_frames("silence/"), None);
        assert_eq!(silence_frames("common/invalid"), None);
        let p = PromptCache::default()
            .get("silence/100ms")
            .expect("silence");
        assert_eq!(p.frames(), 5);
        assert!(p
            .pcmu
            .iter()
            .all(|b| *b == audio_codec_algorithms::encode_ulaw(0)));
    }

    /// Writes a 16-bit PCM WAV file.
    fn wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
        let data_len = (samples.len() * 2) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
        b.extend_from_slice(&(channels * 2).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(path, b).expect("write wav");
    }

    fn sine(rate: u32, freq: f32, seconds: f32, amplitude: f32) -> Vec<i16> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| {
                (amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
                    as i16
            })
            .collect()
    }

    /// Power of `freq` in 8 kHz samples (Goertzel), normalised by length.
    fn power_at(samples: &[i16], freq: f32) -> f32 {
        let c = 2.0 * (2.0 * std::f32::consts::PI * freq / 8000.0).cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &x in samples {
            let s0 = x as f32 + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2) / samples.len() as f32
    }

    #[test]
    fn stereo_48k_is_downmixed_and_resampled_without_aliasing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("common")).expect("dir");
        // 1 kHz in the left channel, 5 kHz (above the new Nyquist) in the right.
        let left = sine(48_000, 1000.0, 1.0, 12_000.0);
        let right = sine(48_000, 5000.0, 1.0, 12_000.0);
        let stereo: Vec<i16> = left
            .iter()
            .zip(&right)
            .flat_map(|(l, r)| [*l, *r])
            .collect();
        wav(&dir.path().join("common/tone.wav"), 48_000, 2, &stereo);
        let (cache, errors) = PromptCache::load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let p = cache
            .get("common/tone")
            .expect("named by path without extension");
        assert!(
            (49..=51).contains(&p.frames()),
            "1 s is 50 frames, got {}",
            p.frames()
        );
        let linear: Vec<i16> = p
            .pcmu
            .iter()
            .map(|b| audio_codec_algorithms::decode_ulaw(*b))
            .collect();
        let body = &linear[800..7200];
        let tone = power_at(body, 1000.0);
        // 5 kHz folds to 3 kHz if samples are merely dropped; band-limited resampling removes it.
        let alias = power_at(body, 3000.0);
        assert!(
            tone > 1000.0 * alias,
            "1 kHz {tone} vs alias at 3 kHz {alias}"
        );
        let alaw: Vec<i16> = p
            .pcma
            .iter()
            .map(|b| audio_codec_algorithms::decode_alaw(*b))
            .collect();
        assert!(power_at(&alaw[800..7200], 1000.0) > 1000.0 * power_at(&alaw[800..7200], 3000.0));
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("garbage.wav"),
            b"RIFF\x10\x00\x00\x00WAVEjunkjunk",
        )
        .expect("write");
        std::fs::write(dir.path().join("empty.mp3"), b"").expect("write");
        wav(
            &dir.path().join("ok.wav"),
            8000,
            1,
            &sine(8000, 440.0, 0.1, 8000.0),
        );
        let (cache, errors) = PromptCache::load(dir.path());
        assert_eq!(cache.names(), vec!["ok"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.to_string().contains(&dir.path().display().to_string())));
        let p = cache.get("ok").expect("8 kHz file loads as is");
        assert_eq!(p.frames(), 5);
    }

    #[test]
    fn g711_both_laws_round_trip_within_quantisation() {
        // The crate is used directly; check it over every 16-bit input.
        for s in i16::MIN..=i16::MAX {
            let u = audio_codec_algorithms::decode_ulaw(audio_codec_algorithms::encode_ulaw(s));
            let a = audio_codec_algorithms::decode_alaw(audio_codec_algorithms::encode_alaw(s));
            let tol = |x: i16| (x as i32).abs() / 16 + 40;
            assert!((u as i32 - s as i32).abs() <= tol(s), "μ-law {s} -> {u}");
            assert!((a as i32 - s as i32).abs() <= tol(s), "A-law {s} -> {a}");
        }
    }
}
