//! Renderings of a report: terminal table, Markdown, JUnit XML.

use anyhow::Result;
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::{Report, Status};
use crate::spec::Verdict;

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "not computed".into(),
        Some(v) if v.abs() < 1.0 => format!("{v:.4}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| fmt_value(Some(v))).unwrap_or_else(|| "-".into())
}

fn verdict(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Strong) => "strong baseline",
        Some(Verdict::Simple) => "simple baseline",
        Some(Verdict::Below) => "BELOW baseline",
        Some(Verdict::NotComputed) => "not computed",
        None => "",
    }
}

/// The 95% interval as "[lo, hi]", or "-".
fn fmt_interval(m: &super::MetricRow) -> String {
    match &m.interval {
        Some(i) => format!("[{}, {}]", fmt_value(Some(i.lo)), fmt_value(Some(i.hi))),
        None => "-".into(),
    }
}

/// The verdict, plus which baselines lie inside the interval (a verdict within noise).
fn verdict_text(m: &super::MetricRow) -> String {
    let v = verdict(m.verdict);
    if m.within_noise_of.is_empty() || v.is_empty() {
        v.to_string()
    } else {
        format!("{v} (within noise of {})", m.within_noise_of.join(" and "))
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Passed => "PASSED",
        Status::Failed => "FAILED",
        Status::OverBudget => "OVER BUDGET",
    }
}

/// Submission text (model names, notes quoting port names) shown without control characters.
fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    crate::report::sanitize::line(s)
}

pub fn table(r: &Report) -> String {
    let mut s = format!("{} — {}\n", r.grader.title, status(r.status));
    for line in &r.integrity {
        s.push_str(&format!("INTEGRITY: {line}\n"));
    }
    if let Some(e) = &r.engine {
        s.push_str(&format!("backend: {e}\n"));
    }
    // What was graded, so a run on the bundled defaults or a fixture cannot pass for something else.
    for (k, v) in &r.inputs {
        s.push_str(&format!("{k}: {}\n", clean(v)));
    }
    if !r.counts.is_empty() {
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!("counts: {}\n", counts.join(", ")));
    }
    let rows: Vec<[String; 6]> = r
        .metrics
        .iter()
        .map(|m| [m.name.clone(), fmt_value(m.value), fmt_interval(m), fmt_opt(m.simple), fmt_opt(m.strong), verdict_text(m)])
        .collect();
    let header = ["metric", "value", "95% interval", "simple", "strong", "verdict"].map(String::from);
    let widths: Vec<usize> =
        (0..6).map(|i| rows.iter().chain(std::iter::once(&header)).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    let times: Vec<String> = r
        .timings
        .iter()
        .map(|(k, v)| match k.strip_suffix("_per_second") {
            Some(what) => format!("{v:.1} {what}/s"),
            None => format!("{k} {v:.2}s"),
        })
        .collect();
    if !times.is_empty() {
        s.push_str(&format!("time: {}\n", times.join(", ")));
    }
    for n in &r.notes {
        s.push_str(&format!("note: {}\n", clean(n)));
    }
    s
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!("## {} — {}\n\n", r.grader.title, status(r.status));
    for line in &r.integrity {
        s.push_str(&format!("**INTEGRITY**: {line}\n\n"));
    }
    s.push_str("| metric | value | 95% interval | simple | strong | verdict |\n|---|---|---|---|---|---|\n");
    for m in &r.metrics {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            m.name,
            fmt_value(m.value),
            fmt_interval(m),
            fmt_opt(m.simple),
            fmt_opt(m.strong),
            verdict_text(m)
        ));
    }
    s.push('\n');
    if let Some(e) = &r.engine {
        s.push_str(&format!("- backend: {e}\n"));
    }
    for (k, v) in &r.inputs {
        s.push_str(&format!("- {k}: `{}`\n", clean(v).replace('`', "'")));
    }
    for (k, v) in &r.timings {
        match k.strip_suffix("_per_second") {
            Some(what) => s.push_str(&format!("- {what} per second: {v:.1}\n")),
            None => s.push_str(&format!("- time {k}: {v:.2} s\n")),
        }
    }
    for n in &r.notes {
        s.push_str(&format!("- note: {}\n", clean(n)));
    }
    s
}

pub fn junit(r: &Report) -> Result<String> {
    let mut suite = TestSuite::new(r.grader.name.clone());
    for m in &r.metrics {
        let st = match m.verdict {
            Some(Verdict::Below) | Some(Verdict::NotComputed) => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(format!("{} = {} (simple baseline {})", m.name, fmt_value(m.value), fmt_opt(m.simple)));
                st
            }
            _ => TestCaseStatus::success(),
        };
        let mut tc = TestCase::new(m.name.clone(), st);
        tc.set_classname(format!("gradekit.{}", r.grader.name));
        suite.add_test_case(tc);
    }
    if r.status == Status::OverBudget {
        let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
        st.set_message(format!("time budget of {} s exceeded", r.grader.budget.seconds));
        let mut tc = TestCase::new("budget", st);
        tc.set_classname(format!("gradekit.{}", r.grader.name));
        suite.add_test_case(tc);
    }
    let mut rep = quick_junit::Report::new("gradekit");
    rep.add_test_suite(suite);
    rep.to_string().map_err(|e| anyhow::anyhow!("JUnit report: {e}"))
}
