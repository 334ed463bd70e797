#![no_main]
//! See fuzz/src/checks.rs for what this target asserts, and fuzz/src/mutate.rs for its mutator.
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| {
    gradekit_fuzz::checks::install_panic_hook();
    gradekit_fuzz::checks::check_model(data);
});

// Half the time a structural change to a decodable model (fields that were never walked, numbers
// that size buffers); otherwise, and for undecodable inputs, libFuzzer's own byte mutations.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let structural = if seed % 2 == 0 { gradekit_fuzz::mutate::mutate_model(&data[..size], seed / 2) } else { None };
    match structural {
        Some(m) if m.len() <= max_size => {
            data[..m.len()].copy_from_slice(&m);
            m.len()
        }
        _ => fuzzer_mutate(data, size, max_size),
    }
});
