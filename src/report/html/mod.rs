//! The report as one self-contained HTML page (`--report-html`, `bnfold inspect --html`): the op
//! counts before and after, the folds and what stayed, per-layer INT8 SQNR bars, per-channel
//! weight ranges of the worst layers, the readiness warnings and the verification's figures.
//! Inline CSS and SVG only: no script, no font, no request to any server.

use std::fmt::Write as _;

use crate::readiness::Readiness;
use crate::report::json::NormalizationEntry;
use crate::report::{Direction, Report};
use crate::verify::Verification;

mod plots;

/// Layers whose channel ranges are drawn: the worst by per-tensor SQNR.
const RANGE_PLOTS: usize = 4;
/// Equalized pairs whose ranges are drawn before and after: the largest gains of the worst
/// channel.
const EQUALIZATION_PLOTS: usize = 4;

/// The page of a fold (`input` as given, `output` the model written, if one was).
pub fn fold(report: &Report, input: &str, output: Option<&str>) -> String {
    let mut page = Page::new(&format!("bnfold {input}"));
    let written = match output {
        Some(o) => format!("wrote {}", escape(o)),
        None => "no model written".to_string(),
    };
    page.para(&written);
    page.section("Operators");
    page.op_table(report);
    // What a reader looks for first: whether it is proven, and how it will quantize.
    if let Some(v) = &report.verification {
        page.verification(v);
    }
    if let Some(r) = &report.readiness {
        page.readiness(r);
    }
    if !report.equalizations.is_empty() {
        page.equalizations(&report.equalizations, report.absorption_check.as_ref());
    }
    page.section(&format!("Folded ({})", report.folds.len()));
    let folds: Vec<Vec<String>> = report
        .folds
        .iter()
        .map(|f| {
            let direction = match f.direction {
                Direction::Backward => "backward",
                Direction::Forward => "forward",
            };
            vec![
                escape(f.kind.op_type()),
                escape(&f.producer),
                escape(&f.batch_norm),
                direction.to_string(),
                format!("{:.3e}", f.max_rel_weight_change),
            ]
        })
        .collect();
    page.table(
        &["layer", "node", "chain end", "direction", "max |s − 1|"],
        &folds,
    );
    if !report.skips.is_empty() {
        page.section(&format!("Left in place ({})", report.skips.len()));
        let skips: Vec<Vec<String>> = report
            .skips
            .iter()
            .map(|s| {
                vec![
                    escape(&s.node),
                    escape(&s.reason.code()),
                    escape(&s.message),
                ]
            })
            .collect();
        page.table(&["node", "reason", "why"], &skips);
    }
    page.finish()
}

/// The page of `inspect`: the readiness of `input` as it would fold.
pub fn inspect(
    input: &str,
    normalizations: &[NormalizationEntry],
    readiness: &Readiness,
) -> String {
    let mut page = Page::new(&format!("bnfold inspect {input}"));
    page.section(&format!("Normalizations ({})", normalizations.len()));
    let rows: Vec<Vec<String>> = normalizations
        .iter()
        .map(|n| {
            vec![
                escape(&n.op_type),
                escape(&n.node),
                if n.foldable { "folds" } else { "stays" }.to_string(),
                escape(&n.how),
            ]
        })
        .collect();
    page.table(&["op", "node", "", "how"], &rows);
    page.readiness(readiness);
    page.finish()
}

/// The page of `verify`: two models compared.
pub fn verify(original: &str, candidate: &str, verification: &Verification) -> String {
    let mut page = Page::new(&format!("bnfold verify {original} {candidate}"));
    page.verification(verification);
    page.finish()
}

