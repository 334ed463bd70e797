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

/// Starts the watchdog: past `limit` bytes the process prints why and exits with code 2.
pub fn start_watchdog(limit: u64) {
    std::thread::Builder::new()
        .name("memory-watchdog".into())
        .spawn(move || loop {
            if let Some(rss) = resident_bytes() {
                if rss > limit {
                    eprintln!(
                        "error: memory limit exceeded: the grader is using {:.2} GiB, over --memory-limit {:.2} GiB. \
                         The model or data needs more memory than allowed (a smaller --batch may help); the run was stopped",
                        rss as f64 / (1u64 << 30) as f64,
                        limit as f64 / (1u64 << 30) as f64
                    );
                    std::process::exit(2);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        })
        .ok();
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
