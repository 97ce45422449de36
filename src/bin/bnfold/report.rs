//! The JSON report: built, staged beside its target and committed with the model, printed.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::args::{OutputArgs, ReportFormat};
use bnfold::model::StagedFile;
use bnfold::output::WritePlan;
use bnfold::report::{Report, SCHEMA_VERSION};

pub(crate) fn json_report(
    report: &Report,
    input: &Path,
    output: Option<&Path>,
) -> serde_json::Value {
    let skips: Vec<serde_json::Value> = report
        .skips
        .iter()
        .map(|s| {
            serde_json::json!({
                "graph": s.graph,
                "node": s.node,
                "reason": s.reason.code(),
                "details": s.reason,
                "message": s.message,
                "forward_reason": s.forward.as_ref().map(|f| f.code()),
                "forward_message": s.forward_message,
            })
        })
        .collect();
    let mut json = serde_json::json!({
        "schema": SCHEMA_VERSION,
        "input": input.display().to_string(),
        "output": output.map(|o| o.display().to_string()),
        "ops_before": report.ops_before,
        "ops_after": report.ops_after,
        "folds": report.folds,
        "skips": skips,
        "non_foldable_normalizations": report.non_foldable_normalizations,
        "decompositions": report.decompositions,
        "verification": report.verification,
        "quantization_readiness": report.readiness,
    });
    // Present only when --merge-branches merged something: every other report stays as it was.
    if !report.merges.is_empty() {
        json["merges"] = serde_json::json!(report.merges);
    }
    json
}

/// Claims the report file in the run's plan, before anything is written.
pub(crate) fn claim_report(plan: &mut WritePlan, args: &OutputArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.report_file {
        plan.claim(path)
            .with_context(|| format!("--report-file {}", path.display()))?;
    }
    Ok(())
}

/// The JSON report (built only if it goes somewhere), and the report file staged under a
/// temporary name beside its target.
pub(crate) fn stage_report(
    args: &OutputArgs,
    json: impl FnOnce() -> serde_json::Value,
    sync: bool,
) -> anyhow::Result<(String, Option<StagedFile>)> {
    let wants_json = args.report_file.is_some() || matches!(args.report, ReportFormat::Json);
    let pretty = match wants_json {
        true => serde_json::to_string_pretty(&json())? + "\n",
        false => String::new(),
    };
    let staged = match &args.report_file {
        Some(path) => Some(
            StagedFile::write(path, pretty.as_bytes(), sync)
                .with_context(|| format!("--report-file {}", path.display()))?,
        ),
        None => None,
    };
    Ok((pretty, staged))
}

pub(crate) fn commit_report(staged: Option<StagedFile>) -> anyhow::Result<()> {
    if let Some(staged) = staged {
        staged.commit()?;
    }
    Ok(())
}

/// Prints the report on stdout in the format asked for.
pub(crate) fn print(
    args: &OutputArgs,
    pretty: &str,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match args.report {
        ReportFormat::Json => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(pretty.as_bytes())?;
            stdout.flush()?;
        }
        ReportFormat::Text if !args.quiet => {
            let mut stdout = anstream::stdout().lock();
            stdout.write_all(text().as_bytes())?;
            stdout.flush()?;
        }
        ReportFormat::Text => {}
    }
    Ok(())
}
