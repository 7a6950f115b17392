//! Fuzz target: `yihaotong::fuzzing::config_file` (see that function for what it drives).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| yihaotong::fuzzing::config_file(data));
