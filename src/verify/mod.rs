//! Proof of equivalence: the original and the candidate run side by side with tract on seeded
//! random inputs. The reference uses tract's typed model *without* `into_optimized()`, whose
//! decluttering folds BatchNormalization into Conv by itself.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use prost::Message;
use serde::Serialize;
use tract_onnx::prelude::*;

use crate::certificate::NodeCertificate;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::npy::NpyArray;
use crate::proto::{type_proto, ModelProto};
use crate::reference::ReferenceCheck;

mod capture;
mod second_opinion;

use crate::tensor::Dtype;
pub(crate) use capture::{capture, Captured};
use second_opinion::second_opinion;

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
        }
    }
}

/// The outcome of the check.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// The second opinion, for an output beyond the fixed tolerance (see [`crate::reference`]).
    pub reference: Option<ReferenceCheck>,
}

/// What the check did.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// The exact certificate of every node that took over a BatchNormalization's output
    /// (see [`crate::certificate`]).
    pub certificates: Vec<NodeCertificate>,
    /// Each backward fold run alone against its original region (see [`crate::regions`]).
    pub regions: Vec<RegionCheck>,
    /// The first difference between the graphs outside the folds (see [`crate::structure`]).
    pub structure_difference: Option<String>,
    /// Whether the local proof is complete: no difference outside the folds, every region
    /// passed, every certificate passed.
    pub proven_locally: bool,
    /// Where the candidate differs outside the folds: each differing region run alone on the
    /// original's values (see [`crate::divergence`]).
    pub divergences: Vec<DivergenceCheck>,
}

/// One fold's region against its fused node.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// The region's output against its exact value (see [`crate::regions`]), which decides.
    pub exact: Option<ExactCheck>,
    /// Why the region has no exact check (tract cannot run it in f64), when it has none: then
    /// `check` decides, with the tolerance of one layer.
    pub exact_unavailable: Option<String>,
}

/// A region's outputs against their exact values.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
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

/// A graph input: its name, dtype and shape with symbolic axes as `None`.
#[derive(Clone)]
struct InputSpec {
    name: String,
    dtype: Dtype,
    dims: Vec<Option<usize>>,
    symbols: Vec<Option<String>>,
    data: Option<NpyArray>,
}

