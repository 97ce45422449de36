//! Proof of equivalence: the original and the candidate run side by side with tract on seeded
//! random inputs. The reference uses tract's typed model *without* `into_optimized()`, whose
//! decluttering folds BatchNormalization into Conv by itself.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tract_onnx::prelude::*;

use crate::certificate::NodeCertificate;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::npy::NpyArray;
use crate::proto::type_proto;
use crate::reference::ReferenceCheck;

mod capture;
mod inputs;
mod second_opinion;
mod tract;

use crate::tensor::Dtype;
pub(crate) use capture::{capture, Captured};
use inputs::{check_input_data, plan_inputs, InputSpec, Inputs};
use second_opinion::second_opinion;
pub(crate) use tract::{fixed_runner, to_tract, Runner};
use tract::{one_line, run_all, runners};

/// How the check runs.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Seed of the random inputs.
    pub seed: u64,
    /// How many random samples.
    pub samples: usize,
    /// Values of symbolic dimensions, by name.
    pub dims: BTreeMap<String, usize>,
    /// Whole shapes of inputs, by input name.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Absolute tolerance (default: derived from dtype and output magnitude).
    pub atol: Option<f64>,
    /// Relative tolerance (default: derived from dtype).
    pub rtol: Option<f64>,
    /// Real data for some graph inputs, by input name: fed in every sample instead of random
    /// values, its shape fixing the input's shape.
    pub input_data: BTreeMap<String, NpyArray>,
    /// Called after each sample with the samples done and the samples in all.
    pub on_sample: Option<SampleHook>,
    /// Hold one model in tract at a time (`None`: when the two models' weights exceed 256 MiB).
    pub one_model_at_a_time: Option<bool>,
    /// Accept a fold whose rewritten elements are within float arithmetic of the formula, not
    /// only those rounded once (see
    /// [`NodeCertificate::within_float_arithmetic`](crate::certificate::NodeCertificate)).
    pub float_folds: bool,
}

/// A progress callback: `(samples done, samples in all)`.
#[derive(Clone)]
pub struct SampleHook(pub Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for SampleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleHook")
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            seed: 0x5eed_b9f0,
            samples: 3,
            dims: BTreeMap::new(),
            input_shapes: BTreeMap::new(),
            atol: None,
            rtol: None,
            input_data: BTreeMap::new(),
            on_sample: None,
            one_model_at_a_time: None,
            float_folds: false,
        }
    }
}

/// The outcome of the check.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every compared tensor is within tolerance.
    Passed,
    /// Some tensor differs beyond tolerance, or the outputs do not correspond.
    Failed,
    /// tract could not run a model; nothing was compared.
    NotVerified,
}

/// The comparison of one tensor present in both models.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct OutputCheck {
    /// The tensor's name.
    pub name: String,
    /// Whether it is a graph output (else the output of a folded chain).
    pub graph_output: bool,
    /// Largest `|a − b|` over all samples.
    pub max_abs_error: f64,
    /// Largest `|a − b| / |a|` over elements whose `|a|` is at least the absolute tolerance
    /// rounded up to a power of two.
    pub max_rel_error: f64,
    /// `max |a − b| / max |a|`.
    pub normalized_error: f64,
    /// Largest `|a|` of the reference.
    pub max_magnitude: f64,
    /// Absolute tolerance held to.
    pub atol: f64,
    /// Relative tolerance held to.
    pub rtol: f64,
    /// Whether every element satisfied `|a − b| ≤ atol + rtol·|a|`, or, where one did not, the
    /// second opinion passed.
    pub passed: bool,
    /// The second opinion, for an output beyond the fixed tolerance: an exact
    /// reference where tract can run one, else the original's own sensitivity.
    pub reference: Option<ReferenceCheck>,
}

/// What the check did.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Verification {
    /// Passed, failed, or not verified.
    pub status: Status,
    /// Why it failed or could not run.
    pub reason: Option<String>,
    /// Per compared tensor.
    pub outputs: Vec<OutputCheck>,
    /// Symbolic dimensions that were given a guessed value (`input:axis=value`).
    pub guessed_dims: Vec<String>,
    /// Samples run.
    pub samples: usize,
    /// The seed.
    pub seed: u64,
    /// The exact certificate of every node that took over a BatchNormalization's output: each
    /// rewritten tensor against the fold's formula recomputed from the original.
    pub certificates: Vec<NodeCertificate>,
    /// Each backward fold run alone against its original region.
    pub regions: Vec<RegionCheck>,
    /// The first difference between the graphs outside the folds, if any.
    pub structure_difference: Option<String>,
    /// Whether the local proof is complete: no difference outside the folds, every region
    /// passed, every certificate passed.
    pub proven_locally: bool,
    /// Where the candidate differs outside the folds: each differing region run alone on the
    /// original's values.
    pub divergences: Vec<DivergenceCheck>,
}

