//! High-bias absorption (`--equalize=absorb`) applied to a fused model, and its change
//! measured: [`crate::fold`] leaves the exactly equalized model and plans the absorption
//! ([`Report::absorption`]); [`absorb`] writes the planned biases into it and runs it against
//! the exact model, each absorbed pair's second layer and the outputs compared.

use crate::model::Model;
use crate::report::{AbsorptionCheck, Report};
use crate::verify::{Status, VerifyOptions};
use crate::Result;

/// Writes the absorption `report` plans into `model` (the model [`crate::fold`] returned), and,
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
    let v = crate::verify(exact, absorbed, &tensors, options)?;
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
    // What differs besides the absorbed layers: a region of the absorbed model that does not
    // match the exact one and holds no absorbed layer's bias.
    let outputs: Vec<&str> = report.absorption.node_outputs().collect();
    let absorbed_layers: Vec<String> = absorbed
        .proto
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .filter(|n| {
            n.output
                .first()
                .is_some_and(|o| outputs.contains(&o.as_str()))
        })
        .map(crate::graph::node_label)
        .collect();
    let stray = v
        .divergences
        .iter()
        .find(|d| d.status == Status::Failed && !absorbed_layers.contains(&d.first_node));
    let ran = !v.outputs.is_empty();
    report.absorption_check = Some(AbsorptionCheck {
        pairs: measured_at.len(),
        output_change,
        status: match (ran, stray) {
            (false, _) => Status::NotVerified,
            (true, None) => Status::Passed,
            (true, Some(_)) => Status::Failed,
        },
        reason: match (ran, stray) {
            (false, _) => v.reason.clone(),
            (true, Some(d)) => Some(format!(
                "{} differs beyond the absorbed biases",
                d.first_node
            )),
            (true, None) => None,
        },
    });
    Ok(())
}
