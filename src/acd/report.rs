//! `yihaotong report`: the figures the city judges the hotline on.
//!
//! Room: the statistics office. Pure functions from stored CDRs and queue-log
//! lines to rows; the command reads the store and prints. Definitions:
//!
//! - **calls**: every CDR in the group (self-service included);
//! - **offered**: calls that entered a queue (asked for a person);
//! - **answered**: of those, calls an agent answered;
//! - **connection rate** (接通率): answered / offered;
//! - **in SL**: answered within the queue's `service_level` of entering it;
//! - **SL** (Asterisk `servicelevelperf`): in SL / answered;
//! - **SL2** (Asterisk `servicelevelperf2`): (in SL + abandoned within SL) /
//!   (answered + abandoned);
//! - **abandoned**: hung up while waiting; **short** ones waited under 5 s
//!   (usually misdials, reported apart);
//! - **ASA**: mean wait of answered calls; **AHT**: mean talk time from
//!   answer to hang-up (wrap-up is not in the CDR).
//!
//! - **out**, **out_ans**: calls agents placed out of the hotline (回访
//!   and other outside numbers, emergency numbers, peer centres) and how
//!   many were answered; they are not citizens' calls, so they are in no
//!   other column.
//!
//! By agent, **offered** counts offers (answered or missed, from the queue
//! log) and abandonment does not apply.

use std::collections::BTreeMap;

use serde::Serialize;

use super::queue_log::LogLine;
use crate::store::{Cdr, Disposition};

/// Abandons shorter than this are "short" (ms).
const SHORT_ABANDON: u64 = 5_000;

/// Grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Dialed hotline.
    Hotline,
    /// Queue.
    Queue,
    /// Answering agent.
    Agent,
    /// Local hour of arrival.
    Hour,
}

/// One row of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// Group key ("total" for the sum).
    pub key: String,
    /// Calls.
    pub calls: u64,
    /// Offered to the queue (or offers, by agent).
    pub offered: u64,
    /// Answered by an agent.
    pub answered: u64,
    /// answered / offered.
    pub connection_rate: Option<f64>,
    /// Answered within the service level.
    pub in_sl: u64,
    /// Asterisk SL.
    pub sl: Option<f64>,
    /// Asterisk SL2.
    pub sl2: Option<f64>,
    /// Abandoned while waiting (5 s or longer).
    pub abandoned: u64,
    /// Abandoned within 5 s.
    pub abandoned_short: u64,
    /// Left at max_wait, or no agent.
    pub unserved: u64,
    /// Mean wait of answered calls, seconds.
    pub asa: Option<f64>,
    /// Mean talk time, seconds.
    pub aht: Option<f64>,
    /// Callers who booked a callback instead of waiting.
    pub callbacks_requested: u64,
    /// Callbacks that reached the citizen with an agent on the line.
    pub callbacks_completed: u64,
    /// Calls agents placed out of the hotline.
    pub outbound: u64,
    /// Of those, answered.
    pub outbound_answered: u64,
    /// Calls the caller rated in the after-call flow.
    pub rated: u64,
    /// Of those, "satisfied" (满意).
    pub satisfied: u64,
    /// Of those, "fair" (基本满意).
    pub fair: u64,
    /// Satisfaction rate: (satisfied + fair) / rated (满意率).
    pub satisfaction: Option<f64>,
    #[serde(skip)]
    abandoned_in_sl: u64,
    #[serde(skip)]
    wait_total: u64,
    #[serde(skip)]
    talk_total: u64,
}

impl Row {
    fn add(&mut self, cdr: &Cdr, count_offer: bool) {
        if !cdr.outbound.is_empty() {
            self.outbound += 1;
            if cdr.answered.is_some() {
                self.outbound_answered += 1;
            }
            return;
        }
        // A callback call is the booking call's second half, not a new call.
        if !cdr.callback_for.is_empty() {
            if cdr.disposition == Disposition::CallbackCompleted {
                self.callbacks_completed += 1;
            }
            return;
        }
        self.calls += 1;
        if !cdr.rating.is_empty() {
            self.rated += 1;
            match cdr.rating.as_str() {
                "satisfied" => self.satisfied += 1,
                "fair" => self.fair += 1,
                _ => {}
            }
        }
        if cdr.disposition == Disposition::CallbackBooked {
            self.callbacks_requested += 1;
        }
        let Some(queued) = cdr.queued else {
            return;
        };
        if count_offer {
            self.offered += 1;
        }
        let sl = cdr.service_level.saturating_mul(1000);
        // A call cut by a crash or a drain after an agent answered was
        // answered all the same.
        let answered_by_agent = match cdr.disposition {
            Disposition::Answered => true,
            Disposition::Crashed | Disposition::Drained => cdr.answered.is_some(),
            _ => false,
        };
        match cdr.disposition {
            _ if answered_by_agent => {
                let answered = cdr.answered.unwrap_or(cdr.ended);
                let wait = answered.saturating_sub(queued);
                self.answered += 1;
                self.wait_total += wait;
                self.talk_total += cdr.ended.saturating_sub(answered);
                if wait <= sl {
                    self.in_sl += 1;
                }
            }
            Disposition::Abandoned => {
                let wait = cdr.ended.saturating_sub(queued);
                if wait < SHORT_ABANDON {
                    self.abandoned_short += 1;
                } else {
                    self.abandoned += 1;
                }
                if wait <= sl {
                    self.abandoned_in_sl += 1;
                }
            }
            Disposition::Timeout | Disposition::NoAgent => self.unserved += 1,
            _ => {}
        }
    }

