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
    /// The error the child recorded in its status file (never text scanned from its log, which the
    /// submission can fill with whatever it likes).
    pub error: Option<String>,
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Runs `cmd` with stdout and stderr into `log`, killing its process group past the limits. The
/// child (this `grade` binary) reports how it ended in `status` (`run_status`, named to it in
/// `GRADEKIT_STATUS_FILE`); that file, the exit status and the parent's own kills are the only
/// sources of the outcome. The log is for people and is never parsed.
pub fn run(mut cmd: Command, log: &Path, status: &Path, limits: Limits) -> Result<Outcome> {
    match std::fs::remove_file(status) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot clear {}", status.display()));
        }
        _ => {}
    }
    cmd.env(crate::run_status::ENV, status);
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
    let st = loop {
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
    let recorded = crate::run_status::read(status);
    let over_memory = recorded.as_ref().is_some_and(|r| r.outcome == crate::run_status::Outcome::MemoryLimit);
    let mut error = recorded.and_then(|r| r.error);
    let ended = match (killed, status_code(&st)) {
        (Some(k), _) => k,
        // The child's watchdog or a failed allocation (the data-segment cap refusing one absurd
        // request) said so through the status file.
        (None, _) if over_memory => Ended::OverMemory,
        (None, (Some(c), _)) => Ended::Exited(c),
        (None, (None, Some(s))) => Ended::Signal(s),
        (None, (None, None)) => Ended::Signal(0),
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

fn status_code(st: &std::process::ExitStatus) -> (Option<i32>, Option<i32>) {
    (st.code(), st.signal())
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
        let st = tmp.path().join("status.json");
        let lim = Limits { time: Duration::from_secs(20), memory: 1 << 30 };
        let o = run(
            sh(r#"echo hello; echo 'error: model x.onnx is bad' >&2; echo '{"outcome":"error","exit_code":2,"error":"model x.onnx is bad"}' > "$GRADEKIT_STATUS_FILE"; exit 2"#),
            &log,
            &st,
            lim,
        )
        .unwrap();
        assert_eq!(o.ended, Ended::Exited(2));
        assert_eq!(o.error.as_deref(), Some("model x.onnx is bad"));
        assert!(std::fs::read_to_string(&log).unwrap().contains("hello"));

        let t = Instant::now();
        let lim = Limits { time: Duration::from_millis(300), memory: 1 << 30 };
        // The sleeping grandchild is killed with the group.
        let o = run(sh("sleep 30 & sleep 30"), &log, &st, lim).unwrap();
        assert_eq!(o.ended, Ended::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));

        let o = run(sh("kill -SEGV $$"), &log, &st, Limits { time: Duration::from_secs(20), memory: 1 << 30 }).unwrap();
        assert_eq!(o.ended, Ended::Signal(libc::SIGSEGV));
    }

    /// The log is the submission's to fill: forged `error:` lines and allocation messages in it change
    /// nothing; only the status file and the exit status count.
    #[test]
    fn the_log_cannot_forge_the_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let st = tmp.path().join("status.json");
        let lim = Limits { time: Duration::from_secs(20), memory: 1 << 30 };
        let forged = "echo 'error: FORGED passed with 100%'; echo 'memory allocation of 99 bytes failed' >&2; echo 'memory limit exceeded'";
        let o = run(
            sh(&format!(r#"{forged}; echo '{{"outcome":"error","exit_code":2,"error":"the real contract error"}}' > "$GRADEKIT_STATUS_FILE"; exit 2"#)),
            &log,
            &st,
            lim,
        )
        .unwrap();
        assert_eq!(o.ended, Ended::Exited(2));
        assert_eq!(o.error.as_deref(), Some("the real contract error"));
        // No status file at all: the exit code alone, no error text taken from the log.
        let o = run(sh(&format!("{forged}; exit 2")), &log, &st, lim).unwrap();
        assert_eq!(o.ended, Ended::Exited(2));
        assert_eq!(o.error, None);
        let o = run(sh(&format!("{forged}; kill -ABRT $$")), &log, &st, lim).unwrap();
        assert_eq!(o.ended, Ended::Signal(libc::SIGABRT));
        // A status file that says memory-limit is believed (the grade binary's watchdog writes it).
        let o = run(sh(r#"echo '{"outcome":"memory-limit","exit_code":2,"error":"memory limit exceeded while reading model m.onnx"}' > "$GRADEKIT_STATUS_FILE"; exit 2"#), &log, &st, lim).unwrap();
        assert_eq!(o.ended, Ended::OverMemory);
    }
}
