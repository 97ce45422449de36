//! The figures of stored weights that folding will most likely leave as they are, measured on
//! the readiness thread while the model folds, so that the second core is not idle then.
//!
//! Pattern: an initializer stored inline with its exact length, the weight of layers that no
//! fold reaches: no BatchNormalization, and no `Mul` or `Div` by a constant, after their output
//! (through Identity, Flatten, Reshape, Squeeze, Unsqueeze, Concat and constant `Add`/`Sub`) or
//! before their data input (through the same, Concat aside). Largest first.
//!
//! Adoption, once the model has folded ([`EarlyFigures::start_for_write`]): a weight the
//! thread has not taken yet goes back to the ordinary plan. One it has taken is adopted only if
//! the folded model still stores the same bytes under its name (the same place in the input,
//! the same type and shape, not folded) for layers whose channels lie the same way (axis,
//! group); its figures are then relabelled with the folded model's nodes. Otherwise they are
//! dropped and the weight is measured again, so a guess that proves wrong costs time, never a
//! digit.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::error::Result;
use crate::external::ExternalStore;
use crate::graph::node_label;
use crate::model::Model;
use crate::proto::{GraphProto, NodeProto, TensorProto};
use crate::tensor::{self, Dtype};

use super::jobs::{Job, Measured, Queue, Slot, Source};
use super::layers::{layers, slot};
use super::thread::{self, Outcome, Plan};
use super::LayerReadiness;

/// The readiness thread started on a model's stored weights before the model folds (no thread
/// when none is expected to stay as it is); continued by [`EarlyFigures::start_for_write`].
pub struct EarlyFigures {
    pub(super) running: Option<Running>,
}

/// The early thread and what it was given.
pub(super) struct Running {
    /// The weights the thread has not taken yet.
    pub queue: Queue,
    claims: Vec<Claim>,
    pub cancelled: Arc<AtomicBool>,
    /// Where the plan of the folded model goes.
    pub plans: SyncSender<Plan>,
    pub worker: JoinHandle<Outcome>,
}

/// What an early weight was: where its bytes lie, and the layers it was measured for.
struct Claim {
    name: String,
    bytes: (usize, usize),
    data_type: i32,
    dims: Vec<i64>,
    /// Each layer's order, axis and group, in graph order.
    slots: Vec<(usize, usize, usize)>,
}

impl Claim {
    fn of(t: &TensorProto, job: &Job) -> Claim {
        Claim {
            name: t.name().to_string(),
            bytes: (t.raw_data().as_ptr() as usize, t.raw_data().len()),
            data_type: t.data_type(),
            dims: t.dims.clone(),
            slots: job
                .slots
                .iter()
                .map(|s| (s.order, s.axis, s.group))
                .collect(),
        }
    }

    /// Whether `job` of the folded model measures the same bytes laid out the same way.
    fn holds(&self, job: &Job) -> bool {
        let Source::Stored(t) = &job.source else {
            return false;
        };
        let bytes = (t.raw_data().as_ptr() as usize, t.raw_data().len());
        bytes == self.bytes
            && t.data_type() == self.data_type
            && t.dims == self.dims
            && !tensor::is_external(t)
            && job.slots.len() == self.slots.len()
            && job
                .slots
                .iter()
                .zip(&self.slots)
                .all(|(s, &(_, axis, group))| s.axis == axis && s.group == group)
    }
}

/// The early figures a plan takes over: each early layer's order, mapped to its order and node
/// in the folded model.
#[derive(Default)]
pub(super) struct Adoption {
    relabel: HashMap<usize, (usize, NodeProto)>,
    /// The weights whose early figures are taken over (read through the input's mapping).
    pub names: HashSet<String>,
    /// Weights whose early figures are taken over.
    pub adopted: usize,
    /// Weights the thread measured early that are measured again (changed, or laid out
    /// otherwise).
    pub rejected: usize,
}

impl Adoption {
    /// The early figures taken over, with the folded model's orders and nodes.
    pub fn take_over(&self, early: Measured, into: &mut Vec<(usize, LayerReadiness)>) {
        for (order, mut layer) in early.layers {
            if let Some((order, node)) = self.relabel.get(&order) {
                layer.node = node_label(node);
                layer.op_type = node.op_type().to_string();
                into.push((*order, layer));
            }
        }
    }
}

