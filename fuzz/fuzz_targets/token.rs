#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| masker_agent::fuzzing::token(data));
