//! `POST /increment`: see `tally_fuzz::increment` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| tally_fuzz::increment(body));