/// One fold's region against its fused node.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct RegionCheck {
    /// The graph holding it: `main`, or a subgraph's path as the fold report has it.
    pub graph: String,
    /// The fused node (name, or first output).
    pub node: String,
    /// The last BatchNormalization of the original region.
    pub batch_norm: String,
    /// The tensor compared: the region's output, which the fused node took over.
    pub output: String,
    /// The shape of the region's data input.
    pub input_shape: Vec<usize>,
    /// Passed, failed, or not verified (the region could not be built or run).
    pub status: Status,
    /// Why it failed or could not run.
    pub reason: Option<String>,
    /// The comparison of the region's output against the original region's, when it ran (its
    /// figures; the exact check decides).
    pub check: Option<OutputCheck>,
    /// The region's output against its exact value, which decides.
    pub exact: Option<ExactCheck>,
    /// Why the region has no exact check (tract cannot run it in f64), when it has none: then
    /// `check` decides, with the tolerance of one layer.
    pub exact_unavailable: Option<String>,
}

/// A region's outputs against their exact values.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ExactCheck {
    /// Largest error of the fused nodes against the exact value, in units of rounding of `M`.
    pub fused_error_units: f64,
    /// Largest error of the original region against the exact value, in the same units.
    pub original_error_units: f64,
    /// The bound held to: `4 × original_error_units + 2` (for f64 regions, whose reference is
    /// no wider than themselves, plus the dot product's rounding bound `n`, `n` its terms).
    pub bound_units: f64,
    /// The unit roundoff `u` of the region's dtype.
    pub unit_roundoff: f64,
    /// Whether `fused_error_units ≤ bound_units`.
    pub passed: bool,
}

/// One differing region of the candidate against the original's values.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct DivergenceCheck {
    /// The region's first node in the candidate's graph order (name, or first output).
    pub first_node: String,
    /// Its op type.
    pub op_type: String,
    /// How many candidate nodes the region holds.
    pub nodes: usize,
    /// The tensors it reads (the original's values fed).
    pub inputs: Vec<String>,
    /// Passed, failed, or not verified (not comparable, or tract could not run it).
    pub status: Status,
    /// Why it failed or could not be compared.
    pub reason: Option<String>,
    /// Each output against the original's value of the same tensor.
    pub outputs: Vec<OutputCheck>,
}

impl Verification {
    /// "Not verified" without running anything, for `reason`.
    pub fn not_run(reason: String, seed: u64) -> Verification {
        Verification::not_verified(reason, seed)
    }

    fn not_verified(reason: String, seed: u64) -> Verification {
        Verification {
            status: Status::NotVerified,
            reason: Some(reason),
            outputs: vec![],
            guessed_dims: vec![],
            samples: 0,
            seed,
            certificates: vec![],
            regions: vec![],
            structure_difference: None,
            proven_locally: false,
            divergences: vec![],
        }
    }
}

/// Above this many nodes (subgraphs included) the whole-model run is not attempted: tract's
/// typing is superlinear in the node count and would take minutes.
pub const MAX_WHOLE_MODEL_NODES: usize = 20_000;

/// Why the whole-model run is not attempted on `model`: more nodes than
/// [`MAX_WHOLE_MODEL_NODES`], said in one line.
pub fn too_large_to_run(model: &Model) -> Option<String> {
    let nodes = model.proto.graph.as_ref().map_or(0, node_count);
    (nodes > MAX_WHOLE_MODEL_NODES).then(|| {
        format!(
            "the model has {nodes} nodes; tract's typing of a graph grows faster than its size \
             (10,000 nodes 0.7 s, 30,000 nodes 7.6 s), so the whole-model run is skipped above \
             {MAX_WHOLE_MODEL_NODES}"
        )
    })
}

fn node_count(g: &crate::proto::GraphProto) -> usize {
    g.node.len()
        + g.node
            .iter()
            .flat_map(|n| &n.attribute)
            .flat_map(|a| a.g.as_deref().into_iter().chain(&a.graphs))
            .map(node_count)
            .sum::<usize>()
}

