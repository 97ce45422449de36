//! `bnfold inspect MODEL`: every normalization and how it folds, and the readiness report.

use std::path::Path;

use crate::{load, ExitStatus};

use anyhow::Context;

use crate::args::OutputArgs;
use crate::report::{claim_report, commit_report, print, stage_report};
use bnfold::output::WritePlan;
use bnfold::report::SCHEMA_VERSION;
use bnfold::{fold, FoldOptions};

pub(crate) fn run_inspect(
    path: &Path,
    inputs_are_constants: bool,
    output: &OutputArgs,
) -> anyhow::Result<ExitStatus> {
    let mut folded = load(path)?;
    let mut plan = WritePlan::new(output.force);
    plan.protect(&folded.input_files);
    claim_report(&mut plan, output)?;
    // Of the original, readiness needs only the BatchNormalization statistics.
    let batch_norms =
        bnfold::readiness::batch_norms(&folded).with_context(|| format!("{}", path.display()))?;
    let options = FoldOptions {
        inputs_are_constants,
        ..FoldOptions::default()
    };
    let report = fold(&mut folded, &options).with_context(|| format!("{}", path.display()))?;
    let readiness = bnfold::readiness::measure(&folded, batch_norms)
        .with_context(|| format!("{}", path.display()))?;
    let normalizations: Vec<serde_json::Value> = report
        .folds
        .iter()
        .map(|f| {
            serde_json::json!({
                "graph": f.graph, "node": f.batch_norm, "op_type": "BatchNormalization",
                "foldable": true,
                "how": match f.direction {
                    bnfold::report::Direction::Backward => format!("into {} {}", f.kind.op_type(), f.producer),
                    bnfold::report::Direction::Forward => format!("forward into {} {}", f.kind.op_type(), f.producer),
                },
            })
        })
        .chain(report.skips.iter().map(|k| {
            serde_json::json!({
                "graph": k.graph, "node": k.node, "op_type": "BatchNormalization",
                "foldable": false, "reason": k.reason.code(), "how": k.message,
            })
        }))
        .chain(report.non_foldable_normalizations.iter().map(|n| {
            serde_json::json!({
                "graph": n.graph, "node": n.node, "op_type": n.op_type,
                "foldable": false, "reason": "input_statistics",
                "how": "its statistics are computed from the input at run time",
            })
        }))
        .collect();
    let json = || {
        serde_json::json!({
            "schema": SCHEMA_VERSION,
            "input": path.display().to_string(),
            "normalizations": normalizations,
            "quantization_readiness": readiness,
        })
    };
    let (pretty, staged_report) = stage_report(output, json, false)?;
    commit_report(staged_report)?;
    print(output, &pretty, || {
        crate::text_readiness::inspect(path, &normalizations, &readiness)
    })?;
    Ok(ExitStatus::Success)
}
