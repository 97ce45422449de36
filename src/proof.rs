//! The proof of a fused model against its original, in the order it is made: the exact
//! certificate of every fold ([`crate::certificate`]), every fold run alone and the structure
//! outside them ([`crate::regions`], [`crate::structure`]), and the whole-model run
//! ([`crate::verify`](mod@crate::verify)); then what decides the status.

use crate::certificate::NodeCertificate;
use crate::error::Result;
use crate::model::Model;
use crate::verify::{
    run_whole_model, DivergenceCheck, RegionCheck, Status, Verification, VerifyOptions,
};

/// Certifies every node of `candidate` that took over a BatchNormalization's output in
/// `original` (each rewritten element against the fold's formula, see [`crate::certificate`]),
/// then runs both models on the same random inputs and compares their graph outputs and the
/// tensors named in `intermediates` (present in both models). A certificate that fails fails
/// the verification, whatever the run says; one that cannot be made is reported with its
/// reason.
pub fn verify(
    original: &Model,
    candidate: &Model,
    intermediates: &[String],
    options: &VerifyOptions,
) -> Result<Verification> {
    let (original, candidate) = (
        original.with_folded_inline()?,
        candidate.with_folded_inline()?,
    );
    let (original, candidate) = (original.as_ref(), candidate.as_ref());
    // A fold is proven where it is (certificate and region); comparing its output deep in the
    // network would judge the whole network's float error instead. So the whole-model run
    // compares the graph outputs and the other tensors asked for, and runs on a second thread
    // while the local proof is made on this one.
    let folded = crate::certificate::folded_outputs(original, candidate);
    let intermediates: Vec<String> = intermediates
        .iter()
        .filter(|n| !folded.contains(n))
        .cloned()
        .collect();
    let (whole, local) = std::thread::scope(|scope| {
        let whole = scope.spawn(|| run_whole_model(original, candidate, &intermediates, options));
        let local = local_proof(original, candidate, options);
        let whole = whole.join().unwrap_or_else(|_| {
            Err(crate::error::Error::Verify(
                "the whole-model run panicked".into(),
            ))
        });
        (whole, local)
    });
    let mut v = whole?;
    let (certificates, mut local) = local?;
    let regions = std::mem::take(&mut local.regions);
    // A difference outside the folds bnfold knows: each differing region run alone on the
    // original's own values; when every one passes, the difference is explained.
    let divergences = match local.difference_in_main {
        true => {
            let (a, b) = &local.main_region_nodes;
            crate::divergence::check(original, candidate, (a, b), options)?
        }
        false => Vec::new(),
    };
    if !divergences.is_empty() && divergences.iter().all(|d| d.status == Status::Passed) {
        local.structure_difference = local.subgraph_difference.take();
    }
    let failed_regions: Vec<&RegionCheck> = regions
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    if let Some(first) = failed_regions.first() {
        let figures = match (&first.exact, &first.check) {
            (Some(e), _) => format!(
                ": {:.1} units of rounding from the exact value, bound {:.1}",
                e.fused_error_units, e.bound_units
            ),
            (None, Some(c)) => format!(
                ": max abs error {:.3e} against a tolerance of {:.3e}",
                c.max_abs_error, c.atol
            ),
            (None, None) => String::new(),
        };
        let head = format!(
            "region of {} (folded from {}) run alone on inputs {:?}{figures}",
            first.node, first.batch_norm, first.input_shape
        );
        fail(&mut v, head, failed_regions.len(), "regions");
    }

    let diverged: Vec<&DivergenceCheck> = divergences
        .iter()
        .filter(|d| d.status == Status::Failed)
        .collect();
    if let Some(first) = diverged.first() {
        let worst = first.outputs.iter().find(|o| !o.passed);
        let figures = match worst {
            Some(o) => match &o.reference {
                Some(r) => format!(
                    "'{}' {:.3e} from the original's nodes evaluated in f64, bound {:.3e} (4 × \
                     the original's own {:.3e}, plus 8 ulps)",
                    o.name, r.candidate_error, r.bound, r.original_error
                ),
                None => format!(
                    "'{}' max abs error {:.3e} against a tolerance of {:.3e}",
                    o.name, o.max_abs_error, o.atol
                ),
            },
            None => first.reason.clone().unwrap_or_default(),
        };
        let head = format!(
            "first divergent node: {} {} of the candidate (a region of {} node{} run alone on \
             the original's values of {:?}): {figures}",
            first.op_type,
            first.first_node,
            first.nodes,
            if first.nodes == 1 { "" } else { "s" },
            first.inputs
        );
        fail(&mut v, head, diverged.len(), "divergent regions");
    }
    // A certificate passes when every element is rounded once, or, with `float_folds`, within
    // float arithmetic of the formula (another tool's fold computed in float32).
    let certified =
        |c: &NodeCertificate| c.passed() || (options.float_folds && c.within_float_arithmetic());
    let failed: Vec<&NodeCertificate> = certificates
        .iter()
        .filter(|c| !certified(c) && c.unproven.is_none())
        .collect();
    let only_float_error = failed.iter().all(|c| c.within_float_arithmetic());
    if let Some(first) = failed.first() {
        let tensor = first.tensors.iter().find(|t| !t.passed());
        let what = tensor.map_or(String::new(), |t| {
            format!(
                ": '{}' element {} is {:.1} ulps from the formula (bound {:.1})",
                t.tensor,
                t.first_bad_element.unwrap_or(0),
                t.max_ulps,
                t.bound_ulps
            )
        });
        let hint = match only_float_error {
            true => {
                "; every such element is within float arithmetic of the formula, as a fold \
                     computed in float32 is (bnfold verify --float-folds accepts that)"
            }
            false => "",
        };
        let head = format!(
            "certificate: {} {} (folded from {}){what}",
            first.op_type, first.node, first.batch_norm
        );
        fail(&mut v, head, failed.len(), "nodes");
        if let Some(reason) = v.reason.as_mut() {
            reason.push_str(hint);
        }
    }
    // `passed` needs the local proof complete: the graphs the same outside the folds, every
    // fold passed its region and every certificate passed. Where the whole model cannot run,
    // the local proof decides; where it is incomplete, a passing whole-model run is not enough.
    let complete = local.structure_difference.is_none()
        && regions.iter().all(|r| r.status == Status::Passed)
        && certificates.iter().all(certified);
    match (&v.status, complete) {
        (Status::NotVerified, true) => {
            v.status = Status::Passed;
            v.reason = Some(format!(
                "proven locally ({} folds run alone, {} certified, the graphs identical outside \
                 them); the whole-model run could not run: {}",
                regions.len(),
                certificates.len(),
                v.reason.take().unwrap_or_default()
            ));
        }
        (Status::Passed | Status::NotVerified, false) => {
            let whole = match v.status {
                Status::Passed => "the whole-model run passed".to_string(),
                _ => format!(
                    "the whole-model run could not run: {}",
                    v.reason.take().unwrap_or_default()
                ),
            };
            v.status = Status::NotVerified;
            v.reason = Some(format!(
                "{}; {whole}",
                unproven(
                    &regions,
                    &certificates
                        .iter()
                        .filter(|c| !certified(c))
                        .collect::<Vec<_>>(),
                    local.structure_difference.as_deref()
                )
            ));
        }
        _ => {}
    }
    v.proven_locally = complete;
    v.regions = regions;
    v.structure_difference = local.structure_difference;
    v.divergences = divergences;
    v.certificates = certificates;
    Ok(v)
}

