//! Load arbitrary bytes as an ONNX model, fold it, write it, read the result back, and certify
//! every fold against the original. Any panic, hang or oversized allocation is a bug: bad input
//! must end in an `Err`; and a fold bnfold wrote must never fail its own certificate.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(original) = bnfold::Model::from_bytes(data.to_vec()) else {
        return;
    };
    let mut model = original.clone();
    if bnfold::fold(&mut model, &bnfold::FoldOptions::default()).is_err() {
        return;
    }
    // The one error writing may give: an f32/f64 fold whose product overflows, found in the
    // rounding (see ScaledTensor::fits).
    let bytes = match model.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) if e.to_string().contains("is not finite in") => return,
        Err(e) => panic!("a model that folded must serialize: {e}"),
    };
    let fused = bnfold::Model::from_bytes(bytes).expect("bnfold's own output must load");
    if let Ok(certificates) = bnfold::certificate::certify(&original, &fused) {
        for c in certificates {
            assert!(
                c.passed() || c.unproven.is_some(),
                "bnfold's own fold fails its certificate: {c:?}"
            );
        }
    }
});
