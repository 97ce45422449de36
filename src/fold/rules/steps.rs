//! Per-channel affine steps: what a backward fold's chain may pass through between the layer and
//! the node whose output the fused layer takes over.
//!
//! **Pattern**: `layer → step* → end`, every step and the end one of `Identity`, an inference
//! `BatchNormalization`, or `Mul`, `Add`, `Sub`, `Div` of the data and a constant (FrozenBatchNorm
//! and Keras exports, a Paddle bias `Add`, a BN another tool decomposed).
//!
//! **Preconditions**: the constant is a float and per output channel: of rank at most the
//! data's, every axis 1 except the channel axis (axis 1, or the last of a MatMul product), which
//! is 1 or the channel count, so that it broadcasts over nothing but channels and does not grow
//! the data; `Sub` and `Div` only where the map is affine in the data (`c − x` is `−1·x + c`;
//! `x / c` is `(1/c)·x`, `c / x` is not).
//!
//! **Rewrite**: none here: the chain composes into one [`super::Affine`] and folds as a BN does.
//!
//! **Math**: each step is `x ↦ a·x + b` per channel (`Mul`: `a = c`; `Add`: `b = c`; `x − c`:
//! `b = −c`; `c − x`: `a = −1, b = c`; `x / c`: `a = 1/c`; a BN: `a = s, b = t`). Walking back
//! from the end, `S·(a·x + b) + T` gives `S ← S·a`, `T ← T + S·b`, all in f64.

use super::{Affine, SkipReason};
use crate::tensor::Tensor;

/// An arithmetic step: which op, and on which side its constant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// `x · c` or `c · x`.
    Mul,
    /// `x + c` or `c + x`.
    Add,
    /// `x − c`.
    SubConstant,
    /// `c − x`.
    SubFromConstant,
    /// `x / c`.
    Div,
}

impl Arithmetic {
    /// The step of `op_type` whose constant is input `constant_slot`, if it is affine in the
    /// other input.
    pub fn of(op_type: &str, constant_slot: usize) -> Option<Arithmetic> {
        match (op_type, constant_slot) {
            ("Mul", _) => Some(Arithmetic::Mul),
            ("Add", _) => Some(Arithmetic::Add),
            ("Sub", 1) => Some(Arithmetic::SubConstant),
            ("Sub", _) => Some(Arithmetic::SubFromConstant),
            ("Div", 1) => Some(Arithmetic::Div),
            _ => None,
        }
    }

    /// The step's `(a, b)` for one channel's constant `c`.
    fn map(self, c: f64) -> (f64, f64) {
        match self {
            Arithmetic::Mul => (c, 0.0),
            Arithmetic::Add => (1.0, c),
            Arithmetic::SubConstant => (1.0, -c),
            Arithmetic::SubFromConstant => (-1.0, c),
            Arithmetic::Div => (1.0 / c, 0.0),
        }
    }
}

/// Where the output channels of a layer's product lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelAxis {
    /// The product's rank.
    pub rank: usize,
    /// The channel axis: 1 for Conv, ConvTranspose and Gemm, the last for MatMul.
    pub axis: usize,
    /// The channel count.
    pub channels: usize,
}

impl Affine {
    /// The identity map on `channels` channels.
    pub fn identity(channels: usize) -> Affine {
        Affine {
            scale: vec![1.0; channels],
            shift: vec![0.0; channels],
        }
    }

    /// This map after `inner`: `self(a·x + b)`.
    pub fn after(&mut self, a: &[f64], b: &[f64]) {
        for (c, (s, t)) in self.scale.iter_mut().zip(&mut self.shift).enumerate() {
            *t += *s * b[c];
            *s *= a[c];
        }
    }

    /// This map after the arithmetic step `step` with the constant `value` (named `name`), or
    /// why that step is not per channel.
    pub fn after_arithmetic(
        &mut self,
        step: Arithmetic,
        op_type: &str,
        name: &str,
        value: &Tensor,
        axis: &ChannelAxis,
    ) -> Result<(), SkipReason> {
        let Some(per_channel) = per_channel_values(value, axis) else {
            return Err(SkipReason::ConstantNotPerChannel {
                op_type: op_type.to_string(),
                tensor: name.to_string(),
                shape: value.dims.clone(),
            });
        };
        let (a, b): (Vec<f64>, Vec<f64>) = per_channel.into_iter().map(|c| step.map(c)).unzip();
        self.after(&a, &b);
        Ok(())
    }
}

