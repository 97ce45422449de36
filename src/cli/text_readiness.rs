//! The text report's quantization-readiness part, for `bnfold` and `bnfold inspect`.

use std::fmt::Write as _;
use std::path::Path;

use bnfold::printable::{printable, printable_path, Shown};
use bnfold::readiness::Readiness;
use bnfold::report::json::NormalizationEntry;

use crate::cli::style::{paint, BOLD, GREEN, YELLOW};

/// The quantization-readiness summary and the five worst layers.
pub fn readiness(r: &Readiness, s: &mut String) {
    if r.layers.is_empty() && r.batch_norms.is_empty() && r.warnings.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n{}",
        paint(BOLD, "INT8 readiness (weights as folded):")
    );
    let mut tensor_db: Vec<f64> = r
        .layers
        .iter()
        .filter_map(|l| l.sqnr_per_tensor_db)
        .collect();
    tensor_db.sort_by(f64::total_cmp);
    let starved: usize = r.layers.iter().map(|l| l.starved_channels).sum();
    let channels: usize = r.layers.iter().map(|l| l.channels).sum();
    if let (Some(worst), Some(median)) = (tensor_db.first(), tensor_db.get(tensor_db.len() / 2)) {
        let _ = writeln!(
            s,
            "  {} layer{}; per-tensor SQNR worst {worst:.1} dB, median {median:.1} dB; {starved} of {channels} channels under 4 effective bits",
            r.layers.len(),
            if r.layers.len() == 1 { "" } else { "s" }
        );
    }
    let dead: usize = r.batch_norms.iter().map(|b| b.dead_channels).sum();
    let tiny: usize = r.batch_norms.iter().map(|b| b.tiny_variance_channels).sum();
    let amplification = r
        .batch_norms
        .iter()
        .map(|b| b.max_amplification)
        .fold(0.0, f64::max);
    if !r.batch_norms.is_empty() {
        let _ = writeln!(
            s,
            "  BatchNormalization: {dead} dead channels, {tiny} with running variance below epsilon, largest amplification {amplification:.3e}"
        );
    }
    let worst = r.worst(5);
    if !worst.is_empty() {
        layer_table(&worst, s);
    }
    for w in &r.warnings {
        let _ = writeln!(s, "  {} {}", paint(YELLOW, "warning:"), Shown(&w.message));
    }
}

/// The worst layers, one line each.
fn layer_table(worst: &[&bnfold::readiness::LayerReadiness], s: &mut String) {
    let db = |v: Option<f64>, non_finite: usize| match (v, non_finite) {
        (_, 1..) => "NaN/inf".to_string(),
        (None, _) => "exact".to_string(),
        (Some(d), _) => format!("{d:.1} dB"),
    };
    let width = worst
        .iter()
        .map(|l| printable(&l.node).len())
        .max()
        .unwrap_or(5)
        .max(5);
    let header = format!(
        "{:<width$}  {:>10}  {:>11}  {:>8}  {:>8}",
        "layer", "per-tensor", "per-channel", "spread", "starved"
    );
    let _ = writeln!(s, "  {}", paint(BOLD, header));
    for l in worst {
        let _ = writeln!(
            s,
            "  {:<width$}  {:>10}  {:>11}  {:>8.1}  {:>4}/{}",
            Shown(&l.node),
            db(l.sqnr_per_tensor_db, l.non_finite_elements),
            db(l.sqnr_per_channel_db, l.non_finite_elements),
            l.range_spread,
            l.starved_channels,
            l.channels
        );
    }
}

/// The `inspect` report: each normalization node and how it folds, then the readiness.
pub fn inspect(path: &Path, normalizations: &[NormalizationEntry], r: &Readiness) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint(BOLD, format!("bnfold inspect {}", printable_path(path)))
    );
    if normalizations.is_empty() {
        let _ = writeln!(s, "\nno normalization nodes");
    } else {
        let _ = writeln!(s, "\n{}", paint(BOLD, "normalization nodes:"));
        for n in normalizations {
            let mark = if n.foldable {
                paint(GREEN, "folds")
            } else {
                paint(YELLOW, "stays:")
            };
            let _ = writeln!(
                s,
                "  {} {}: {mark} {}",
                Shown(&n.op_type),
                Shown(&n.node),
                Shown(&n.how)
            );
        }
    }
    readiness(r, &mut s);
    s
}

/// The pairs `--equalize` balanced, with the first weight's worst channel before and after, and
/// what high-bias absorption changed, if it ran.
pub fn equalizations(
    pairs: &[bnfold::report::EqualizationRecord],
    absorption: Option<&bnfold::report::AbsorptionCheck>,
    s: &mut String,
) {
    let title = format!("equalized ({}):", pairs.len());
    let _ = writeln!(s, "\n{}", paint(BOLD, title));
    for e in pairs {
        let between = e
            .activation
            .as_deref()
            .map(|a| format!(" → {a}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {} {}{between} → {} {}: worst channel {:.1} → {:.1} dB per tensor",
            Shown(&e.first_op_type),
            Shown(&e.first),
            Shown(&e.second_op_type),
            Shown(&e.second),
            e.worst_channel_before_db,
            e.worst_channel_after_db
        );
        if let Some(a) = &e.absorption {
            let change = a
                .float_change
                .map_or("not measured".into(), |c| format!("float change {c:.1e}"));
            let _ = writeln!(
                s,
                "    high bias absorbed from {} channels (largest shift {:.3}): {change} at {}",
                a.channels,
                a.largest_shift,
                Shown(&e.second)
            );
        }
    }
    if let Some(check) = absorption {
        self::absorption(check, s);
    }
}

/// High-bias absorption: the pairs, the change at the outputs, and whether nothing else changed.
fn absorption(check: &bnfold::report::AbsorptionCheck, s: &mut String) {
    let change = check
        .output_change
        .map_or("not measured".into(), |c| format!("{c:.1e}"));
    let title = paint(BOLD, format!("high bias absorbed ({} pairs):", check.pairs));
    let _ = writeln!(
        s,
        "\n{title}\n  float change at the outputs {change}, against the exact model ({})",
        check.reason.as_deref().map_or_else(
            || check.status.words().to_string(),
            |r| format!("{}: {}", check.status.words(), Shown(r))
        )
    );
}

/// The weights stored as initializers instead of `Constant` nodes: how many, and the first.
pub fn initializers(stored: &[bnfold::report::InitializerRecord], s: &mut String) {
    let Some(first) = stored.first() else {
        return;
    };
    let more = match stored.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    let line = format!("{} ({}){more}", Shown(&first.tensor), Shown(&first.op_type));
    let title = paint(BOLD, format!("weights as initializers ({}):", stored.len()));
    let _ = writeln!(s, "\n{title}\n  {line}");
}
