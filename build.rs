//! Generates the ONNX protobuf types from the vendored `proto/onnx.proto` with the pure-Rust
//! `protox` compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    // An attribute holds at most one of these; inline, they made every attribute 1.6 KB.
    let mut config = prost_build::Config::new();
    for field in ["t", "g", "sparse_tensor", "tp"] {
        config.boxed(format!(".onnx.AttributeProto.{field}"));
    }
    config.bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
