//! Generates the ONNX protobuf types from the vendored `proto/onnx.proto` with the pure-Rust
//! `protox` compiler, so no system `protoc` is needed; links the `bnfold` executable at a fixed
//! address on Linux.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    // A position-independent `bnfold` spends a third of its start-up (0.35 ms of a `--version`
    // that takes 1.4 ms) applying 44,000 relocations, a fifth of the time `cp` takes for a 10 MB
    // model; linked at a fixed address it has none. Only the executable: the Python
    // extension stays position-independent, as a shared library must be. The shared libraries'
    // addresses, the stack's and the heap's stay randomized.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    // An attribute holds at most one of these; inline, they made every attribute 1.6 KB.
    let mut config = prost_build::Config::new();
    for field in ["t", "g", "sparse_tensor", "tp"] {
        config.boxed(format!(".onnx.AttributeProto.{field}"));
    }
    config.bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
