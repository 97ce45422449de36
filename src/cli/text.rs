//! The text report for a person at a terminal. Styles are ANSI escapes written through
//! `anstream`, which drops them unless stdout is a terminal and `NO_COLOR` is unset.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use bnfold::printable::{printable, printable_path, Shown};
use bnfold::report::{Direction, Report};
use bnfold::verify::{Status, Verification};
use bnfold::FoldKind;

use crate::cli::style::{paint, BOLD, DIM, GREEN, RED, YELLOW};

/// The whole report of a fold, `--check` or `--dry-run`.
pub fn fold_report(report: &Report, input: &Path, output: Option<&Path>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint(BOLD, format!("bnfold {}", printable_path(input)))
    );
    op_table(report, &mut s);
    if !report.folds.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(BOLD, format!("folded ({}):", report.folds.len()))
        );
        for f in &report.folds {
            if f.direction == Direction::Forward {
                let through: String = f
                    .passthrough
                    .iter()
                    .map(|p| format!(" → {}", Shown(p)))
                    .collect();
                let how = match (&f.shift_kept_as, f.kind) {
                    (Some(add), FoldKind::ConvTranspose) => format!(
                        "forward, the scale only: a transposed convolution does not spread the shift evenly, so it stays as {}", Shown(add)
                    ),
                    (Some(add), _) => format!("forward, the scale only: the Conv pads, so the shift stays as {}", Shown(add)),
                    (None, FoldKind::MatMul) => "forward; the MatMul becomes a Gemm".into(),
                    (None, _) => "forward".into(),
                };
                let _ = writeln!(
                    s,
                    "  BatchNormalization {}{through} → {} {} ({how})",
                    Shown(&f.batch_norm),
                    f.kind.op_type(),
                    Shown(&f.producer)
                );
                continue;
            }
            let through: String = f
                .passthrough
                .iter()
                .map(|p| format!(" ← {}", Shown(p)))
                .collect();
            let then = f
                .followed_by
                .as_ref()
                .map(|o| format!(" (→ {})", Shown(o)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {} {}{through} ← BatchNormalization {}{then}",
                f.kind.op_type(),
                Shown(&f.producer),
                Shown(&f.batch_norm)
            );
        }
    }
    if !report.skips.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(BOLD, format!("left in place ({}):", report.skips.len()))
        );
        for k in &report.skips {
            let _ = writeln!(
                s,
                "  BatchNormalization {}: {} {}",
                Shown(&k.node),
                Shown(&k.message),
                paint(DIM, format!("[{}]", k.reason.code()))
            );
            if let (Some(f), Some(m)) = (&k.forward, &k.forward_message) {
                let _ = writeln!(
                    s,
                    "    not forward either: {} {}",
                    Shown(m),
                    paint(DIM, format!("[{}]", f.code()))
                );
            }
        }
    }
    if !report.decompositions.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(
                BOLD,
                format!("decomposed ({}):", report.decompositions.len())
            )
        );
        for d in &report.decompositions {
            let _ = writeln!(
                s,
                "  BatchNormalization {} → Mul {} → Add {}",
                Shown(&d.node),
                Shown(&d.mul),
                Shown(&d.add)
            );
        }
    }
    if !report.merges.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(BOLD, format!("merged branches ({}):", report.merges.len()))
        );
        for m in &report.merges {
            let branches: Vec<String> = m
                .branches
                .iter()
                .map(|b| printable(b).into_owned())
                .collect();
            let _ = writeln!(
                s,
                "  Conv {} ← {} {}",
                Shown(&m.node),
                branches.join(" + "),
                paint(
                    DIM,
                    format!(
                        "(weight range {:.3} → {:.3})",
                        m.max_abs_before, m.max_abs_after
                    )
                )
            );
        }
    }
    if !report.equalizations.is_empty() {
        let absorption = report.absorption_check.as_ref();
        crate::cli::text_readiness::equalizations(&report.equalizations, absorption, &mut s);
    }
    crate::cli::text_readiness::initializers(&report.initializers_from_constants, &mut s);
    if !report.non_foldable_normalizations.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(BOLD, "not foldable (statistics depend on the input):")
        );
        for n in &report.non_foldable_normalizations {
            let _ = writeln!(s, "  {} {}", Shown(&n.op_type), Shown(&n.node));
        }
    }
    if let Some(r) = &report.readiness {
        crate::cli::text_readiness::readiness(r, &mut s);
    }
    if let Some(v) = &report.verification {
        let _ = writeln!(s);
        verification(v, &mut s);
    }
    match output {
        Some(o) => {
            let _ = writeln!(s, "\nwrote {}", printable_path(o));
        }
        None => {
            let _ = writeln!(s, "\nno model written");
        }
    }
    s
}

