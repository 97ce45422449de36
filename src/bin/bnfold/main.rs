//! The `bnfold` command line: maps `run()` to an exit code and prints errors on one line.

mod progress;
mod text;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use progress::Progress;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use bnfold::model::{InitializerTap, StagedFile};
use bnfold::output::WritePlan;
use bnfold::printable::Shown;
use bnfold::readiness::{LayerTap, Readiness};
use bnfold::report::{Report, SCHEMA_VERSION};
use bnfold::verify::{SampleHook, Status, Verification};
use bnfold::{fold, verify, FoldKind, FoldOptions, Model, SaveOptions, VerifyOptions};

const EXIT_HELP: &str = "\
Exit codes:
  0  folded (and verified), or --check found nothing left to fold
  1  verification failed, or --check found BatchNormalization that would fold
  2  bad input, bad usage, or an I/O error

Examples:
  bnfold model.onnx -o fused.onnx
  bnfold model.onnx --check                 # CI lint: exit 1 if a BN would fold
  bnfold model.onnx -o fused.onnx --report json --report-file report.json
  bnfold verify original.onnx candidate.onnx";

const VERIFY_EXIT_HELP: &str = "\
Exit codes:
  0  passed: every output agrees and every difference is explained
  1  failed (an output or a fold disagrees), or not verified: nothing could run for some
     output (e.g. an op tract lacks) or a fold could not be proven locally; the report says why
  2  bad input (a model that does not load or is invalid), bad usage, or an I/O error";

/// How a run ends; its exit code is the same for every command (see `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExitStatus {
    /// 0: folded (and verified), nothing left to fold, or the models agree.
    Success,
    /// 1: verification failed (or was required and not reached), or `--check` found a fold.
    Failure,
    /// 2: bad input, bad usage, or an I/O error.
    Error,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(match status {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Error => 2,
        })
    }
}

/// Fold BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it, and prove
/// the fused model equivalent to the original with tract.
#[derive(Parser, Debug)]
#[command(name = "bnfold", version, after_help = EXIT_HELP, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    fold: FoldArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that two models compute the same outputs on seeded random inputs.
    ///
    /// Example: bnfold verify original.onnx candidate.onnx --samples 5
    #[command(after_help = VERIFY_EXIT_HELP)]
    Verify {
        /// The reference model.
        original: PathBuf,
        /// The model to check against it.
        candidate: PathBuf,
        /// Hold folds the candidate made (nodes that took over a BatchNormalization's output) to
        /// the error of computing them in their own dtype, as another tool folding in float32
        /// does, instead of one rounding (bnfold's own promise).
        #[arg(long)]
        float_folds: bool,
        #[command(flatten)]
        check: VerifyArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Write nothing: list every normalization node and whether and how it folds, and how well
    /// the weights, once folded, survive INT8 quantization.
    ///
    /// Example: bnfold inspect model.onnx --report json
    Inspect {
        /// The ONNX model to inspect.
        model: PathBuf,
        /// Treat initializers that are also graph inputs as constants.
        #[arg(long)]
        inputs_are_constants: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Args, Debug)]
