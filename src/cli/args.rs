//! The command line: every flag, its help, and the exit codes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use bnfold::{FoldKind, VerifyOptions};

pub(crate) const EXIT_HELP: &str = "\
Exit codes:
  0  folded (and verified), or --check found nothing left to fold
  1  verification failed, or --check found BatchNormalization that would fold
  2  bad input, bad usage, or an I/O error

Examples:
  bnfold model.onnx -o fused.onnx
  bnfold model.onnx --check                 # CI lint: exit 1 if a BN would fold
  bnfold model.onnx -o fused.onnx --report json --report-file report.json
  bnfold verify original.onnx candidate.onnx";

pub(crate) const VERIFY_EXIT_HELP: &str = "\
Exit codes:
  0  passed: every output agrees and every difference is explained
  1  failed (an output or a fold disagrees), or not verified: nothing could run for some
     output (e.g. an op tract lacks) or a fold could not be proven locally; the report says why
  2  bad input (a model that does not load or is invalid), bad usage, or an I/O error";

/// Fold BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it, and prove
/// the fused model equivalent to the original with tract.
#[derive(Parser, Debug)]
#[command(name = "bnfold", version, after_help = EXIT_HELP, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) fold: FoldArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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

#[derive(Args, Clone, Debug)]
pub(crate) struct FoldArgs {
    /// The ONNX model to fold.
    pub(crate) input: Option<PathBuf>,
    /// Where to write the fused model (e.g. -o fused.onnx).
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// Write nothing; exit 1 if any BatchNormalization would fold, 0 if none is left to fold.
    #[arg(long)]
    pub(crate) check: bool,
    /// Fold and report, but write no model.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Fold only into these layers, e.g. --only conv,gemm.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(crate) only: Vec<KindArg>,
    /// Leave this BatchNormalization (node name or output name) in place; repeatable.
    #[arg(long = "skip-node", value_name = "NAME")]
    pub(crate) skip_nodes: Vec<String>,
    /// Treat initializers that are also graph inputs as constants (they can be overridden at
    /// run time, so by default they are not folded).
    #[arg(long)]
    pub(crate) inputs_are_constants: bool,
    /// Allow the output to be the input file itself.
    #[arg(long)]
    pub(crate) in_place: bool,
    /// fsync the written files before renaming them into place (survives a power loss).
    #[arg(long)]
    pub(crate) sync: bool,
    /// Skip the equivalence check.
    #[arg(long)]
    pub(crate) no_verify: bool,
    /// Exit 1 when the result is not verified: a fold not proven locally, or nothing could run.
    #[arg(long)]
    pub(crate) require_verify: bool,
    /// Rewrite each BatchNormalization that folds nowhere (on a graph input, after Add, Concat or
    /// pooling) into one Mul and one Add, for runtimes without BatchNormalization.
    #[arg(long)]
    pub(crate) decompose_standalone: bool,
    /// Merge each Add of parallel branches of one tensor (Conv, BatchNormalization or the tensor
    /// itself: RepVGG, MobileOne, ACNet blocks in their training form) into one Conv. Exact, but
    /// it changes the structure more than a fold, and a merged kernel's range grows (the report
    /// gives it before and after).
    #[arg(long)]
    pub(crate) merge_branches: bool,
    /// Leave layer weights and BatchNormalization parameters stored as Constant nodes as they
    /// are. By default they become initializers of the same name: quantizers (onnxruntime's
    /// among them) treat a Constant node's output as an activation, one scale per tensor.
    #[arg(long)]
    pub(crate) keep_constant_nodes: bool,
    /// Cross-layer equalization: balance the channel ranges of each Conv → (Relu | LeakyRelu |
    /// PRelu | Identity)? → Conv pair (ConvTranspose on either side), and of Gemm or MatMul
    /// pairs (a MatMul's bias Add included), for per-tensor INT8. `exact` (the default): the float
    /// model is unchanged up to rounding (Clip, Relu6 and HardSwish end no pair). `absorb`: also
    /// high-bias absorption into Relu pairs after a folded BatchNormalization, an approximation:
    /// the exact model is verified and the change measured per pair and at the outputs. The
    /// report gives each pair's per-tensor SQNR before and after
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "exact"
    )]
    pub(crate) equalize: Option<EqualizeMode>,
    /// Leave the quantization-readiness analysis out of the report.
    #[arg(long)]
    pub(crate) no_readiness: bool,
    #[command(flatten)]
    pub(crate) check_args: VerifyArgs,
    #[command(flatten)]
    pub(crate) output_args: OutputArgs,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct VerifyArgs {
    /// Seed of the random inputs.
    #[arg(long, default_value_t = VerifyOptions::default().seed)]
    pub(crate) seed: u64,
    /// Number of random samples.
    #[arg(long, default_value_t = 3)]
    pub(crate) samples: usize,
    /// Value of a symbolic dimension, e.g. --dim batch=4; repeatable.
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    pub(crate) dims: Vec<String>,
    /// Shape of an input, e.g. --input-shape input=1,3,224,224; repeatable.
    #[arg(long = "input-shape", value_name = "NAME=D0,D1,...")]
    pub(crate) input_shapes: Vec<String>,
    /// Feed real data to an input in every sample, e.g. --input image=cat.npy; repeatable.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub(crate) inputs: Vec<String>,
    /// Absolute tolerance (default: derived from each output's dtype and magnitude).
    #[arg(long)]
    pub(crate) atol: Option<f64>,
    /// Relative tolerance (default: derived from each output's dtype).
    #[arg(long)]
    pub(crate) rtol: Option<f64>,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct OutputArgs {
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) report: ReportFormat,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) report_file: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page (inline SVG plots, no network).
    #[arg(long, visible_alias = "html", value_name = "PATH")]
    pub(crate) report_html: Option<PathBuf>,
    /// Replace existing output files (the model, its data files, the report). Files the input
    /// reads are never replaced.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print only errors. A fold then skips the quantization-readiness figures, which only its
    /// report shows, unless a report is written (`--report json`, `--report-file`,
    /// `--report-html`)
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Print more, and the chain of causes of an error.
    #[arg(short, long)]
    pub(crate) verbose: bool,
}