impl InputSpec {
    fn declared_shape(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .zip(&self.symbols)
            .map(|(d, s)| match (d, s) {
                (Some(v), _) => v.to_string(),
                (None, Some(s)) => s.clone(),
                (None, None) => "?".into(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

#[derive(Clone)]
struct Inputs {
    specs: Vec<InputSpec>,
    options_dims: Vec<Vec<usize>>,
    batch_two: Option<Vec<Vec<usize>>>,
    guessed: Vec<String>,
}

impl Inputs {
    /// The input shapes of each group of samples. Real data for every input makes every sample
    /// the same, so one is run.
    fn shape_sets(&self, samples: usize) -> Vec<(Vec<Vec<usize>>, usize)> {
        let all_given = !self.specs.is_empty() && self.specs.iter().all(|s| s.data.is_some());
        let samples = if all_given { 1 } else { samples.max(1) };
        match &self.batch_two {
            Some(two) if samples > 1 => {
                vec![(self.options_dims.clone(), samples - 1), (two.clone(), 1)]
            }
            _ => vec![(self.options_dims.clone(), samples)],
        }
    }

    /// The shapes of the first set with the varying batch axis left symbolic (`None`).
    fn symbolic_batch_template(&self) -> Vec<Vec<Option<usize>>> {
        let two = self.batch_two.as_ref().unwrap_or(&self.options_dims);
        self.options_dims
            .iter()
            .zip(two)
            .map(|(one, two)| {
                one.iter()
                    .zip(two)
                    .map(|(&a, &b)| (a == b).then_some(a))
                    .collect()
            })
            .collect()
    }

    fn random(&self, shapes: &[Vec<usize>], rng: &mut SplitMix) -> Vec<Tensor> {
        self.specs
            .iter()
            .zip(shapes)
            .map(|(spec, shape)| {
                if let Some(data) = &spec.data {
                    return to_tract(spec.dtype, &data.shape, &data.values);
                }
                let n: usize = shape.iter().product();
                let values: Vec<f64> = (0..n)
                    .map(|_| match spec.dtype {
                        d if d.is_float() => rng.normal(),
                        Dtype::Bool => (rng.next() & 1) as f64,
                        _ => (rng.next() % 4) as f64,
                    })
                    .collect();
                to_tract(spec.dtype, shape, &values)
            })
            .collect()
    }
}

/// Refuses data for an input the model does not have, or whose type or shape does not fit.
fn check_input_data(specs: &[InputSpec], options: &VerifyOptions) -> Result<()> {
    for name in options.input_data.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::InputData {
                source_file: name.clone(),
                problem: format!("the model has no graph input of that name (inputs: {known:?})"),
            });
        }
    }
    for spec in specs {
        let Some(data) = &spec.data else { continue };
        let problem = if data.dtype.is_float() != spec.dtype.is_float() {
            Some(format!(
                "holds {} but input '{}' is {}",
                data.dtype.name(),
                spec.name,
                spec.dtype.name()
            ))
        } else if data.shape.len() != spec.dims.len()
            || data
                .shape
                .iter()
                .zip(&spec.dims)
                .any(|(&have, want)| want.is_some_and(|w| w != have))
        {
            Some(format!(
                "has shape {:?} but input '{}' is declared {}",
                data.shape,
                spec.name,
                spec.declared_shape()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::InputData {
                source_file: spec.name.clone(),
                problem,
            });
        }
    }
    Ok(())
}

fn plan_inputs(model: &Model, options: &VerifyOptions) -> std::result::Result<Inputs, String> {
    let graph = model.proto.graph.as_ref().ok_or("no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let mut specs = Vec::new();
    for input in graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name()))
    {
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(format!("input '{}' is not a tensor", input.name()));
        };
        let dtype = Dtype::from_code(t.elem_type()).ok_or_else(|| {
            format!(
                "input '{}' has unsupported type {}",
                input.name(),
                t.elem_type()
            )
        })?;
        if dtype == Dtype::Bf16 {
            return Err(format!(
                "input '{}' is bfloat16, which tract does not run",
                input.name()
            ));
        }
        let dims = t
            .shape
            .as_ref()
            .map(|s| s.dim.as_slice())
            .unwrap_or_default();
        let (dims, symbols) = dims
            .iter()
            .map(|d| match &d.value {
                Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(v))
                    if *v >= 0 =>
                {
                    (Some(*v as usize), None)
                }
                Some(crate::proto::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                    (None, Some(p.clone()))
                }
                _ => (None, None),
            })
            .unzip();
        specs.push(InputSpec {
            name: input.name().to_string(),
            dtype,
            dims,
            symbols,
            data: options.input_data.get(input.name()).cloned(),
        });
    }
    let mut guessed = Vec::new();
    let mut resolved = Vec::new();
    let mut batch_two = Vec::new();
    let mut batch_free = false;
    let explicit = |spec: &InputSpec| {
        spec.data
            .as_ref()
            .map(|d| d.shape.clone())
            .or_else(|| options.input_shapes.get(&spec.name).cloned())
    };
    let any_explicit = specs.iter().any(|s| explicit(s).is_some());
    for spec in &specs {
        if let Some(shape) = explicit(spec) {
            resolved.push(shape.clone());
            batch_two.push(shape);
            continue;
        }
        let mut shape = Vec::new();
        let mut two = Vec::new();
        for (axis, (d, sym)) in spec.dims.iter().zip(&spec.symbols).enumerate() {
            let value = match (d, sym) {
                (Some(v), _) => *v,
                (None, Some(s)) if options.dims.contains_key(s) => options.dims[s],
                (None, sym) => {
                    guessed.push(format!(
                        "{}:{}{}=1",
                        spec.name,
                        axis,
                        sym.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
                    ));
                    if axis == 0 {
                        batch_free = true;
                    }
                    1
                }
            };
            shape.push(value);
            two.push(
                if axis == 0
                    && d.is_none()
                    && !sym.as_ref().is_some_and(|s| options.dims.contains_key(s))
                {
                    2
                } else {
                    value
                },
            );
        }
        resolved.push(shape);
        batch_two.push(two);
    }
    Ok(Inputs {
        specs,
        options_dims: resolved,
        batch_two: (batch_free && !any_explicit).then_some(batch_two),
        guessed,
    })
}