struct FoldArgs {
    /// The ONNX model to fold.
    input: Option<PathBuf>,
    /// Where to write the fused model (e.g. -o fused.onnx).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write nothing; exit 1 if any BatchNormalization would fold, 0 if none is left to fold.
    #[arg(long)]
    check: bool,
    /// Fold and report, but write no model.
    #[arg(long)]
    dry_run: bool,
    /// Fold only into these layers, e.g. --only conv,gemm.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<KindArg>,
    /// Leave this BatchNormalization (node name or output name) in place; repeatable.
    #[arg(long = "skip-node", value_name = "NAME")]
    skip_nodes: Vec<String>,
    /// Treat initializers that are also graph inputs as constants (they can be overridden at
    /// run time, so by default they are not folded).
    #[arg(long)]
    inputs_are_constants: bool,
    /// Allow the output to be the input file itself.
    #[arg(long)]
    in_place: bool,
    /// fsync the written files before renaming them into place (survives a power loss).
    #[arg(long)]
    sync: bool,
    /// Skip the equivalence check.
    #[arg(long)]
    no_verify: bool,
    /// Exit 1 when the result is not verified: a fold not proven locally, or nothing could run.
    #[arg(long)]
    require_verify: bool,
    /// Rewrite each BatchNormalization that folds nowhere (on a graph input, after Add, Concat or
    /// pooling) into one Mul and one Add, for runtimes without BatchNormalization.
    #[arg(long)]
    decompose_standalone: bool,
    /// Leave the quantization-readiness analysis out of the report.
    #[arg(long)]
    no_readiness: bool,
    #[command(flatten)]
    check_args: VerifyArgs,
    #[command(flatten)]
    output_args: OutputArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Seed of the random inputs.
    #[arg(long, default_value_t = VerifyOptions::default().seed)]
    seed: u64,
    /// Number of random samples.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Value of a symbolic dimension, e.g. --dim batch=4; repeatable.
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// Shape of an input, e.g. --input-shape input=1,3,224,224; repeatable.
    #[arg(long = "input-shape", value_name = "NAME=D0,D1,...")]
    input_shapes: Vec<String>,
    /// Feed real data to an input in every sample, e.g. --input image=cat.npy; repeatable.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Absolute tolerance (default: derived from each output's dtype and magnitude).
    #[arg(long)]
    atol: Option<f64>,
    /// Relative tolerance (default: derived from each output's dtype).
    #[arg(long)]
    rtol: Option<f64>,
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    report: ReportFormat,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    report_file: Option<PathBuf>,
    /// Replace existing output files (the model, its data files, the report). Files the input
    /// reads are never replaced.
    #[arg(long)]
    force: bool,
    /// Print only errors.
    #[arg(short, long)]
    quiet: bool,
    /// Print more, and the chain of causes of an error.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Conv,
    Convtranspose,
    Gemm,
    Matmul,
}

impl From<KindArg> for FoldKind {
    fn from(k: KindArg) -> FoldKind {
        match k {
            KindArg::Conv => FoldKind::Conv,
            KindArg::Convtranspose => FoldKind::ConvTranspose,
            KindArg::Gemm => FoldKind::Gemm,
            KindArg::Matmul => FoldKind::MatMul,
        }
    }
}

/// On SIGINT and SIGTERM, removes the files staged so far and exits 128 + the signal's number
/// (130, 143), as a shell reports a process the signal ended.
#[cfg(unix)]
fn remove_staging_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                bnfold::staging::remove_all();
                std::process::exit(128 + signal);
            }
        });
    }
}

fn main() -> ExitCode {
    ExitCode::from(run_main())
}

fn run_main() -> ExitStatus {
    #[cfg(unix)]
    remove_staging_on_signals();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let status = match e.use_stderr() {
                true => ExitStatus::Error,
                false => ExitStatus::Success,
            };
            let _ = e.print();
            return status;
        }
    };
    let verbose = match &cli.command {
        Some(Command::Verify { output, .. } | Command::Inspect { output, .. }) => output.verbose,
        None => cli.fold.output_args.verbose,
    };
    match run(cli) {
        Ok(status) => status,
        Err(e) if is_broken_pipe(&e) => ExitStatus::Success,
        Err(e) => {
            eprintln!("bnfold: error: {}", Shown(&one_line(&e)));
            if verbose {
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {}", Shown(&cause.to_string()));
                }
            }
            ExitStatus::Error
        }
    }
}

/// The chain of causes on one line, without repeating what a neighbour already says.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        match parts.last_mut() {
            Some(last) if last.contains(&text) => {}
            Some(last) if text.contains(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Some(Command::Verify {
            original,
            candidate,
            float_folds,
            check,
            output,
        }) => run_verify(&original, &candidate, &check, &output, float_folds),
        Some(Command::Inspect {
            model,
            inputs_are_constants,
            output,
        }) => run_inspect(&model, inputs_are_constants, &output),
        None => run_fold(cli.fold),
    }
}

