//! Where a candidate differs from the original outside the folds bnfold knows (`bnfold verify A
//! B` on any two models): the differing regions, each run alone on the original's own values.
//!
//! Nodes of the candidate equal to a node of the original (op, attributes, inputs, outputs) are
//! the same computation on the same-named tensors. The rest group into regions: connected
//! nodes, bounded by tensors both models name. Each region of the candidate runs alone, fed the
//! original's values of its input tensors (from one run of the original on the whole-model
//! run's seeded inputs), and its outputs are compared with the original's values of the same
//! tensors, with the tolerance of one layer. A region's error does not compound through the
//! network: a correct rewrite deep in a network is not a false alarm, and the first failing
//! region in graph order is the first divergent node. A region whose boundary the original does
//! not name cannot be compared; one bounded only by the graph's inputs and outputs is the
//! whole-model run's to judge.

use crate::verify::Runner;
use std::collections::BTreeSet;

mod discover;
mod model;

use discover::{changed_initializers, counterpart, differing_regions, Region};
use model::region_model;

use crate::error::Result;
use crate::graph::node_label;
use crate::model::Model;
use crate::reference::{ReferenceCheck, ReferenceKind};
use crate::tensor::Dtype;
use crate::verify::{
    capture, default_tolerance, fixed_runner, max_abs_difference, Accumulator, DivergenceCheck,
    Status, VerifyOptions,
};

/// Every differing region of the main graphs outside the folds' nodes (`orig_region`,
/// `cand_region`), in the candidate's graph order.
pub fn check(
    original: &Model,
    candidate: &Model,
    (orig_region, cand_region): (&[usize], &[usize]),
    options: &VerifyOptions,
) -> Result<Vec<DivergenceCheck>> {
    let (original, candidate) = (
        original.with_folded_inline()?,
        candidate.with_folded_inline()?,
    );
    let (original, candidate) = (original.as_ref(), candidate.as_ref());
    let (Some(a), Some(b)) = (&original.proto.graph, &candidate.proto.graph) else {
        return Ok(Vec::new());
    };
    let changed = changed_initializers(original, candidate)?;
    let regions = differing_regions(a, b, orig_region, cand_region, &changed);
    if regions.is_empty() {
        return Ok(Vec::new());
    }
    let produced_a: BTreeSet<&str> = a
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let inputs_a: BTreeSet<&str> = a.input.iter().map(|i| i.name()).collect();
    let outputs_b: BTreeSet<&str> = b.output.iter().map(|o| o.name()).collect();
    let mut checks = Vec::new();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for r in &regions {
        let first = &b.node[r.nodes[0]];
        let mut check = DivergenceCheck {
            first_node: node_label(first),
            op_type: first.op_type().to_string(),
            nodes: r.nodes.len(),
            inputs: r.inputs.clone(),
            status: Status::NotVerified,
            reason: None,
            outputs: Vec::new(),
        };
        let unnamed = r
            .inputs
            .iter()
            .find(|i| !produced_a.contains(i.as_str()) && !inputs_a.contains(i.as_str()))
            .or_else(|| r.outputs.iter().find(|o| !produced_a.contains(o.as_str())));
        let end_to_end = r.inputs.iter().all(|i| inputs_a.contains(i.as_str()))
            && r.outputs.iter().all(|o| outputs_b.contains(o.as_str()));
        if let Some(name) = unnamed {
            check.reason = Some(format!("the original has no tensor '{name}'"));
        } else if end_to_end {
            check.reason = Some(
                "bounded by the graph's inputs and outputs only: the \
                                 whole-model run judges it"
                    .into(),
            );
        } else {
            needed.extend(r.inputs.iter().chain(&r.outputs).cloned());
        }
        checks.push(check);
    }
    if needed.is_empty() {
        return Ok(checks);
    }
    let names: Vec<String> = needed.into_iter().collect();
    let values = match capture(original, &names, options)? {
        Ok(v) => v,
        Err(why) => {
            for c in checks.iter_mut().filter(|c| c.reason.is_none()) {
                c.reason = Some(format!("the original could not run: {why}"));
            }
            return Ok(checks);
        }
    };
    let at = |name: &str| names.iter().position(|n| n == name).unwrap_or(0);
    for (r, check) in regions.iter().zip(&mut checks) {
        if check.reason.is_some() {
            continue;
        }
        let Some(first) = values.first() else {
            continue;
        };
        let mut runners = RegionRunners::default();
        let mut accs: Vec<Accumulator> = r
            .outputs
            .iter()
            .map(|o| {
                let dtype = first[at(o)].dtype;
                Accumulator::new(options.rtol.unwrap_or(default_tolerance(Some(dtype))))
            })
            .collect();
        let mut worst = Some(vec![(0f64, 0f64, 0f64); r.outputs.len()]);
        let mut failure = None;
        for sample in &values {
            // Samples may differ in shape (a symbolic batch): the region is typed for each.
            let typed: Vec<(&str, &crate::verify::Captured)> = r
                .inputs
                .iter()
                .map(|i| (i.as_str(), &sample[at(i)]))
                .collect();
            let typed_outputs: Vec<(&str, &crate::verify::Captured)> = r
                .outputs
                .iter()
                .map(|o| (o.as_str(), &sample[at(o)]))
                .collect();
            let (runner, exact) =
                match runners.for_shapes(original, candidate, r, &typed, &typed_outputs)? {
                    Ok(found) => found,
                    Err(why) => {
                        failure = Some(why);
                        break;
                    }
                };
            let feed: Vec<_> = r.inputs.iter().map(|i| sample[at(i)].to_tract()).collect();
            let got = match runner.run(&feed) {
                Ok(got) => got,
                Err(why) => {
                    failure = Some(why);
                    continue;
                }
            };
            for ((o, acc), y) in r.outputs.iter().zip(&mut accs).zip(&got) {
                let expected = &sample[at(o)].values;
                if expected.len() != y.len() {
                    failure = Some(format!(
                        "'{o}' has {} values against the original's {}",
                        y.len(),
                        expected.len()
                    ));
                }
                acc.add(expected, y);
            }
            let exact_values = exact.as_ref().and_then(|e| {
                let wide: Vec<_> = r.inputs.iter().map(|i| sample[at(i)].widened()).collect();
                e.run(&wide).ok()
            });
            match (exact_values, worst.as_mut()) {
                (Some(e), Some(w)) => {
                    for (k, o) in r.outputs.iter().enumerate() {
                        let original_values = &sample[at(o)].values;
                        w[k].0 = w[k].0.max(max_abs_difference(&got[k], &e[k]));
                        w[k].1 = w[k].1.max(max_abs_difference(original_values, &e[k]));
                        w[k].2 = e[k].iter().fold(w[k].2, |m, v| m.max(v.abs()));
                    }
                }
                _ => worst = None,
            }
        }
        if let Some(why) = failure.as_ref().filter(|_| runners.typed == 0) {
            check.reason = Some(why.clone());
            continue;
        }
        check.outputs = r
            .outputs
            .iter()
            .zip(&accs)
            .map(|(o, acc)| acc.check(o, false, Some(first[at(o)].dtype), options))
            .collect();
        if let Some(w) = worst {
            for (k, out) in check.outputs.iter_mut().enumerate() {
                let judged = judge_exact(w[k], first[at(&r.outputs[k])].dtype);
                out.passed = judged.passed;
                out.reference = Some(judged);
            }
        }
        let beyond: Vec<&str> = check
            .outputs
            .iter()
            .filter(|o| !o.passed)
            .map(|o| o.name.as_str())
            .collect();
        (check.status, check.reason) = match (failure, beyond.is_empty()) {
            (Some(why), _) => (Status::Failed, Some(why)),
            (None, true) => (Status::Passed, None),
            (None, false) => (
                Status::Failed,
                Some(format!("beyond tolerance: {}", beyond.join(", "))),
            ),
        };
    }
    Ok(checks)
}

