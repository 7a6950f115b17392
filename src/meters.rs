//! Operators' figures: the Prometheus page at `/metrics`.
//!
//! Room: the meter cupboard. Events are counted where they happen, with
//! the `metrics` macros: calls offered (by hotline and route mode), calls
//! ended (by disposition), call setup time and queue waits as histograms,
//! how long each batch of records took to reach the database, and each bridged
//! call's RTP as it arrived (packets, losses; jitter and loss per call as
//! histograms). Figures the
//! server already keeps (live calls, agents by state, callers waiting per
//! queue, RTP ports, calls shed by overload control, password-guessing
//! blocks, backends, the media engine's lateness) are copied into gauges
//! from its status when the page is scraped, so nothing is counted twice.
//! Labels take only bounded values (configured hotlines, queues, backends;
//! fixed dispositions and states). It touches the global recorder only.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::Value;

use crate::store::Cdr;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls change nothing).
/// Without it the macros below cost next to nothing and record nothing.
pub fn install() {
    HANDLE.get_or_init(|| {
        let seconds = |buckets: &[f64], name: &str, b: PrometheusBuilder| {
            b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
        };
        let builder = PrometheusBuilder::new();
        let built = seconds(
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
            ],
            "yihaotong_call_setup_seconds",
            builder,
        )
        .and_then(|b| {
            seconds(
                &[1.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0],
                "yihaotong_queue_wait_seconds",
                b,
            )
        })
        .and_then(|b| {
            seconds(
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
                "yihaotong_records_flush_seconds",
                b,
            )
        })
        .and_then(|b| {
            seconds(
                &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
                "yihaotong_rtp_jitter_seconds",
                b,
            )
        })
        .and_then(|b| {
            seconds(
                &[0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
                "yihaotong_rtp_loss_ratio",
                b,
            )
        });
        let recorder = match built {
            Ok(b) => b.build_recorder(),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not built; /metrics stays empty");
                return None;
            }
        };
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a metrics recorder was already installed");
                None
            }
        }
    });
}