/// The certificates, and every fold run alone with the structure outside them.
fn local_proof(
    original: &Model,
    candidate: &Model,
    options: &VerifyOptions,
) -> Result<(Vec<NodeCertificate>, crate::regions::LocalProof)> {
    let certificates = crate::certificate::certify(original, candidate)?;
    let local = crate::regions::check(original, candidate, options)?;
    Ok((certificates, local))
}

/// What leaves the local proof incomplete, in one line: the first unproven fold and how many
/// others, or the first difference outside the folds.
fn unproven(
    regions: &[RegionCheck],
    uncertified: &[&NodeCertificate],
    structure_difference: Option<&str>,
) -> String {
    if let Some(difference) = structure_difference {
        return format!("not proven locally: outside the folds, {difference}");
    }
    let mut open: Vec<String> = regions
        .iter()
        .filter(|r| r.status != Status::Passed)
        .map(|r| {
            format!(
                "region of {} (folded from {}) not run: {}",
                r.node,
                r.batch_norm,
                r.reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    open.extend(uncertified.iter().map(|c| {
        format!(
            "{} {} (folded from {}) not certified: {}",
            c.op_type,
            c.node,
            c.batch_norm,
            c.unproven.as_deref().unwrap_or("no reason given")
        )
    }));
    let others = match open.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} other unproven)", n - 1),
    };
    format!(
        "not proven locally: {}{others}",
        open.first().map_or("", String::as_str)
    )
}

/// Fails `v` with `head` first: how many other `what` failed, then what it said before.
fn fail(v: &mut Verification, head: String, failing: usize, what: &str) {
    let others = match failing {
        0 | 1 => String::new(),
        n => format!(" (and {} other {what})", n - 1),
    };
    let before = v
        .reason
        .take()
        .map(|r| format!("; {r}"))
        .unwrap_or_default();
    v.status = Status::Failed;
    v.reason = Some(format!("{head}{others}{before}"));
}
