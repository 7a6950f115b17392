//! Crash safety: the server is killed with SIGKILL at random moments while
//! the load harness runs a call mix against it (callers queueing, agents
//! registering, answering and talking), then started again on the same data.
//! Each round checks that nothing written is lost: agent accounts, the
//! number plan, an agent's break, every CDR and queue-log line that was
//! flushed before the kill; and that no call stays "in progress": calls cut by
//! the kill are closed out as `crashed` at start-up, exactly once.

use yihaotong_testkit as common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestServer;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_yihaotong");

/// Starts the binary with this server's settings, its output discarded.
fn spawn_quiet(server: &TestServer, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?} does not start: {e}"))
}

fn json(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let (ok, out) = server.cli(args);
    assert!(ok, "{args:?} failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Call-IDs and dispositions of every CDR (the CLI flushes pending records first).
fn cdrs(server: &TestServer) -> Vec<(String, String)> {
    json(server, &["cdrs", "--since", "1h"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["call_id"].as_str().unwrap_or_default().to_string(),
                c["disposition"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn queue_log_lines(server: &TestServer) -> usize {
    let (ok, out) = server.cli(&["--format", "table", "queue-log", "--since", "1h"]);
    assert!(ok, "{out}");
    out.lines().count()
}

fn agent_ids(server: &TestServer) -> BTreeSet<String> {
    json(server, &["agents", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect()
}

/// A random generator seeded from `CRASH_SEED` (printed, to replay a run)
/// or the clock.
fn seeded_rng() -> (rand::rngs::StdRng, u64) {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("CRASH_SEED={seed}");
    (rand::rngs::StdRng::seed_from_u64(seed), seed)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_flushed_and_leaves_no_call_open() {
    let (mut rng, seed) = seeded_rng();
    let mut server = TestServer::start();
    // Accounts the harness provisions, plus one on break that must stay so.
    server.add_agent("1001", "s3cret", "main");
    let (ok, out) = server.cli(&["agents", "state", "1001", "break", "--reason", "lunch"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["routes", "set", "99999", "--queue", "main"]);
    assert!(ok, "{out}");
    let routes_before = json(&server, &["routes", "list"]);
    let sip = server.sip.to_string();
    let mut crashed_seen = 0;
    let mut agents_before = BTreeSet::new();

    for round in 0..3 {
        let mut harness = spawn_quiet(
            &server,
            &[
                "load",
                "--server",
                &sip,
                "--scenario",
                "queue",
                "--provision",
                // A harness killed in an earlier round left its accounts.
                "--reuse-accounts",
                "--agents",
                "6",
                "--calls",
                "400",
                "--cps",
                "25",
                "--talk-ms",
                "700",
                "--ring-ms",
                "50",
                "--abandon",
                "0.2",
                "--max-seconds",
                "30",
            ],
        );
        // Let calls build up, take what is on disk now, then kill at a random
        // moment after that (inside or outside a record flush).
        std::thread::sleep(Duration::from_millis(rng.gen_range(1500..3500)));
        let flushed: BTreeSet<(String, String)> = cdrs(&server).into_iter().collect();
        let lines = queue_log_lines(&server);
        if round == 0 {
            agents_before = agent_ids(&server);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1200)));
        // The harness stops dead too (no BYEs), so the restarted server
        // sees no traffic; then SIGKILL the server and start it again.
        let _ = harness.kill();
        let _ = harness.wait();
        server.restart();

        let after = cdrs(&server);
        let after_set: BTreeSet<(String, String)> = after.iter().cloned().collect();
        let lost: Vec<_> = flushed.difference(&after_set).collect();
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): flushed CDRs lost: {lost:?}"
        );
        let ids: BTreeSet<&String> = after.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), after.len(), "round {round}: a call has two CDRs");
        assert!(
            queue_log_lines(&server) >= lines,
            "round {round}: queue-log lines lost"
        );
        crashed_seen += after.iter().filter(|(_, d)| d == "crashed").count();
        assert_eq!(
            agent_ids(&server),
            agents_before,
            "round {round}: accounts changed"
        );
        assert_eq!(
            json(&server, &["routes", "list"]),
            routes_before,
            "round {round}: number plan changed"
        );
        let listed = json(&server, &["agents", "list"]);
        let on_break = listed
            .as_array()
            .and_then(|l| l.iter().find(|a| a["id"] == "1001"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(on_break["state"], "on-break", "round {round}: {on_break}");
        assert_eq!(json(&server, &["status"])["live_calls"], 0);
        // Only calls have records (no leg or placeholder of ours), and
        // every recording, cut or not, is a readable WAV.
        for cdr in json(&server, &["cdrs", "--since", "1h"])
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = cdr["call_id"].as_str().unwrap_or_default();
            assert!(
                !id.ends_with("@yihaotong") || cdr["callback_for"] != "",
                "round {round} (seed {seed}): a record for no call: {cdr}"
            );
            if let Some(path) = cdr["recording"].as_str() {
                match yihaotong::media::prompts::decode_to_8k(std::path::Path::new(path)) {
                    Ok(_) => {}
                    // Cut before its first packet: a WAV with no frames yet.
                    Err(e) if e.contains("no audio") => {
                        let head = std::fs::read(path).expect("the recording is there");
                        assert!(
                            head.len() >= 44 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE",
                            "round {round}: {path} is no WAV"
                        );
                    }
                    Err(e) => panic!("round {round}: {path} unreadable: {e}"),
                }
            }
        }
        // A second start closes nothing out again.
        server.restart();
        assert_eq!(
            cdrs(&server).len(),
            after.len(),
            "round {round}: closed out twice"
        );
    }
    // At 25 calls/s with 0.7 s of talk, calls are always up when killed.
    assert!(crashed_seen > 0, "seed {seed}: no call was cut by any kill");
}

/// A call cut by kill -9 is closed out with everything its live record knew
/// at the last flush: compared field by field with what the API showed of
/// it just before the kill. A caller waiting in line keeps its queue and
/// time queued; a bridged call its agent, answer and recording.
#[test]
fn a_crashed_record_keeps_what_the_live_call_knew() {
    use common::{answer, Phone};
    use yihaotong::sip::auth::Algorithm;
    let mut server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let admin = server.token("ops", "admin", None);
    let mut seat = Phone::bind("1001", "127.0.0.3");
    assert_eq!(seat.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // Through the 12345 flow (its path), answered by 1001, recorded.
    let mut a = Phone::new("13800139101");
    let da = common::answer_ivr(&server, &mut a, "12345", None);
    let inv = seat
        .request("INVITE", 20.0)
        .expect("the flow queues to 1001");
    let _agent_leg = answer(&server, &mut seat, &inv, "agent");
    // Waiting in line: the only agent is busy.
    let mut b = Phone::new("13800139102");
    let db = b.invite(server.sip, "123450");
    // More than one record_flush (1 s) later, as the API shows them.
    std::thread::sleep(Duration::from_millis(2500));
    let (code, live) = server.http("GET", "/api/v1/calls", Some(&admin), None);
    assert_eq!(code, 200, "{live}");
    let shown = |id: &str| {
        live.as_array()
            .and_then(|calls| calls.iter().find(|c| c["call_id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} is not live: {live}"))
    };
    let (va, vb) = (shown(&da.call_id), shown(&db.call_id));
    assert!(va["recording"].is_string(), "{va}");
    server.restart();

    let all = json(&server, &["cdrs", "--since", "1h"]);
    let record = |id: &str| {
        let mine: Vec<&serde_json::Value> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["call_id"] == id)
            .collect();
        assert_eq!(mine.len(), 1, "one record for {id}: {all}");
        mine[0].clone()
    };
    for (view, cdr) in [(&va, record(&da.call_id)), (&vb, record(&db.call_id))] {
        assert_eq!(cdr["disposition"], "crashed", "{cdr}");
        for field in [
            "caller",
            "dialed",
            "hotline",
            "mode",
            "arrived",
            "answered",
            "flow",
            "path",
            "keys",
            "queue",
            "agent",
            "recording",
        ] {
            let (seen, kept) = (&view[field], &cdr[field]);
            let empty = |v: &serde_json::Value| v.is_null() || v == "";
            assert!(
                seen == kept || (empty(seen) && empty(kept)),
                "{field}: the API showed {seen}, the crashed record has {kept}\n{view}\n{cdr}"
            );
        }
    }
    let waiting = record(&db.call_id);
    assert!(
        waiting["queued"].is_u64() && waiting["queue"] == "main",
        "{waiting}"
    );
    // The report counts the waiting caller as offered to main.
    let rows = json(&server, &["report", "--by", "queue"]);
    let main = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == "main"))
        .cloned()
        .expect("main's row");
    assert_eq!(main["offered"], 2, "{main}");

    // Restarts with nothing up add nothing.
    let count = all.as_array().map_or(0, Vec::len);
    server.restart();
    server.restart();
    let again = json(&server, &["cdrs", "--since", "1h"]);
    assert_eq!(again.as_array().map_or(0, Vec::len), count, "{again}");
}

/// An operator's backup, taken while calls are up, restored into a fresh
/// folder on a stopped server: every account, route, token, agent's break,
/// CDR and queue-log line the backup counted is there, and the call that was
/// up when it was taken is closed out once, as `crashed`, with its agent.
#[test]
fn a_backup_taken_during_calls_restores_every_record_and_account() {
    use common::{caller_hangs_up, connected_call, Phone};
    use yihaotong::sip::auth::Algorithm;
    let mut server = TestServer::start_with(&[("YIHAOTONG_QUEUE__WRAP_UP", "0")]);
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    for args in [
        &["agents", "state", "1002", "break", "--reason", "training"][..],
        &["routes", "set", "99999", "--queue", "main"],
    ] {
        let (ok, out) = server.cli(args);
        assert!(ok, "{out}");
    }
    server.token("ops", "admin", None);
    let mut seat = Phone::bind("1001", "127.0.0.3");
    assert_eq!(seat.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800139201");
    let mut ended = BTreeSet::new();
    for tag in ["first", "second"] {
        let (mut d, _) = connected_call(&server, &mut trunk, &mut seat, tag);
        caller_hangs_up(&server, &mut trunk, &mut d, &mut seat, tag);
        server.wait_cdr(&d.call_id);
        ended.insert(d.call_id);
    }
    let (mut up, _) = connected_call(&server, &mut trunk, &mut seat, "third");
    // More than one record_flush, so the live record knows its agent.
    std::thread::sleep(Duration::from_millis(1500));
    // What is kept, not what is live (on a call, since when, who waits).
    let kept = |v: serde_json::Value, fields: &[&str]| -> Vec<serde_json::Value> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|item| fields.iter().map(|f| item[*f].clone()).collect())
            .collect()
    };
    let accounts = |server: &TestServer| {
        (
            kept(
                json(server, &["agents", "list"]),
                &["id", "name", "queues", "dial", "reason"],
            ),
            json(server, &["routes", "list"]),
            json(server, &["tokens", "list"]),
            kept(json(server, &["queues", "list"]), &["name", "keys"]),
        )
    };
    let before = accounts(&server);
    let file = server.dir.path().join("during-calls.backup");
    let file_arg = file.display().to_string();
    let summary = json(&server, &["backup", &file_arg]);
    assert_eq!(summary["trees"]["cdrs"], 2, "{summary}");
    assert_eq!(summary["trees"]["live_calls"], 1, "{summary}");
    let log_lines = summary["trees"]["queue_log"].as_u64().expect("count");
    assert!(log_lines >= 6, "{summary}");
    let (ok, out) = server.cli(&["backup", &file_arg]);
    assert!(!ok && out.contains("exists"), "{out}");
    let (ok, out) = server.cli(&["restore", &file_arg]);
    assert!(!ok && out.contains("server stopped"), "{out}");
    assert!(server.audit_actions().contains(&"store.backup".to_string()));
    caller_hangs_up(&server, &mut trunk, &mut up, &mut seat, "third");
    server.wait_cdr(&up.call_id);
    server.signal("TERM");
    let _ = server.child.wait();

    // A fresh folder: restore, then start there.
    let fresh = server.dir.path().join("restored");
    for (k, v) in server.env.iter_mut() {
        if k == "YIHAOTONG_DATA_DIR" {
            *v = fresh.display().to_string();
        }
    }
    let (ok, out) = server.cli(&["restore", &file_arg]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("restored {}", summary["entries"])),
        "{out}"
    );
    server.restart();
    assert_eq!(accounts(&server), before);
    let all = json(&server, &["cdrs", "--since", "1h"]);
    let all = all.as_array().expect("cdrs");
    assert_eq!(all.len(), 3, "{all:?}");
    let cut: Vec<&serde_json::Value> = all.iter().filter(|c| c["call_id"] == up.call_id).collect();
    assert_eq!(cut.len(), 1, "{all:?}");
    assert_eq!(cut[0]["disposition"], "crashed", "{}", cut[0]);
    assert_eq!(cut[0]["agent"], "1001", "{}", cut[0]);
    assert_eq!(cut[0]["queue"], "main", "{}", cut[0]);
    let answered: BTreeSet<String> = all
        .iter()
        .filter(|c| c["disposition"] == "answered")
        .filter_map(|c| c["call_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(answered, ended);
    assert_eq!(queue_log_lines(&server) as u64, log_lines);
}

/// Writes `per_day` answered calls (a CDR and a CONNECT line each) on each
/// of the days `backs` days ago, as the records writer writes them, into
/// the database under `data_dir` (no server may hold it); their Call-IDs.
fn write_old_calls(data_dir: &std::path::Path, backs: &[u64], per_day: u64) -> BTreeSet<String> {
    use yihaotong::acd::queue_log::{LogLine, QueueEvent};
    use yihaotong::store::{record_key, LiveChanges, Store};
    use yihaotong::store::{Cdr, Disposition};
    let day_ms = 86_400_000u64;
    let today = yihaotong::clock::now_ms() / day_ms;
    let store = Store::open(data_dir).expect("open");
    let mut seq = 0;
    let mut key = |at: u64| {
        seq += 1;
        record_key(at, seq).to_vec()
    };
    let mut ids = BTreeSet::new();
    for back in backs {
        let (mut cdrs, mut log) = (Vec::new(), Vec::new());
        for n in 0..per_day {
            let arrived = (today - back) * day_ms + 36_000_000 + n * 1_000;
            let cdr = Cdr {
                call_id: format!("old-{back}-{n}@127.0.0.1"),
                hotline: "12345 citizen hotline".into(),
                dialed: "12345".into(),
                arrived,
                queued: Some(arrived + 10_000),
                offered: Some(arrived + 11_000),
                answered: Some(arrived + 20_000),
                ended: arrived + 120_000,
                queue: "main".into(),
                agent: "1001".into(),
                disposition: Disposition::Answered,
                service_level: 15,
                ..Cdr::default()
            };
            ids.insert(cdr.call_id.clone());
            cdrs.push((key(cdr.ended), serde_json::to_vec(&cdr).expect("json")));
            let line = LogLine {
                at: arrived + 20_000,
                call_id: cdr.call_id.clone(),
                queue: "main".into(),
                agent: "1001".into(),
                event: QueueEvent::Connect {
                    hold_s: 10,
                    bridged: "linked".into(),
                    ring_s: 9,
                },
            };
            log.push((key(line.at), serde_json::to_vec(&line).expect("json")));
        }
        store
            .append_records(&log, &cdrs, &[], &LiveChanges::default())
            .expect("write");
    }
    ids
}

/// A year on one machine: days older than `[records] keep_days` leave the
/// database for the archive at start (synced files first), and `cdrs`,
/// `queue-log` and `report` read them back as if nothing had moved.
#[test]
fn records_older_than_keep_days_move_to_the_archive_and_still_report() {
    let mut server = TestServer::start_with(&[("YIHAOTONG_RECORDS__KEEP_DAYS", "2")]);
    server.signal("TERM");
    let _ = server.child.wait();
    // Two answered calls on each of three past days: two days past
    // keep_days, one within it.
    let ids = write_old_calls(&server.data_dir(), &[5, 4, 1], 2);
    let today = yihaotong::clock::now_ms() / 86_400_000;
    server.restart();

    let date = |back: u64| {
        chrono::DateTime::from_timestamp(((today - back) * 86_400) as i64, 0)
            .expect("date")
            .format("%Y-%m-%d")
            .to_string()
    };
    let archive = server.data_dir().join("archive");
    let file = |kind: &str, back: u64| archive.join(format!("{kind}/{}.jsonl.gz", date(back)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !file("queue_log", 4).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for back in [5, 4] {
        for kind in ["cdrs", "queue_log"] {
            let f = file(kind, back);
            let zcat = Command::new("zcat").arg(&f).output().expect("zcat");
            let lines = String::from_utf8_lossy(&zcat.stdout).lines().count();
            assert_eq!(lines, 2, "{}", f.display());
        }
    }
    assert!(!file("cdrs", 1).exists());
    let since = date(6);
    let read: BTreeSet<String> = json(&server, &["cdrs", "--since", &since])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["call_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(read, ids);
    let report = json(&server, &["report", "--since", &since, "--by", "queue"]);
    let main = report
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "main"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (main["offered"].as_u64(), main["answered"].as_u64()),
        (Some(6), Some(6)),
        "{report}"
    );
    let (ok, out) = server.cli(&["--format", "table", "queue-log", "--since", &since]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("CONNECT")).count(),
        6,
        "{out}"
    );
}

/// kill -9 at random moments while old days are being archived (some kills
/// land between a day's file and the rows' removal), then a clean start:
/// every record is read back exactly once, and the archive holds each once.
#[test]
fn a_kill_while_days_are_archived_loses_and_doubles_nothing() {
    let (mut rng, _) = seeded_rng();
    let mut server = TestServer::start_with(&[("YIHAOTONG_RECORDS__KEEP_DAYS", "1")]);
    server.signal("TERM");
    let _ = server.child.wait();
    let per_day = 15_000;
    let ids = write_old_calls(&server.data_dir(), &[6, 5, 4, 3], per_day);
    for _ in 0..4 {
        server.restart();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        let _ = server.child.kill();
        let _ = server.child.wait();
    }
    server.restart();
    let today = yihaotong::clock::now_ms() / 86_400_000;
    let date = chrono::DateTime::from_timestamp(((today - 3) * 86_400) as i64, 0)
        .expect("date")
        .format("%Y-%m-%d")
        .to_string();
    let archive = server.data_dir().join("archive");
    let last = archive.join(format!("queue_log/{date}.jsonl.gz"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !last.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        last.exists(),
        "the archive did not finish: {}",
        last.display()
    );
    let since = chrono::DateTime::from_timestamp(((today - 7) * 86_400) as i64, 0)
        .expect("date")
        .format("%Y-%m-%d")
        .to_string();
    let read = json(&server, &["cdrs", "--since", &since]);
    let read: Vec<String> = read
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["call_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(read.len(), ids.len(), "each CDR once");
    assert_eq!(read.into_iter().collect::<BTreeSet<_>>(), ids);
    let lines = json(&server, &["queue-log", "--since", &since]);
    assert_eq!(
        lines.as_array().map(Vec::len),
        Some(ids.len()),
        "each line once"
    );
    // The archive's files hold each record once, however many parts a day has.
    for kind in ["cdrs", "queue_log"] {
        let mut total = 0;
        for entry in std::fs::read_dir(archive.join(kind)).expect("archive") {
            let path = entry.expect("entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            assert!(
                name.as_ref()
                    .is_some_and(|n| n.ends_with(".jsonl.gz") && !n.starts_with('.')),
                "a stray file is left in the archive: {}",
                path.display()
            );
            let zcat = Command::new("zcat").arg(&path).output().expect("zcat");
            let n = String::from_utf8_lossy(&zcat.stdout).lines().count();
            println!("{kind}/{}: {n} records", name.unwrap_or_default());
            total += n;
        }
        assert_eq!(total, ids.len(), "{kind}");
    }
}

/// Registrations are committed without a sync and made durable within half
/// a second (`Store::sync_registrations`): a kill -9 a second after a
/// REGISTER keeps what it did. Seat 1001 registers, then unregisters (the
/// last change, with nothing else written after it); seat 1002 registers.
/// After the kill only 1002 is rung.
#[test]
fn registrations_a_second_old_survive_a_kill() {
    use common::{caller_hangs_up, connected_call, Phone};
    use yihaotong::sip::auth::Algorithm;
    let mut server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    let mut gone = Phone::bind("1001", "127.0.0.3");
    let mut seat = Phone::bind("1002", "127.0.0.4");
    assert_eq!(gone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    assert_eq!(seat.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // Both seats' logins and presence settle (durable writes of their own).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gone.register_expires(server.sip, "s3cret", Algorithm::Md5, 0),
        200
    );
    std::thread::sleep(Duration::from_millis(1200));
    server.restart();
    let mut trunk = Phone::new("13800139301");
    let (mut d, _) = connected_call(&server, &mut trunk, &mut seat, "after the kill");
    assert!(
        gone.request("INVITE", 0.5).is_none(),
        "1001 unregistered before the kill, yet was rung after it"
    );
    caller_hangs_up(&server, &mut trunk, &mut d, &mut seat, "after the kill");
    server.wait_cdr(&d.call_id);
    server.assert_idle();
}

/// kill -9 while the server writes a backup: nothing appears under the
/// backup's name unless it is whole (the file is written as `.NAME.partial`
/// and renamed once synced), the server starts again on its database, and
/// the next backup to the same name holds every record.
#[test]
fn a_kill_during_a_backup_leaves_no_half_file_under_its_name() {
    use yihaotong::store::{RecordKind, Store};
    let (mut rng, _) = seeded_rng();
    let mut server = TestServer::start();
    server.signal("TERM");
    let _ = server.child.wait();
    let ids = write_old_calls(&server.data_dir(), &[3, 2, 1], 15_000);
    let root = server.dir.path().to_path_buf();
    let restored_cdrs = |backup: &std::path::Path, into: &str| -> usize {
        let dir = root.join(into);
        Store::restore(&dir, backup, &Default::default(), &mut |_| {}).expect("restore");
        let store = Store::open(&dir).expect("open restored");
        store
            .records(RecordKind::Cdrs, 0, u64::MAX)
            .expect("read")
            .len()
    };
    let file = root.join("cut.backup");
    let file_arg = file.display().to_string();
    for round in 0..4 {
        server.restart();
        let backup = spawn_quiet(&server, &["backup", &file_arg]);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1200)));
        let _ = server.child.kill();
        let _ = server.child.wait();
        let mut backup = backup;
        let _ = backup.wait();
        let partial = root.join(".cut.backup.partial").exists();
        println!(
            "round {round}: the kill came {}",
            match (file.exists(), partial) {
                (true, _) => "after the backup was whole",
                (false, true) => "while the backup was written",
                (false, false) => "before the backup began",
            }
        );
        if file.exists() {
            // It finished before the kill: whole.
            assert_eq!(restored_cdrs(&file, &format!("whole-{round}")), ids.len());
            std::fs::remove_file(&file).expect("remove");
        }
    }
    server.restart();
    let (ok, out) = server.cli(&["backup", &file_arg]);
    assert!(ok, "{out}");
    assert_eq!(restored_cdrs(&file, "after"), ids.len());
    let stray = root.join(".cut.backup.partial");
    assert!(!stray.exists(), "{} is left", stray.display());
}