    fn merge(&mut self, o: &Row) {
        self.calls += o.calls;
        self.offered += o.offered;
        self.answered += o.answered;
        self.in_sl += o.in_sl;
        self.abandoned += o.abandoned;
        self.abandoned_short += o.abandoned_short;
        self.unserved += o.unserved;
        self.abandoned_in_sl += o.abandoned_in_sl;
        self.wait_total += o.wait_total;
        self.talk_total += o.talk_total;
        self.callbacks_requested += o.callbacks_requested;
        self.callbacks_completed += o.callbacks_completed;
        self.outbound += o.outbound;
        self.outbound_answered += o.outbound_answered;
        self.rated += o.rated;
        self.satisfied += o.satisfied;
        self.fair += o.fair;
    }

    fn finish(&mut self) {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        self.connection_rate = ratio(self.answered, self.offered);
        self.satisfaction = ratio(self.satisfied + self.fair, self.rated);
        self.sl = ratio(self.in_sl, self.answered);
        let all_abandoned = self.abandoned + self.abandoned_short;
        self.sl2 = ratio(
            self.in_sl + self.abandoned_in_sl,
            self.answered + all_abandoned,
        );
        let mean = |total: u64, n: u64| (n > 0).then(|| total as f64 / n as f64 / 1000.0);
        self.asa = mean(self.wait_total, self.answered);
        self.aht = mean(self.talk_total, self.answered);
    }
}

/// Groups `cdrs` (and, by agent, the offers in `log`) into rows plus a total.
pub fn compute(cdrs: &[Cdr], log: &[LogLine], by: By, utc_offset_minutes: i32) -> Vec<Row> {
    let offset = crate::config::utc_offset(utc_offset_minutes);
    let mut groups: BTreeMap<String, Row> = BTreeMap::new();
    for cdr in cdrs {
        let key = match by {
            By::Hotline => cdr.hotline.clone(),
            By::Queue => {
                if cdr.queue.is_empty() {
                    continue;
                }
                cdr.queue.clone()
            }
            By::Agent => {
                if cdr.agent.is_empty()
                    || !matches!(
                        cdr.disposition,
                        Disposition::Answered | Disposition::CallbackCompleted
                    )
                    || cdr.queued.is_none()
                {
                    continue;
                }
                cdr.agent.clone()
            }
            By::Hour => chrono::DateTime::from_timestamp_millis(cdr.arrived as i64)
                .unwrap_or_default()
                .with_timezone(&offset)
                .format("%Y-%m-%d %H:00")
                .to_string(),
        };
        groups.entry(key).or_default().add(cdr, by != By::Agent);
    }
    if by == By::Agent {
        for line in log {
            if line.event.is_offer() {
                groups.entry(line.agent.clone()).or_default().offered += 1;
            }
        }
    }
    let mut total = Row::default();
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|(key, mut row)| {
            total.merge(&row);
            row.key = key;
            row.finish();
            row
        })
        .collect();
    total.key = "total".into();
    total.finish();
    rows.push(total);
    rows
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated, with a header.
    Csv,
    /// A JSON array.
    Json,
}

const COLUMNS: [&str; 21] = [
    "group",
    "calls",
    "offered",
    "answered",
    "conn_rate",
    "in_sl",
    "sl",
    "sl2",
    "abandoned",
    "aband_lt5s",
    "unserved",
    "asa_s",
    "aht_s",
    "cb_req",
    "cb_done",
    "out",
    "out_ans",
    "rated",
    "satisfied",
    "fair",
    "sat_rate",
];

