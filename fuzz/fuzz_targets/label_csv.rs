#![no_main]
//! See fuzz/src/checks.rs for what this target asserts.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gradekit_fuzz::checks::install_panic_hook();
    gradekit_fuzz::checks::check_label_csv(data);
});
