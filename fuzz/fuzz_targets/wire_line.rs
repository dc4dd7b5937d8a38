#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flintlog::fuzz_entry::wire_line(data));
