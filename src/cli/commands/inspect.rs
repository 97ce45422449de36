//! `bnfold inspect MODEL`: every normalization and how it folds, and the readiness report.

use std::path::Path;

use crate::cli::{load, ExitStatus};

use anyhow::Context;

use crate::cli::args::OutputArgs;
use crate::cli::report::{claim_report, commit_report, print, stage_report};
use bnfold::output::WritePlan;
use bnfold::FoldOptions;

pub(crate) fn run_inspect(
    path: &Path,
    inputs_are_constants: bool,
    output: &OutputArgs,
) -> anyhow::Result<ExitStatus> {
    let model = load(path)?;
    let mut plan = WritePlan::new(output.force);
    plan.protect(&model.input_files);
    claim_report(&mut plan, output)?;
    let options = FoldOptions {
        inputs_are_constants,
        ..FoldOptions::default()
    };
    let (report, readiness) = bnfold::pipeline::inspect(model, &options)
        .with_context(|| format!("{}", path.display()))?;
    let normalizations = bnfold::report::json::NormalizationEntry::all(&report);
    let json =
        || bnfold::report::json::inspect(&path.display().to_string(), &normalizations, &readiness);
    let html =
        || bnfold::report::html::inspect(&path.display().to_string(), &normalizations, &readiness);
    let (pretty, staged_report) = stage_report(output, json, html, false)?;
    commit_report(staged_report)?;
    print(output, &pretty, || {
        crate::cli::text_readiness::inspect(path, &normalizations, &readiness)
    })?;
    Ok(ExitStatus::Success)
}
