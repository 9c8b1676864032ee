//! `POST /items`: see `tally_fuzz::items` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| tally_fuzz::items(body));
