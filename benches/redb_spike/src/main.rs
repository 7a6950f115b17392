//! Writes N calls' records (a ~700-byte CDR and three queue-log lines each,
//! 87,000 calls a day ending at the last midnight UTC, batches of 10,000
//! calls per commit) into a redb file, then reopens it and reports: file
//! size, open time, RSS after open, one day's CDRs read by range.
use redb::{Database, TableDefinition};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const CDRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cdrs");
const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue_log");

fn key(at: u64, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&at.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("DIR")?);
    let calls: u64 = args.next().ok_or("CALLS")?.parse()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("records.redb");
    let day_ms = 86_400_000u64;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let today = now / day_ms * day_ms;
    let spacing = day_ms / 87_000;
    let first = today - calls * spacing;
    if !path.exists() {
        let started = Instant::now();
        let db = Database::builder().set_cache_size(64 << 20).create(&path)?;
        let mut seq = 0u32;
        let mut n = 0;
        while n < calls {
            let tx = db.begin_write()?;
            {
                let mut cdrs = tx.open_table(CDRS)?;
                let mut log = tx.open_table(LOG)?;
                for _ in 0..10_000.min(calls - n) {
                    let arrived = first + n * spacing;
                    let ended = arrived + 213_000;
                    let id = format!("{n:016x}-gen@127.0.0.1");
                    let cdr = serde_json::json!({
                        "call_id": id, "hotline": "12345 citizen hotline", "dialed": "12345",
                        "caller": format!("138{:08}", n % 100_000_000), "arrived": arrived,
                        "ivr_end": arrived + 21_000, "queued": arrived + 21_000, "offered": arrived + 23_000,
                        "answered": arrived + 33_000, "ended": ended, "flow": "12345",
                        "path": "greeting>menu>consult>queue", "keys": "1", "queue": "main",
                        "overflowed_from": [], "agent": format!("{}", 1001 + n % 400),
                        "disposition": "answered", "hung_up_by": "caller",
                        "recording": format!("/var/lib/yihaotong/recordings/2026/12/07/{id}.wav"),
                        "service_level": 15, "priority": "normal", "transfers": [], "callback_for": "",
                        "mode": "direct"
                    });
                    seq = seq.wrapping_add(1);
                    cdrs.insert(
                        key(ended, seq).as_slice(),
                        serde_json::to_vec(&cdr)?.as_slice(),
                    )?;
                    for (at, event) in [
                        (arrived + 21_000, "ENTERQUEUE"),
                        (arrived + 33_000, "CONNECT"),
                        (ended, "COMPLETECALLER"),
                    ] {
                        let line = serde_json::json!({"at": at, "call_id": id, "queue": "main", "agent": "1001", "event": event, "data": ["12", "180", "1"]});
                        seq = seq.wrapping_add(1);
                        log.insert(
                            key(at, seq).as_slice(),
                            serde_json::to_vec(&line)?.as_slice(),
                        )?;
                    }
                    n += 1;
                }
            }
            tx.commit()?;
        }
        eprintln!(
            "written {calls} calls in {:.0} s, RSS {} MB",
            started.elapsed().as_secs_f64(),
            rss_mb()
        );
        return Ok(());
    }
    let before = rss_mb();
    let t = Instant::now();
    let db = Database::builder().set_cache_size(64 << 20).open(&path)?;
    let open_ms = t.elapsed().as_millis();
    let after_open = rss_mb();
    let t = Instant::now();
    let rtx = db.begin_read()?;
    let cdrs = rtx.open_table(CDRS)?;
    let yesterday = today - day_ms;
    let mut n = 0;
    let mut bytes = 0;
    for kv in cdrs.range(key(yesterday, 0).as_slice()..key(today, 0).as_slice())? {
        let (_, v) = kv?;
        bytes += v.value().len();
        n += 1;
    }
    println!(
        "| {calls} | {:.1} GB | {open_ms} | {} → {} | {} ms ({n} CDRs, {} MB) | {} |",
        std::fs::metadata(&path)?.len() as f64 / 1e9,
        before,
        after_open,
        t.elapsed().as_millis(),
        bytes >> 20,
        rss_mb()
    );
    Ok(())
}
