//! A model's values of chosen tensors on the whole-model run's inputs (for
//! [`crate::divergence`]).

use tract_onnx::prelude::*;

use super::{check_input_data, one_line, plan_inputs, runners, to_tract, SplitMix, VerifyOptions};
use crate::error::Result;
use crate::model::Model;
use crate::tensor::Dtype;

/// One value of a tensor in a run: its dtype, shape and elements widened to `f64`.
#[derive(Clone, Debug)]
pub(crate) struct Captured {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f64>,
}

impl Captured {
    fn of(t: &Tensor) -> std::result::Result<Captured, String> {
        let Some(dtype) = crate::tract_eval::dtype_of(t.datum_type()) else {
            return Err(format!("a value of type {:?}", t.datum_type()));
        };
        let wide = t.cast_to::<f64>().map_err(|e| one_line(&e))?;
        let view = wide.try_as_plain_ram().map_err(|e| one_line(&e))?;
        let values = view.as_slice::<f64>().map_err(|e| one_line(&e))?.to_vec();
        Ok(Captured {
            dtype,
            shape: t.shape().to_vec(),
            values,
        })
    }

    /// The value as a tract tensor in f64 when it is a float (for a model widened to f64),
    /// else in its dtype.
    pub(crate) fn widened(&self) -> Tensor {
        match self.dtype.is_float() {
            true => to_tract(Dtype::F64, &self.shape, &self.values),
            false => self.to_tract(),
        }
    }

    /// The value as a tract tensor of its dtype.
    pub(crate) fn to_tract(&self) -> Tensor {
        to_tract(self.dtype, &self.shape, &self.values)
    }
}

/// Runs `model` on the whole-model run's seeded random inputs (the same samples, in the same
/// order) and returns, per sample, the value of each of `names` (a graph input's from the
/// feed); `Err` when tract cannot run it.
pub(crate) fn capture(
    model: &Model,
    names: &[String],
    options: &VerifyOptions,
) -> Result<std::result::Result<Vec<Vec<Captured>>, String>> {
    let inputs = match plan_inputs(model, options) {
        Ok(i) => i,
        Err(reason) => return Ok(Err(reason)),
    };
    check_input_data(&inputs.specs, options)?;
    let computed: Vec<String> = names
        .iter()
        .filter(|n| !inputs.specs.iter().any(|s| &s.name == *n))
        .cloned()
        .collect();
    let shape_sets = inputs.shape_sets(options.samples);
    let runs = match runners(model, &inputs, &shape_sets, &computed) {
        Ok(r) => r,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut rng = SplitMix(options.seed);
    let mut samples = Vec::new();
    for ((shapes, count), runner) in shape_sets.iter().zip(&runs) {
        for _ in 0..*count {
            let feed = inputs.random(shapes, &mut rng);
            let outputs = match runner.run_tensors(&feed) {
                Ok(o) => o,
                Err(reason) => return Ok(Err(reason)),
            };
            let mut values = Vec::with_capacity(names.len());
            for name in names {
                let tensor = match inputs.specs.iter().position(|s| &s.name == name) {
                    Some(i) => &feed[i],
                    None => {
                        let k = computed.iter().position(|c| c == name).unwrap_or(0);
                        &*outputs[k]
                    }
                };
                match Captured::of(tensor) {
                    Ok(c) => values.push(c),
                    Err(reason) => return Ok(Err(format!("'{name}' holds {reason}"))),
                }
            }
            samples.push(values);
        }
    }
    Ok(Ok(samples))
}
