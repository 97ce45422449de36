//! `bnfold verify A B`: any two models compared.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::cli::progress::Progress;
use crate::cli::{load, text, ExitStatus};

use crate::cli::args::{verify_options, OutputArgs, VerifyArgs};
use crate::cli::report::{claim_report, commit_report, print, stage_report};
use bnfold::output::WritePlan;
use bnfold::printable::Shown;
use bnfold::verify;
use bnfold::verify::{SampleHook, Status};

pub(crate) fn run_verify(
    original: &Path,
    candidate: &Path,
    check: &VerifyArgs,
    output: &OutputArgs,
    float_folds: bool,
) -> anyhow::Result<ExitStatus> {
    let mut options = verify_options(check)?;
    options.float_folds = float_folds;
    let progress = Progress::start(!output.quiet);
    progress.stage("loading");
    let a = load(original)?;
    let b = load(candidate)?;
    let mut plan = WritePlan::new(output.force);
    plan.protect(&a.input_files).protect(&b.input_files);
    claim_report(&mut plan, output)?;
    progress.stage("verifying");
    options.on_sample = Some(SampleHook(Arc::new(progress.counter())));
    let started = Instant::now();
    let v = verify(&a, &b, &[], &options)?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let json = || {
        let (original, candidate) = (original.display(), candidate.display());
        bnfold::report::json::verify(&original.to_string(), &candidate.to_string(), &v)
    };
    let html = || {
        let (original, candidate) = (original.display(), candidate.display());
        bnfold::report::html::verify(&original.to_string(), &candidate.to_string(), &v)
    };
    let (pretty, staged_report) = stage_report(output, json, html, false)?;
    commit_report(staged_report)?;
    print(output, &pretty, || {
        let mut s = String::new();
        text::verification(&v, &mut s);
        if output.verbose {
            s += &format!("time: verify {seconds:.3} s\n");
        }
        s
    })?;
    Ok(match v.status {
        Status::Passed => ExitStatus::Success,
        Status::Failed => {
            eprintln!(
                "bnfold: error: verification failed: {}",
                Shown(v.reason.as_deref().unwrap_or_default())
            );
            ExitStatus::Failure
        }
        Status::NotVerified => {
            eprintln!(
                "bnfold: warning: not verified: {}",
                Shown(v.reason.as_deref().unwrap_or_default())
            );
            ExitStatus::Failure
        }
    })
}