pub(crate) fn to_tract(dtype: Dtype, shape: &[usize], values: &[f64]) -> Tensor {
    let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let build = || -> TractResult<Tensor> {
        Ok(match dtype {
            Dtype::F64 => Tensor::from_shape(shape, values)?,
            Dtype::F32 => Tensor::from_shape(shape, &f32s)?,
            Dtype::F16 => Tensor::from_shape(shape, &f32s)?
                .cast_to_dt(DatumType::F16)?
                .into_owned(),
            Dtype::Bool => {
                Tensor::from_shape(shape, &values.iter().map(|&v| v != 0.0).collect::<Vec<_>>())?
            }
            Dtype::I64 => {
                Tensor::from_shape(shape, &values.iter().map(|&v| v as i64).collect::<Vec<_>>())?
            }
            other => {
                Tensor::from_shape(shape, &values.iter().map(|&v| v as i64).collect::<Vec<_>>())?
                    .cast_to_dt(tract_dt(other))?
                    .into_owned()
            }
        })
    };
    build().unwrap_or_else(|_| Tensor::from_shape(shape, &f32s).unwrap_or_else(|_| tensor0(0f32)))
}

fn tract_dt(d: Dtype) -> DatumType {
    match d {
        Dtype::F32 => DatumType::F32,
        Dtype::F16 => DatumType::F16,
        Dtype::F64 => DatumType::F64,
        Dtype::I8 => DatumType::I8,
        Dtype::U8 => DatumType::U8,
        Dtype::I16 => DatumType::I16,
        Dtype::U16 => DatumType::U16,
        Dtype::I32 => DatumType::I32,
        Dtype::U32 => DatumType::U32,
        Dtype::I64 => DatumType::I64,
        Dtype::U64 => DatumType::U64,
        Dtype::Bool => DatumType::Bool,
        Dtype::Bf16 => DatumType::F32,
    }
}

/// Above this many bytes of weights in the two models together, verification holds one model
/// in tract at a time.
const LOCKSTEP_WEIGHT_BYTES: usize = 256 << 20;

/// The bytes of every tensor stored in the model, external data included.
fn weight_bytes(model: &Model) -> usize {
    let mut total = 0usize;
    if let Some(g) = &model.proto.graph {
        crate::model::visit_tensors(g, &mut |t| {
            let count = crate::tensor::proto_dims(t)
                .map(|d| d.iter().product::<usize>())
                .unwrap_or(0);
            let size = Dtype::from_code(t.data_type()).map_or(8, Dtype::size);
            total = total.saturating_add(count.saturating_mul(size));
        });
    }
    total
}

/// Loads and analyses `model` once and returns a runnable model for each shape set. When the
/// samples vary the batch, one typed model with a symbolic batch serves them all; if tract
/// cannot type the model symbolically, each shape set gets a concrete typed model cloned from
/// the same parse.
fn runners(
    model: &Model,
    inputs: &Inputs,
    shape_sets: &[(Vec<Vec<usize>>, usize)],
    outputs: &[String],
) -> std::result::Result<Vec<Runner>, String> {
    match runners_of(parse(model, false)?, inputs, shape_sets, outputs) {
        Ok(runners) => Ok(runners),
        // Declared shapes can contradict the graph (value_info written against other symbolic
        // dims): tract gets a copy without them; the model that is written keeps them.
        Err(first) if declares_shapes(model) => {
            runners_of(parse(model, true)?, inputs, shape_sets, outputs).map_err(|_| first)
        }
        Err(first) => Err(first),
    }
}

