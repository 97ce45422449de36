//! Load arbitrary bytes as an ONNX model, fold it, write it, and read the result back.
//! Any panic, hang or oversized allocation is a bug: bad input must end in an `Err`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut model) = bnfold::Model::from_bytes(data.to_vec()) else {
        return;
    };
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
    bnfold::Model::from_bytes(bytes).expect("bnfold's own output must load");
});