/// The first graph input (of `data_inputs`) or output whose declared element type or rank
/// differs between the two graphs, said in one line; ranks are compared where both declare one.
fn interface_difference(
    a: &crate::proto::GraphProto,
    b: &crate::proto::GraphProto,
    data_inputs: &[String],
) -> Option<String> {
    use crate::proto::type_proto::Value;
    fn declared<'g>(
        values: &'g [crate::proto::ValueInfoProto],
        name: &str,
    ) -> Option<&'g crate::proto::type_proto::Tensor> {
        let v = values.iter().find(|v| v.name() == name)?;
        match v.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => Some(t),
            _ => None,
        }
    }
    let type_name = |code: Option<i32>| match code.and_then(Dtype::from_code) {
        Some(d) => d.name().to_string(),
        None => format!("type {}", code.unwrap_or(0)),
    };
    let inputs = data_inputs
        .iter()
        .map(|n| ("input", n.as_str(), &a.input, &b.input));
    let outputs = a
        .output
        .iter()
        .map(|o| ("output", o.name(), &a.output, &b.output));
    for (kind, name, in_a, in_b) in inputs.chain(outputs) {
        let (Some(ta), Some(tb)) = (declared(in_a, name), declared(in_b, name)) else {
            continue;
        };
        if ta.elem_type != tb.elem_type {
            return Some(format!(
                "graph {kind} '{name}' is {} in the original and {} in the candidate",
                type_name(ta.elem_type),
                type_name(tb.elem_type)
            ));
        }
        let rank = |t: &crate::proto::type_proto::Tensor| t.shape.as_ref().map(|s| s.dim.len());
        if let (Some(ra), Some(rb)) = (rank(ta), rank(tb)) {
            if ra != rb {
                return Some(format!(
                    "graph {kind} '{name}' has rank {ra} in the original and {rb} in the candidate"
                ));
            }
        }
    }
    None
}