impl OutputArgs {
    /// Whether anything shows the report: the text on stdout, or a JSON or HTML report.
    pub(crate) fn shows_report(&self) -> bool {
        !self.quiet
            || self.report == ReportFormat::Json
            || self.report_file.is_some()
            || self.report_html.is_some()
    }
}

/// How `--equalize` may change the float model.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum EqualizeMode {
    // Rescalings exact for the activation between: the float model unchanged up to rounding.
    // (Plain comments: a documented variant would switch `--help` to its long layout.)
    Exact,
    // Also high-bias absorption (an approximation, measured).
    Absorb,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum KindArg {
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

pub(crate) fn verify_options(args: &VerifyArgs) -> anyhow::Result<VerifyOptions> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output_args(flags: &[&str]) -> OutputArgs {
        let argv = ["bnfold", "m.onnx", "-o", "f.onnx"].iter().chain(flags);
        Cli::try_parse_from(argv).unwrap().fold.output_args
    }

    #[test]
    fn quiet_alone_shows_no_report_and_any_report_flag_shows_one() {
        assert!(output_args(&[]).shows_report());
        assert!(output_args(&["-v"]).shows_report());
        assert!(!output_args(&["-q"]).shows_report());
        assert!(!output_args(&["--quiet", "--force"]).shows_report());
        for report in [
            &["--report", "json"][..],
            &["--report-file", "r.json"],
            &["--report-html", "r.html"],
            &["--html", "r.html"],
        ] {
            let flags: Vec<&str> = ["-q"].iter().chain(report).copied().collect();
            assert!(output_args(&flags).shows_report(), "{flags:?}");
        }
    }
}