/// Whether the main graph declares shapes beyond its inputs: `value_info`, or output shapes.
fn declares_shapes(model: &Model) -> bool {
    model.proto.graph.as_ref().is_some_and(|g| {
        !g.value_info.is_empty() || g.output.iter().any(|o| tensor_shape(o).is_some())
    })
}

fn tensor_shape(v: &crate::proto::ValueInfoProto) -> Option<&crate::proto::TensorShapeProto> {
    match v.r#type.as_ref()?.value.as_ref()? {
        crate::proto::type_proto::Value::TensorType(t) => t.shape.as_ref(),
        _ => None,
    }
}

fn runners_of(
    parsed: InferenceModel,
    inputs: &Inputs,
    shape_sets: &[(Vec<Vec<usize>>, usize)],
    outputs: &[String],
) -> std::result::Result<Vec<Runner>, String> {
    if shape_sets.len() > 1 {
        let template = inputs.symbolic_batch_template();
        if let Ok(r) = typed(parsed.clone(), &inputs.specs, &template, outputs) {
            return Ok(shape_sets.iter().map(|_| r.clone()).collect());
        }
    }
    shape_sets
        .iter()
        .map(|(shapes, _)| {
            let template: Vec<Vec<Option<usize>>> = shapes
                .iter()
                .map(|s| s.iter().map(|&d| Some(d)).collect())
                .collect();
            typed(parsed.clone(), &inputs.specs, &template, outputs)
        })
        .collect()
}

/// Runs every sample on `model` and returns the compared tensors of each; the model is dropped
/// on return. The inputs come from `seed`, so the candidate later sees the same ones.
fn run_all(
    model: &Model,
    inputs: &Inputs,
    shape_sets: &[(Vec<Vec<usize>>, usize)],
    outputs: &[String],
    seed: u64,
    progress: &dyn Fn(usize),
) -> std::result::Result<Vec<Vec<Vec<f64>>>, String> {
    let runs = runners(model, inputs, shape_sets, outputs)?;
    let mut rng = SplitMix(seed);
    let mut results = Vec::new();
    for ((shapes, count), runner) in shape_sets.iter().zip(&runs) {
        for _ in 0..*count {
            progress(results.len());
            let feed = inputs.random(shapes, &mut rng);
            results.push(runner.run(&feed)?);
        }
    }
    Ok(results)
}

/// Parses a model into tract's inference model, once per run; with `drop_declared`, without its
/// `value_info` and output shapes (tract then infers them from the inputs alone).
fn parse(model: &Model, drop_declared: bool) -> std::result::Result<InferenceModel, String> {
    if let Some(bf16) = bf16_tensor(&model.proto) {
        return Err(format!(
            "tensor '{bf16}' is bfloat16, which tract does not know"
        ));
    }
    let mut proto = model.materialized().map_err(|e| e.to_string())?;
    if let Some(g) = proto.graph.as_mut().filter(|_| drop_declared) {
        g.value_info.clear();
        for o in &mut g.output {
            if let Some(crate::proto::type_proto::Value::TensorType(t)) =
                o.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
        }
    }
    let bytes = proto.encode_to_vec();
    drop(proto);
    let dir = model
        .store
        .base_dir()
        .and_then(|d| d.to_str())
        .map(|s| s.to_string());
    let build = move || -> TractResult<InferenceModel> {
        let onnx = tract_onnx::onnx();
        let pb = onnx.proto_model_for_read(&mut bytes.as_slice())?;
        drop(bytes);
        let parsed = onnx.parse(&pb, dir.as_deref())?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(TractError::msg(format!(
                "unresolved inputs {:?}",
                parsed.unresolved_inputs
            )));
        }
        Ok(parsed.model)
    };
    match catch_unwind(AssertUnwindSafe(build)) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(format!("tract cannot run it: {}", one_line(&e))),
        Err(_) => Err("tract panicked while loading it".into()),
    }
}