/// Moves the histogram samples recorded since the last upkeep into their
/// buckets. The recorder keeps each sample until then: a scrape of
/// `/metrics` does it too, but a server nobody scrapes would keep every
/// call's samples for good (about 100 bytes a call; the million-call soak
/// found it). [`crate::server`] runs it every few seconds.
pub fn upkeep() {
    if let Some(Some(handle)) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// What each metric is (`# HELP`) and its kind (`# TYPE`), said once to
/// the recorder. The `process_*` figures are written by [`render`] itself.
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (
        "yihaotong_calls_offered_total",
        Kind::Counter,
        "Calls that reached routing, by hotline and route mode.",
    ),
    (
        "yihaotong_calls_ended_total",
        Kind::Counter,
        "Calls whose record was written, by disposition.",
    ),
    (
        "yihaotong_calls_rated_total",
        Kind::Counter,
        "Calls the caller rated after the agent left, by rating (satisfied, fair, unsatisfied).",
    ),
    (
        "yihaotong_call_setup_seconds",
        Kind::Histogram,
        "From a call's arrival to its answer by an agent or backend.",
    ),
    (
        "yihaotong_queue_wait_seconds",
        Kind::Histogram,
        "Time in line, by queue and whether the caller was answered.",
    ),
    (
        "yihaotong_records_flush_seconds",
        Kind::Histogram,
        "Time to write one batch of CDRs and queue-log lines to the database.",
    ),
    (
        "yihaotong_rtp_packets_received_total",
        Kind::Counter,
        "RTP packets that reached the relay of a bridged call, by side.",
    ),
    (
        "yihaotong_rtp_packets_lost_total",
        Kind::Counter,
        "RTP packets lost before the relay of a bridged call (RFC 3550), by side.",
    ),
    (
        "yihaotong_rtp_jitter_seconds",
        Kind::Histogram,
        "RFC 3550 interarrival jitter per bridged call side at its end.",
    ),
    (
        "yihaotong_rtp_loss_ratio",
        Kind::Histogram,
        "Share of RTP packets lost per bridged call side.",
    ),
    (
        "yihaotong_calls_live",
        Kind::Gauge,
        "Calls alive now: in a flow, in line, ringing or bridged.",
    ),
    ("yihaotong_calls", Kind::Gauge, "Calls alive now, by state."),
    (
        "yihaotong_rtp_ports_free",
        Kind::Gauge,
        "RTP ports free in the configured range.",
    ),
    (
        "yihaotong_rtp_ports_configured",
        Kind::Gauge,
        "RTP ports in the configured range.",
    ),
    (
        "yihaotong_tcp_connections",
        Kind::Gauge,
        "SIP TCP connections open.",
    ),
    (
        "yihaotong_sip_transactions",
        Kind::Gauge,
        "SIP transactions alive over all workers.",
    ),
    ("yihaotong_agents", Kind::Gauge, "Agent accounts by state."),
    (
        "yihaotong_queue_waiting",
        Kind::Gauge,
        "Callers in line, by queue.",
    ),
    (
        "yihaotong_queue_free_agents",
        Kind::Gauge,
        "Agents free to be offered a call, by queue.",
    ),
    (
        "yihaotong_queue_longest_wait_seconds",
        Kind::Gauge,
        "The longest wait of a caller in line now, by queue.",
    ),
    (
        "yihaotong_calls_shed_total",
        Kind::Counter,
        "New calls refused 503 by overload control, by reason.",
    ),
    (
        "yihaotong_auth_sources_blocked",
        Kind::Gauge,
        "Source addresses answered 403 now after failures for several accounts.",
    ),
    (
        "yihaotong_auth_blocks_total",
        Kind::Counter,
        "Source addresses blocked since start.",
    ),
    (
        "yihaotong_auth_account_blocks_total",
        Kind::Counter,
        "Accounts blocked at one source address since start (wrong passwords).",
    ),
    (
        "yihaotong_backend_up",
        Kind::Gauge,
        "1 while a self-service backend answers its health checks.",
    ),
    (
        "yihaotong_backend_calls",
        Kind::Gauge,
        "Calls with a self-service backend now.",
    ),
    (
        "yihaotong_webhook_delivered_total",
        Kind::Counter,
        "Events a webhook's receiver accepted.",
    ),
    (
        "yihaotong_webhook_failed_attempts_total",
        Kind::Counter,
        "Webhook POSTs that failed and were tried again or given up.",
    ),
    (
        "yihaotong_webhook_dead_letters_total",
        Kind::Counter,
        "Events a webhook gave up on.",
    ),
    (
        "yihaotong_webhook_pending",
        Kind::Gauge,
        "Events waiting for a webhook's receiver.",
    ),
    (
        "yihaotong_media_streams",
        Kind::Gauge,
        "Prompt and IVR streams in the media engine.",
    ),
    (
        "yihaotong_media_bridges",
        Kind::Gauge,
        "Bridged calls relayed by the media engine.",
    ),
    (
        "yihaotong_media_late_ticks_total",
        Kind::Counter,
        "Media engine passes that started more than 2 ms late.",
    ),
    (
        "yihaotong_recording_queued_bytes",
        Kind::Gauge,
        "Recorded audio waiting for the disk.",
    ),
    (
        "yihaotong_recording_dropped_bytes_total",
        Kind::Counter,
        "Recorded audio dropped because the disk fell behind.",
    ),
    (
        "yihaotong_media_late_p90_seconds",
        Kind::Gauge,
        "The worst media thread's 90th percentile pass lateness.",
    ),
    (
        "yihaotong_media_busy_ratio",
        Kind::Gauge,
        "The worst media thread's busy share of the wall clock.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn describe() {
    for (name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(*name, *help),
            Kind::Gauge => describe_gauge!(*name, *help),
            Kind::Histogram => describe_histogram!(*name, *help),
        }
    }
}

/// The process's own figures in the Prometheus client libraries' names,
/// written here because the CPU seconds are a fractional counter.
fn process_page(process: &Value) -> String {
    use std::fmt::Write;
    let mut page = String::new();
    for (name, kind, help, field) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            "cpu_seconds",
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
            "rss_bytes",
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            "open_fds",
        ),
        (
            "process_threads",
            "gauge",
            "Operating system threads.",
            "threads",
        ),
    ] {
        if let Some(v) = process[field].as_f64() {
            let _ = write!(
                page,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            );
        }
    }
    page
}

