//! What an operator meets around the call path, against the real binary:
//! log lines fit for a file or a shipper.

mod common;

use common::{Phone, TestServer};

fn wait_for_line(path: &std::path::Path, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn logs_into_a_file_carry_no_colour_and_json_lines_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text_log = dir.path().join("text.log");
    {
        let server = TestServer::start_logging(&[], Some(&text_log));
        let mut trunk = Phone::new("13800138000");
        let d = trunk.invite(server.sip, "99999999999");
        assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
        let text = wait_for_line(&text_log, "no route for dialed number");
        assert!(text.contains("SIP listening"), "{text}");
        assert!(text.contains("no route for dialed number"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escapes in a log file: {text}"
        );
    }

    let json_log = dir.path().join("json.log");
    let server = TestServer::start_logging(&[("YIHAOTONG_LOG__FORMAT", "json")], Some(&json_log));
    let mut trunk = Phone::new("13800138000");
    let d = trunk.invite(server.sip, "99999999999");
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
    let text = wait_for_line(&json_log, "no route for dialed number");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "no route for dialed number")
        .unwrap_or_else(|| panic!("no such line in {text}"));
    assert_eq!(refused["level"], "INFO", "{refused}");
    assert_eq!(
        refused["fields"]["call_id"],
        d.call_id.as_str(),
        "{refused}"
    );
    assert!(refused["timestamp"].is_string(), "{refused}");

    // A level that is not a filter is refused with the field named.
    let (ok, out) = server.cli(&["check"]);
    assert!(ok, "{out}");
    let bad = std::process::Command::new(common::BIN)
        .arg("check")
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("YIHAOTONG_LOG__LEVEL", "yihaotong=loud")
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(said.contains("[log] level"), "{said}");
}
