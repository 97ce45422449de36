//! High-bias absorption (`--equalize=absorb`) applied to a fused model, and its change
//! measured: [`crate::fold()`] leaves the exactly equalized model and plans the absorption
//! ([`Report::absorption`]); [`absorb`] writes the planned biases into it and runs it against
//! the exact model, each absorbed pair's second layer and the outputs compared.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::graph::node_label;
use crate::model::Model;
use crate::proto::TensorProto;
use crate::report::{AbsorptionCheck, AbsorptionPlan, Report};
use crate::verify::{Status, VerifyOptions};

/// Writes the absorption `report` plans into `model` (the model [`crate::fold()`] returned), and,
/// given `measure`, measures the change against `exact` (that model before, which the
/// verification proves) into `report`: each pair's `float_change`, and `absorption_check`. A
/// plan with nothing to absorb leaves both as they are.
pub fn absorb(
    model: &mut Model,
    report: &mut Report,
    measure: Option<(&Model, &VerifyOptions)>,
) -> Result<()> {
    if report.absorption.is_empty() {
        return Ok(());
    }
    crate::fold::apply_absorption(model, &report.absorption)?;
    let pairs = report.absorption.measured_at().len();
    let Some((exact, options)) = measure else {
        report.absorption_check = Some(AbsorptionCheck {
            pairs,
            output_change: None,
            status: Status::NotVerified,
            reason: Some("not measured (verification off)".into()),
        });
        return Ok(());
    };
    check(exact, model, report, options)
}

/// Measures `absorbed` against `exact` into `report` (see [`absorb`]).
pub fn check(
    exact: &Model,
    absorbed: &Model,
    report: &mut Report,
    options: &VerifyOptions,
) -> Result<()> {
    let measured_at = report.absorption.measured_at().to_vec();
    let tensors: Vec<String> = measured_at.iter().map(|(_, t)| t.clone()).collect();
    let v = crate::proof::verify(exact, absorbed, &tensors, options)?;
    for (record, tensor) in &measured_at {
        let change = v.outputs.iter().find(|o| &o.name == tensor);
        if let Some(absorption) = report
            .equalizations
            .get_mut(*record)
            .and_then(|r| r.absorption.as_mut())
        {
            absorption.float_change = change.map(|c| c.normalized_error);
        }
    }
    let output_change = v
        .outputs
        .iter()
        .filter(|o| o.graph_output)
        .map(|o| o.normalized_error)
        .reduce(f64::max);
    let stray = beyond_biases(exact, absorbed, &report.absorption)?;
    let ran = !v.outputs.is_empty();
    report.absorption_check = Some(AbsorptionCheck {
        pairs: measured_at.len(),
        output_change,
        status: match (&stray, ran) {
            (Some(_), _) => Status::Failed,
            (None, false) => Status::NotVerified,
            (None, true) => Status::Passed,
        },
        reason: match (stray, ran) {
            (Some(what), _) => Some(format!("{what} differs, beyond the absorbed biases")),
            (None, false) => v.reason.clone(),
            (None, true) => None,
        },
    });
    Ok(())
}

/// What differs between `exact` and `absorbed` beyond the planned biases, if anything: a node
/// other than in an absorbed bias input, a new initializer other than an absorbed bias, or an
/// initializer's value (compared element by element).
fn beyond_biases(exact: &Model, absorbed: &Model, plan: &AbsorptionPlan) -> Result<Option<String>> {
    // Folded weights are computed, so values compare as written.
    let (exact, absorbed) = (exact.with_folded_inline()?, absorbed.with_folded_inline()?);
    let (exact, absorbed) = (exact.as_ref(), absorbed.as_ref());
    let (Some(a), Some(b)) = (&exact.proto.graph, &absorbed.proto.graph) else {
        return Ok(None);
    };
    if a.node.len() != b.node.len() {
        return Ok(Some(format!(
            "{} nodes instead of {}",
            b.node.len(),
            a.node.len()
        )));
    }
    let bias_inputs: HashMap<&str, usize> = plan.bias_inputs().collect();
    let mut biases = HashSet::new();
    for (x, y) in a.node.iter().zip(&b.node) {
        let (mut x, mut y) = (x.clone(), y.clone());
        if let Some(&k) = y.output.first().and_then(|o| bias_inputs.get(o.as_str())) {
            for node in [&mut x, &mut y] {
                node.input
                    .resize(node.input.len().max(k + 1), String::new());
            }
            biases.insert(std::mem::take(&mut y.input[k]));
            x.input[k].clear();
        }
        if x != y {
            return Ok(Some(format!("node {}", node_label(&y))));
        }
    }
    let before: HashMap<&str, &TensorProto> = a.initializer.iter().map(|t| (t.name(), t)).collect();
    for t in b.initializer.iter().filter(|t| !biases.contains(t.name())) {
        let same = match before.get(t.name()) {
            Some(u) => crate::structure::same_tensor(u, t, exact, absorbed)?,
            None => false,
        };
        if !same {
            return Ok(Some(format!("initializer '{}'", t.name())));
        }
    }
    Ok(None)
}
