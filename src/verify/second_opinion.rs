//! The second opinion on a whole-model output beyond the fixed tolerance (see
//! [`crate::reference`]): the original in f64, else its sensitivity, run on the same inputs.

use tract_onnx::prelude::*;

use super::{
    declared_dtype_of, max_abs_difference, runners, Inputs, OutputCheck, Runner, SplitMix,
    VerifyOptions,
};
use crate::error::Result;
use crate::model::Model;
use crate::reference::ReferenceKind;
use crate::tensor::Dtype;

/// Judges each output beyond the fixed tolerance a second time, against the original in f64
/// where tract runs it so, else against the original's sensitivity (see [`crate::reference`]),
/// on the same inputs as the first run. Where neither can run, the fixed tolerance stands.
pub(super) fn second_opinion(
    original: &Model,
    candidate: &Model,
    inputs: &Inputs,
    shape_sets: &[(Vec<Vec<usize>>, usize)],
    outputs: &mut [OutputCheck],
    options: &VerifyOptions,
) -> Result<()> {
    let failing: Vec<String> = outputs
        .iter()
        .filter(|o| !o.passed && o.max_abs_error.is_finite())
        .map(|o| o.name.clone())
        .collect();
    if failing.is_empty() {
        return Ok(());
    }
    let runs = |model: &Model, inputs: &Inputs| runners(model, inputs, shape_sets, &failing);
    let (Ok(orig_runs), Ok(cand_runs)) = (runs(original, inputs), runs(candidate, inputs)) else {
        return Ok(());
    };
    let mut wide_inputs = inputs.clone();
    for spec in wide_inputs.specs.iter_mut().filter(|s| s.dtype.is_float()) {
        spec.dtype = Dtype::F64;
    }
    // The exact reference first (tract may type an f64 model and fail only when an op runs),
    // then the sensitivity.
    let exact = match crate::reference::widened(original)? {
        Ok(wide) => runs(&wide, &wide_inputs).ok(),
        Err(_) => None,
    };
    let mut judged = None;
    for kind in [ReferenceKind::Exact, ReferenceKind::Sensitivity] {
        let reference = match kind {
            ReferenceKind::Exact => exact.clone(),
            ReferenceKind::Sensitivity => {
                let perturbed = crate::reference::perturbed(original, options.seed)?;
                runs(&perturbed, inputs).ok()
            }
        };
        let runs = (&orig_runs[..], &cand_runs[..]);
        judged = reference
            .and_then(|r| worst_errors(kind, &r, runs, inputs, shape_sets, options))
            .map(|w| (kind, w));
        if judged.is_some() {
            break;
        }
    }
    let Some((kind, worst)) = judged else {
        return Ok(());
    };
    for (name, (cand, orig, magnitude)) in failing.iter().zip(worst) {
        let Some(o) = outputs.iter_mut().find(|o| &o.name == name) else {
            continue;
        };
        let dtype = declared_dtype_of(original, name).unwrap_or(Dtype::F32);
        let check = crate::reference::judge(kind, cand, orig, magnitude, dtype);
        o.passed = check.passed;
        o.reference = Some(check);
    }
    Ok(())
}

/// The largest (candidate error, original error, reference magnitude) of each compared output
/// over the same samples as the first run (see [`crate::reference`]); `None` when a run fails.
fn worst_errors(
    kind: ReferenceKind,
    reference: &[Runner],
    (originals, candidates): (&[Runner], &[Runner]),
    inputs: &Inputs,
    shape_sets: &[(Vec<Vec<usize>>, usize)],
    options: &VerifyOptions,
) -> Option<Vec<(f64, f64, f64)>> {
    let mut worst: Vec<(f64, f64, f64)> = Vec::new();
    let mut rng = SplitMix(options.seed);
    for (k, (shapes, count)) in shape_sets.iter().enumerate() {
        for _ in 0..*count {
            let feed = inputs.random(shapes, &mut rng);
            let reference_feed: Vec<Tensor> = match kind {
                ReferenceKind::Exact => feed
                    .iter()
                    .map(|t| match t.datum_type().is_float() {
                        true => t.cast_to_dt(DatumType::F64).map(|c| c.into_owned()),
                        false => Ok(t.clone()),
                    })
                    .collect::<TractResult<_>>()
                    .ok()?,
                ReferenceKind::Sensitivity => feed.clone(),
            };
            let a = originals[k].run(&feed).ok()?;
            let b = candidates[k].run(&feed).ok()?;
            let r = reference[k].run(&reference_feed).ok()?;
            worst.resize(a.len(), (0.0, 0.0, 0.0));
            for (j, w) in worst.iter_mut().enumerate() {
                let (cand, orig) = match kind {
                    ReferenceKind::Exact => (
                        max_abs_difference(&b[j], &r[j]),
                        max_abs_difference(&a[j], &r[j]),
                    ),
                    ReferenceKind::Sensitivity => (
                        max_abs_difference(&b[j], &a[j]),
                        max_abs_difference(&r[j], &a[j]),
                    ),
                };
                let magnitude = r[j].iter().fold(0f64, |m, v| m.max(v.abs()));
                *w = (w.0.max(cand), w.1.max(orig), w.2.max(magnitude));
            }
        }
    }
    Some(worst)
}
