//! `POST /increments`: see `tally_fuzz::increments` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| tally_fuzz::increments(body));
