//! The grader's memory limit. A watchdog thread samples the process's resident memory and ends the
//! run with a clear message when a submission's model (or data) drives it past the limit, before the
//! machine starts swapping or the kernel kills a whole batch of grading jobs.

use std::time::Duration;

/// Resident set size of this process in bytes (Linux); `None` where /proc is unavailable.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Parses sizes like `8G`, `512M`, `1.5GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| format!("size {s:?}: expected a number with K, M or G"))?;
    let mult = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("size {s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("size {s:?} must be positive"));
    }
    Ok((v * mult) as u64)
}

/// What the process is loading or computing now, for the watchdog's message: a stack of labels
/// ("reading model x.onnx", "building the tract plan for x.onnx", ...), innermost last.
static ACTIVITY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Names what is being done until the returned guard is dropped; the memory watchdog and a failed
/// allocation name it, so a run stopped over the limit says which file it was loading.
#[must_use = "the activity lasts as long as the guard"]
pub fn activity(what: String) -> Activity {
    if let Ok(mut a) = ACTIVITY.lock() {
        a.push(what);
    }
    Activity(())
}

pub struct Activity(());

impl Drop for Activity {
    fn drop(&mut self) {
        if let Ok(mut a) = ACTIVITY.lock() {
            a.pop();
        }
    }
}

/// The innermost current activity, if any.
pub fn current_activity() -> Option<String> {
    ACTIVITY.try_lock().ok().and_then(|a| a.last().cloned())
}

/// Starts the watchdog: past `limit` bytes the process prints why (and what it was loading), records
/// `memory-limit` in the run's status file (`run_status`) and exits with code 2.
pub fn start_watchdog(limit: u64) {
    std::thread::Builder::new()
        .name("memory-watchdog".into())
        .spawn(move || loop {
            if let Some(rss) = resident_bytes() {
                if rss > limit {
                    let during = current_activity().map(|a| format!(" while {}", crate::report::sanitize::line(&a))).unwrap_or_default();
                    let msg = format!(
                        "memory limit exceeded{during}: the grader is using {:.2} GiB, over --memory-limit {:.2} GiB. \
                         The model or data needs more memory than allowed (a smaller --batch may help); the run was stopped",
                        rss as f64 / (1u64 << 30) as f64,
                        limit as f64 / (1u64 << 30) as f64
                    );
                    eprintln!("error: {msg}");
                    crate::run_status::record(crate::run_status::Outcome::MemoryLimit, 2, Some(&msg));
                    std::process::exit(2);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        })
        .ok();
}

/// The `grade` binary's allocator: the system allocator, except that an allocation the system refuses
/// (the data-segment cap `grade batch` sets, or an absurd request) ends the run as "over the memory
/// limit" (exit 2, recorded in the status file) instead of Rust's abort. Nothing is allocated on that
/// path.
pub struct GuardedAlloc;

unsafe impl std::alloc::GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if p.is_null() {
            allocation_failed(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if p.is_null() {
            allocation_failed(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            allocation_failed(new_size);
        }
        p
    }
}

#[cold]
fn allocation_failed(size: usize) -> ! {
    // No allocation from here on: the message is assembled in a stack buffer.
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let k = b.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&b[..k]);
        n += k;
    };
    put(b"error: memory limit exceeded: an allocation of ");
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    let mut v = size;
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b" bytes failed; the run was stopped\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allocate nothing.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
    }
    crate::run_status::record_raw(
        b"{\"outcome\":\"memory-limit\",\"exit_code\":2,\"error\":\"an allocation failed: over the memory limit\"}\n",
    );
    unsafe { libc::_exit(2) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("3T").is_err());
        assert!(resident_bytes().unwrap() > 0);
    }
}
