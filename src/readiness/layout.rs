//! Where a weight's output channels lie among its elements: a Conv's along the first axis, a
//! ConvTranspose's along the second within each group's block of rows, a Gemm's by `transB`, a
//! MatMul's along the last (columns, gathered by stride); and the elements themselves, as stored
//! or as values.

use crate::tensor::{self, Dtype};

/// A weight's elements, as stored or as values.
#[derive(Clone, Copy)]
pub enum Elements<'a> {
    /// Little-endian elements of a float dtype.
    Raw(Dtype, &'a [u8]),
    /// Values.
    Values(&'a [f64]),
}

impl Elements<'_> {
    /// Appends elements `start..start + len`, widened to f64, to `out`.
    fn append(&self, start: usize, len: usize, out: &mut Vec<f64>) {
        match *self {
            Elements::Raw(dtype, raw) => {
                let size = dtype.size();
                tensor::decode_le_into(dtype, &raw[start * size..(start + len) * size], out);
            }
            Elements::Values(v) => out.extend_from_slice(&v[start..start + len]),
        }
    }
}

/// Where each output channel's elements lie in the row-major weight: for output channel `k`,
/// runs of `inner` elements, one per outer index of its group block.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelLayout {
    outer: usize,
    size: usize,
    inner: usize,
    /// Outer indices per group block when ConvTranspose groups split axis 0 (`C_in / group`).
    block_rows: Option<usize>,
}

impl ChannelLayout {
    /// Output channels on `axis` of a weight of shape `dims` (`axis` past the last means the
    /// last); ConvTranspose's axis 1 counts once per group block.
    pub fn new(dims: &[usize], axis: usize, group: usize) -> ChannelLayout {
        let rank = dims.len();
        let axis = axis.min(rank - 1);
        let transpose_groups = axis == 1 && rank > 2 && group > 1 && dims[0].is_multiple_of(group);
        ChannelLayout {
            outer: dims[..axis].iter().product(),
            size: dims[axis],
            inner: dims[axis + 1..].iter().product(),
            block_rows: transpose_groups.then(|| dims[0] / group),
        }
    }

    /// The number of output channels.
    pub fn channels(&self) -> usize {
        match self.block_rows {
            Some(rows) => self.size * (self.outer / rows.max(1)),
            None => self.size,
        }
    }

    /// The elements of each output channel when every channel is one run of them in memory
    /// (channels on the first axis), in which case the channels come in memory order.
    pub fn channel_run(&self) -> Option<usize> {
        (self.outer == 1 && self.block_rows.is_none()).then_some(self.inner)
    }

    /// The stored bytes of output channel `k` when they are one run of f32 values.
    pub(super) fn f32_run<'e>(&self, elements: Elements<'e>, k: usize) -> Option<&'e [u8]> {
        match elements {
            Elements::Raw(Dtype::F32, raw) if self.outer == 1 && self.block_rows.is_none() => {
                Some(&raw[k * self.inner * 4..(k + 1) * self.inner * 4])
            }
            _ => None,
        }
    }

    /// Replaces `out` with the values of output channel `k`, in row-major order.
    pub(super) fn gather(&self, elements: Elements, k: usize, out: &mut Vec<f64>) {
        out.clear();
        let (outer, c) = match self.block_rows {
            Some(rows) => {
                let block = k / self.size;
                (block * rows..(block + 1) * rows, k % self.size)
            }
            None => (0..self.outer, k),
        };
        if self.inner == 1 && outer.len() > 1 {
            // One element per outer index (MatMul's or Gemm's columns): gathered by stride.
            let stride = self.size;
            match elements {
                Elements::Values(v) => out.extend(outer.map(|o| v[o * stride + c])),
                Elements::Raw(..) => outer.for_each(|o| elements.append(o * stride + c, 1, out)),
            }
            return;
        }
        for o in outer {
            elements.append((o * self.size + c) * self.inner, self.inner, out);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Each output channel's values, gathered.
    pub(in crate::readiness) fn channel_values(
        dims: &[usize],
        axis: usize,
        group: usize,
        data: &[f64],
    ) -> Vec<Vec<f64>> {
        let layout = ChannelLayout::new(dims, axis, group);
        (0..layout.channels())
            .map(|k| {
                let mut out = Vec::new();
                layout.gather(Elements::Values(data), k, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn conv_transpose_channels_are_gathered_per_group_block() {
        // [C_in=4, C_out/group=1, 1] with group 2: output channel 0 is rows 0-1, channel 1 rows 2-3.
        assert_eq!(
            channel_values(&[4, 1, 1], 1, 2, &[1.0, 2.0, 3.0, 4.0]),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        // [C_in=2, C_out/group=2, 2] with group 2: block 0 is row 0, block 1 row 1.
        assert_eq!(
            channel_values(&[2, 2, 2], 1, 2, &[1., 2., 3., 4., 5., 6., 7., 8.]),
            vec![vec![1., 2.], vec![3., 4.], vec![5., 6.], vec![7., 8.]]
        );
    }

    #[test]
    fn columns_of_a_matmul_weight_are_its_output_channels() {
        // [K=2, N=3], axis last: channel n is column n.
        assert_eq!(
            channel_values(&[2, 3], usize::MAX, 1, &[1., 2., 3., 4., 5., 6.]),
            vec![vec![1., 4.], vec![2., 5.], vec![3., 6.]]
        );
    }
}
