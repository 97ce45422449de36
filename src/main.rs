//! The `bnfold` command line: maps `run()` to an exit code and prints errors on one line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use bnfold::report::{Report, SCHEMA_VERSION};
use bnfold::verify::{Status, Verification};
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
    Verify {
        /// The reference model.
        original: PathBuf,
        /// The model to check against it.
        candidate: PathBuf,
        #[command(flatten)]
        check: VerifyArgs,
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
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Allow the output to be the input file itself.
    #[arg(long)]
    in_place: bool,
    /// Skip the equivalence check.
    #[arg(long)]
    no_verify: bool,
    /// Exit 1 when the check cannot run (e.g. an op tract does not support).
    #[arg(long)]
    require_verify: bool,
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let verbose = match &cli.command {
        Some(Command::Verify { output, .. }) => output.verbose,
        None => cli.fold.output_args.verbose,
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if verbose {
                eprintln!("bnfold: error: {e:#}");
            } else {
                let line = e.to_string();
                let root = e.root_cause().to_string();
                if !line.contains(&root) {
                    eprintln!("bnfold: error: {line}: {root}");
                } else {
                    eprintln!("bnfold: error: {line}");
                }
            }
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Verify {
            original,
            candidate,
            check,
            output,
        }) => run_verify(&original, &candidate, &check, &output),
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

fn run_fold(args: FoldArgs) -> anyhow::Result<ExitCode> {
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
    };
    let verify_opts = verify_options(&args.check_args)?;
    let started = Instant::now();
    let original = load(&input)?;
    if writes {
        if let Some(out) = &args.output {
            if same_path(&input, out) && !args.in_place {
                bail!(
                    "{}: refusing to overwrite the input (use --in-place)",
                    out.display()
                );
            }
            if out.exists() && !args.force && !args.in_place {
                bail!(
                    "{}: output exists (use --force to overwrite)",
                    out.display()
                );
            }
        }
    }
    check_skip_nodes(&original, &options.skip_nodes)?;
    let mut fused = original.clone();
    let mut report = fold(&mut fused, &options).with_context(|| format!("{}", input.display()))?;
    let fold_seconds = started.elapsed().as_secs_f64();

    if args.check {
        let json = json_report(&report, &input, None, fold_seconds, None);
        emit(&args.output_args, &json, || {
            text_report(&report, &input, None)
        })?;
        return Ok(ExitCode::from(if report.folds.is_empty() { 0 } else { 1 }));
    }

    let verify_started = Instant::now();
    if !args.no_verify {
        let intermediates: Vec<String> = report
            .folds
            .iter()
            .filter(|f| f.graph == "main")
            .map(|f| f.output.clone())
            .collect();
        let v = verify(&original, &fused, &intermediates, &verify_opts)
            .with_context(|| format!("verifying {}", input.display()))?;
        report.verification = Some(v);
    }
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
        eprintln!("bnfold: warning: not verified: {reason}");
    }
    let written = if writes && !failed {
        let out = args.output.as_ref().context("no output")?;
        fused
            .save(
                out,
                SaveOptions {
                    force: args.force || args.in_place,
                    overwrite_input: args.in_place,
                },
            )
            .with_context(|| format!("{}", out.display()))?;
        Some(out.clone())
    } else {
        None
    };
    let json = json_report(
        &report,
        &input,
        written.as_deref(),
        fold_seconds,
        verify_seconds,
    );
    emit(&args.output_args, &json, || {
        text_report(&report, &input, written.as_deref())
    })?;
    Ok(ExitCode::from(if failed { 1 } else { 0 }))
}