/// The before/after op counts, changed rows marked.
fn op_table(report: &Report, s: &mut String) {
    let ops: BTreeSet<&String> = report
        .ops_before
        .keys()
        .chain(report.ops_after.keys())
        .collect();
    let width = ops
        .iter()
        .map(|o| printable(o).len())
        .max()
        .unwrap_or(2)
        .max(2);
    let header = format!("{:<width$}  {:>6}  {:>6}", "op", "before", "after");
    let _ = writeln!(s, "\n  {}", paint(BOLD, header));
    for op in ops {
        let before = report.ops_before.get(op).copied().unwrap_or(0);
        let after = report.ops_after.get(op).copied().unwrap_or(0);
        let row = format!("{:<width$}  {before:>6}  {after:>6}", Shown(op));
        if before != after {
            let _ = writeln!(s, "  {}", paint(BOLD, row + " *"));
        } else {
            let _ = writeln!(s, "  {row}");
        }
    }
}

/// The verification section: status, then per graph output the figures and the tolerance.
pub fn verification(v: &Verification, s: &mut String) {
    let colour = match v.status {
        Status::Passed => GREEN,
        Status::Failed => RED,
        Status::NotVerified => YELLOW,
    };
    let status = paint(colour, v.status.words());
    let plural = if v.samples == 1 { "" } else { "s" };
    let _ = writeln!(
        s,
        "{} {status} ({} sample{plural}, seed {})",
        paint(BOLD, "verification:"),
        v.samples,
        v.seed
    );
    if let Some(r) = &v.reason {
        let _ = writeln!(s, "  {}", Shown(r));
    }
    certificates(v, s);
    regions(v, s);
    if !v.divergences.is_empty() {
        let passed = v
            .divergences
            .iter()
            .filter(|d| d.status == Status::Passed)
            .count();
        let _ = writeln!(
            s,
            "  outside the folds: {} differing region{} run alone on the original's values, {passed} within tolerance",
            v.divergences.len(),
            if v.divergences.len() == 1 { "" } else { "s" },
        );
    }
    if let Some(d) = &v.structure_difference {
        let _ = writeln!(
            s,
            "  outside the folds: {} (the local proof is incomplete)",
            Shown(d)
        );
    }
    let graph_outputs: Vec<_> = v.outputs.iter().filter(|o| o.graph_output).collect();
    let chains = v.outputs.len() - graph_outputs.len();
    if !graph_outputs.is_empty() {
        let width = graph_outputs
            .iter()
            .map(|o| printable(&o.name).len())
            .max()
            .unwrap_or(6)
            .max(6);
        let header = format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>10}",
            "output", "max abs", "max rel", "normalized", "tolerance"
        );
        let _ = writeln!(s, "  {}", paint(BOLD, header));
        for o in graph_outputs {
            let _ = writeln!(
                s,
                "  {:<width$}  {:>10.3e}  {:>10.3e}  {:>10.3e}  {:>10.3e}{}",
                Shown(&o.name),
                o.max_abs_error,
                o.max_rel_error,
                o.normalized_error,
                o.atol,
                if o.passed {
                    String::new()
                } else {
                    format!("  {}", paint(RED, "FAIL"))
                }
            );
        }
    }
    if chains > 0 {
        let worst = v
            .outputs
            .iter()
            .filter(|o| !o.graph_output)
            .map(|o| o.normalized_error)
            .fold(0.0, f64::max);
        let failing: Vec<String> = v
            .outputs
            .iter()
            .filter(|o| !o.graph_output && !o.passed)
            .map(|o| printable(&o.name).into_owned())
            .collect();
        let _ = writeln!(
            s,
            "  folded chain outputs: {chains} compared, worst normalized error {worst:.3e}, {} beyond tolerance{}",
            failing.len(),
            if failing.is_empty() {
                String::new()
            } else {
                format!(" ({})", failing.join(", "))
            }
        );
    }
    if !v.guessed_dims.is_empty() {
        let _ = writeln!(s, "  guessed dims: {}", Shown(&v.guessed_dims.join(", ")));
    }
}

