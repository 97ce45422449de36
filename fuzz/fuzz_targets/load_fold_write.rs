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
    let bytes = model
        .to_bytes()
        .expect("a model that folded must serialize");
    bnfold::Model::from_bytes(bytes).expect("bnfold's own output must load");
});