/// A call arrived on a route.
pub fn call_offered(hotline: &str, mode: &str) {
    counter!("yihaotong_calls_offered_total", "hotline" => hotline.to_string(), "mode" => mode.to_string())
        .increment(1);
}

/// A call's record was written: its disposition, setup time and wait.
pub fn call_ended(cdr: &Cdr) {
    let disposition = serde_json::to_value(cdr.disposition)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    counter!("yihaotong_calls_ended_total", "disposition" => disposition).increment(1);
    if !cdr.rating.is_empty() {
        counter!("yihaotong_calls_rated_total", "rating" => cdr.rating.clone()).increment(1);
    }
    if let Some(answered) = cdr.answered {
        let setup = answered.saturating_sub(cdr.arrived) as f64 / 1000.0;
        histogram!("yihaotong_call_setup_seconds").record(setup);
    }
    if let Some(queued) = cdr.queued {
        let left = cdr.answered.unwrap_or(cdr.ended);
        let wait = left.saturating_sub(queued) as f64 / 1000.0;
        let answered = if cdr.answered.is_some() { "yes" } else { "no" };
        histogram!("yihaotong_queue_wait_seconds", "queue" => cdr.queue.clone(), "answered" => answered)
            .record(wait);
    }
}

/// A batch of records reached the database in `seconds`.
pub fn records_flushed(seconds: f64) {
    histogram!("yihaotong_records_flush_seconds").record(seconds);
}

/// A bridged call's media as it arrived, per side: packets received and
/// lost, and RFC 3550 jitter and loss per call as histograms.
pub fn rtp_quality(cdr: &Cdr) {
    for (side, q) in [("caller", &cdr.rtp_caller), ("far", &cdr.rtp_far)] {
        let Some(q) = q else { continue };
        counter!("yihaotong_rtp_packets_received_total", "side" => side).increment(q.received);
        counter!("yihaotong_rtp_packets_lost_total", "side" => side).increment(q.lost);
        histogram!("yihaotong_rtp_jitter_seconds", "side" => side).record(q.jitter_us as f64 / 1e6);
        histogram!("yihaotong_rtp_loss_ratio", "side" => side).record(q.loss_ratio());
    }
}

