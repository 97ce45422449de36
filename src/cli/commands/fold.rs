//! `bnfold MODEL -o OUT`: load, fold, write (with the readiness figures computed as it writes),
//! verify, commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::cli::progress::Progress;
use crate::cli::{load, text, ExitStatus};

use anyhow::{bail, Context};

use crate::cli::args::{verify_options, EqualizeMode, FoldArgs};
use crate::cli::report::{claim_report, commit_report, json_report, print, stage_report};
use bnfold::model::FoldedWatcher;
use bnfold::output::WritePlan;
use bnfold::printable::Shown;
use bnfold::readiness::{EarlyFigures, LayerFigures, Readiness};
use bnfold::verify::{SampleHook, Status, Verification};
use bnfold::{fold, verify, FoldOptions, Model, SaveOptions};

pub(crate) fn run_fold(args: FoldArgs) -> anyhow::Result<ExitStatus> {
    // A fold that writes reads each weight once, as it writes it: should one hold NaN or an
    // infinity, the write fails before anything is committed and the fold runs again, reading
    // the weights first (their BatchNormalization then stays, with the reason `not_finite`).
    // So does a fold that skips anything, whose reason an unread weight could have preceded.
    // Merged branches, equalization and decomposition compute from the weights or the skips.
    let writes = !args.check && !args.dry_run;
    let defer =
        writes && !args.merge_branches && !args.decompose_standalone && args.equalize.is_none();
    let first = fold_once(args.clone(), defer);
    let read_first = match &first {
        Ok(Attempt::Done(_)) => false,
        Ok(Attempt::ReadWeightsFirst) => true,
        Err(e) => defer && weight_not_finite(e),
    };
    let attempt = match read_first {
        true => fold_once(args, false),
        false => first,
    };
    match attempt? {
        Attempt::Done(status) => Ok(status),
        // A run that reads the weights first always runs to the end.
        Attempt::ReadWeightsFirst => bail!("the fold stopped before its end"),
    }
}

/// How one run ended.
enum Attempt {
    /// It ran to the end.
    Done(ExitStatus),
    /// A run that deferred the weights' check skipped something: it is run again, reading them
    /// first.
    ReadWeightsFirst,
}

/// Whether the run failed on a folded weight that is not finite.
fn weight_not_finite(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<bnfold::Error>())
        .any(bnfold::Error::is_folded_not_finite)
}

