//! The figures of a folded weight measured on the bytes the writer writes, so that no weight is
//! scaled twice: its channel ranges are read beforehand from the source's maxima and the factors
//! ([`ScaledTensor::run_maxima`]), and its sums taken over the written chunks as they come.
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

/// A folded weight whose figures are taken from its written bytes.
pub(super) struct Streamed {
    /// The initializer.
    pub name: String,
    /// The layers that read it.
    pub slots: Vec<Slot>,
    /// Its values: the source and factors (the ranges are read from them).
    pub value: Box<ScaledTensor>,
    /// Elements per output channel.
    run: usize,
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
    /// bytes, if every layer's output channels are runs in memory order and the ranges can be
    /// read from the source; else the job of measuring it whole.
    pub fn new(name: String, slots: Vec<Slot>, value: Box<ScaledTensor>) -> Result<Streamed, Job> {
        let run_of = |slot: &Slot| slot.layout(&value.dims).channel_run();
        let run = slots.first().and_then(run_of);
        let same = slots.iter().all(|slot| run_of(slot) == run);
        match run.filter(|&run| same && value.has_run_maxima(run)) {
            Some(run) => Ok(Streamed {
                name,
                slots,
                value,
                run,
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

    /// Whether the ranges have been read.
    pub fn is_prepared(&self) -> bool {
        self.grids.is_some()
    }

    /// Reads the ranges, once.
    pub fn prepare(&mut self, store: &ExternalStore) -> crate::error::Result<()> {
        if self.grids.is_none() {
            let ranges = self.value.run_maxima(store, self.run)?;
            self.grids = Some(Grids {
                tensor: stats::tensor_grid(&ranges),
                channels: ranges.iter().map(|r| Grid::new(r / 127.0)).collect(),
                ranges,
            });
        }
        Ok(())
    }

    /// Adds the next written bytes (whole elements) to the sums, channel by channel; the ranges
    /// are read first if they have not been.
    pub fn add(&mut self, store: &ExternalStore, bytes: &[u8]) -> crate::error::Result<()> {
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
    pub fn figures(self) -> Vec<(usize, LayerReadiness)> {
        let Some(grids) = self.grids else {
            return Vec::new();
        };
        let name = &self.name;
        self.slots
            .iter()
            .map(|slot| {
                let figures = stats::figures(&slot.node, name, grids.ranges.clone(), &self.sums);
                (slot.order, figures)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::NodeProto;
    use crate::readiness::stats::Elements;
    use crate::scaled::Scaling;
    use crate::tensor::Tensor;

    fn slot(order: usize, op_type: &str, axis: usize, group: usize) -> Slot {
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

    fn weight(dtype: Dtype, dims: &[usize], scalings: Vec<Scaling>) -> Box<ScaledTensor> {
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
    fn figures_of_written_chunks_are_the_figures_of_the_whole_weight() {
        // Fed the written bytes in pieces of every size (none, one element, a channel and a
        // bit, more than a chunk), the figures equal those of the whole written weight, for
        // each layer that reads it.
        let store = ExternalStore::none();
        let factors: Vec<f64> = (0..16).map(|c| 0.3 + c as f64 * 0.17).collect();
        let cases = [
            (vec![16, 3, 3, 3], vec![Scaling::new(27, factors.clone())]),
            (
                vec![16, 2, 3, 3],
                vec![
                    Scaling::new(18, factors.clone()),
                    Scaling::new(9, vec![-1.5, 0.25]),
                ],
            ),
            (vec![6, 10], vec![Scaling::new(10, factors[..6].to_vec())]),
            (vec![4, 5000], vec![]),
        ];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::F64] {
            for (dims, scalings) in &cases {
                let value = weight(dtype, dims, scalings.clone());
                let written = value.to_bytes(&store).unwrap();
                let slots = vec![slot(3, "Conv", 0, 1), slot(5, "Gemm", 0, 1)];
                let want: Vec<(usize, LayerReadiness)> = slots
                    .iter()
                    .map(|s| {
                        let layout = s.layout(dims);
                        let elements = Elements::Raw(dtype, &written);
                        (s.order, stats::layer(&s.node, "w", &layout, elements))
                    })
                    .collect();
                for piece in [1, 7, 29, 4099] {
                    let Ok(mut streamed) = Streamed::new("w".into(), slots.clone(), value.clone())
                    else {
                        panic!("{dims:?} is measured as written");
                    };
                    let mut rest = written.as_slice();
                    while !rest.is_empty() {
                        let (now, after) = rest.split_at((piece * dtype.size()).min(rest.len()));
                        streamed.add(&store, now).unwrap();
                        streamed.add(&store, &[]).unwrap();
                        rest = after;
                    }
                    assert!(streamed.is_complete());
                    assert_eq!(streamed.figures(), want, "{dtype:?} {dims:?} by {piece}");
                }
            }
        }
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
        let forward = weight(
            Dtype::F32,
            &[4, 6, 1, 1],
            vec![Scaling::new(1, vec![2.0; 6])],
        );
        assert!(Streamed::new("w".into(), vec![slot(0, "Conv", 0, 1)], forward).is_err());
    }
}
