//! The figures of a folded weight measured on the bytes the writer writes, so that no weight is
//! scaled twice. Its sums need its channel ranges first. A weight of at most
//! [`READ_AHEAD_ABOVE`] bytes has them from the writer, which takes each channel's largest
//! magnitude from the chunks it has just written (while they are in its cache), and its chunks
//! wait here until the last one. A larger weight has them read ahead from the source's maxima
//! and the factors ([`ScaledTensor::run_maxima`]), and its chunks are added as they come: holding
//! its chunks would take as many fresh pages of memory, and faulting those in costs more than
//! reading the source once more. A weight whose ranges cannot be read so (a factor changing
//! every few elements) is held up to [`HELD_LIMIT`] bytes.
//! Only weights whose output channels are runs in memory order are measured so (a Conv's, a
//! Gemm's with `transB`): their sums then meet the elements in the order [`stats::layer`] does,
//! channel after channel, and every figure is the same to the last digit.

use crate::external::ExternalStore;
use crate::scaled::ScaledTensor;
use crate::tensor::{self, Dtype};

use super::jobs::{Job, Slot, Source};
use super::lanes::ChannelValues;
use super::stats;
use super::sums::{Grid, Sums};
use super::LayerReadiness;

/// The largest weight whose chunks wait for the writer's ranges when they could be read from
/// its source instead (measured on resnet18, whose three 9.4 MB weights held took 2 350 page
/// faults more and a tenth more time).
pub const READ_AHEAD_ABOVE: usize = 4 << 20;

/// The largest weight whose chunks wait for the writer's ranges at all: the memory held is one
/// such weight beside the chunks in flight, within the 2 × largest tensor + 64 MiB a fold of
/// external data may take; a larger weight whose ranges cannot be read from its source is
/// measured whole.
pub const HELD_LIMIT: usize = 256 << 20;

/// A folded weight whose figures are taken from its written bytes.
pub(super) struct Streamed {
    /// The initializer.
    pub name: String,
    /// The layers that read it.
    pub slots: Vec<Slot>,
    /// Its values: the source and factors (the ranges are read from them).
    pub value: Box<ScaledTensor>,
    /// Elements per output channel.
    pub run: usize,
    /// Whether the writer takes the ranges (else they are read ahead from the source).
    pub ranges_from_writer: bool,
    /// Chunks waiting for the writer's ranges.
    held: Vec<Vec<u8>>,
    grids: Option<Grids>,
    sums: Sums,
    /// Elements received so far.
    received: usize,
    values: Vec<f64>,
    scratch: Vec<f64>,
}

/// The channel ranges and the grids they make.
struct Grids {
    ranges: Vec<f64>,
    tensor: Grid,
    channels: Vec<Grid>,
}

impl Streamed {
    /// The job of measuring `value`, the weight `name` of the layers `slots`, on its written
    /// bytes, if every layer's output channels are runs in memory order and its ranges can be
    /// had (from the writer, or for a weight above [`READ_AHEAD_ABOVE`] from the source); else the job
    /// of measuring it whole.
    pub fn new(name: String, slots: Vec<Slot>, value: Box<ScaledTensor>) -> Result<Streamed, Job> {
        let run_of = |slot: &Slot| slot.layout(&value.dims).channel_run();
        let run = slots.first().and_then(run_of);
        let same = slots.iter().all(|slot| run_of(slot) == run);
        let bytes = value.len() * value.dtype.size();
        let ahead = run.is_some_and(|run| value.has_run_maxima(run));
        let ranges_from_writer = bytes <= HELD_LIMIT && (bytes <= READ_AHEAD_ABOVE || !ahead);
        match run.filter(|_| same && (ahead || ranges_from_writer)) {
            Some(run) => Ok(Streamed {
                name,
                slots,
                value,
                run,
                ranges_from_writer,
                held: Vec::new(),
                grids: None,
                sums: Sums::default(),
                received: 0,
                values: Vec::new(),
                scratch: Vec::new(),
            }),
            None => Err(Job {
                slots,
                name,
                source: Source::Scaled(value),
            }),
        }
    }

    /// Whether the ranges are still to be read from the source.
    pub fn reads_ahead(&self) -> bool {
        !self.ranges_from_writer && self.grids.is_none()
    }

