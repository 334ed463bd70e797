//! Wall-clock budgets: graders check between batches and stop cleanly when time runs out.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn start(budget: Duration) -> Self {
        Deadline { start: Instant::now(), budget }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn remaining(&self) -> Duration {
        self.budget.saturating_sub(self.elapsed())
    }

    pub fn exceeded(&self) -> bool {
        self.elapsed() > self.budget
    }

    /// Whether one more unit of work taking `per_unit` is expected to finish inside the budget.
    pub fn fits(&self, per_unit: Duration) -> bool {
        self.elapsed() + per_unit <= self.budget
    }
}

/// Parses budgets like `15m`, `90s`, `1h 30m` or plain seconds.
pub fn parse_budget(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs > 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("budget {s:?} must be positive"));
    }
    humantime::parse_duration(s).map_err(|e| format!("budget {s:?}: {e} (examples: 15m, 90s, 600)"))
}

/// The last line of defence against a model too slow for its budget: the checks between batches cannot
/// interrupt a single model call that runs for minutes. Past the budget plus a grace period, this
/// writes the partial report (via `on_fire`) and ends the process with exit code 1 (over budget).
/// Dropping the guard disarms it.
pub struct HardStop {
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HardStop {
    pub fn arm(deadline: Deadline, on_fire: impl FnOnce() + Send + 'static) -> HardStop {
        use std::sync::atomic::{AtomicBool, Ordering};
        let armed = std::sync::Arc::new(AtomicBool::new(true));
        let flag = armed.clone();
        // Grace: 10% of the budget, at least 5 s, so a run that checks between batches stops itself first.
        let grace = deadline.budget().mul_f64(0.1).max(Duration::from_secs(5));
        let fire_at = deadline.budget() + grace;
        std::thread::Builder::new()
            .name("hard-stop".into())
            .spawn(move || {
                while deadline.elapsed() < fire_at {
                    if !flag.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50).min(fire_at.saturating_sub(deadline.elapsed())));
                }
                if flag.load(Ordering::Relaxed) {
                    on_fire();
                    crate::run_status::record(crate::run_status::Outcome::OverBudget, 1, None);
                    std::process::exit(1);
                }
            })
            .ok();
        HardStop { armed }
    }
}

impl Drop for HardStop {
    fn drop(&mut self) {
        self.armed.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_budgets() {
        assert_eq!(parse_budget("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_budget("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_budget("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_budget("-1").is_err());
        assert!(parse_budget("soon").is_err());
    }
}