/// The per-channel values of a constant combined element-wise with a product laid out as
/// `axis`, when it holds one value per channel (or one in all) and does not grow the product.
pub fn per_channel_values(value: &Tensor, axis: &ChannelAxis) -> Option<Vec<f64>> {
    if value.dims.len() > axis.rank || axis.rank < 2 {
        return None;
    }
    let offset = axis.rank - value.dims.len();
    let mut varies_per_channel = false;
    for (k, &d) in value.dims.iter().enumerate() {
        if k + offset == axis.axis && d == axis.channels {
            varies_per_channel = true;
        } else if d != 1 {
            return None;
        }
    }
    match (varies_per_channel, value.len()) {
        (true, _) => Some(value.data.clone()),
        (false, 1) => Some(vec![value.data[0]; axis.channels]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Dtype;

    fn constant(dims: &[usize], data: &[f64]) -> Tensor {
        Tensor::new(Dtype::F32, dims.to_vec(), data.to_vec())
    }

    const CONV_OUT: ChannelAxis = ChannelAxis {
        rank: 4,
        axis: 1,
        channels: 2,
    };

    #[test]
    fn per_channel_shapes_are_the_ones_that_broadcast_over_channels_only() {
        let two = [3.0, 5.0];
        for dims in [&[2, 1, 1][..], &[1, 2, 1, 1], &[2, 1, 1]] {
            assert_eq!(
                per_channel_values(&constant(dims, &two), &CONV_OUT),
                Some(two.to_vec())
            );
        }
        for dims in [&[][..], &[1], &[1, 1, 1, 1]] {
            assert_eq!(
                per_channel_values(&constant(dims, &[7.0]), &CONV_OUT),
                Some(vec![7.0, 7.0])
            );
        }
        // [C] on a rank-4 product lies on the width; rank 5 would grow it; [1,1,2] on H.
        for dims in [&[2][..], &[1, 2, 1, 1, 1], &[1, 2, 1], &[2, 2, 1, 1]] {
            let len = dims.iter().product::<usize>();
            let data = vec![1.0; len];
            assert_eq!(per_channel_values(&constant(dims, &data), &CONV_OUT), None);
        }
        // [C] on a rank-2 product, and on the last axis of a rank-3 MatMul product.
        for axis in [1, 2] {
            let layout = ChannelAxis {
                rank: axis + 1,
                axis,
                channels: 2,
            };
            assert_eq!(
                per_channel_values(&constant(&[2], &two), &layout),
                Some(two.to_vec())
            );
        }
    }

    #[test]
    fn steps_compose_walking_back_from_the_end() {
        // y = ((x · 2) + 3 − 1) / 4, then 10 − y: walking back from `10 − y`.
        let axis = ChannelAxis {
            rank: 2,
            axis: 1,
            channels: 1,
        };
        let mut map = Affine::identity(1);
        let steps = [
            (Arithmetic::SubFromConstant, 10.0),
            (Arithmetic::Div, 4.0),
            (Arithmetic::SubConstant, 1.0),
            (Arithmetic::Add, 3.0),
            (Arithmetic::Mul, 2.0),
        ];
        for (step, c) in steps {
            map.after_arithmetic(step, "op", "c", &constant(&[], &[c]), &axis)
                .unwrap();
        }
        for x in [-3.0, 0.0, 0.5, 7.0] {
            let want = 10.0 - ((x * 2.0) + 3.0 - 1.0) / 4.0;
            assert_eq!(map.scale[0] * x + map.shift[0], want, "x = {x}");
        }
    }

    #[test]
    fn only_affine_sides_of_sub_and_div_are_steps() {
        assert_eq!(Arithmetic::of("Div", 1), Some(Arithmetic::Div));
        assert_eq!(Arithmetic::of("Div", 0), None);
        assert_eq!(Arithmetic::of("Sub", 0), Some(Arithmetic::SubFromConstant));
        assert_eq!(Arithmetic::of("Mul", 0), Some(Arithmetic::Mul));
        assert_eq!(Arithmetic::of("Pow", 1), None);
    }

    #[test]
    fn a_constant_over_other_axes_is_skipped_naming_its_shape() {
        let mut map = Affine::identity(2);
        let err = map
            .after_arithmetic(
                Arithmetic::Mul,
                "Mul",
                "k",
                &constant(&[2], &[1.0, 2.0]),
                &CONV_OUT,
            )
            .unwrap_err();
        assert_eq!(
            err,
            SkipReason::ConstantNotPerChannel {
                op_type: "Mul".into(),
                tensor: "k".into(),
                shape: vec![2],
            }
        );
    }
}