/// `text` with `&`, `<`, `>` and quotes escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:72em;\
color:#222}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee;\
font-variant-numeric:tabular-nums}th{background:#f6f6f6}.changed{font-weight:bold}\
.warn{color:#8a5a00}.fail{color:#b00020}.pass{color:#1b6e20}svg text{font:11px system-ui,sans-serif}";

struct Page {
    html: String,
}

impl Page {
    fn new(title: &str) -> Page {
        let title = escape(title);
        let mut html = String::new();
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
        );
        Page { html }
    }

    fn finish(mut self) -> String {
        self.html.push_str("</body></html>\n");
        self.html
    }

    fn section(&mut self, title: &str) {
        let _ = writeln!(self.html, "<h2>{}</h2>", escape(title));
    }

    fn para(&mut self, html: &str) {
        let _ = writeln!(self.html, "<p>{html}</p>");
    }

    /// A table of cells already escaped.
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.html.push_str("<table><tr>");
        for h in header {
            let _ = write!(self.html, "<th>{}</th>", escape(h));
        }
        self.html.push_str("</tr>\n");
        for row in rows {
            self.html.push_str("<tr>");
            for cell in row {
                let _ = write!(self.html, "<td>{cell}</td>");
            }
            self.html.push_str("</tr>\n");
        }
        self.html.push_str("</table>\n");
    }

    fn op_table(&mut self, report: &Report) {
        let mut ops: Vec<&String> = report
            .ops_before
            .keys()
            .chain(report.ops_after.keys())
            .collect();
        ops.sort();
        ops.dedup();
        let rows: Vec<Vec<String>> = ops
            .iter()
            .map(|op| {
                let before = report.ops_before.get(*op).copied().unwrap_or(0);
                let after = report.ops_after.get(*op).copied().unwrap_or(0);
                let mark = |n: usize| match before != after {
                    true => format!("<span class=\"changed\">{n}</span>"),
                    false => n.to_string(),
                };
                vec![escape(op), before.to_string(), mark(after)]
            })
            .collect();
        self.table(&["op", "before", "after"], &rows);
    }

    fn readiness(&mut self, r: &Readiness) {
        self.section("INT8 readiness (weights as folded)");
        for w in &r.warnings {
            let _ = writeln!(self.html, "<p class=\"warn\">⚠ {}</p>", escape(&w.message));
        }
        if !r.layers.is_empty() {
            self.para("Symmetric INT8 SQNR per layer: the bar per tensor, the mark per channel.");
            self.sqnr_bars(&r.layers);
            for layer in r.worst(RANGE_PLOTS) {
                self.range_plot(layer);
            }
        }
        if !r.batch_norms.is_empty() {
            let rows: Vec<Vec<String>> = r
                .batch_norms
                .iter()
                .filter(|b| b.dead_channels + b.tiny_variance_channels > 0)
                .map(|b| {
                    vec![
                        escape(&b.node),
                        b.channels.to_string(),
                        b.dead_channels.to_string(),
                        b.tiny_variance_channels.to_string(),
                        format!("{:.3e}", b.max_amplification),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                let header = [
                    "BatchNormalization",
                    "channels",
                    "dead",
                    "variance < ε",
                    "max gain",
                ];
                self.table(&header, &rows);
            }
        }
    }

    fn verification(&mut self, v: &Verification) {
        self.section("Verification");
        let class = match v.status {
            crate::verify::Status::Passed => "pass",
            crate::verify::Status::Failed => "fail",
            crate::verify::Status::NotVerified => "warn",
        };
        let status = v.status.words();
        let reason = v.reason.as_deref().map(escape).unwrap_or_default();
        let _ = writeln!(
            self.html,
            "<p class=\"{class}\"><b>{status}</b> ({} samples, seed {}) {reason}</p>",
            v.samples, v.seed
        );
        let rows: Vec<Vec<String>> = v
            .outputs
            .iter()
            .map(|o| {
                let mark = match o.passed {
                    true => "<span class=\"pass\">ok</span>",
                    false => "<span class=\"fail\">beyond</span>",
                };
                vec![
                    escape(&o.name),
                    format!("{:.3e}", o.max_abs_error),
                    format!("{:.3e}", o.max_rel_error),
                    format!("{:.3e}", o.normalized_error),
                    format!("{:.3e}", o.atol),
                    mark.to_string(),
                ]
            })
            .collect();
        let header = [
            "tensor",
            "max abs",
            "max rel",
            "normalized",
            "tolerance",
            "",
        ];
        self.table(&header, &rows);
    }
}

fn truncate(text: &str, chars: usize) -> String {
    match text.chars().count() > chars {
        true => {
            let tail: String = text.chars().rev().take(chars - 1).collect();
            format!("…{}", tail.chars().rev().collect::<String>())
        }
        false => text.to_string(),
    }
}