/// The whole-model comparison of [`crate::verify()`] alone: both models on the same seeded
/// random inputs, every graph output and every tensor of `intermediates` compared (with a
/// second opinion where the fixed tolerance is exceeded, see [`crate::reference`]); no
/// certificate, no regions.
pub fn run_whole_model(
    original: &Model,
    candidate: &Model,
    intermediates: &[String],
    options: &VerifyOptions,
) -> Result<Verification> {
    let (original, candidate) = (
        original.with_folded_inline()?,
        candidate.with_folded_inline()?,
    );
    let (original, candidate) = (original.as_ref(), candidate.as_ref());
    let (orig_graph, cand_graph) = match (&original.proto.graph, &candidate.proto.graph) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(Error::MissingGraph),
    };
    let outputs_a: Vec<&str> = orig_graph.output.iter().map(|o| o.name()).collect();
    let outputs_b: Vec<&str> = cand_graph.output.iter().map(|o| o.name()).collect();
    if outputs_a != outputs_b {
        return Ok(Verification {
            status: Status::Failed,
            reason: Some(format!(
                "graph outputs differ: {outputs_a:?} against {outputs_b:?}"
            )),
            ..Verification::not_verified(String::new(), options.seed)
        });
    }
    let data_inputs = |g: &crate::proto::GraphProto| -> Vec<String> {
        let constants: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name()).collect();
        g.input
            .iter()
            .map(|i| i.name())
            .filter(|n| !constants.contains(n))
            .map(str::to_string)
            .collect()
    };
    let (inputs_a, inputs_b) = (data_inputs(orig_graph), data_inputs(cand_graph));
    if inputs_a != inputs_b {
        return Ok(Verification {
            status: Status::Failed,
            reason: Some(format!(
                "graph inputs differ: {inputs_a:?} against {inputs_b:?}"
            )),
            ..Verification::not_verified(String::new(), options.seed)
        });
    }
    if let Some(difference) = interface_difference(orig_graph, cand_graph, &inputs_a) {
        return Ok(Verification {
            status: Status::Failed,
            reason: Some(difference),
            ..Verification::not_verified(String::new(), options.seed)
        });
    }
    if let Some(reason) = too_large_to_run(original).or_else(|| too_large_to_run(candidate)) {
        return Ok(Verification::not_run(reason, options.seed));
    }
    let inputs = match plan_inputs(original, options) {
        Ok(i) => i,
        Err(reason) => return Ok(Verification::not_verified(reason, options.seed)),
    };
    check_input_data(&inputs.specs, options)?;
    let mut names: Vec<String> = outputs_a.iter().map(|s| s.to_string()).collect();
    let produced = |g: &crate::proto::GraphProto, n: &str| {
        g.node.iter().any(|node| node.output.iter().any(|o| o == n))
    };
    names.extend(
        intermediates
            .iter()
            .filter(|n| !outputs_a.contains(&n.as_str()))
            .filter(|n| produced(orig_graph, n) && produced(cand_graph, n))
            .cloned(),
    );
    let dtypes: Vec<Option<Dtype>> = names
        .iter()
        .map(|n| declared_dtype(orig_graph, n))
        .collect();

    let shape_sets = inputs.shape_sets(options.samples);
    let samples: usize = shape_sets.iter().map(|(_, n)| n).sum();
    let progress = |done: usize| {
        if let Some(hook) = &options.on_sample {
            (hook.0)(done, samples);
        }
    };
    let mut errors: Vec<Accumulator> = dtypes
        .iter()
        .map(|&d| Accumulator::new(options.rtol.unwrap_or(default_tolerance(d))))
        .collect();
    let mut compare = |a: &[Vec<f64>], b: &[Vec<f64>]| -> Option<Verification> {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            if x.len() != y.len() {
                return Some(Verification {
                    status: Status::Failed,
                    reason: Some(format!(
                        "'{}' has {} values against {}",
                        names[k],
                        x.len(),
                        y.len()
                    )),
                    ..Verification::not_verified(String::new(), options.seed)
                });
            }
            errors[k].add(x, y);
        }
        None
    };
    let not_verified = |who: &str, reason: String| {
        Ok(Verification::not_verified(
            format!("{who}: {reason}"),
            options.seed,
        ))
    };
    let runs_of = |model: &Model| runners(model, &inputs, &shape_sets, &names);
    // Both models in tract at once, outputs compared as they come, while their weights are
    // small; above LOCKSTEP_WEIGHT_BYTES one model at a time, the original's outputs kept and
    // its model dropped before the candidate is loaded.
    let lockstep = !options.one_model_at_a_time.unwrap_or_else(|| {
        weight_bytes(original).saturating_add(weight_bytes(candidate)) > LOCKSTEP_WEIGHT_BYTES
    });
    let reference = if lockstep {
        None
    } else {
        match run_all(
            original,
            &inputs,
            &shape_sets,
            &names,
            options.seed,
            &progress,
        ) {
            Ok(r) => Some(r),
            Err(reason) => return not_verified("original", reason),
        }
    };
    let originals = match (&reference, lockstep) {
        (None, true) => match runs_of(original) {
            Ok(r) => Some(r),
            Err(reason) => return not_verified("original", reason),
        },
        _ => None,
    };
    let candidates = match runs_of(candidate) {
        Ok(r) => r,
        Err(reason) => return not_verified("candidate", reason),
    };
    let mut rng = SplitMix(options.seed);
    let mut done = 0;
    for (k, (shapes, count)) in shape_sets.iter().enumerate() {
        for _ in 0..*count {
            if reference.is_none() {
                progress(done);
            }
            let feed = inputs.random(shapes, &mut rng);
            let b = match candidates[k].run(&feed) {
                Ok(b) => b,
                Err(reason) => return not_verified("candidate", reason),
            };
            let failure = match (&reference, &originals) {
                (Some(reference), _) => compare(&reference[done], &b),
                (None, Some(originals)) => match originals[k].run(&feed) {
                    Ok(a) => compare(&a, &b),
                    Err(reason) => return not_verified("original", reason),
                },
                (None, None) => None,
            };
            if let Some(failure) = failure {
                return Ok(failure);
            }
            done += 1;
        }
    }
    let mut outputs: Vec<OutputCheck> = names
        .iter()
        .zip(&errors)
        .zip(&dtypes)
        .map(|((name, acc), &dtype)| {
            acc.check(name, outputs_a.contains(&name.as_str()), dtype, options)
        })
        .collect();
    if outputs.iter().any(|o| !o.passed) {
        second_opinion(
            original,
            candidate,
            &inputs,
            &shape_sets,
            &mut outputs,
            options,
        )?;
    }
    let failed: Vec<&str> = outputs
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name.as_str())
        .collect();
    Ok(Verification {
        status: if failed.is_empty() {
            Status::Passed
        } else {
            Status::Failed
        },
        reason: (!failed.is_empty()).then(|| format!("beyond tolerance: {}", failed.join(", "))),
        outputs,
        guessed_dims: inputs.guessed,
        samples,
        seed: options.seed,
        certificates: vec![],
        regions: vec![],
        structure_difference: None,
        proven_locally: false,
        divergences: vec![],
    })
}