impl EarlyFigures {
    /// Starts the readiness thread on `loaded`'s stored weights that folding most likely leaves
    /// as they are, largest first.
    pub fn start(loaded: &Model) -> Result<EarlyFigures> {
        let (jobs, claims, store) = plan(loaded);
        if jobs.is_empty() {
            return Ok(EarlyFigures { running: None });
        }
        let queue: Queue = Arc::new(Mutex::new(jobs.into()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (plans, worker) = thread::spawn(queue.clone(), store, cancelled.clone())?;
        let running = Running {
            queue,
            claims,
            cancelled,
            plans,
            worker,
        };
        Ok(EarlyFigures {
            running: Some(running),
        })
    }

    /// No early thread: [`EarlyFigures::start_for_write`] is then
    /// [`LayerFigures::start_for_write`](super::LayerFigures::start_for_write).
    pub fn none() -> EarlyFigures {
        EarlyFigures { running: None }
    }

    /// Blocks until the thread has taken every early weight (every early figure is then
    /// either taken over or measured again, whatever the timing; for tests).
    pub fn wait_until_taken(&self) {
        let Some(running) = &self.running else {
            return;
        };
        while !running
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
        {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// How many weights are measured early.
    pub fn weights(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.claims.len())
    }
}

impl Running {
    /// The plan `jobs` of the folded model less the weights whose early figures it takes over;
    /// the thread takes no early weight after this.
    pub fn adopt(&self, jobs: Vec<(usize, Job)>) -> (Vec<(usize, Job)>, Adoption) {
        let untaken: HashSet<String> = std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .into_iter()
        .map(|job| job.name)
        .collect();
        let mut taken: HashMap<&str, &Claim> = self
            .claims
            .iter()
            .filter(|c| !untaken.contains(&c.name))
            .map(|c| (c.name.as_str(), c))
            .collect();
        let mut adoption = Adoption {
            rejected: taken.len(),
            ..Adoption::default()
        };
        let mut kept = Vec::with_capacity(jobs.len());
        for (bytes, job) in jobs {
            match taken.remove(job.name.as_str()) {
                Some(claim) if claim.holds(&job) => {
                    for (s, &(early, ..)) in job.slots.iter().zip(&claim.slots) {
                        adoption.relabel.insert(early, (s.order, s.node.clone()));
                    }
                    adoption.names.insert(claim.name.clone());
                    adoption.adopted += 1;
                    adoption.rejected -= 1;
                }
                _ => kept.push((bytes, job)),
            }
        }
        (kept, adoption)
    }
}

/// The jobs (largest first) and claims of `model`'s stored weights that folding most likely
/// leaves as they are; the store they are read with.
fn plan(model: &Model) -> (Vec<Job>, Vec<Claim>, ExternalStore) {
    let store = model.store.clone();
    let Some(graph) = &model.proto.graph else {
        return (Vec::new(), Vec::new(), store);
    };
    let near = Neighbours::of(graph);
    let initializers: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut wanted: HashMap<&str, (bool, Vec<Slot>)> = HashMap::new();
    for (order, node, axis) in layers(graph) {
        let Some(t) = initializers.get(node.input[1].as_str()) else {
            continue;
        };
        let entry = wanted.entry(t.name()).or_insert((true, Vec::new()));
        entry.0 &= !near.may_fold_into(node) && stored_whole(t);
        match slot(order, node, axis) {
            Ok(s) => entry.1.push(s),
            Err(_) => entry.0 = false,
        }
    }
    let mut planned: Vec<(usize, Job, Claim)> = Vec::new();
    for t in &graph.initializer {
        let Some((true, slots)) = wanted.remove(t.name()) else {
            continue;
        };
        let job = Job {
            slots,
            name: t.name().to_string(),
            source: Source::Stored(Box::new(t.clone())),
        };
        let claim = Claim::of(t, &job);
        planned.push((t.raw_data().len(), job, claim));
    }
    planned.sort_by_key(|(bytes, ..)| std::cmp::Reverse(*bytes));
    let (jobs, claims) = planned.into_iter().map(|(_, j, c)| (j, c)).unzip();
    (jobs, claims, store)
}

/// A float initializer stored inline with exactly its elements' bytes (so measuring it cannot
/// fail, and its bytes say where it lies).
fn stored_whole(t: &TensorProto) -> bool {
    let Some(dtype) = Dtype::from_code(t.data_type()).filter(|d| d.is_float()) else {
        return false;
    };
    let Ok(dims) = tensor::proto_dims(t) else {
        return false;
    };
    let len = dims.iter().product::<usize>() * dtype.size();
    !tensor::is_external(t) && len > 0 && t.raw_data().len() == len
}

/// Who produces and who reads each value of a graph, and which values are constants.
struct Neighbours<'g> {
    producer: HashMap<&'g str, &'g NodeProto>,
    readers: HashMap<&'g str, Vec<&'g NodeProto>>,
    constants: HashSet<&'g str>,
}

/// Ops a fold looks through, from a layer to a BatchNormalization or scale.
const PASS_THROUGH: [&str; 5] = ["Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"];

/// Hops followed from a layer at most.
const REACH: usize = 8;

impl<'g> Neighbours<'g> {
    fn of(graph: &'g GraphProto) -> Neighbours<'g> {
        let mut near = Neighbours {
            producer: HashMap::new(),
            readers: HashMap::new(),
            constants: graph.initializer.iter().map(|t| t.name()).collect(),
        };
        for node in &graph.node {
            for output in &node.output {
                near.producer.insert(output, node);
                if node.op_type() == "Constant" {
                    near.constants.insert(output);
                }
            }
            for input in &node.input {
                near.readers.entry(input).or_default().push(node);
            }
        }
        near
    }

    /// Whether `node` has an input other than `from`, and every such input is a constant.
    fn by_constant(&self, node: &NodeProto, from: &str) -> bool {
        let others: Vec<&String> = node.input.iter().filter(|i| *i != from).collect();
        !others.is_empty() && others.iter().all(|i| self.constants.contains(i.as_str()))
    }

    /// Whether a BatchNormalization or a constant scale could fold into `node`'s weight.
    fn may_fold_into(&self, node: &NodeProto) -> bool {
        let after = node.output.first().is_some_and(|o| self.scaled_after(o, 0));
        let before = node.input.first().is_some_and(|i| self.scaled_before(i, 0));
        after || before
    }

    /// Whether `value` reaches a BatchNormalization or a constant scale through ops a fold
    /// looks through (assumed so beyond [`REACH`] hops).
    fn scaled_after(&self, value: &str, hops: usize) -> bool {
        let readers = self.readers.get(value).map_or(&[][..], Vec::as_slice);
        readers.iter().any(|r| match r.op_type() {
            "BatchNormalization" => true,
            "Mul" | "Div" => self.by_constant(r, value),
            op => {
                let follows = PASS_THROUGH.contains(&op)
                    || op == "Concat"
                    || (matches!(op, "Add" | "Sub") && self.by_constant(r, value));
                follows
                    && (hops >= REACH || r.output.iter().any(|o| self.scaled_after(o, hops + 1)))
            }
        })
    }

    /// Whether `value` comes from a BatchNormalization or a constant scale through ops a fold
    /// looks through (assumed so beyond [`REACH`] hops).
    fn scaled_before(&self, value: &str, hops: usize) -> bool {
        let Some(p) = self.producer.get(value) else {
            return false;
        };
        if hops >= REACH {
            return true;
        }
        let operand = p
            .input
            .iter()
            .find(|i| !self.constants.contains(i.as_str()));
        match p.op_type() {
            "BatchNormalization" => true,
            "Mul" | "Div" => operand.is_some_and(|o| self.by_constant(p, o)),
            "Add" | "Sub" => {
                operand.is_some_and(|o| self.by_constant(p, o) && self.scaled_before(o, hops + 1))
            }
            op if PASS_THROUGH.contains(&op) => p
                .input
                .first()
                .is_some_and(|i| self.scaled_before(i, hops + 1)),
            _ => false,
        }
    }
}
