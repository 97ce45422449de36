//! Fold a model with the library, check the result with tract, and save it only if it passed.
//!
//! `cargo run --example fold_model -- fixtures/conv_bn.onnx fused.onnx`

use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, SaveOptions, VerifyOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: fold_model INPUT OUTPUT".into());
    };
    let original = Model::load(&input)?;
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default())?;
    for f in &report.folds {
        println!(
            "folded {} into {} {}",
            f.batch_norm,
            f.kind.op_type(),
            f.producer
        );
    }
    for s in &report.skips {
        println!("left {}: {}", s.node, s.message);
    }
    let chains: Vec<String> = report.folds.iter().map(|f| f.output.clone()).collect();
    let check = verify(&original, &fused, &chains, &VerifyOptions::default())?;
    println!("verification: {:?}", check.status);
    if check.status != Status::Passed {
        return Err("the fused model does not match the original; nothing written".into());
    }
    fused.save(&output, SaveOptions::default())?;
    println!("wrote {output}");
    Ok(())
}