    /// Reads the ranges from the source, once (nothing when the writer gives them).
    pub fn prepare(&mut self, store: &ExternalStore) -> crate::error::Result<()> {
        if self.reads_ahead() {
            let ranges = self.value.run_maxima(store, self.run)?;
            self.set_ranges(ranges);
        }
        Ok(())
    }

    fn set_ranges(&mut self, ranges: Vec<f64>) {
        self.grids = Some(Grids {
            tensor: stats::tensor_grid(&ranges),
            channels: ranges.iter().map(|r| Grid::new(r / 127.0)).collect(),
            ranges,
        });
    }

    /// Takes the next written chunk (whole elements): added to the sums, or kept until the
    /// writer's ranges come. The chunks done with, to reuse.
    pub fn take(
        &mut self,
        store: &ExternalStore,
        chunk: Vec<u8>,
        done: &mut Vec<Vec<u8>>,
    ) -> crate::error::Result<()> {
        if self.ranges_from_writer && self.grids.is_none() {
            self.held.push(chunk);
            return Ok(());
        }
        self.add(store, &chunk)?;
        done.push(chunk);
        Ok(())
    }

    /// The writer's ranges (after the weight's last chunk): the chunks kept are added.
    pub fn ranges_written(
        &mut self,
        store: &ExternalStore,
        ranges: Vec<f64>,
        done: &mut Vec<Vec<u8>>,
    ) -> crate::error::Result<()> {
        self.set_ranges(ranges);
        std::mem::take(&mut self.held)
            .into_iter()
            .try_for_each(|chunk| self.take(store, chunk, done))
    }

    /// Adds the next written bytes (whole elements) to the sums, channel by channel; the ranges
    /// are read first if they have not been.
    fn add(&mut self, store: &ExternalStore, bytes: &[u8]) -> crate::error::Result<()> {
        self.prepare(store)?;
        let Some(grids) = &self.grids else {
            return Ok(());
        };
        let dtype = self.value.dtype;
        let size = dtype.size();
        let mut rest = &bytes[..bytes.len() - bytes.len() % size];
        while !rest.is_empty() {
            let channel = self.received / self.run;
            let room = self.run - self.received % self.run;
            let (piece, after) = rest.split_at(room.min(rest.len() / size) * size);
            let values = match dtype {
                Dtype::F32 => ChannelValues::F32(piece),
                _ => {
                    self.values.clear();
                    tensor::decode_le_into(dtype, piece, &mut self.values);
                    ChannelValues::Values(&self.values)
                }
            };
            let Some(channel_grid) = grids.channels.get(channel) else {
                break;
            };
            self.sums
                .add_channel(values, &grids.tensor, channel_grid, &mut self.scratch);
            self.received += piece.len() / size;
            rest = after;
        }
        Ok(())
    }

    /// The job of measuring the weight whole (its written bytes did not all come).
    pub fn into_job(self) -> Job {
        Job {
            slots: self.slots,
            name: self.name,
            source: Source::Scaled(self.value),
        }
    }

    /// Whether every element has been added.
    pub fn is_complete(&self) -> bool {
        self.received == self.value.len()
    }

