//! The records archive: whole days of CDRs, queue-log lines and audit
//! entries that have left the database.
//!
//! Room: the cellar's back room. Only [`super::Store`] calls it. Each UTC
//! day of one kind is a gzip'd JSON-lines file, `KIND/YYYY-MM-DD.jsonl.gz`
//! under `[records] archive_dir`, one record per line exactly as the
//! database held it (so `zcat | jq` reads it). A file is written under a
//! temporary name, synced and renamed, so a crash leaves either the whole
//! file or none. Archiving a day again (a crash after the rename, before
//! the rows left the database; a late row) adds a part `YYYY-MM-DD.N.jsonl.gz`
//! with only the lines no earlier part holds, so no record is ever written
//! twice or lost.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The kinds of records that are archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Call detail records, keyed by end time.
    Cdrs,
    /// Queue-log lines, keyed by their time.
    QueueLog,
    /// The audit log, keyed by its time.
    Audit,
}

impl RecordKind {
    /// Every kind, in the order the sweep takes them.
    pub const ALL: [RecordKind; 3] = [RecordKind::Cdrs, RecordKind::QueueLog, RecordKind::Audit];

    /// Its folder in the archive (and its tree's name).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Cdrs => "cdrs",
            RecordKind::QueueLog => "queue_log",
            RecordKind::Audit => "audit",
        }
    }

    /// The record's time (Unix ms) as its key holds it: a CDR's end, a
    /// line's or entry's `at`. `None` for a line that is not such a record.
    pub fn time_of(self, record: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Times {
            ended: Option<u64>,
            at: Option<u64>,
        }
        let t: Times = serde_json::from_slice(record).ok()?;
        match self {
            RecordKind::Cdrs => t.ended,
            RecordKind::QueueLog | RecordKind::Audit => t.at,
        }
    }
}

/// The UTC day (days since 1970-01-01) of a Unix ms time.
pub fn day_of(ms: u64) -> u64 {
    ms / DAY_MS
}