/// The process's own accounting from `/proc/self` (Linux): CPU seconds
/// (user + system), resident and peak resident memory, threads, open file
/// descriptors. Fields that cannot be read are left out.
pub fn process_figures() -> Value {
    let mut v = serde_json::Map::new();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // After the command name (which may hold spaces) in parentheses,
        // fields from the third on: utime and stime are the 14th and 15th,
        // num_threads the 20th (proc(5)); times in USER_HZ, 100 on Linux.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            v.insert(
                "cpu_seconds".into(),
                ((user + system) as f64 / 100.0).into(),
            );
        }
        if let Some(threads) = field(20) {
            v.insert("threads".into(), threads.into());
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for (key, name) in [("VmRSS:", "rss_bytes"), ("VmHWM:", "peak_rss_bytes")] {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(kib) = kib {
                v.insert(name.into(), (kib * 1024).into());
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        v.insert("open_fds".into(), fds.count().into());
    }
    Value::Object(v)
}

/// The page: the server's `status` copied into gauges, then everything in
/// Prometheus text format. Every one of `call_states` gets its gauge (0 when
/// the status does not name it). Empty when no recorder is installed.
pub fn render(status: &Value, call_states: &[&'static str]) -> String {
    let Some(Some(handle)) = HANDLE.get() else {
        return String::new();
    };
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    gauge!("yihaotong_calls_live").set(num(&status["live_calls"]));
    gauge!("yihaotong_rtp_ports_free").set(num(&status["rtp_ports_free"]));
    gauge!("yihaotong_rtp_ports_configured").set(num(&status["rtp_ports_total"]));
    gauge!("yihaotong_tcp_connections").set(num(&status["tcp_connections"]));
    gauge!("yihaotong_sip_transactions").set(num(&status["transactions"]));
    if let Some(states) = status["calls_by_state"].as_object() {
        for state in call_states {
            let n = states.get(*state).map_or(0.0, num);
            gauge!("yihaotong_calls", "state" => *state).set(n);
        }
    }
    if let Some(states) = status["agents"].as_object() {
        for (state, n) in states {
            gauge!("yihaotong_agents", "state" => state.clone()).set(num(n));
        }
    }
    for q in status["queues"].as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or_default().to_string();
        gauge!("yihaotong_queue_waiting", "queue" => name.clone()).set(num(&q["waiting"]));
        gauge!("yihaotong_queue_free_agents", "queue" => name.clone()).set(num(&q["free"]));
        gauge!("yihaotong_queue_longest_wait_seconds", "queue" => name)
            .set(num(&q["longest_wait_ms"]) / 1000.0);
    }
    if let Some(shed) = status["overload"]["shed"].as_object() {
        for (reason, n) in shed {
            counter!("yihaotong_calls_shed_total", "reason" => reason.clone())
                .absolute(n.as_u64().unwrap_or(0));
        }
    }
    let auth = &status["auth"];
    gauge!("yihaotong_auth_sources_blocked").set(num(&auth["sources_blocked_now"]));
    counter!("yihaotong_auth_blocks_total")
        .absolute(auth["source_blocks_since_start"].as_u64().unwrap_or(0));
    counter!("yihaotong_auth_account_blocks_total")
        .absolute(auth["account_blocks_since_start"].as_u64().unwrap_or(0));
    if let Some(backends) = status["backends"].as_object() {
        for (name, b) in backends {
            let up = if b["up"] == Value::Bool(true) {
                1.0
            } else {
                0.0
            };
            gauge!("yihaotong_backend_up", "backend" => name.clone()).set(up);
            gauge!("yihaotong_backend_calls", "backend" => name.clone()).set(num(&b["calls"]));
        }
    }
    if let Some(hooks) = status["webhooks"].as_object() {
        for (name, h) in hooks {
            let count = |field: &str| h[field].as_u64().unwrap_or(0);
            counter!("yihaotong_webhook_delivered_total", "hook" => name.clone())
                .absolute(count("delivered"));
            counter!("yihaotong_webhook_failed_attempts_total", "hook" => name.clone())
                .absolute(count("failed_attempts"));
            counter!("yihaotong_webhook_dead_letters_total", "hook" => name.clone())
                .absolute(count("dead_letters"));
            gauge!("yihaotong_webhook_pending", "hook" => name.clone()).set(num(&h["pending"]));
        }
    }
    let media = &status["media"];
    gauge!("yihaotong_media_streams").set(num(&media["streams"]));
    gauge!("yihaotong_media_bridges").set(num(&media["bridges"]));
    counter!("yihaotong_media_late_ticks_total")
        .absolute(media["late_ticks_over_2ms"].as_u64().unwrap_or(0));
    gauge!("yihaotong_recording_queued_bytes").set(num(&media["recording_queued_bytes"]));
    counter!("yihaotong_recording_dropped_bytes_total")
        .absolute(media["recording_dropped_bytes"].as_u64().unwrap_or(0));
    let overload = &status["overload"];
    gauge!("yihaotong_media_late_p90_seconds")
        .set(num(&overload["media_late_p90_ms_now"]) / 1000.0);
    gauge!("yihaotong_media_busy_ratio").set(num(&overload["media_busy_pct_now"]) / 100.0);
    let mut page = handle.render();
    page.push_str(&process_page(&status["process"]));
    page
}

#[cfg(test)]
mod process_tests {
    #[test]
    fn the_process_reads_its_own_cpu_memory_and_descriptors() {
        let v = super::process_figures();
        assert!(v["cpu_seconds"].as_f64().is_some(), "{v}");
        assert!(v["rss_bytes"].as_u64() > Some(1 << 20), "{v}");
        assert!(
            v["peak_rss_bytes"].as_u64() >= v["rss_bytes"].as_u64(),
            "{v}"
        );
        assert!(v["threads"].as_u64() >= Some(1), "{v}");
        assert!(v["open_fds"].as_u64() >= Some(3), "{v}");
    }
}
