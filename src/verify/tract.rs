//! Models in tract: parsed once, typed (never optimized: tract's optimizer folds
//! BatchNormalization by itself), run one sample at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};

use prost::Message;
use tract_onnx::prelude::*;

use super::{plan_inputs, InputSpec, Inputs, SplitMix, VerifyOptions};
use crate::model::Model;
use crate::proto::ModelProto;
use crate::tensor::Dtype;

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

pub(super) fn tract_dt(d: Dtype) -> DatumType {
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

/// Loads and analyses `model` once and returns a runnable model for each shape set. When the
/// samples vary the batch, one typed model with a symbolic batch serves them all; if tract
/// cannot type the model symbolically, each shape set gets a concrete typed model cloned from
/// the same parse.
pub(super) fn runners(
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
pub(super) fn declares_shapes(model: &Model) -> bool {
    model.proto.graph.as_ref().is_some_and(|g| {
        !g.value_info.is_empty() || g.output.iter().any(|o| tensor_shape(o).is_some())
    })
}

pub(super) fn tensor_shape(
    v: &crate::proto::ValueInfoProto,
) -> Option<&crate::proto::TensorShapeProto> {
    match v.r#type.as_ref()?.value.as_ref()? {
        crate::proto::type_proto::Value::TensorType(t) => t.shape.as_ref(),
        _ => None,
    }
}

pub(super) fn runners_of(
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
pub(super) fn run_all(
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
pub(super) fn parse(
    model: &Model,
    drop_declared: bool,
) -> std::result::Result<InferenceModel, String> {
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
pub(super) fn typed(
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
    pub(super) fn run_tensors(&self, feed: &[Tensor]) -> std::result::Result<TVec<TValue>, String> {
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

pub(super) fn one_line(e: &TractError) -> String {
    format!("{e:#}").replace('\n', " ")
}

pub(super) fn bf16_tensor(model: &ModelProto) -> Option<String> {
    let mut found = None;
    if let Some(g) = &model.graph {
        crate::walk::visit_tensors(g, &mut |t| {
            if found.is_none() && t.data_type() == Dtype::Bf16.code() {
                found = Some(t.name().to_string());
            }
        });
    }
    found
}
