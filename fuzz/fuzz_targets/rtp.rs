//! Fuzz target: `yihaotong::fuzzing::rtp` (see that function for what it drives).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| yihaotong::fuzzing::rtp(data));