fn verify_options(args: &VerifyArgs) -> anyhow::Result<VerifyOptions> {
    let mut options = VerifyOptions {
        seed: args.seed,
        samples: args.samples,
        atol: args.atol,
        rtol: args.rtol,
        ..VerifyOptions::default()
    };
    for d in &args.dims {
        let (name, value) = d
            .split_once('=')
            .with_context(|| format!("--dim {d}: expected NAME=VALUE"))?;
        let value = value
            .parse()
            .with_context(|| format!("--dim {d}: '{value}' is not a dimension"))?;
        options.dims.insert(name.to_string(), value);
    }
    for s in &args.input_shapes {
        let (name, dims) = s
            .split_once('=')
            .with_context(|| format!("--input-shape {s}: expected NAME=D0,D1,..."))?;
        let dims = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--input-shape {s}: dims must be whole numbers"))?;
        options.input_shapes.insert(name.to_string(), dims);
    }
    for i in &args.inputs {
        let (name, file) = i
            .split_once('=')
            .with_context(|| format!("--input {i}: expected NAME=FILE.npy"))?;
        let data = bnfold::npy::read_npy(Path::new(file))?;
        options.input_data.insert(name.to_string(), data);
    }
    Ok(options)
}

fn load(path: &Path) -> anyhow::Result<Model> {
    Model::load(path).with_context(|| format!("{}", path.display()))
}

