//! Replays every input committed under `fuzz/seeds/<target>/` (hand-written
//! starting points, and every crash a fuzzer found, as `crash-<what>`) and
//! `fuzz/corpus/<target>/` (what the fuzzers kept, minimized) through the
//! same `yihaotong::fuzzing` function the target runs. A crash input
//! committed to the seeds is a regression test (the minimizer never drops it).

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("sip_message", yihaotong::fuzzing::sip_message),
    ("sip_transactions", yihaotong::fuzzing::sip_transactions),
    ("sdp", yihaotong::fuzzing::sdp),
    ("rtp", yihaotong::fuzzing::rtp),
    ("flow_file", yihaotong::fuzzing::flow_file),
    ("config_file", yihaotong::fuzzing::config_file),
];

#[test]
fn every_committed_fuzz_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, run) in TARGETS {
        let mut inputs = Vec::new();
        for kind in ["seeds", "corpus"] {
            let dir = root.join(kind).join(name);
            let found: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            assert!(!found.is_empty(), "{name}: nothing in {}", dir.display());
            inputs.extend(found);
        }
        inputs.sort();
        for input in &inputs {
            let bytes = std::fs::read(input).expect("corpus file readable");
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{name} panicked on {}", input.display());
        }
    }
}

/// The seeds must reach past the parsers' front doors, or the fuzzers start
/// from nothing: each SIP seed parses, each SDP seed is an offer we accept.
#[test]
fn seeds_are_well_formed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for seed in [
        "invite",
        "register",
        "options",
        "bye",
        "refer",
        "ok_invite",
        "compact",
        "folded",
    ] {
        let bytes = std::fs::read(root.join("sip_message").join(seed)).expect("seed");
        assert!(
            yihaotong::sip::message::parse(&bytes).is_ok(),
            "{seed} does not parse"
        );
    }
    for seed in ["offer", "hold", "two_streams"] {
        let bytes = std::fs::read(root.join("sdp").join(seed)).expect("seed");
        assert!(
            yihaotong::media::sdp::parse_audio(&bytes).is_ok(),
            "{seed} refused"
        );
    }
}
