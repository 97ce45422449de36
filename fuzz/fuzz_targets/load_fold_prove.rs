//! Load arbitrary bytes as an ONNX model, fold it, and prove the fold the way `bnfold` does
//! (certificate, every fold run alone in tract against its exact value, the structure outside
//! the folds, the whole-model run with its second opinion). Any panic is a bug, and so is a
//! correct fold the proof refuses: bnfold's own fold must never fail its proof.

#![no_main]

use bnfold::verify::{Status, VerifyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one bnfold catches: tract panics on some
    // shapes, and bnfold turns that into "not verified". Panics that escape still abort (the
    // harness's own catch_unwind), so they are still found.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught or not): {info}")));
    });
    let Ok(original) = bnfold::Model::from_bytes(data.to_vec()) else {
        return;
    };
    // tract's typing is slow on large graphs: the proof of small ones is what is fuzzed here.
    let nodes = original.proto.graph.as_ref().map_or(0, |g| g.node.len());
    if nodes > 64 {
        return;
    }
    let mut model = original.clone();
    let Ok(report) = bnfold::fold(&mut model, &bnfold::FoldOptions::default()) else {
        return;
    };
    if report.folds.is_empty() && report.decompositions.is_empty() {
        return;
    }
    let Ok(bytes) = model.to_bytes() else {
        return;
    };
    let fused = bnfold::Model::from_bytes(bytes).expect("bnfold's own output must load");
    let options = VerifyOptions {
        samples: 1,
        ..VerifyOptions::default()
    };
    let Ok(v) = bnfold::verify(&original, &fused, &[], &options) else {
        return;
    };
    // One refusal is right: a fold whose scaled weights make an accumulation overflow where the
    // original's did not (γ = 4.6e31 was found) computes an infinity the original does not.
    let overflowed = v.outputs.iter().any(|o| !o.passed && o.max_abs_error.is_infinite());
    assert!(
        v.status != Status::Failed || overflowed,
        "bnfold's own fold fails its proof: {:?}",
        v.reason
    );
    assert!(
        v.structure_difference.is_none(),
        "bnfold changed the graph outside its folds: {:?}",
        v.structure_difference
    );
});