fn cells(r: &Row) -> [String; 21] {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    [
        r.key.clone(),
        r.calls.to_string(),
        r.offered.to_string(),
        r.answered.to_string(),
        pct(r.connection_rate),
        r.in_sl.to_string(),
        pct(r.sl),
        pct(r.sl2),
        r.abandoned.to_string(),
        r.abandoned_short.to_string(),
        r.unserved.to_string(),
        secs(r.asa),
        secs(r.aht),
        r.callbacks_requested.to_string(),
        r.callbacks_completed.to_string(),
        r.outbound.to_string(),
        r.outbound_answered.to_string(),
        r.rated.to_string(),
        r.satisfied.to_string(),
        r.fair.to_string(),
        pct(r.satisfaction),
    ]
}

/// Renders rows.
pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(rows).unwrap_or_default(),
        Format::Csv | Format::Table => {
            // The first column names the group; the figures align right.
            let header: Vec<String> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        c.to_string()
                    } else {
                        format!("{c}>")
                    }
                })
                .collect();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = crate::text::Table::new(&header);
            for r in rows {
                t.row(cells(r).to_vec());
            }
            if format == Format::Csv {
                t.csv()
            } else {
                t.render()
            }
        }
    }
}

/// Reads a time for `--since`/`--until`: Unix seconds, `YYYY-MM-DD`,
/// `YYYY-MM-DD HH:MM[:SS]` (local time, `[ivr] utc_offset_minutes`), or a
/// span back from now (`24h`, `7d`, `90m`). Returns Unix ms.
pub fn parse_time(text: &str, utc_offset_minutes: i32, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    let offset = crate::config::utc_offset(utc_offset_minutes);
    if t == "today" {
        // Local midnight: a wallboard's "the day so far".
        let local = chrono::DateTime::from_timestamp_millis(now_ms as i64)
            .unwrap_or_default()
            .with_timezone(&offset);
        let midnight = local
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_local_timezone(offset)
            .single()
            .map_or(0, |m| m.timestamp_millis().max(0) as u64);
        return Ok(midnight);
    }
    if let Some((n, unit)) = t
        .strip_suffix('d')
        .map(|n| (n, 86_400_000u64))
        .or_else(|| t.strip_suffix('h').map(|n| (n, 3_600_000)))
        .or_else(|| t.strip_suffix('m').map(|n| (n, 60_000)))
    {
        if let Ok(n) = n.parse::<u64>() {
            return Ok(now_ms.saturating_sub(n.saturating_mul(unit)));
        }
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let local = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M"))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .map_err(|_| {
            format!("{t:?} is not a time: use 2026-11-28, \"2026-11-28 09:00\", Unix seconds, today, or 24h/7d/90m back from now")
        })?;
    let at = local
        .and_local_timezone(offset)
        .single()
        .ok_or_else(|| format!("{t:?} is ambiguous"))?;
    Ok(at.timestamp_millis().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acd::queue_log::QueueEvent;

    fn cdr(
        queue: &str,
        queued_s: u64,
        answered_s: Option<u64>,
        ended_s: u64,
        d: Disposition,
    ) -> Cdr {
        let t0 = 1_764_300_000_000u64; // some day, 03:20 UTC
        Cdr {
            call_id: format!("{queue}-{queued_s}"),
            hotline: "12345".into(),
            arrived: t0 + queued_s * 1000 - 10_000,
            queued: Some(t0 + queued_s * 1000),
            answered: answered_s.map(|a| t0 + a * 1000),
            ended: t0 + ended_s * 1000,
            queue: queue.into(),
            agent: if answered_s.is_some() {
                "1001".into()
            } else {
                String::new()
            },
            disposition: d,
            service_level: 15,
            ..Cdr::default()
        }
    }

    /// A hand-computed day: 6 offered, 4 answered (waits 5, 15, 16, 40 s;
    /// talks 60, 120, 30, 90 s), one abandoned after 3 s, one after 20 s,
    /// one self-service call that never queued.
    #[test]
    fn figures_match_a_hand_computed_day() {
        use Disposition::*;
        // Three of the answered callers rated: satisfied, fair, unsatisfied.
        let rated = |rating: &str, c: Cdr| Cdr {
            rating: rating.into(),
            ..c
        };
        let cdrs = vec![
            rated("satisfied", cdr("main", 0, Some(5), 65, Answered)),
            rated("fair", cdr("main", 100, Some(115), 235, Answered)),
            rated("unsatisfied", cdr("main", 300, Some(316), 346, Answered)),
            cdr("main", 400, Some(440), 530, Answered),
            cdr("main", 600, None, 603, Abandoned),
            cdr("main", 700, None, 720, Abandoned),
            Cdr {
                hotline: "12345".into(),
                arrived: 1_764_300_000_000,
                ended: 1_764_300_030_000,
                disposition: SelfService,
                ..Cdr::default()
            },
        ];
        let rows = compute(&cdrs, &[], By::Hotline, 480);
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(
            (r.key.as_str(), r.calls, r.offered, r.answered),
            ("12345", 7, 6, 4)
        );
        assert_eq!(r.connection_rate, Some(4.0 / 6.0));
        // Waits of 5 and 15 s are within 15 s; 16 and 40 are not.
        assert_eq!(r.in_sl, 2);
        assert_eq!(r.sl, Some(0.5));
        // SL2: (2 in SL + 1 abandoned within 15 s) / (4 + 2).
        assert_eq!(r.sl2, Some(0.5));
        assert_eq!((r.abandoned, r.abandoned_short), (1, 1));
        assert_eq!(r.asa, Some((5.0 + 15.0 + 16.0 + 40.0) / 4.0));
        assert_eq!(r.aht, Some((60.0 + 120.0 + 30.0 + 90.0) / 4.0));
        assert_eq!((r.rated, r.satisfied, r.fair), (3, 1, 1));
        assert_eq!(r.satisfaction, Some(2.0 / 3.0));
        assert_eq!(rows[1].key, "total");
        assert_eq!(rows[1].offered, 6);

        let by_hour = compute(&cdrs, &[], By::Hour, 480);
        assert_eq!(by_hour[0].key, "2025-11-28 11:00");
        let by_queue = compute(&cdrs, &[], By::Queue, 480);
        assert_eq!(by_queue[0].calls, 6, "the self-service call has no queue");

        let connect = QueueEvent::Connect {
            hold_s: 3,
            bridged: "x".into(),
            ring_s: 2,
        };
        let missed = QueueEvent::RingNoAnswer { ring_ms: 15_000 };
        let log: Vec<LogLine> = [&connect, &missed, &connect, &connect, &connect, &missed]
            .into_iter()
            .map(|event| LogLine {
                at: 0,
                call_id: "x".into(),
                queue: "main".into(),
                agent: "1001".into(),
                event: event.clone(),
            })
            .collect();
        let by_agent = compute(&cdrs, &log, By::Agent, 480);
        assert_eq!((by_agent[0].offered, by_agent[0].answered), (6, 4));

        let csv = render(&rows, Format::Csv);
        assert_eq!(
            csv.lines().nth(1),
            Some("12345,7,6,4,66.7%,2,50.0%,50.0%,1,1,0,19.0,75.0,0,0,0,0,3,1,1,66.7%")
        );
        assert_eq!(
            parse_time("2025-11-28 11:00", 480, 0),
            Ok(1_764_298_800_000)
        );
        assert_eq!(
            parse_time("2h", 480, 10_000_000),
            Ok(10_000_000 - 7_200_000)
        );
        assert!(parse_time("yesterday", 480, 0).is_err_and(|e| e.contains("not a time")));
        // "today" is local midnight: 2025-11-28 11:00 at UTC+8 is 03:00 UTC,
        // so the day began at 2025-11-27 16:00 UTC.
        assert_eq!(
            parse_time("today", 480, 1_764_298_800_000),
            Ok(1_764_298_800_000 - 11 * 3_600_000)
        );
        // Two callers book callbacks; one callback reaches the citizen
        // (after an unanswered attempt), the other is never reached.
        let mut with_callbacks = cdrs.clone();
        with_callbacks.push(cdr("main", 800, None, 830, CallbackBooked));
        with_callbacks.push(cdr("main", 900, None, 930, CallbackBooked));
        for (d, answered) in [(CallbackUnanswered, None), (CallbackCompleted, Some(1000))] {
            with_callbacks.push(Cdr {
                callback_for: "main-800".into(),
                ..cdr("main", 990, answered, 1100, d)
            });
        }
        let r = &compute(&with_callbacks, &[], By::Hotline, 480)[0];
        assert_eq!((r.calls, r.offered, r.answered), (9, 8, 4));
        assert_eq!((r.callbacks_requested, r.callbacks_completed), (2, 1));
        assert_eq!((r.abandoned, r.abandoned_short, r.unserved), (1, 1, 0));
        // Two 回访 calls agents placed (one answered) stand apart from the
        // citizens' calls: the hotline's figures do not move.
        let mut with_outbound = cdrs.clone();
        for answered in [Some(1005), None] {
            with_outbound.push(Cdr {
                outbound: "mobile".into(),
                ..cdr("main", 1000, answered, 1100, Transfer)
            });
        }
        let r = &compute(&with_outbound, &[], By::Hotline, 480)[0];
        assert_eq!((r.calls, r.offered, r.answered), (7, 6, 4));
        assert_eq!((r.outbound, r.outbound_answered), (2, 1));
        let table = render(&rows, Format::Table);
        assert!(table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("group  calls")));
    }
}
