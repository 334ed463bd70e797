//! The class scoreboard: `scoreboard.csv` (one row per student: every metric with its 95% interval
//! and verdict, status, time, error) and `scoreboard.html`, one static file (no server, no network:
//! sample grids are embedded as data URIs, sorting is a few lines of inline script).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use base64::Engine as _;

use super::{ClassReport, GradeStatus};

/// Metric names per grader, in the order reports list them (the first student that has each).
fn metric_columns(r: &ClassReport) -> Vec<(String, Vec<String>)> {
    r.graders
        .iter()
        .map(|g| {
            let mut names: Vec<String> = vec![];
            for s in &r.students {
                for gr in s.graders.iter().filter(|x| &x.grader == g) {
                    for m in &gr.metrics {
                        if !names.contains(&m.name) {
                            names.push(m.name.clone());
                        }
                    }
                }
            }
            (g.name().to_string(), names)
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

pub fn csv(r: &ClassReport) -> Result<String> {
    let cols = metric_columns(r);
    let mut w = csv::Writer::from_writer(vec![]);
    let mut header = vec!["student".to_string(), "status".into(), "seconds".into(), "error".into()];
    for (g, names) in &cols {
        header.push(format!("{g}:status"));
        for m in names {
            for suffix in ["", ":lo", ":hi", ":verdict", ":within_noise_of"] {
                header.push(format!("{g}:{m}{suffix}"));
            }
        }
        header.push(format!("{g}:error"));
    }
    header.push("similar_to".into());
    w.write_record(&header)?;
    for s in &r.students {
        let mut row = vec![s.id.clone(), s.status.label().into(), format!("{:.1}", s.seconds), s.error.clone().unwrap_or_default()];
        for (g, names) in &cols {
            let gr = s.graders.iter().find(|x| x.grader.name() == g);
            row.push(gr.map(|x| x.status.label().to_string()).unwrap_or_default());
            for name in names {
                let m = gr.and_then(|x| x.metrics.iter().find(|m| &m.name == name));
                row.push(num(m.and_then(|m| m.value)));
                row.push(num(m.and_then(|m| m.lo)));
                row.push(num(m.and_then(|m| m.hi)));
                row.push(m.and_then(|m| m.verdict.clone()).unwrap_or_default());
                row.push(m.map(|m| m.within_noise_of.join(" ")).unwrap_or_default());
            }
            row.push(gr.and_then(|x| x.error.clone()).unwrap_or_default());
        }
        row.push(s.similar_to.join(" | "));
        // Ids, errors and names may quote a submission: no control characters in any cell.
        w.write_record(row.iter().map(|c| crate::report::sanitize::line(c).into_owned()))?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("scoreboard.csv: {e}"))?)?)
}

/// HTML-escaped, with control characters (ANSI escapes from a submission) made visible first.
fn esc(s: &str) -> String {
    crate::report::sanitize::line(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn fmt(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}\
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}\
th{background:#f3f3f3;cursor:pointer;user-select:none}th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}\
.passed,.strong,.simple{color:#176f2c}.failed,.below,.over-budget,.missing{color:#a15c00}\
.error,.timeout,.memory-limit,.crashed,.refused{color:#b00020;font-weight:bold}\
.ci{color:#666;font-size:85%}.noise{color:#7a4cc2;font-size:85%}img{image-rendering:pixelated;display:block;margin-top:4px}\
.err{max-width:28em;font-size:85%;color:#b00020}";

// Sorting by a column: numbers numerically, text alphabetically; the state lives in the URL hash
// (#sort=COLUMN:asc) so a sorted view can be linked, and the test can ask for one.
const SCRIPT: &str = r#"
(function(){
  var table=document.getElementById('scores'), body=table.tBodies[0], heads=table.tHead.rows[0].cells;
  function key(row,c){var v=row.cells[c].getAttribute('data-v');var n=parseFloat(v);return (v!==''&&!isNaN(n))?n:(v===''?null:v);}
  function sortBy(c,dir){
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,c),y=key(b,c);
      if(x===null&&y===null)return 0; if(x===null)return 1; if(y===null)return -1;
      var r=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
      return dir==='desc'?-r:r;});
    rows.forEach(function(r){body.appendChild(r);});
    for(var i=0;i<heads.length;i++){heads[i].className=(i===c?dir:'');}
    document.body.setAttribute('data-sorted',heads[c].getAttribute('data-col')+':'+dir);
  }
  for(var i=0;i<heads.length;i++){(function(c){heads[c].addEventListener('click',function(){
    var dir=heads[c].className==='asc'?'desc':'asc'; location.hash='sort='+heads[c].getAttribute('data-col')+':'+dir;});})(i);}
  function fromHash(){var m=/sort=(.+):(asc|desc)$/.exec(decodeURIComponent(location.hash));if(!m)return;
    for(var i=0;i<heads.length;i++){if(heads[i].getAttribute('data-col')===m[1]){sortBy(i,m[2]);}}}
  window.addEventListener('hashchange',fromHash); fromHash();
  // How many embedded grids decoded: a check for the browser test, harmless elsewhere.
  window.addEventListener('load',function(){var n=0,imgs=document.images;
    for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)n++;}
    document.body.setAttribute('data-images-ok',n+'/'+imgs.length);});
  document.body.setAttribute('data-ready','1');
})();
"#;

/// The HTML scoreboard; grids are read from `root` (the batch folder) and embedded.
pub fn html(r: &ClassReport, root: &Path) -> Result<String> {
    let cols = metric_columns(r);
    let (p, f, e) = r.counts();
    let mut h = String::new();
    write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gradekit scoreboard</title><style>{STYLE}</style></head><body>\
         <h1>Scoreboard</h1><p id=\"summary\">{} students: {p} passed, {f} failed, {e} with errors. Graders: {}. \
         Intervals are 95% (Wilson for accuracies, bootstrap for FID); a verdict marked \"within noise\" has a baseline inside its interval. \
         Click a column to sort.</p>",
        r.students.len(),
        esc(&r.graders.iter().map(|g| g.name()).collect::<Vec<_>>().join(", "))
    )?;
    h.push_str("<table id=\"scores\"><thead><tr><th data-col=\"student\">student</th><th data-col=\"status\">status</th>");
    for (g, names) in &cols {
        for m in names {
            write!(h, "<th data-col=\"{0}:{1}\">{0}<br>{1}</th>", esc(g), esc(m))?;
        }
        if names.is_empty() {
            write!(h, "<th data-col=\"{0}:status\">{0}</th>", esc(g))?;
        }
    }
    h.push_str("<th data-col=\"seconds\">seconds</th><th data-col=\"problems\">problems</th><th data-col=\"similar_to\">similar to</th></tr></thead><tbody>");
    for s in &r.students {
        let st = s.status.label();
        write!(h, "<tr id=\"student-{0}\"><td data-v=\"{0}\">{0}</td><td data-v=\"{1}\" class=\"{1}\">{1}</td>", esc(&s.id), st)?;
        let mut problems: Vec<String> = s.error.iter().cloned().collect();
        for (g, names) in &cols {
            let gr = s.graders.iter().find(|x| x.grader.name() == g);
            if let Some(gr) = gr {
                if let Some(e) = &gr.error {
                    if s.error.as_deref() != Some(e.as_str()) {
                        problems.push(format!("{g}: {e}"));
                    }
                }
            }
            let img = match gr.and_then(|x| x.grid.as_ref()) {
                Some(rel) => match std::fs::read(root.join(rel)) {
                    Ok(bytes) => format!(
                        "<img alt=\"{} samples of {}\" width=\"160\" src=\"data:image/png;base64,{}\">",
                        esc(g),
                        esc(&s.id),
                        base64::engine::general_purpose::STANDARD.encode(bytes)
                    ),
                    Err(_) => String::new(),
                },
                None => String::new(),
            };
            if names.is_empty() {
                let label = gr.map(|x| x.status.label()).unwrap_or("");
                write!(h, "<td data-v=\"{label}\" class=\"{label}\">{label}{img}</td>")?;
            }
            for (k, name) in names.iter().enumerate() {
                let m = gr.and_then(|x| x.metrics.iter().find(|m| &m.name == name));
                let status = gr.map(|x| x.status).unwrap_or(GradeStatus::Missing);
                match m.and_then(|m| m.value.map(|v| (m, v))) {
                    Some((m, v)) => {
                        let verdict = m.verdict.clone().unwrap_or_default();
                        write!(h, "<td data-v=\"{v}\"><span class=\"{0}\">{1}</span>", esc(&verdict), fmt(v))?;
                        if let (Some(lo), Some(hi)) = (m.lo, m.hi) {
                            write!(h, " <span class=\"ci\">[{}, {}]</span>", fmt(lo), fmt(hi))?;
                        }
                        if !verdict.is_empty() {
                            write!(h, "<br><span class=\"{0}\">{0}</span>", esc(&verdict))?;
                        }
                        if !m.within_noise_of.is_empty() {
                            write!(h, " <span class=\"noise\">within noise of {}</span>", esc(&m.within_noise_of.join(", ")))?;
                        }
                    }
                    None => write!(h, "<td data-v=\"\"><span class=\"{0}\">{0}</span>", status.label())?,
                }
                if k == 0 {
                    h.push_str(&img);
                }
                h.push_str("</td>");
            }
        }
        write!(
            h,
            "<td data-v=\"{0:.1}\">{0:.1}</td><td data-v=\"{1}\" class=\"err\">{2}</td>",
            s.seconds,
            problems.len(),
            esc(&problems.join(" | "))
        )?;
        write!(h, "<td data-v=\"{0}\" class=\"err\">{1}</td></tr>", s.similar_to.len(), esc(&s.similar_to.join(" | ")))?;
    }
    writeln!(h, "</tbody></table><script>{SCRIPT}</script></body></html>")?;
    Ok(h)
}
