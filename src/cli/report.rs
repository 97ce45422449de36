//! The JSON report: built, staged beside its target and committed with the model, printed.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::cli::args::{OutputArgs, ReportFormat};
use bnfold::model::StagedFile;
use bnfold::output::WritePlan;
use bnfold::report::Report;

pub(crate) fn json_report(
    report: &Report,
    input: &Path,
    output: Option<&Path>,
) -> serde_json::Value {
    let output = output.map(|o| o.display().to_string());
    bnfold::report::json::fold(report, &input.display().to_string(), output.as_deref())
}

/// Claims the report files in the run's plan, before anything is written.
pub(crate) fn claim_report(plan: &mut WritePlan, args: &OutputArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.report_file {
        plan.claim(path)
            .with_context(|| format!("--report-file {}", path.display()))?;
    }
    if let Some(path) = &args.report_html {
        plan.claim(path)
            .with_context(|| format!("--report-html {}", path.display()))?;
    }
    Ok(())
}

/// The JSON report (built only if it goes somewhere), and the report files (JSON, HTML) staged
/// under temporary names beside their targets.
pub(crate) fn stage_report(
    args: &OutputArgs,
    json: impl FnOnce() -> serde_json::Value,
    html: impl FnOnce() -> String,
    sync: bool,
) -> anyhow::Result<(String, Vec<StagedFile>)> {
    let wants_json = args.report_file.is_some() || matches!(args.report, ReportFormat::Json);
    let pretty = match wants_json {
        true => serde_json::to_string_pretty(&json())? + "\n",
        false => String::new(),
    };
    let mut staged = Vec::new();
    if let Some(path) = &args.report_file {
        staged.push(
            StagedFile::write(path, pretty.as_bytes(), sync)
                .with_context(|| format!("--report-file {}", path.display()))?,
        );
    }
    if let Some(path) = &args.report_html {
        staged.push(
            StagedFile::write(path, html().as_bytes(), sync)
                .with_context(|| format!("--report-html {}", path.display()))?,
        );
    }
    Ok((pretty, staged))
}

pub(crate) fn commit_report(staged: Vec<StagedFile>) -> anyhow::Result<()> {
    for file in staged {
        file.commit()?;
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
