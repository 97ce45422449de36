//! Constant ops that bnfold's own evaluator ([`crate::consts`]) does not know, run by tract: the
//! node alone, its constant inputs as initializers, so its outputs' shapes and dtypes are the
//! ones the ONNX op defines (a computed weight, bias or BN parameter folds whatever ops compute
//! it: `ReduceMean`, `Pow`, `Clip`, `Einsum`, …).

use std::panic::{catch_unwind, AssertUnwindSafe};

use prost::Message;
use tract_onnx::prelude::*;

use crate::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
use crate::tensor::{Dtype, Tensor as Values};

/// Ops never evaluated ahead of time: their result is not a function of their inputs, they hold
/// a subgraph, or (the quantization ops) what they compute is a quantized model's, which bnfold
/// leaves as it is.
const NOT_CONSTANT: [&str; 14] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "SequenceMap",
    "Dropout",
];

/// The single output of `node` computed by tract from `inputs` (its inputs' values, in order;
/// `None` for an absent optional input), under the default domain's `opset`; `None` when tract
/// cannot compute it (an op it lacks, a bfloat16 tensor, anything it refuses).
pub(crate) fn evaluate(node: &NodeProto, inputs: &[Option<&Values>], opset: i64) -> Option<Values> {
    if NOT_CONSTANT.contains(&node.op_type())
        || node.output.len() != 1
        || inputs.iter().flatten().any(|t| t.dtype == Dtype::Bf16)
    {
        return None;
    }
    let initializer = node
        .input
        .iter()
        .zip(inputs)
        .filter_map(|(name, value)| value.map(|v| v.to_proto(name)))
        .collect();
    let proto = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("constant".into()),
            node: vec![node.clone()],
            initializer,
            output: vec![ValueInfoProto {
                name: Some(node.output[0].clone()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = proto.encode_to_vec();
    let run = move || -> TractResult<TValue> {
        let model = tract_onnx::onnx().model_for_read(&mut bytes.as_slice())?;
        let plan = model.into_typed()?.into_runnable()?;
        let mut outputs = plan.run(tvec![])?;
        outputs.pop().ok_or_else(|| TractError::msg("no output"))
    };
    let output = catch_unwind(AssertUnwindSafe(run)).ok()?.ok()?;
    let dtype = dtype_of(output.datum_type())?;
    let shape = output.shape().to_vec();
    let wide = output.cast_to::<f64>().ok()?;
    let data = wide
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f64>()
        .ok()?
        .to_vec();
    Some(Values::new(dtype, shape, data))
}

/// bnfold's dtype of a tract datum type, for those it stores.
pub(crate) fn dtype_of(d: DatumType) -> Option<Dtype> {
    Some(match d {
        DatumType::F32 => Dtype::F32,
        DatumType::F16 => Dtype::F16,
        DatumType::F64 => Dtype::F64,
        DatumType::I8 => Dtype::I8,
        DatumType::U8 => Dtype::U8,
        DatumType::I16 => Dtype::I16,
        DatumType::U16 => Dtype::U16,
        DatumType::I32 => Dtype::I32,
        DatumType::U32 => Dtype::U32,
        DatumType::I64 => Dtype::I64,
        DatumType::U64 => Dtype::U64,
        DatumType::Bool => Dtype::Bool,
        _ => return None,
    })
}