/// One run: the weights are read for NaN and infinities while planning unless `defer`.
fn fold_once(args: FoldArgs, defer: bool) -> anyhow::Result<Attempt> {
    let Some(input) = args.input.clone() else {
        bail!("no input model given (see bnfold --help)");
    };
    let writes = !args.check && !args.dry_run;
    if writes && args.output.is_none() {
        bail!("no output given: use -o OUTPUT, or --check / --dry-run to write nothing");
    }
    let options = FoldOptions {
        inputs_are_constants: args.inputs_are_constants,
        only: (!args.only.is_empty()).then(|| args.only.iter().map(|&k| k.into()).collect()),
        skip_nodes: args.skip_nodes.iter().cloned().collect(),
        decompose_standalone: args.decompose_standalone,
        merge_branches: args.merge_branches,
        keep_constant_nodes: args.keep_constant_nodes,
        equalize: args.equalize.is_some(),
        absorb_high_bias: args.equalize == Some(EqualizeMode::Absorb),
        defer_weight_check: defer,
    };
    let mut verify_opts = verify_options(&args.check_args)?;
    if writes {
        if let Some(out) = &args.output {
            if bnfold::output::same_file(&input, out) && !args.in_place {
                bail!(
                    "{}: refusing to overwrite the input (use --in-place)",
                    out.display()
                );
            }
            if out.exists() && !args.output_args.force && !args.in_place {
                bail!(
                    "{}: output exists (use --force to overwrite)",
                    out.display()
                );
            }
        }
    }
    let progress = Progress::start(!args.output_args.quiet);
    progress.stage("loading");
    let started = Instant::now();
    let loaded = load(&input)?;
    check_skip_nodes(&loaded, &options.skip_nodes)?;
    // Every file this run writes is claimed before anything is written.
    let mut plan = WritePlan::new(args.output_args.force || args.in_place);
    plan.protect(&loaded.input_files);
    if args.in_place {
        plan.allow_replacing_input_model();
    }
    claim_report(&mut plan, &args.output_args)?;
    progress.stage("folding");
    // The figures are computed only for a report someone reads (`-q` alone shows none).
    let readiness = !args.no_readiness && !args.check && args.output_args.shows_report();
    let written = args.output.as_ref().filter(|_| writes);
    // Weights that folding will most likely leave unchanged are measured while it folds.
    let early = match (readiness, written) {
        (true, Some(_)) => EarlyFigures::start(&loaded),
        _ => Ok(EarlyFigures::none()),
    }
    .with_context(|| format!("{}", input.display()))?;
    // Of the original, readiness needs only the BatchNormalization statistics, taken now; the
    // layers' figures are computed from the folded weights as they are written.
    let batch_norms = match readiness {
        true => Some(
            bnfold::readiness::batch_norms(&loaded)
                .with_context(|| format!("{}", input.display()))?,
        ),
        false => None,
    };
    // The original is kept only for what compares against it. Neither model is freed at the
    // end: the process exits right after, and freeing a large graph node by node takes longer.
    let verification_plan = match args.no_verify {
        false => Some(bnfold::pipeline::plan_verification(&loaded)),
        true => None,
    };
    let too_large = verification_plan.as_ref().and_then(|p| p.too_large.clone());
    let runs_verification = verification_plan.is_some_and(|p| p.runs);
    let (original, mut fused) = if runs_verification {
        (Some(loaded.clone()), loaded)
    } else {
        (None, loaded)
    };
    let mut report = fold(&mut fused, &options).with_context(|| format!("{}", input.display()))?;
    if defer && !report.skips.is_empty() {
        return Ok(Attempt::ReadWeightsFirst);
    }
    // High-bias absorption is applied to a copy: the exact model is what verification proves,
    // and what the absorbed one is measured against.
    let exact = match report.absorption.is_empty() {
        true => None,
        false => {
            let exact = fused.clone();
            bnfold::absorb(&mut fused, &mut report, None)
                .with_context(|| format!("{}", input.display()))?;
            Some(exact)
        }
    };
    let fold_seconds = started.elapsed().as_secs_f64();

    if args.check {
        progress.finish();
        if !report.folds.is_empty() && !args.output_args.quiet {
            eprintln!(
                "bnfold: check failed: {} BatchNormalization would fold",
                report.folds.len()
            );
        }
        let json = || json_report(&report, &input, None);
        let html = || bnfold::report::html::fold(&report, &input.display().to_string(), None);
        let (pretty, staged_report) = stage_report(&args.output_args, json, html, args.sync)?;
        commit_report(staged_report)?;
        print(&args.output_args, &pretty, || {
            let mut s = text::fold_report(&report, &input, None);
            if args.output_args.verbose {
                s += &timings(fold_seconds, None);
            }
            s
        })?;
        return Ok(Attempt::Done(match report.folds.is_empty() {
            true => ExitStatus::Success,
            false => ExitStatus::Failure,
        }));
    }

    let save_options = SaveOptions {
        force: args.output_args.force || args.in_place,
        overwrite_input: args.in_place,
        sync: args.sync,
    };
    // With an output, the model is written under a temporary name first and the written files
    // are what verification loads (tract reads their external data itself); they are moved into
    // place only if verification does not fail.
    // The layers' readiness figures are computed on a thread of their own while the model is
    // written (or while nothing is, with no output).
    let mut figures = match (readiness, written) {
        (true, Some(_)) => Some(early.start_for_write(&fused)),
        (true, None) => Some(LayerFigures::start(&fused)),
        (false, _) => None,
    }
    .transpose()
    .with_context(|| format!("{}", input.display()))?;
    let staged = match written {
        Some(out) => {
            progress.stage("writing");
            let watcher: &mut dyn FoldedWatcher = match figures.as_mut() {
                Some(figures) => figures,
                None => &mut (),
            };
            let staged = fused
                .stage_watched(out, save_options, &mut plan, watcher)
                .with_context(|| format!("{}", out.display()))?;
            Some((out.clone(), staged))
        }
        None => None,
    };
    if let (Some(figures), Some(batch_norms)) = (figures, batch_norms) {
        let layers = figures
            .finish()
            .with_context(|| format!("{}", input.display()))?;
        let mut readiness = Readiness::new(&fused, layers, batch_norms);
        readiness.after_equalization(&report.equalized_layers());
        report.readiness = Some(readiness);
    }
    let verify_started = Instant::now();
    if let Some(reason) = too_large.filter(|_| !runs_verification) {
        report.verification = Some(Verification::not_run(reason, verify_opts.seed));
    }
    let live = if let Some(original) = original.as_ref().filter(|_| runs_verification) {
        progress.stage("verifying");
        verify_opts.on_sample = Some(SampleHook(Arc::new(progress.counter())));
        let intermediates = bnfold::pipeline::compared_tensors(&report);
        let candidate = match &staged {
            Some((out, staged)) => {
                // Freed before the written model is loaded: a large model is held once, not twice.
                drop(fused);
                Model::load(staged.path()).with_context(|| format!("{}", out.display()))?
            }
            None => fused,
        };
        let proven = exact.as_ref().unwrap_or(&candidate);
        let v = verify(original, proven, &intermediates, &verify_opts)
            .with_context(|| format!("verifying {}", input.display()))?;
        report.verification = Some(v);
        if let Some(exact) = &exact {
            bnfold::absorption::check(exact, &candidate, &mut report, &verify_opts)
                .with_context(|| format!("measuring the absorption in {}", input.display()))?;
        }
        candidate
    } else {
        fused
    };
    std::mem::forget((original, live, exact));
    let verify_seconds = (!args.no_verify).then(|| verify_started.elapsed().as_secs_f64());
    let status = report.verification.as_ref().map(|v| v.status.clone());
    let stray = report
        .absorption_check
        .as_ref()
        .is_some_and(|c| c.status == Status::Failed);
    let failed = status == Some(Status::Failed)
        || stray
        || (status == Some(Status::NotVerified) && args.require_verify);
    if status == Some(Status::NotVerified) && !args.output_args.quiet {
        let reason = report
            .verification
            .as_ref()
            .and_then(|v| v.reason.clone())
            .unwrap_or_default();
        eprintln!("bnfold: warning: not verified: {}", Shown(&reason));
    }
    if let Some(check) = report.absorption_check.as_ref().filter(|_| stray) {
        eprintln!(
            "bnfold: error: the absorbed model differs beyond its absorbed biases ({}); no model \
             written",
            Shown(check.reason.as_deref().unwrap_or_default())
        );
    }
    if status == Some(Status::Failed) {
        let reason = report
            .verification
            .as_ref()
            .and_then(|v| v.reason.clone())
            .unwrap_or_default();
        eprintln!(
            "bnfold: error: verification failed ({}); no model written",
            Shown(&reason)
        );
    }
    // The report is staged before anything is committed, and committed after the model: a
    // failure on the way leaves neither.
    let written = staged
        .as_ref()
        .filter(|_| !failed)
        .map(|(out, _)| out.clone());
    let json = || json_report(&report, &input, written.as_deref());
    let html = || {
        let written = written.as_ref().map(|w| w.display().to_string());
        bnfold::report::html::fold(&report, &input.display().to_string(), written.as_deref())
    };
    let (pretty, staged_report) = stage_report(&args.output_args, json, html, args.sync)?;
    match staged {
        Some((out, mut staged)) if !failed => {
            for r in staged_report {
                staged.attach(r);
            }
            staged
                .commit()
                .with_context(|| format!("{}", out.display()))?;
        }
        _ => commit_report(staged_report)?,
    }
    progress.finish();
    print(&args.output_args, &pretty, || {
        let mut s = text::fold_report(&report, &input, written.as_deref());
        if args.output_args.verbose {
            s += &timings(fold_seconds, verify_seconds);
        }
        s
    })?;
    Ok(Attempt::Done(match failed {
        true => ExitStatus::Failure,
        false => ExitStatus::Success,
    }))
}

pub(crate) fn check_skip_nodes(model: &Model, names: &BTreeSet<String>) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut known = BTreeSet::new();
    if let Some(g) = &model.proto.graph {
        fn walk(g: &bnfold::proto::GraphProto, known: &mut BTreeSet<String>) {
            for n in &g.node {
                known.insert(n.name().to_string());
                known.extend(n.output.iter().cloned());
                for a in &n.attribute {
                    for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                        walk(sub, known);
                    }
                }
            }
        }
        walk(g, &mut known);
    }
    for name in names {
        if !known.contains(name) {
            bail!("--skip-node {name}: no node or tensor has that name");
        }
    }
    Ok(())
}

pub(crate) fn timings(fold_seconds: f64, verify_seconds: Option<f64>) -> String {
    match verify_seconds {
        Some(v) => format!("time: load + fold {fold_seconds:.3} s, verify {v:.3} s\n"),
        None => format!("time: load + fold {fold_seconds:.3} s\n"),
    }
}
