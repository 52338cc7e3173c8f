//! Config files come from users and wrappers: parsing any text must return
//! a value or a named error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = batchgen::config::Job::parse(text, "fuzz.json");
    }
});
