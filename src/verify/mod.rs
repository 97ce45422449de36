//! Proof of equivalence: the original and the candidate run side by side with tract on seeded
//! random inputs. The reference uses tract's typed model *without* `into_optimized()`, whose
//! decluttering folds BatchNormalization into Conv by itself.

use std::collections::BTreeMap;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::npy::NpyArray;

mod accumulate;
mod capture;
mod inputs;
mod preflight;
mod report;
mod second_opinion;
mod tract;

use crate::tensor::Dtype;
pub use accumulate::default_tolerance;
pub(crate) use accumulate::{max_abs_difference, Accumulator, SplitMix};
pub(crate) use capture::{capture, Captured};
use inputs::{check_input_data, plan_inputs, InputSpec, Inputs};
pub(crate) use preflight::declared_dtype_of;
use preflight::{declared_dtype, interface_difference, weight_bytes, LOCKSTEP_WEIGHT_BYTES};
pub use preflight::{too_large_to_run, MAX_WHOLE_MODEL_NODES};
pub use report::{DivergenceCheck, ExactCheck, OutputCheck, RegionCheck, Status, Verification};
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