fn declared_dtype_of(model: &Model, name: &str) -> Option<Dtype> {
    declared_dtype(model.proto.graph.as_ref()?, name)
}

fn declared_dtype(graph: &crate::proto::GraphProto, name: &str) -> Option<Dtype> {
    graph
        .output
        .iter()
        .chain(&graph.value_info)
        .find(|v| v.name() == name)
        .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => Dtype::from_code(t.elem_type()),
            _ => None,
        })
}

/// `max |x − y|` over two equally long value lists (NaN against anything else: infinite).
pub(crate) fn max_abs_difference(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// The default relative tolerance of a dtype: a few hundred ulps of accumulated rounding.
pub fn default_tolerance(dtype: Option<Dtype>) -> f64 {
    match dtype {
        Some(Dtype::F64) => 1e-9,
        Some(Dtype::F16) => 1e-2,
        Some(Dtype::Bf16) => 5e-2,
        _ => 1e-4,
    }
}

/// Streaming error statistics of one tensor: memory does not grow with the tensor's size.
pub(crate) struct Accumulator {
    rtol: f64,
    max_abs: f64,
    max_ref: f64,
    /// Largest `|a − b| − rtol·|a|`: the tensor passes when it is at most `atol`.
    worst_excess: f64,
    /// Largest relative error per binary exponent of `|a|`.
    max_rel_by_exponent: BTreeMap<i32, f64>,
}

impl Accumulator {
    pub(crate) fn new(rtol: f64) -> Accumulator {
        Accumulator {
            rtol,
            max_abs: 0.0,
            max_ref: 0.0,
            worst_excess: f64::NEG_INFINITY,
            max_rel_by_exponent: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, a: &[f64], b: &[f64]) {
        for (&x, &y) in a.iter().zip(b) {
            let same = x == y || (x.is_nan() && y.is_nan());
            let diff = if same { 0.0 } else { (x - y).abs() };
            let diff = if diff.is_nan() { f64::INFINITY } else { diff };
            self.max_abs = self.max_abs.max(diff);
            self.max_ref = self.max_ref.max(x.abs());
            if diff > 0.0 {
                let excess = diff - self.rtol * x.abs();
                let excess = if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                };
                self.worst_excess = self.worst_excess.max(excess);
                if x.abs() > 0.0 && x.is_finite() {
                    let exponent = x.abs().log2().floor() as i32;
                    let rel = self.max_rel_by_exponent.entry(exponent).or_insert(0.0);
                    *rel = rel.max(diff / x.abs());
                }
            }
        }
    }

    pub(crate) fn check(
        &self,
        name: &str,
        graph_output: bool,
        dtype: Option<Dtype>,
        o: &VerifyOptions,
    ) -> OutputCheck {
        let tol = default_tolerance(dtype);
        let atol = o.atol.unwrap_or(tol * self.max_ref.max(f64::MIN_POSITIVE));
        let max_rel = self
            .max_rel_by_exponent
            .iter()
            .filter(|(&e, _)| 2f64.powi(e) >= atol)
            .map(|(_, &r)| r)
            .fold(0.0, f64::max);
        OutputCheck {
            name: name.to_string(),
            graph_output,
            max_abs_error: self.max_abs,
            max_rel_error: max_rel,
            normalized_error: if self.max_ref > 0.0 {
                self.max_abs / self.max_ref
            } else {
                self.max_abs
            },
            max_magnitude: self.max_ref,
            atol,
            rtol: self.rtol,
            passed: self.worst_excess <= atol,
            reference: None,
        }
    }
}

/// Above this many bytes of weights in the two models together, verification holds one model
/// in tract at a time.
const LOCKSTEP_WEIGHT_BYTES: usize = 256 << 20;

/// The bytes of every tensor stored in the model, external data included.
fn weight_bytes(model: &Model) -> usize {
    let mut total = 0usize;
    if let Some(g) = &model.proto.graph {
        crate::walk::visit_tensors(g, &mut |t| {
            let count = crate::tensor::proto_dims(t)
                .map(|d| d.iter().product::<usize>())
                .unwrap_or(0);
            let size = Dtype::from_code(t.data_type()).map_or(8, Dtype::size);
            total = total.saturating_add(count.saturating_mul(size));
        });
    }
    total
}

/// splitmix64 with a Box–Muller normal: small, seeded, identical on every platform.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}