/// A region typed for each set of input shapes its samples have: the candidate's nodes, and the
/// original's own nodes between the same names widened to f64 (the exact value), when there
/// is such a counterpart.
#[derive(Default)]
struct RegionRunners {
    typed: usize,
    by_shapes: Vec<(Vec<Vec<usize>>, Runner, Option<Runner>)>,
}

impl RegionRunners {
    fn for_shapes(
        &mut self,
        original: &Model,
        candidate: &Model,
        r: &Region,
        typed: &[(&str, &crate::verify::Captured)],
        typed_outputs: &[(&str, &crate::verify::Captured)],
    ) -> Result<std::result::Result<(Runner, Option<Runner>), String>> {
        let shapes: Vec<Vec<usize>> = typed.iter().map(|(_, c)| c.shape.clone()).collect();
        if let Some((_, runner, exact)) = self.by_shapes.iter().find(|(s, _, _)| *s == shapes) {
            return Ok(Ok((runner.clone(), exact.clone())));
        }
        let (Some(a), Some(b)) = (&original.proto.graph, &candidate.proto.graph) else {
            return Ok(Err("a model has no graph".into()));
        };
        let model = region_model(candidate, b, r, (typed, typed_outputs))?;
        let runner = match fixed_runner(&model, &r.outputs) {
            Ok((runner, _)) => runner,
            Err(why) => return Ok(Err(why)),
        };
        // The original's own nodes between the same names, in f64: the exact value.
        let exact = counterpart(a, r).and_then(|nodes| {
            let own = Region {
                nodes,
                inputs: r.inputs.clone(),
                outputs: r.outputs.clone(),
            };
            let m = region_model(original, a, &own, (typed, typed_outputs)).ok()?;
            let wide = crate::reference::widened(&m).ok()?.ok()?;
            fixed_runner(&wide, &r.outputs)
                .ok()
                .map(|(runner, _)| runner)
        });
        self.typed += 1;
        self.by_shapes.push((shapes, runner.clone(), exact.clone()));
        Ok(Ok((runner, exact)))
    }
}

/// Ulps of the exact output's largest value a differing region may be off beyond 4 times the
/// original's own error: a rewritten dot product rounds differently from the original's.
const DIVERGENCE_FLOOR_ULPS: f64 = 8.0;

/// A region's output against the original's nodes evaluated in f64: `(max|candidate − exact|,
/// max|original − exact|, max|exact|)`.
fn judge_exact((candidate, original, magnitude): (f64, f64, f64), dtype: Dtype) -> ReferenceCheck {
    let bound = crate::reference::FACTOR * original
        + DIVERGENCE_FLOOR_ULPS * crate::certificate::unit(dtype, magnitude);
    ReferenceCheck {
        kind: ReferenceKind::Exact,
        candidate_error: candidate,
        original_error: original,
        bound,
        passed: candidate <= bound,
    }
}
