//! bnfold folds inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul that
//! produces its input, computing in f64 and rounding once into each tensor's own dtype, and
//! proves the fused model equivalent to the original with tract.
//!
//! ```no_run
//! use bnfold::{fold, FoldOptions, Model, SaveOptions};
//!
//! let mut model = Model::load("model.onnx")?;
//! let report = fold(&mut model, &FoldOptions::default())?;
//! println!("{} folded, {} left", report.folds.len(), report.skips.len());
//! model.save("fused.onnx", SaveOptions::default())?;
//! # Ok::<(), bnfold::Error>(())
//! ```

#![deny(missing_docs)]

// The command line and the Python module are built into the library only for the Python
// extension (feature `python`); the command line's code names the library `bnfold`.
#[cfg(feature = "python")]
extern crate self as bnfold;
#[cfg(feature = "python")]
mod cli;
#[cfg(feature = "python")]
mod python;

pub mod attr;
pub mod certificate;
pub mod consts;
pub mod divergence;
pub mod error;
pub mod external;
pub mod fold;
pub mod folded;

pub mod absorption;
pub mod graph;
mod isa;
pub mod model;
pub mod npy;
pub mod output;
pub mod pairs;
pub mod pipeline;
pub mod printable;
pub mod proof;
pub mod proto;
pub mod readiness;
pub mod reference;
pub mod regions;
pub mod report;
pub mod scaled;
pub mod source;
pub mod staging;
pub mod structure;
pub mod tensor;
mod tract_eval;
pub mod validate;
pub mod verify;
pub mod walk;
pub mod writer;

use std::collections::BTreeMap;

pub use absorption::absorb;
pub use error::{Error, Result};
pub use fold::FoldOptions;
pub use model::{Model, SaveOptions};
pub use proof::verify;
pub use report::{FoldKind, Report, SkipReason};
pub use verify::{Verification, VerifyOptions};

use fold::{PassContext, PassOutcome};
use graph::OuterScope;
use proto::GraphProto;

/// Folds every foldable BatchNormalization of `model` in place and reports what it did.
pub fn fold(model: &mut Model, options: &FoldOptions) -> Result<Report> {
    let opset = model.opset();
    let ir_version = model.proto.ir_version();
    let store = model.store.clone();
    let graph = model.proto.graph.as_mut().ok_or(Error::MissingGraph)?;
    let ops_before = op_counts(graph);
    // High-bias absorption reads the statistics of the BatchNormalizations the fold removes.
    let statistics = match options.equalize && options.absorb_high_bias {
        true => Some(fold::BatchNormStatistics::of(
            graph,
            &store,
            opset,
            options.inputs_are_constants,
        )?),
        false => None,
    };
    let ctx = PassContext {
        store: &store,
        opset,
        ir_version,
        options,
        statistics: statistics.as_ref(),
    };
    let mut outcome = PassOutcome::default();
    fold::fold_graph(
        graph,
        &ctx,
        "main",
        OuterScope::default(),
        &mut model.folded,
        &mut outcome,
    )?;
    if !outcome.folds.is_empty()
        || !outcome.decompositions.is_empty()
        || !outcome.merges.is_empty()
        || !outcome.initializers.is_empty()
        || !outcome.equalizations.is_empty()
    {
        validate::graph_structure(graph, &Default::default())?;
    }
    outcome
        .skips
        .extend(batch_norms_in_functions(&model.proto.functions));
    Ok(Report {
        ops_before,
        ops_after: op_counts(graph),
        folds: outcome.folds,
        skips: outcome.skips,
        non_foldable_normalizations: outcome.normalizations,
        decompositions: outcome.decompositions,
        merges: outcome.merges,
        initializers_from_constants: outcome.initializers,
        equalizations: outcome.equalizations,
        absorption: outcome.absorption,
        absorption_check: None,
        verification: None,
        readiness: None,
    })
}

/// Folds a model held in memory and returns the fused model's bytes with the report.
pub fn fold_bytes(
    bytes: impl Into<bytes::Bytes>,
    options: &FoldOptions,
) -> Result<(Vec<u8>, Report)> {
    let mut model = Model::from_bytes(bytes)?;
    let report = fold(&mut model, options)?;
    Ok((model.to_bytes()?, report))
}

/// Every BatchNormalization inside a model-local function (and its subgraphs), left in place.
fn batch_norms_in_functions(functions: &[proto::FunctionProto]) -> Vec<report::SkipRecord> {
    fn walk(nodes: &[proto::NodeProto], function: &str, found: &mut Vec<report::SkipRecord>) {
        for node in nodes {
            if node.op_type() == "BatchNormalization" && matches!(node.domain(), "" | "ai.onnx") {
                let reason = SkipReason::InFunction {
                    function: function.to_string(),
                };
                found.push(report::SkipRecord {
                    graph: format!("function {function}"),
                    node: graph::node_label(node),
                    message: reason.message(),
                    reason,
                    forward: None,
                    forward_message: None,
                });
            }
            for a in &node.attribute {
                for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                    walk(&sub.node, function, found);
                }
            }
        }
    }
    let mut found = Vec::new();
    for f in functions {
        let function = match f.domain() {
            "" => f.name().to_string(),
            domain => format!("{domain}.{}", f.name()),
        };
        walk(&f.node, &function, &mut found);
    }
    found
}

/// Counts the nodes of each op type, subgraphs included.
pub fn op_counts(graph: &GraphProto) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    fn walk(g: &GraphProto, counts: &mut BTreeMap<String, usize>) {
        for n in &g.node {
            *counts.entry(n.op_type().to_string()).or_default() += 1;
            for a in &n.attribute {
                for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                    walk(sub, counts);
                }
            }
        }
    }
    walk(graph, &mut counts);
    counts
}
