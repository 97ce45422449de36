//! The JSON reports, in the shape `schema/report.schema.json` describes: one source for the
//! command line's `--report json` and the Python package's report dicts.

use serde_json::{json, Value};

use crate::readiness::Readiness;
use crate::report::{Direction, Report, SCHEMA_VERSION};
use crate::verify::Verification;

/// The report of a fold: `input` as given, `output` the model written (none when nothing was).
pub fn fold(report: &Report, input: &str, output: Option<&str>) -> Value {
    let skips: Vec<Value> = report
        .skips
        .iter()
        .map(|s| {
            json!({
                "graph": s.graph,
                "node": s.node,
                "reason": s.reason.code(),
                "details": s.reason,
                "message": s.message,
                "forward_reason": s.forward.as_ref().map(|f| f.code()),
                "forward_message": s.forward_message,
            })
        })
        .collect();
    let mut value = json!({
        "schema": SCHEMA_VERSION,
        "input": input,
        "output": output,
        "ops_before": report.ops_before,
        "ops_after": report.ops_after,
        "folds": report.folds,
        "skips": skips,
        "non_foldable_normalizations": report.non_foldable_normalizations,
        "decompositions": report.decompositions,
        "verification": report.verification,
        "quantization_readiness": report.readiness,
    });
    // Present only when --merge-branches merged something: every other report stays as it was.
    if !report.merges.is_empty() {
        value["merges"] = json!(report.merges);
    }
    // Present only when a Constant node became an initializer, for the same reason.
    if !report.initializers_from_constants.is_empty() {
        value["initializers_from_constants"] = json!(report.initializers_from_constants);
    }
    if !report.equalizations.is_empty() {
        value["equalizations"] = json!(report.equalizations);
    }
    value
}

/// Every normalization of a fold's report and how it folds, as `inspect` lists them.
pub fn normalizations(report: &Report) -> Vec<Value> {
    let folds = report.folds.iter().map(|f| {
        let how = match f.direction {
            Direction::Backward => format!("into {} {}", f.kind.op_type(), f.producer),
            Direction::Forward => format!("forward into {} {}", f.kind.op_type(), f.producer),
        };
        json!({
            "graph": f.graph, "node": f.batch_norm, "op_type": "BatchNormalization",
            "foldable": true, "how": how,
        })
    });
    let skips = report.skips.iter().map(|k| {
        json!({
            "graph": k.graph, "node": k.node, "op_type": "BatchNormalization",
            "foldable": false, "reason": k.reason.code(), "how": k.message,
        })
    });
    let statistics = report.non_foldable_normalizations.iter().map(|n| {
        json!({
            "graph": n.graph, "node": n.node, "op_type": n.op_type,
            "foldable": false, "reason": "input_statistics",
            "how": "its statistics are computed from the input at run time",
        })
    });
    folds.chain(skips).chain(statistics).collect()
}

/// The report of `inspect`: the normalizations (see [`normalizations`]) and the readiness.
pub fn inspect(input: &str, normalizations: &[Value], readiness: &Readiness) -> Value {
    json!({
        "schema": SCHEMA_VERSION,
        "input": input,
        "normalizations": normalizations,
        "quantization_readiness": readiness,
    })
}

/// The report of `verify`: two models compared.
pub fn verify(original: &str, candidate: &str, verification: &Verification) -> Value {
    json!({
        "schema": SCHEMA_VERSION,
        "original": original,
        "candidate": candidate,
        "verification": verification,
    })
}
