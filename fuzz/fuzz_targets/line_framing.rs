//! `line_framing`: see `chatd::fuzzing::check_line_framing` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatd::fuzzing::check_line_framing(data));