fn run_fold(args: FoldArgs) -> anyhow::Result<ExitStatus> {
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
    let readiness = !args.no_readiness && !args.check;
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
    let has_batch_norm = loaded
        .proto
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.op_type() == "BatchNormalization"));
    let too_large = match args.no_verify {
        false => bnfold::verify::too_large_to_run(&loaded),
        true => None,
    };
    // Above the node limit there is no whole-model run, but folds still get their certificate
    // and region run, which need the original.
    let runs_verification = !args.no_verify && (too_large.is_none() || has_batch_norm);
    let (original, mut fused) = if runs_verification {
        (Some(loaded.clone()), loaded)
    } else {
        (None, loaded)
    };
    let mut report = fold(&mut fused, &options).with_context(|| format!("{}", input.display()))?;
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
        let (pretty, staged_report) = stage_report(&args.output_args, json, args.sync)?;
        commit_report(staged_report)?;
        print(&args.output_args, &pretty, || {
            let mut s = text::fold_report(&report, &input, None);
            if args.output_args.verbose {
                s += &timings(fold_seconds, None);
            }
            s
        })?;
        return Ok(match report.folds.is_empty() {
            true => ExitStatus::Success,
            false => ExitStatus::Failure,
        });
    }

    let save_options = SaveOptions {
        force: args.output_args.force || args.in_place,
        overwrite_input: args.in_place,
        sync: args.sync,
    };
    // With an output, the model is written under a temporary name first and the written files
    // are what verification loads (tract reads their external data itself); they are moved into
    // place only if verification does not fail.
    // The layers' readiness figures are computed while the model is written (each folded
    // weight is scaled once, for both), or from the weights alone when nothing is written.
    let mut tap = match readiness {
        true => Some(LayerTap::start(&fused).with_context(|| format!("{}", input.display()))?),
        false => None,
    };
    let staged = match (&args.output, writes) {
        (Some(out), true) => {
            progress.stage("writing");
            let tapped = tap.as_mut().map(|t| t as &mut dyn InitializerTap);
            let staged = fused
                .stage_tapped(out, save_options, &mut plan, tapped)
                .with_context(|| format!("{}", out.display()))?;
            Some((out.clone(), staged))
        }
        _ => {
            if let Some(tap) = tap.as_mut() {
                fused
                    .stream_initializers(tap)
                    .with_context(|| format!("{}", input.display()))?;
            }
            None
        }
    };
    if let (Some(tap), Some(batch_norms)) = (tap, batch_norms) {
        report.readiness = Some(Readiness {
            layers: tap
                .finish()
                .with_context(|| format!("{}", input.display()))?,
            batch_norms,
        });
    }
    let verify_started = Instant::now();
    if let Some(reason) = too_large.filter(|_| !runs_verification) {
        report.verification = Some(Verification::not_run(reason, verify_opts.seed));
    }
    let live = if let Some(original) = original.as_ref().filter(|_| runs_verification) {
        progress.stage("verifying");
        verify_opts.on_sample = Some(SampleHook(Arc::new(progress.counter())));
        let intermediates: Vec<String> = report
            .folds
            .iter()
            .filter(|f| f.graph == "main")
            .map(|f| f.output.clone())
            .collect();
        let candidate = match &staged {
            Some((out, staged)) => {
                // Freed before the written model is loaded: a large model is held once, not twice.
                drop(fused);
                Model::load(staged.path()).with_context(|| format!("{}", out.display()))?
            }
            None => fused,
        };
        let v = verify(original, &candidate, &intermediates, &verify_opts)
            .with_context(|| format!("verifying {}", input.display()))?;
        report.verification = Some(v);
        candidate
    } else {
        fused
    };
    std::mem::forget((original, live));
    let verify_seconds = (!args.no_verify).then(|| verify_started.elapsed().as_secs_f64());
    let status = report.verification.as_ref().map(|v| v.status.clone());
    let failed = status == Some(Status::Failed)
        || (status == Some(Status::NotVerified) && args.require_verify);
    if status == Some(Status::NotVerified) && !args.output_args.quiet {
        let reason = report
            .verification
            .as_ref()
            .and_then(|v| v.reason.clone())
            .unwrap_or_default();
        eprintln!("bnfold: warning: not verified: {}", Shown(&reason));
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
    let (pretty, staged_report) = stage_report(&args.output_args, json, args.sync)?;
    match staged {
        Some((out, mut staged)) if !failed => {
            if let Some(r) = staged_report {
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
    Ok(match failed {
        true => ExitStatus::Failure,
        false => ExitStatus::Success,
    })
}

fn check_skip_nodes(model: &Model, names: &BTreeSet<String>) -> anyhow::Result<()> {
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

fn run_verify(
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
        serde_json::json!({
            "schema": SCHEMA_VERSION,
            "original": original.display().to_string(),
            "candidate": candidate.display().to_string(),
            "verification": v,
        })
    };
    let (pretty, staged_report) = stage_report(output, json, false)?;
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

fn run_inspect(
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
        text::inspect(path, &normalizations, &readiness)
    })?;
    Ok(ExitStatus::Success)
}

fn timings(fold_seconds: f64, verify_seconds: Option<f64>) -> String {
    match verify_seconds {
        Some(v) => format!("time: load + fold {fold_seconds:.3} s, verify {v:.3} s\n"),
        None => format!("time: load + fold {fold_seconds:.3} s\n"),
    }
}

fn json_report(report: &Report, input: &Path, output: Option<&Path>) -> serde_json::Value {
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
    serde_json::json!({
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
    })
}

/// Claims the report file in the run's plan, before anything is written.
fn claim_report(plan: &mut WritePlan, args: &OutputArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.report_file {
        plan.claim(path)
            .with_context(|| format!("--report-file {}", path.display()))?;
    }
    Ok(())
}

/// The JSON report (built only if it goes somewhere), and the report file staged under a
/// temporary name beside its target.
fn stage_report(
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

fn commit_report(staged: Option<StagedFile>) -> anyhow::Result<()> {
    if let Some(staged) = staged {
        staged.commit()?;
    }
    Ok(())
}

/// Prints the report on stdout in the format asked for.
fn print(args: &OutputArgs, pretty: &str, text: impl FnOnce() -> String) -> anyhow::Result<()> {
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
