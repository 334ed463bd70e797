//! How a grading run ended, told to `grade batch` through a file rather than through the run's log.
//! The log holds text the submission controls (port names, metadata and error messages quoting
//! them), so the parent never reads a status from it. The parent names a file in
//! `GRADEKIT_STATUS_FILE`; the child opens it at start (so that even a failed allocation, which may
//! not allocate, can record itself), and writes one JSON object when it ends: its outcome, exit code
//! and error message. A child that dies without writing leaves `"outcome":"started"`.

use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

/// The variable `grade batch` sets for each child.
pub const ENV: &str = "GRADEKIT_STATUS_FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Running (or died without saying how it ended).
    Started,
    /// Ran to the end (exit 0 or 1: the report says passed, failed or over budget).
    Finished,
    /// Stopped with an error (exit 2): `error` says why.
    Error,
    /// Stopped by the memory watchdog or a failed allocation.
    MemoryLimit,
    /// Stopped by the hard stop past its budget (exit 1, partial report written).
    OverBudget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub outcome: Outcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
}

static FD: AtomicI32 = AtomicI32::new(-1);

/// Opens the status file named by `GRADEKIT_STATUS_FILE`, if set, and records `started`.
pub fn init_from_env() {
    let Some(p) = std::env::var_os(ENV) else { return };
    use std::os::fd::IntoRawFd;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&p) {
        FD.store(f.into_raw_fd(), Ordering::SeqCst);
        record_raw(b"{\"outcome\":\"started\"}\n");
    }
}

/// Replaces the file's content with `bytes` (no allocation: usable from the allocator).
pub fn record_raw(bytes: &[u8]) {
    let fd = FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: plain syscalls on a descriptor this module owns for the life of the process.
    unsafe {
        libc::ftruncate(fd, 0);
        libc::pwrite(fd, bytes.as_ptr().cast(), bytes.len(), 0);
        libc::fsync(fd);
    }
}

/// Records how the run ended. The first final outcome wins (a watchdog exit racing the main thread).
pub fn record(outcome: Outcome, exit_code: i32, error: Option<&str>) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if FD.load(Ordering::SeqCst) < 0 || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let s = RunStatus { outcome, exit_code: Some(exit_code), error: error.map(|e| crate::report::sanitize::text(e).into_owned()) };
    if let Ok(mut j) = serde_json::to_vec(&s) {
        j.push(b'\n');
        record_raw(&j);
    }
}

/// Reads a child's status file (`None`: missing or unreadable, i.e. the child never got to start).
pub fn read(path: &std::path::Path) -> Option<RunStatus> {
    let bytes = crate::safe_fs::read_regular(path, 1 << 20, "status file").ok()?;
    serde_json::from_slice(&bytes).ok()
}
