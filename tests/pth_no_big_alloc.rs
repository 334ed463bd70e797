//! A file that claims a 4 TiB tensor must be refused *before* anything of that size is allocated.
//! A counting allocator records the largest single allocation made while loading. This file holds
//! one test only, so no other test's allocations run concurrently in this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use gradekit::checkpoint::pth::{load, Limits, LoadOptions};

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn huge_claims_are_refused_before_allocating() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pth/huge_claim.pth");
    // Default limits: 2^40 f32 elements is over the per-tensor limit.
    LARGEST.store(0, Ordering::SeqCst);
    let e = format!("{:#}", load(&f, &LoadOptions::default()).unwrap_err());
    assert!(e.contains("1099511627776 elements") && e.contains("per-tensor limit"), "{e}");
    assert!(LARGEST.load(Ordering::SeqCst) < 1 << 20, "allocated {} bytes", LARGEST.load(Ordering::SeqCst));

    // No limits at all: the 16-byte storage record is what refuses the 4 TiB claim.
    let unlimited = Limits {
        max_file_bytes: u64::MAX,
        max_pickle_bytes: u64::MAX,
        max_tensor_bytes: u64::MAX,
        max_total_bytes: u64::MAX,
        ..Default::default()
    };
    LARGEST.store(0, Ordering::SeqCst);
    let e = format!("{:#}", load(&f, &LoadOptions { limits: unlimited, ..Default::default() }).unwrap_err());
    assert!(e.contains("holds 16 bytes") && e.contains("4398046511104 bytes"), "{e}");
    assert!(LARGEST.load(Ordering::SeqCst) < 1 << 20, "allocated {} bytes", LARGEST.load(Ordering::SeqCst));
}