/// One line on the exact certificates: how many nodes, their worst element, and any that could
/// not be certified.
fn certificates(v: &Verification, s: &mut String) {
    if v.certificates.is_empty() {
        return;
    }
    let proven: Vec<_> = v
        .certificates
        .iter()
        .filter(|c| c.unproven.is_none())
        .collect();
    let worst = proven
        .iter()
        .flat_map(|c| &c.tensors)
        .map(|t| t.max_ulps)
        .fold(0.0, f64::max);
    let failing: Vec<_> = proven.iter().filter(|c| !c.passed()).collect();
    let float = match failing.iter().all(|c| c.within_float_arithmetic()) {
        true if !failing.is_empty() => " (all within float arithmetic of it)",
        _ => "",
    };
    let _ = write!(
        s,
        "  certificate: {} folded node{}, worst element {worst:.2} ulps from the formula, {} beyond half an ulp{float}",
        proven.len(),
        if proven.len() == 1 { "" } else { "s" },
        failing.len(),
    );
    let unproven: Vec<(&str, &str)> = v
        .certificates
        .iter()
        .filter_map(|c| c.unproven.as_deref().map(|why| (c.node.as_str(), why)))
        .collect();
    end_with_left_out(s, "not certified", &unproven);
}

/// Ends a summary line with how many were left out and why the first was, if any were.
fn end_with_left_out(s: &mut String, what: &str, left_out: &[(&str, &str)]) {
    match left_out.first() {
        Some((node, why)) => {
            let _ = writeln!(
                s,
                "; {} {what} ({}: {})",
                left_out.len(),
                Shown(node),
                Shown(why)
            );
        }
        None => {
            let _ = writeln!(s);
        }
    }
}

/// One line on the folds run alone: how many, the worst error, and any that could not run.
fn regions(v: &Verification, s: &mut String) {
    if v.regions.is_empty() {
        return;
    }
    let ran: Vec<_> = v.regions.iter().filter_map(|r| r.check.as_ref()).collect();
    let failing = v
        .regions
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    // The region nearest its bound: its error against the exact value, in units of rounding.
    let closest = v
        .regions
        .iter()
        .filter_map(|r| r.exact.as_ref())
        .max_by(|a, b| {
            (a.fused_error_units / a.bound_units).total_cmp(&(b.fused_error_units / b.bound_units))
        });
    let worst = match closest {
        Some(e) => format!(
            "worst {:.1} units of rounding from the exact value (bound {:.1})",
            e.fused_error_units, e.bound_units
        ),
        None => format!(
            "worst normalized error {:.3e}",
            ran.iter().map(|c| c.normalized_error).fold(0.0, f64::max)
        ),
    };
    let _ = write!(
        s,
        "  regions: {} fold{} run alone, {worst}, {failing} beyond the bound",
        ran.len(),
        if ran.len() == 1 { "" } else { "s" },
    );
    let not_run: Vec<(&str, &str)> = v
        .regions
        .iter()
        .filter(|r| r.status == Status::NotVerified)
        .map(|r| (r.node.as_str(), r.reason.as_deref().unwrap_or_default()))
        .collect();
    end_with_left_out(s, "not run", &not_run);
}
