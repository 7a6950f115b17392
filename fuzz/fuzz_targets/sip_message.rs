//! Fuzz target: `yihaotong::fuzzing::sip_message` (see that function for what it drives).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| yihaotong::fuzzing::sip_message(data));
