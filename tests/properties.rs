//! Property tests: randomly generated Conv / ConvTranspose / Gemm / MatMul → BatchNormalization
//! (→ Relu) models, with random shapes, groups, strides, padding, dtypes and statistics, must
//! fold completely and compute what the original computes (checked by tract, which runs the
//! original BatchNormalization itself). Seeded, so a failure names a case that can be replayed.

mod random;

use bnfold::tensor::Dtype;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};

use random::{conv_case, evaluate, gemm_case, matmul_case, model, Rng};

#[test]
fn random_chains_fold_completely_and_compute_what_the_original_computes() {
    const CASES: u64 = 160;
    let mut failures = Vec::new();
    for seed in 0..CASES {
        let mut rng = Rng(seed);
        let dtype = [Dtype::F32, Dtype::F32, Dtype::F64, Dtype::F16][rng.below(4)];
        let case = match seed % 4 {
            0 => conv_case(&mut rng, dtype, false),
            1 => conv_case(&mut rng, dtype, true),
            2 => gemm_case(&mut rng, dtype),
            _ => matmul_case(&mut rng, dtype),
        };
        let relu = rng.coin();
        let proto = model(&case, &mut rng, dtype, relu);
        let original = match Model::from_proto(proto, Default::default()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!(
                    "seed {seed} ({}): does not load: {e}",
                    case.description
                ));
                continue;
            }
        };
        let mut fused = original.clone();
        let report = match fold(&mut fused, &FoldOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("seed {seed} ({}): {e}", case.description));
                continue;
            }
        };
        if report.folds.len() != 1 {
            failures.push(format!(
                "seed {seed} ({}): not folded: {:?}",
                case.description,
                report.skips.iter().map(|s| &s.message).collect::<Vec<_>>()
            ));
            continue;
        }
        let check = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
        let matrix_case = seed % 4 >= 2;
        if check.status == Status::NotVerified && matrix_case && dtype != Dtype::F32 {
            // tract cannot run f16 or f64 Gemm: the test's own evaluator checks these.
            let x = rng.values(case.input_dims.iter().product(), -2.0, 2.0);
            let (want, got) = (evaluate(&original, &x), evaluate(&fused, &x));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            let worst = want
                .iter()
                .zip(&got)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            let tolerance = if dtype == Dtype::F16 { 1e-2 } else { 1e-9 };
            if worst / scale > tolerance {
                failures.push(format!(
                    "seed {seed} ({}, relu {relu}): normalized error {:e}",
                    case.description,
                    worst / scale
                ));
            }
            continue;
        }
        if check.status != Status::Passed {
            failures.push(format!(
                "seed {seed} ({}, relu {relu}): {:?} {:?} {:?}",
                case.description, check.status, check.reason, check.outputs
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CASES} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
