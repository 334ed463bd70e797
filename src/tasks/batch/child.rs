//! One grading run in its own process, with a wall-clock limit and a memory limit, so a submission
//! that crashes, hangs or eats memory costs only its own row. The child is this same `grade` binary;
//! it also enforces the memory limit itself (`--memory-limit`), the parent is the backstop.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub time: Duration,
    /// Resident bytes.
    pub memory: u64,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Exited(i32),
    /// Killed at the time limit.
    TimedOut,
    /// Killed (or stopped itself) over the memory limit.
    OverMemory,
    /// Died of a signal we did not send (a crash).
    Signal(i32),
}

pub struct Outcome {
    pub ended: Ended,
    pub seconds: f64,
    /// The last `error: ...` line the child printed, if any.
    pub error: Option<String>,
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Runs `cmd` with stdout and stderr into `log`, killing its process group past the limits.
pub fn run(mut cmd: Command, log: &Path, limits: Limits) -> Result<Outcome> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    // A hard cap on the data segment (heap and anonymous maps, Linux >= 4.7) at four times the limit:
    // an absurd allocation (100 GB) fails at once instead of racing the resident-memory checks, while
    // address space reserved but never touched (allocators, thread stacks) stays allowed. No core files.
    let data_cap = limits.memory.saturating_mul(4);
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let cap = libc::rlimit { rlim_cur: data_cap as libc::rlim_t, rlim_max: data_cap as libc::rlim_t };
            libc::setrlimit(libc::RLIMIT_DATA, &cap);
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().context("cannot start a grading process")?;
    let pid = child.id();
    let kill = || unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    };
    let mut killed: Option<Ended> = None;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if killed.is_none() {
            if started.elapsed() > limits.time {
                killed = Some(Ended::TimedOut);
                kill();
            } else if rss_bytes(pid).is_some_and(|r| r > limits.memory + limits.memory / 10) {
                killed = Some(Ended::OverMemory);
                kill();
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    // Anything the child started in its group goes too.
    kill();
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
    let mut error = text.lines().rev().find(|l| l.starts_with("error:")).map(|l| l.trim_start_matches("error:").trim().to_string());
    // The child's watchdog, Rust's allocation-failure abort, or tract reporting a failed allocation
    // (the data-segment cap refusing one absurd request).
    let oom_text = ["memory limit exceeded", "memory allocation of", "failed to allocate"].iter().any(|t| text.contains(t));
    let ended = match (killed, status.code(), status.signal()) {
        (Some(k), _, _) => k,
        (None, Some(2), _) if oom_text => Ended::OverMemory,
        (None, Some(c), _) => Ended::Exited(c),
        (None, None, Some(_)) if oom_text => Ended::OverMemory,
        (None, None, Some(s)) => Ended::Signal(s),
        (None, None, None) => Ended::Signal(0),
    };
    if error.is_none() && matches!(ended, Ended::OverMemory) {
        error = Some("memory allocation failed (over the memory limit)".into());
    }
    if let Some(e) = &mut error {
        if e.len() > 600 {
            let cut = (0..=600).rev().find(|&i| e.is_char_boundary(i)).unwrap_or(0);
            e.truncate(cut);
            e.push_str(" ...");
        }
    }
    Ok(Outcome { ended, seconds, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn exit_codes_errors_and_time_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let lim = Limits { time: Duration::from_secs(20), memory: 1 << 30 };
        let o = run(sh("echo hello; echo 'error: model x.onnx is bad' >&2; exit 2"), &log, lim).unwrap();
        assert_eq!(o.ended, Ended::Exited(2));
        assert_eq!(o.error.as_deref(), Some("model x.onnx is bad"));
        assert!(std::fs::read_to_string(&log).unwrap().contains("hello"));

        let t = Instant::now();
        let lim = Limits { time: Duration::from_millis(300), memory: 1 << 30 };
        // The sleeping grandchild is killed with the group.
        let o = run(sh("sleep 30 & sleep 30"), &log, lim).unwrap();
        assert_eq!(o.ended, Ended::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));

        let o = run(sh("kill -SEGV $$"), &log, Limits { time: Duration::from_secs(20), memory: 1 << 30 }).unwrap();
        assert_eq!(o.ended, Ended::Signal(libc::SIGSEGV));
    }
}
