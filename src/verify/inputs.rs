//! The whole-model run's inputs: each graph input's dtype and shape (symbolic dims from `--dim`,
//! `--input-shape`, real data, or guessed), and seeded random values for them.

use super::{to_tract, SplitMix, VerifyOptions};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::npy::NpyArray;
use crate::proto::type_proto;
use crate::tensor::Dtype;
use tract_onnx::prelude::Tensor;

/// A graph input: its name, dtype and shape with symbolic axes as `None`.
#[derive(Clone)]
pub(super) struct InputSpec {
    pub(super) name: String,
    pub(super) dtype: Dtype,
    pub(super) dims: Vec<Option<usize>>,
    pub(super) symbols: Vec<Option<String>>,
    pub(super) data: Option<NpyArray>,
}

impl InputSpec {
    pub(super) fn declared_shape(&self) -> String {
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
pub(super) struct Inputs {
    pub(super) specs: Vec<InputSpec>,
    pub(super) options_dims: Vec<Vec<usize>>,
    pub(super) batch_two: Option<Vec<Vec<usize>>>,
    pub(super) guessed: Vec<String>,
}

impl Inputs {
    /// The input shapes of each group of samples. Real data for every input makes every sample
    /// the same, so one is run.
    pub(super) fn shape_sets(&self, samples: usize) -> Vec<(Vec<Vec<usize>>, usize)> {
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
    pub(super) fn symbolic_batch_template(&self) -> Vec<Vec<Option<usize>>> {
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

    pub(super) fn random(&self, shapes: &[Vec<usize>], rng: &mut SplitMix) -> Vec<Tensor> {
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
pub(super) fn check_input_data(specs: &[InputSpec], options: &VerifyOptions) -> Result<()> {
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

pub(super) fn plan_inputs(
    model: &Model,
    options: &VerifyOptions,
) -> std::result::Result<Inputs, String> {
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
                    let guess = guessed_size(axis, spec.dims.len());
                    guessed.push(format!(
                        "{}:{}{}={guess}",
                        spec.name,
                        axis,
                        sym.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
                    ));
                    if axis == 0 {
                        batch_free = true;
                    }
                    guess
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

/// The size guessed for an unknown dimension: 1 for a batch or feature axis; for the spatial
/// axes of an image or volume (axis 2 and on of a rank ≥ 4 input) 32, a multiple of the usual
/// total stride, so that every tap of a kernel meets data (at 1 × 1 a 3 × 3 kernel's outer taps
/// read only padding, and a wrong outer weight would go unseen).
fn guessed_size(axis: usize, rank: usize) -> usize {
    match axis >= 2 && rank >= 4 {
        true => 32,
        false => 1,
    }
}
