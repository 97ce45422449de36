//! Prepared regions run in batches: one merged model per arithmetic when tract takes it, else
//! one region at a time; each judged against its exact value.

use super::build;
use super::exact::{self, RegionModels, Units};
use crate::error::Result;
use crate::model::Model;
use crate::verify::{ExactCheck, OutputCheck, RegionCheck, Status, VerifyOptions};

/// Weights (of both sides) a batch of regions may hold.
pub(super) const BATCH_BYTES: usize = 64 << 20;

pub(super) fn weight_bytes(r: &Ready) -> usize {
    let m = &r.models;
    [&m.original, &m.fused, &m.exact, &m.magnitudes]
        .iter()
        .filter_map(|m| m.proto.graph.as_ref())
        .flat_map(|g| &g.initializer)
        .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len()))
        .sum()
}

/// A region ready to run: its slot among the checks, its models, how its output is measured,
/// and its data input's name.
pub(super) struct Ready {
    pub(super) slot: usize,
    pub(super) models: RegionModels,
    pub(super) units: Units,
    pub(super) data: String,
    /// Runs its samples take (1 when they are stacked along the first axis).
    pub(super) runs: usize,
}

/// Runs one batch of prepared regions in one merged model each (the regions' data inputs
/// renamed apart) when tract takes it, else one by one.
pub(super) fn run_batch(
    checks: &mut [RegionCheck],
    ready: &[Ready],
    options: &VerifyOptions,
) -> Result<()> {
    if ready.len() > 1 {
        let merge = |pick: fn(&RegionModels) -> &Model| {
            let parts: Vec<(&Model, &str)> = ready
                .iter()
                .map(|r| (pick(&r.models), r.data.as_str()))
                .collect();
            build::merged(&parts)
        };
        let merged = (
            merge(|m| &m.original),
            merge(|m| &m.fused),
            merge(|m| &m.exact),
            merge(|m| &m.magnitudes),
        );
        if let (Some(original), Some(fused), Some(exact), Some(magnitudes)) = merged {
            let models = RegionModels {
                original,
                fused,
                exact,
                magnitudes,
            };
            let outputs: Vec<String> = ready
                .iter()
                .map(|r| checks[r.slot].output.clone())
                .collect();
            let units: Vec<Units> = ready.iter().map(|r| r.units).collect();
            let runs = VerifyOptions {
                samples: ready.iter().map(|r| r.runs).max().unwrap_or(1),
                ..options.clone()
            };
            if let Ok(judged) = exact::judge(&models, &outputs, &units, &runs) {
                for (r, j) in ready.iter().zip(judged) {
                    record(&mut checks[r.slot], j);
                }
                return Ok(());
            }
        }
    }
    for r in ready {
        let check = &mut checks[r.slot];
        let outputs = [check.output.clone()];
        let runs = VerifyOptions {
            samples: r.runs,
            ..options.clone()
        };
        match exact::judge(&r.models, &outputs, &[r.units], &runs) {
            Ok(judged) => {
                for j in judged {
                    record(check, j);
                }
            }
            Err(why) => {
                // No exact reference (an op tract does not run in f64): the region is judged
                // against the original alone, with the tolerance of one layer.
                let v = crate::verify::run_whole_model(
                    &r.models.original,
                    &r.models.fused,
                    &[],
                    &runs,
                )?;
                check.status = v.status;
                check.reason = v.reason;
                check.check = v.outputs.into_iter().next();
                check.exact_unavailable = Some(why);
            }
        }
    }
    Ok(())
}

/// Records a region's exact check (which decides) and its comparison against the original.
pub(super) fn record(check: &mut RegionCheck, (judged, compared): (ExactCheck, OutputCheck)) {
    check.status = if judged.passed {
        Status::Passed
    } else {
        Status::Failed
    };
    check.reason = (!judged.passed).then(|| {
        format!(
            "{:.1} units of rounding from the exact value, beyond the bound of {:.1}",
            judged.fused_error_units, judged.bound_units
        )
    });
    check.check = Some(compared);
    check.exact = Some(judged);
}