    /// The figures of each layer that reads the weight.
    pub fn figures(mut self) -> Vec<(usize, LayerReadiness)> {
        let Some(grids) = self.grids else {
            return Vec::new();
        };
        let name = &self.name;
        let totals = self.sums.totals();
        self.slots
            .iter()
            .map(|slot| {
                let figures = stats::figures(
                    &slot.node,
                    name,
                    grids.ranges.clone(),
                    totals,
                    self.sums.non_finite,
                );
                (slot.order, figures)
            })
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::NodeProto;
    use crate::scaled::Scaling;
    use crate::tensor::Tensor;

    pub(crate) fn slot(order: usize, op_type: &str, axis: usize, group: usize) -> Slot {
        Slot {
            order,
            node: NodeProto {
                name: Some(format!("layer{order}")),
                op_type: Some(op_type.into()),
                ..Default::default()
            },
            axis,
            group,
        }
    }

    pub(crate) fn weight(
        dtype: Dtype,
        dims: &[usize],
        scalings: Vec<Scaling>,
    ) -> Box<ScaledTensor> {
        let numel: usize = dims.iter().product();
        // Values on and between the grids' half steps (a channel reaching 127 has a step of
        // 1), so both ways of quantizing are taken.
        let data: Vec<f64> = (0..numel)
            .map(|i| match i % 5 {
                _ if i % 97 == 1 => 127.0,
                0 => (i % 254) as f64 / 2.0 - 63.5,
                _ => ((i as f64 * 0.618_033_988_749_895).fract() - 0.5) * (1 + i % 7) as f64,
            })
            .map(|v| dtype.round(v).unwrap_or(v))
            .collect();
        let mut value =
            ScaledTensor::values("w", Arc::new(Tensor::new(dtype, dims.to_vec(), data)));
        value.scalings = scalings;
        Box::new(value)
    }

    #[test]
    fn weights_whose_channels_are_not_runs_are_measured_whole() {
        // A ConvTranspose's channels (axis 1), a MatMul's columns, two layers that disagree,
        // and a factor changing at every element (a forward fold into a 1×1 convolution).
        let conv = weight(Dtype::F32, &[4, 6, 1, 1], vec![]);
        for slots in [
            vec![slot(0, "ConvTranspose", 1, 1)],
            vec![slot(0, "MatMul", usize::MAX, 1)],
            vec![slot(0, "Conv", 0, 1), slot(1, "MatMul", usize::MAX, 1)],
        ] {
            let Err(job) = Streamed::new("w".into(), slots, conv.clone()) else {
                panic!("measured as written");
            };
            assert!(matches!(job.source, Source::Scaled(_)));
        }
        // A factor changing at every element (a forward fold into a 1×1 convolution): the
        // writer takes the ranges of a small weight; a larger one would need them read ahead,
        // which costs what scaling does, so it is measured whole.
        let forward = |out: usize| {
            let dims = vec![out, 1 << 12, 1, 1];
            let data = vec![0.5; out << 12];
            let tensor = Arc::new(Tensor::new(Dtype::F32, dims, data));
            let mut value = ScaledTensor::values("w", tensor);
            value.scalings = vec![Scaling::new(1, vec![2.0; 1 << 12])];
            Box::new(value)
        };
        let conv = vec![slot(0, "Conv", 0, 1)];
        let small = Streamed::new("w".into(), conv.clone(), forward(4));
        assert!(small.is_ok_and(|s| s.ranges_from_writer));
        let large = forward(HELD_LIMIT / (4 << 12) + 1);
        assert!(Streamed::new("w".into(), conv, large).is_err());
    }

    #[test]
    fn large_weights_with_shared_factors_have_their_ranges_read_ahead() {
        // f32 Conv weights of 1024 inputs a channel (4 KiB), folded with a factor per output
        // channel or per element: up to READ_AHEAD_ABOVE bytes the writer takes the ranges;
        // beyond, they are read from the source when a factor is shared, else still taken by the
        // writer (the weight is below HELD_LIMIT).
        let conv = vec![slot(0, "Conv", 0, 1)];
        let weight = |out: usize, scaling: Scaling| {
            let dims = vec![out, 1 << 10, 1, 1];
            let tensor = Arc::new(Tensor::new(Dtype::F32, dims, vec![0.5; out << 10]));
            let mut value = ScaledTensor::values("w", tensor);
            value.scalings = vec![scaling];
            Box::new(value)
        };
        let at_limit = READ_AHEAD_ABOVE / (4 << 10);
        for (out, per_channel, from_writer) in [
            (at_limit, true, true),
            (at_limit + 1, true, false),
            (at_limit + 1, false, true),
        ] {
            let scaling = match per_channel {
                true => Scaling::new(1 << 10, vec![2.0; out]),
                false => Scaling::new(1, vec![2.0; 1 << 10]),
            };
            let streamed = Streamed::new("w".into(), conv.clone(), weight(out, scaling));
            let Ok(streamed) = streamed else {
                panic!("{out} channels measured whole");
            };
            assert_eq!(
                streamed.ranges_from_writer, from_writer,
                "{out}, {per_channel}"
            );
            assert_eq!(streamed.reads_ahead(), !from_writer, "{out}, {per_channel}");
        }
    }
}
