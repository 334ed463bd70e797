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
