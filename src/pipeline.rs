//! A whole run on a model held in memory, as the command line runs it on files: the fold, the
//! readiness figures of the folded weights, and verification of the fused model against the
//! original. The command line shares the decisions ([`plan_verification`],
//! [`compared_tensors`]); it differs only in verifying the files it wrote.

use crate::readiness::{self, Readiness};
use crate::report::Report;
use crate::verify::{self, Verification, VerifyOptions};
use crate::{FoldOptions, Model, Result};

/// What a run does besides folding.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// How to fold.
    pub fold: FoldOptions,
    /// Whether to measure the quantization readiness of the folded weights.
    pub readiness: bool,
    /// How to verify the fused model against the original; none skips verification.
    pub verify: Option<VerifyOptions>,
}

/// Whether verification of a model's fold can run, decided before folding.
#[derive(Clone, Debug)]
pub struct VerificationPlan {
    /// Why the whole model is too large to run, if it is.
    pub too_large: Option<String>,
    /// Whether anything runs: the whole model, or (above the node limit, when the model has a
    /// BatchNormalization) the folds' certificates and regions, which need the original.
    pub runs: bool,
}

/// Decides whether verifying `model`'s fold runs (see [`VerificationPlan`]).
pub fn plan_verification(model: &Model) -> VerificationPlan {
    let has_batch_norm = model
        .proto
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.op_type() == "BatchNormalization"));
    let too_large = verify::too_large_to_run(model);
    VerificationPlan {
        runs: too_large.is_none() || has_batch_norm,
        too_large,
    }
}

/// The tensors verification compares besides the outputs: each main-graph fold's output, once
/// (a layer that took a chain forward and one backward is the output of both folds).
pub fn compared_tensors(report: &Report) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    report
        .folds
        .iter()
        .filter(|f| f.graph == "main" && seen.insert(f.output.as_str()))
        .map(|f| f.output.clone())
        .collect()
}

/// Folds `model`, measures the readiness and verifies, as [`RunOptions`] asks; returns the
/// fused model and the report (whose `verification` says whether it passed: a failed
/// verification is a report, not an error).
pub fn run(model: Model, options: &RunOptions) -> Result<(Model, Report)> {
    let batch_norms = match options.readiness {
        true => Some(readiness::batch_norms(&model)?),
        false => None,
    };
    let plan = options.verify.as_ref().map(|_| plan_verification(&model));
    let original = match plan.as_ref().is_some_and(|p| p.runs) {
        true => Some(model.clone()),
        false => None,
    };
    let mut fused = model;
    let mut report = crate::fold(&mut fused, &options.fold)?;
    // High-bias absorption on a copy: the exact model is proven, the absorbed one measured.
    let exact = match report.absorption.is_empty() {
        true => None,
        false => {
            let exact = fused.clone();
            crate::absorb(&mut fused, &mut report, None)?;
            Some(exact)
        }
    };
    if let Some(batch_norms) = batch_norms {
        let mut measured = readiness::measure(&fused, batch_norms)?;
        measured.after_equalization(&report.equalized_layers());
        report.readiness = Some(measured);
    }
    if let (Some(plan), Some(verify_options)) = (plan, &options.verify) {
        let proven = exact.as_ref().unwrap_or(&fused);
        report.verification = Some(match &original {
            Some(original) => {
                crate::verify(original, proven, &compared_tensors(&report), verify_options)?
            }
            None => Verification::not_run(plan.too_large.unwrap_or_default(), verify_options.seed),
        });
        if let (Some(exact), Some(_)) = (&exact, &original) {
            crate::absorption::check(exact, &fused, &mut report, verify_options)?;
        }
    }
    Ok((fused, report))
}

/// The readiness of `model` as `inspect` reports it: folded (with `fold` options), the folded
/// weights measured; returns the report of the fold and the readiness.
pub fn inspect(mut model: Model, fold: &FoldOptions) -> Result<(Report, Readiness)> {
    let batch_norms = readiness::batch_norms(&model)?;
    let report = crate::fold(&mut model, fold)?;
    let readiness = readiness::measure(&model, batch_norms)?;
    Ok((report, readiness))
}