fn check_skip_nodes(model: &Model, names: &BTreeSet<String>) -> anyhow::Result<()> {
    let mut known = BTreeSet::new();
    if let Some(g) = &model.proto.graph {
        fn walk(g: &bnfold::proto::GraphProto, known: &mut BTreeSet<String>) {
            for n in &g.node {
                known.insert(n.name().to_string());
                known.extend(n.output.iter().cloned());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(&a.graphs) {
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

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run_verify(
    original: &Path,
    candidate: &Path,
    check: &VerifyArgs,
    output: &OutputArgs,
) -> anyhow::Result<ExitCode> {
    let options = verify_options(check)?;
    let a = load(original)?;
    let b = load(candidate)?;
    let started = Instant::now();
    let v = verify(&a, &b, &[], &options)?;
    let seconds = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "schema": SCHEMA_VERSION,
        "original": original.display().to_string(),
        "candidate": candidate.display().to_string(),
        "verification": v,
        "seconds": { "verify": round3(seconds) },
    });
    emit(output, &json, || {
        let mut s = String::new();
        verification_text(&v, &mut s);
        s
    })?;
    Ok(ExitCode::from(match v.status {
        Status::Passed => 0,
        Status::Failed => 1,
        Status::NotVerified => {
            eprintln!(
                "bnfold: warning: not verified: {}",
                v.reason.clone().unwrap_or_default()
            );
            1
        }
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn json_report(
    report: &Report,
    input: &Path,
    output: Option<&Path>,
    fold_seconds: f64,
    verify_seconds: Option<f64>,
) -> serde_json::Value {
    let mut seconds = BTreeMap::new();
    seconds.insert("fold", round3(fold_seconds));
    if let Some(v) = verify_seconds {
        seconds.insert("verify", round3(v));
    }
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
        "verification": report.verification,
        "seconds": seconds,
    })
}

fn emit(
    args: &OutputArgs,
    json: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let pretty = serde_json::to_string_pretty(json)? + "\n";
    if let Some(path) = &args.report_file {
        write_atomic(path, pretty.as_bytes())?;
    }
    let mut stdout = std::io::stdout().lock();
    match args.report {
        ReportFormat::Json => stdout.write_all(pretty.as_bytes())?,
        ReportFormat::Text if !args.quiet => stdout.write_all(text().as_bytes())?,
        ReportFormat::Text => {}
    }
    stdout.flush()?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("{}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}", path.display()))?;
    Ok(())
}

fn text_report(report: &Report, input: &Path, output: Option<&Path>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "bnfold {}", input.display());
    let ops: BTreeSet<&String> = report
        .ops_before
        .keys()
        .chain(report.ops_after.keys())
        .collect();
    let width = ops.iter().map(|o| o.len()).max().unwrap_or(2).max(2);
    let _ = writeln!(s, "\n  {:<width$}  {:>6}  {:>6}", "op", "before", "after");
    for op in ops {
        let before = report.ops_before.get(op).copied().unwrap_or(0);
        let after = report.ops_after.get(op).copied().unwrap_or(0);
        let mark = if before != after { " *" } else { "" };
        let _ = writeln!(s, "  {op:<width$}  {before:>6}  {after:>6}{mark}");
    }
    if !report.folds.is_empty() {
        let _ = writeln!(s, "\nfolded ({}):", report.folds.len());
        for f in &report.folds {
            let through: String = f.passthrough.iter().map(|p| format!(" ← {p}")).collect();
            let then = f
                .followed_by
                .as_ref()
                .map(|o| format!(" (→ {o})"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {} {}{through} ← BatchNormalization {}{then}",
                f.kind.op_type(),
                f.producer,
                f.batch_norm
            );
        }
    }
    if !report.skips.is_empty() {
        let _ = writeln!(s, "\nleft in place ({}):", report.skips.len());
        for k in &report.skips {
            let _ = writeln!(
                s,
                "  BatchNormalization {}: {} [{}]",
                k.node,
                k.message,
                k.reason.code()
            );
        }
    }
    if !report.non_foldable_normalizations.is_empty() {
        let _ = writeln!(s, "\nnot foldable (statistics depend on the input):");
        for n in &report.non_foldable_normalizations {
            let _ = writeln!(s, "  {} {}", n.op_type, n.node);
        }
    }
    if let Some(v) = &report.verification {
        let _ = writeln!(s);
        verification_text(v, &mut s);
    }
    match output {
        Some(o) => {
            let _ = writeln!(s, "\nwrote {}", o.display());
        }
        None => {
            let _ = writeln!(s, "\nno model written");
        }
    }
    s
}

fn verification_text(v: &Verification, s: &mut String) {
    use std::fmt::Write as _;
    let status = match v.status {
        Status::Passed => "passed",
        Status::Failed => "FAILED",
        Status::NotVerified => "not verified",
    };
    let _ = writeln!(
        s,
        "verification: {status} ({} samples, seed {})",
        v.samples, v.seed
    );
    if let Some(r) = &v.reason {
        let _ = writeln!(s, "  {r}");
    }
    let graph_outputs: Vec<_> = v.outputs.iter().filter(|o| o.graph_output).collect();
    let chains = v.outputs.len() - graph_outputs.len();
    if !graph_outputs.is_empty() {
        let width = graph_outputs
            .iter()
            .map(|o| o.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            s,
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}",
            "output", "max abs", "max rel", "normalized", "tolerance"
        );
        for o in graph_outputs {
            let _ = writeln!(
                s,
                "  {:<width$}  {:>10.3e}  {:>10.3e}  {:>10.3e}  {:>10.3e}{}",
                o.name,
                o.max_abs_error,
                o.max_rel_error,
                o.normalized_error,
                o.atol,
                if o.passed { "" } else { "  FAIL" }
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
        let failing = v
            .outputs
            .iter()
            .filter(|o| !o.graph_output && !o.passed)
            .count();
        let _ = writeln!(
            s,
            "  folded chain outputs: {chains} compared, worst normalized error {worst:.3e}, {failing} beyond tolerance"
        );
    }
    if !v.guessed_dims.is_empty() {
        let _ = writeln!(s, "  guessed dims: {}", v.guessed_dims.join(", "));
    }
}