/// Types a parsed model for the given input shapes (`None`: the symbolic batch) and plans it,
/// without tract's optimizer.
fn typed(
    mut model: InferenceModel,
    specs: &[InputSpec],
    template: &[Vec<Option<usize>>],
    outputs: &[String],
) -> std::result::Result<Runner, String> {
    let build = move || -> TractResult<Arc<TypedRunnableModel>> {
        let batch = model.symbols.sym("bnfold_batch");
        for (i, (spec, shape)) in specs.iter().zip(template).enumerate() {
            let dims: Vec<TDim> = shape
                .iter()
                .map(|d| d.map_or_else(|| TDim::Sym(batch.clone()), |v| TDim::Val(v as i64)))
                .collect();
            model.set_input_fact(i, InferenceFact::dt_shape(tract_dt(spec.dtype), dims))?;
        }
        model.select_outputs_by_name(outputs)?;
        model.into_typed()?.into_runnable()
    };
    match catch_unwind(AssertUnwindSafe(build)) {
        Ok(Ok(plan)) => Ok(Runner { plan }),
        Ok(Err(e)) => Err(format!("tract cannot run it: {}", one_line(&e))),
        Err(_) => Err("tract panicked while loading it".into()),
    }
}

/// A graph input's dtype and fixed shape.
pub(crate) type InputShape = (Dtype, Vec<usize>);

/// `model` typed for the shapes its inputs declare (every dim fixed), and those inputs' dtypes
/// and shapes; for models bnfold builds itself (the regions).
pub(crate) fn fixed_runner(
    model: &Model,
    outputs: &[String],
) -> std::result::Result<(Runner, Vec<InputShape>), String> {
    let inputs = plan_inputs(model, &VerifyOptions::default())?;
    let template: Vec<Vec<Option<usize>>> = inputs
        .options_dims
        .iter()
        .map(|s| s.iter().map(|&d| Some(d)).collect())
        .collect();
    let runner = typed(parse(model, false)?, &inputs.specs, &template, outputs)?;
    let shapes = inputs
        .specs
        .iter()
        .map(|s| s.dtype)
        .zip(inputs.options_dims)
        .collect();
    Ok((runner, shapes))
}

/// One model prepared for tract: typed, not optimized.
#[derive(Clone)]
pub(crate) struct Runner {
    plan: Arc<TypedRunnableModel>,
}

impl Runner {
    /// Runs one sample; every output as tract gives it.
    fn run_tensors(&self, feed: &[Tensor]) -> std::result::Result<TVec<TValue>, String> {
        let inputs: TVec<TValue> = feed.iter().map(|t| t.clone().into()).collect();
        match catch_unwind(AssertUnwindSafe(|| self.plan.run(inputs))) {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(format!("tract failed to run it: {}", one_line(&e))),
            Err(_) => Err("tract panicked while running it".into()),
        }
    }

    /// Runs one sample; every output widened to `f64`.
    pub(crate) fn run(&self, feed: &[Tensor]) -> std::result::Result<Vec<Vec<f64>>, String> {
        let outputs = self.run_tensors(feed)?;
        outputs
            .iter()
            .map(|t| {
                let t = t.cast_to::<f64>().map_err(|e| one_line(&e))?;
                let view = t.try_as_plain_ram().map_err(|e| one_line(&e))?;
                view.as_slice::<f64>()
                    .map(|s| s.to_vec())
                    .map_err(|e| one_line(&e))
            })
            .collect()
    }
}

fn one_line(e: &TractError) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn bf16_tensor(model: &ModelProto) -> Option<String> {
    let mut found = None;
    if let Some(g) = &model.graph {
        crate::model::visit_tensors(g, &mut |t| {
            if found.is_none() && t.data_type() == Dtype::Bf16.code() {
                found = Some(t.name().to_string());
            }
        });
    }
    found
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
