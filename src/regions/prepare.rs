//! A region's four models (as stored, fused, exact, magnitudes), the shape of its data input,
//! and what its output is measured in.

use super::build::{input_shape, region_constants, region_model};
use super::exact::{self, RegionModels, Units};
use super::Region;
use crate::certificate::Side;
use crate::error::Result;
use crate::proto::NodeProto;

/// The region's models, how its output is measured and the data input's shape, or why they
/// cannot be built.
pub(super) type Prepared = std::result::Result<(RegionModels, Units, Vec<usize>, usize), String>;

/// Builds a region's models for `samples` samples; also returns how many runs they take.
pub(super) fn prepare(
    orig: &Side,
    fused: &Side,
    region: &Region,
    samples: usize,
) -> Result<Prepared> {
    let weight = match orig.value(&region.layer.input[1])? {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    let found = match region.decomposed {
        // The Mul's constant is shaped to broadcast over the data: `[C, 1, …]` for rank 2 + its
        // trailing ones.
        true => match fused.value(&region.fused_nodes[0].input[1])? {
            Ok(scale) => {
                let mut shape = vec![1, weight.len()];
                shape.extend(std::iter::repeat_n(3, scale.dims.len().saturating_sub(1)));
                Ok((shape, true))
            }
            Err(why) => Err(why),
        },
        false => input_shape(region.layer, &weight.dims, orig)?,
    };
    let (mut shape, free_first_axis) = match found {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    // Every sample in one run, stacked along the first axis, where it is free (through a
    // Flatten or Reshape it may be fixed): each model runs once, packing its weights once.
    let runs = if free_first_axis && region.forward.is_none_or(|(_, through)| !through) {
        shape[0] *= samples;
        1
    } else {
        samples
    };
    if let Some((channels, true)) = region.forward {
        // BN → Flatten → layer: `[rows, C, K/C]` flattens to the layer's `[rows, K]` with the
        // channel-major layout any `[rows, C, H, W]` has.
        match shape.as_slice() {
            [rows, k] if channels > 0 && k % channels == 0 => {
                shape = vec![*rows, channels, k / channels];
            }
            _ => {
                return Ok(Err(format!(
                    "the layer's input {shape:?} is not {channels} channels flattened"
                )))
            }
        }
    }
    let units = Units {
        dtype: weight.dtype,
        terms: match region.decomposed {
            true => 2,
            false => terms(region.layer, &weight.dims)?,
        },
    };
    let output = region.node.output[0].as_str();
    let [a_stored, b_stored, a_exact, b_magnitudes] = exact::arithmetics(weight.dtype);
    let (orig_constants, fused_constants) = match (
        region_constants(orig, &region.orig_nodes, &region.data)?,
        region_constants(fused, &region.fused_nodes, &region.data)?,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(why), _) | (_, Err(why)) => return Ok(Err(why)),
    };
    let model = |side: &Side, nodes: &[&NodeProto], constants: &[_], arithmetic| {
        region_model(
            side,
            nodes,
            constants,
            &region.data,
            &shape,
            weight.dtype,
            output,
            arithmetic,
        )
    };
    let built = (
        model(orig, &region.orig_nodes, &orig_constants, a_stored)?,
        model(fused, &region.fused_nodes, &fused_constants, b_stored)?,
        model(orig, &region.orig_nodes, &orig_constants, a_exact)?,
        model(fused, &region.fused_nodes, &fused_constants, b_magnitudes)?,
    );
    Ok(match built {
        (Ok(original), Ok(fused), Ok(exact), Ok(magnitudes)) => Ok((
            RegionModels {
                original,
                fused,
                exact,
                magnitudes,
            },
            units,
            shape,
            runs,
        )),
        (Err(why), ..) | (_, Err(why), ..) | (_, _, Err(why), _) | (.., Err(why)) => Err(why),
    })
}

/// The terms of each output element's dot product in `layer` (weight of shape `weight`).
pub(super) fn terms(layer: &NodeProto, weight: &[usize]) -> Result<usize> {
    let kernel: usize = weight.iter().skip(2).product();
    let group = crate::attr::int(layer, "group")?.unwrap_or(1).max(1) as usize;
    Ok(1 + match (layer.op_type(), weight) {
        ("Conv", [_, c, ..]) => c * kernel,
        ("ConvTranspose", [c, ..]) => c / group * kernel,
        ("Gemm", [k, n]) => {
            if crate::attr::int(layer, "transB")?.unwrap_or(0) != 0 {
                *n
            } else {
                *k
            }
        }
        (_, [k, ..]) => *k,
        _ => 1,
    })
}