/// `YYYY-MM-DD` of a day number.
pub fn date_of(day: u64) -> String {
    chrono::DateTime::from_timestamp((day * 86_400) as i64, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day-{day}"))
}

/// The day a file name `YYYY-MM-DD[.N].jsonl.gz` is for.
fn day_of_name(name: &str) -> Option<u64> {
    let date = chrono::NaiveDate::parse_from_str(name.get(..10)?, "%Y-%m-%d").ok()?;
    let rest = name.get(10..)?;
    let part_ok = rest == ".jsonl.gz"
        || rest
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix(".jsonl.gz"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !part_ok {
        return None;
    }
    let secs = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    u64::try_from(secs).ok().map(|s| s / 86_400)
}

/// One kind's archive under `dir`.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
}

impl Archive {
    /// The archive of `kind` under the archive folder `root`.
    pub fn new(root: &Path, kind: RecordKind) -> Archive {
        Archive {
            dir: root.join(kind.name()),
        }
    }

    /// The files of `day`, first part first.
    pub fn parts(&self, day: u64) -> Vec<PathBuf> {
        let date = date_of(day);
        let mut parts = Vec::new();
        let first = self.dir.join(format!("{date}.jsonl.gz"));
        if first.exists() {
            parts.push(first);
        }
        for n in 1.. {
            let p = self.dir.join(format!("{date}.{n}.jsonl.gz"));
            if !p.exists() {
                break;
            }
            parts.push(p);
        }
        parts
    }

    /// The days that have a file, in order.
    pub fn days(&self) -> anyhow::Result<Vec<u64>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", self.dir.display())),
        };
        let mut days: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| day_of_name(&e.file_name().to_string_lossy()))
            .collect();
        days.sort_unstable();
        days.dedup();
        Ok(days)
    }

    /// Every record archived for `day`, in the order written.
    pub fn read_day(&self, day: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for part in self.parts(day) {
            let file = std::fs::File::open(&part)
                .with_context(|| format!("cannot open the archive file {}", part.display()))?;
            let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
            for (n, line) in reader.split(b'\n').enumerate() {
                let line = line.with_context(|| {
                    format!(
                        "the archive file {} is damaged at line {}",
                        part.display(),
                        n + 1
                    )
                })?;
                if !line.is_empty() {
                    out.push(line);
                }
            }
        }
        Ok(out)
    }

    /// Writes `rows` (one day's records, oldest first) as a new part of
    /// `day`, leaving out what the day's earlier parts hold. Returns how
    /// many were written; what returns Ok is on disk (file and folder
    /// synced), so the rows may leave the database. The rows stream through:
    /// a busy day is never all in memory.
    pub fn write_day(
        &self,
        day: u64,
        rows: impl IntoIterator<Item = anyhow::Result<Vec<u8>>>,
    ) -> anyhow::Result<usize> {
        let existing = self.parts(day);
        let held: HashSet<Vec<u8>> = if existing.is_empty() {
            HashSet::new()
        } else {
            self.read_day(day)?.into_iter().collect()
        };
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the archive folder {}", self.dir.display()))?;
        let date = date_of(day);
        // What a write cut short (a kill) left of this day is dropped.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!(".{date}")) && name.ends_with(".partial") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let name = match existing.len() {
            0 => format!("{date}.jsonl.gz"),
            n => format!("{date}.{n}.jsonl.gz"),
        };
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}.partial"));
        let written = (|| -> anyhow::Result<usize> {
            let file = std::fs::File::create(&temp)?;
            let mut gz = flate2::write::GzEncoder::new(
                std::io::BufWriter::new(file),
                flate2::Compression::default(),
            );
            let mut fresh = 0;
            for row in rows {
                let row = row?;
                if held.contains(&row) {
                    continue;
                }
                gz.write_all(&row)?;
                gz.write_all(b"\n")?;
                fresh += 1;
            }
            if fresh == 0 {
                std::fs::remove_file(&temp)?;
                return Ok(0);
            }
            let file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            Ok(fresh)
        })();
        written
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temp);
            })
            .with_context(|| format!("cannot write the archive file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_name_their_day_and_nothing_else_counts() {
        let day = day_of(1_796_601_600_000); // 2026-12-07T00:00Z
        assert_eq!(date_of(day), "2026-12-07");
        assert_eq!(day_of_name("2026-12-07.jsonl.gz"), Some(day));
        assert_eq!(day_of_name("2026-12-07.3.jsonl.gz"), Some(day));
        for other in [
            ".2026-12-07.jsonl.gz.partial",
            "2026-12-07.jsonl",
            "2026-12-07..jsonl.gz",
            "2026-12-07.x.jsonl.gz",
            "2026-13-07.jsonl.gz",
            "notes.txt",
        ] {
            assert_eq!(day_of_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_day_archived_twice_holds_each_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path(), RecordKind::QueueLog);
        let day = 20_000;
        let rows: Vec<Vec<u8>> = (0..5)
            .map(|i| format!(r#"{{"at":{},"n":{i}}}"#, day * DAY_MS + i).into_bytes())
            .collect();
        let each = |rows: &[Vec<u8>]| rows.iter().cloned().map(Ok).collect::<Vec<_>>();
        assert_eq!(archive.write_day(day, each(&rows[..3])).expect("first"), 3);
        // Again after a crash before the rows left the database, with two
        // late rows beside them: only the two are written, in a second part.
        assert_eq!(archive.write_day(day, each(&rows)).expect("again"), 2);
        assert_eq!(archive.write_day(day, each(&rows)).expect("once more"), 0);
        assert_eq!(archive.parts(day).len(), 2);
        assert_eq!(archive.read_day(day).expect("read"), rows);
        assert_eq!(archive.days().expect("days"), vec![day]);
        assert_eq!(
            RecordKind::QueueLog.time_of(&rows[4]),
            Some(day * DAY_MS + 4)
        );
    }

    #[test]
    fn a_damaged_archive_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path(), RecordKind::Cdrs);
        let rows = vec![Ok(br#"{"ended":1}"#.to_vec())];
        archive.write_day(0, rows).expect("write");
        let path = archive.parts(0).remove(0);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 6]).expect("truncate");
        let err = format!("{:#}", archive.read_day(0).expect_err("damaged"));
        assert!(err.contains("1970-01-01.jsonl.gz"), "{err}");
    }
}
