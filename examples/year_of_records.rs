//! Fills a data folder with days of a busy city's records, for measuring
//! start-up, reports and archiving against a database of that size:
//! `cargo run --release --example year_of_records -- DATA_DIR DAYS [CALLS_PER_DAY]`
//! (default 87,000 calls a day, ending at the last midnight UTC). Each call
//! gets a CDR shaped like a real one (flow path, keys, queue, agent,
//! recording path; ~700 bytes) and its queue-log lines (ENTERQUEUE, CONNECT,
//! COMPLETECALLER), written in batches as the records writer does. The
//! server must not be running on DATA_DIR.
use yihaotong::acd::queue_log::{LogLine, QueueEvent};
use yihaotong::store::{record_key, LiveChanges, Store};
use yihaotong::store::{Cdr, Disposition};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(days)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: year_of_records DATA_DIR DAYS [CALLS_PER_DAY]");
    };
    let days: u64 = days.parse()?;
    let per_day: u64 = args.next().map_or(Ok(87_000), |n| n.parse())?;
    let store = Store::open(std::path::Path::new(&dir))?;
    let day_ms = 86_400_000u64;
    let today = yihaotong::clock::now_ms() / day_ms * day_ms;
    let first = today - days * day_ms;
    let spacing = day_ms / per_day.max(1);
    let started = std::time::Instant::now();
    let mut seq = 0u32;
    let mut key = |at: u64| {
        seq = seq.wrapping_add(1);
        record_key(at, seq).to_vec()
    };
    let (mut cdrs, mut log) = (Vec::new(), Vec::new());
    let total = days * per_day;
    for n in 0..total {
        let arrived = first + n * spacing;
        let call_id = format!("{n:016x}-gen@127.0.0.1");
        let agent = format!("{}", 1001 + n % 400);
        let queue = ["main", "hrss", "market", "urban"][(n % 4) as usize];
        let (queued, answered, ended) = (arrived + 21_000, arrived + 33_000, arrived + 213_000);
        let cdr = Cdr {
            call_id: call_id.clone(),
            hotline: "12345 citizen hotline".into(),
            dialed: "12345".into(),
            caller: format!("138{:08}", n % 100_000_000),
            arrived,
            ivr_end: Some(queued),
            queued: Some(queued),
            offered: Some(queued + 2_000),
            answered: Some(answered),
            ended,
            flow: "12345".into(),
            path: "greeting>menu>consult>queue".into(),
            keys: "1".into(),
            queue: queue.into(),
            agent: agent.clone(),
            disposition: Disposition::Answered,
            hung_up_by: "caller".into(),
            recording: Some(format!(
                "/var/lib/yihaotong/recordings/2026/12/07/{call_id}.wav"
            )),
            service_level: 15,
            priority: "normal".into(),
            mode: "direct".into(),
            ..Cdr::default()
        };
        cdrs.push((key(ended), serde_json::to_vec(&cdr)?));
        for (at, event, data) in [
            (
                queued,
                "ENTERQUEUE",
                vec!["".to_string(), cdr.caller.clone(), "1".into()],
            ),
            (
                answered,
                "CONNECT",
                vec!["12".into(), "linked".into(), "2".into()],
            ),
            (
                ended,
                "COMPLETECALLER",
                vec!["12".into(), "180".into(), "1".into()],
            ),
        ] {
            let line = LogLine {
                at,
                call_id: call_id.clone(),
                queue: queue.into(),
                agent: if event == "ENTERQUEUE" {
                    "NONE".into()
                } else {
                    agent.clone()
                },
                event: QueueEvent::read(event, &data),
            };
            log.push((key(at), serde_json::to_vec(&line)?));
        }
        if cdrs.len() == 10_000 || n + 1 == total {
            store.append_records(&log, &cdrs, &[], &LiveChanges::default())?;
            cdrs.clear();
            log.clear();
            if (n + 1) % 500_000 < 10_000 || n + 1 == total {
                eprintln!(
                    "{} of {total} calls written ({:.0} s)",
                    n + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    store.flush()?;
    Ok(())
}
