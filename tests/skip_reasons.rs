//! Every reason a BatchNormalization is left in place, each on the smallest graph that shows it,
//! backward and forward (the reasons the fixture manifest covers on real exports are asserted
//! there too).

mod common;

use bnfold::external::ExternalStore;
use bnfold::proto::tensor_proto::DataType;
use bnfold::proto::{ModelProto, TensorProto};
use bnfold::{fold, FoldOptions, Model};
use common::build::Graph;

/// The (backward, forward) reason codes of each BN left, and its message.
fn skips(model: ModelProto) -> Vec<(String, Option<String>, String)> {
    let mut model = Model::from_proto(model, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert!(report.folds.is_empty(), "{:?}", report.folds);
    report
        .skips
        .iter()
        .map(|s| {
            let forward = s.forward.as_ref().map(|f| f.code());
            let message = s.forward_message.clone().unwrap_or(s.message.clone());
            (s.reason.code(), forward, message)
        })
        .collect()
}

/// The one BN's reasons.
fn only(model: ModelProto) -> (String, Option<String>, String) {
    let mut all = skips(model);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// `x [2, 3]` through a BN over 3 channels into `after`.
fn bn_on_input(opset: i64) -> Graph {
    Graph::new(opset)
        .input("x", &[2, 3])
        .bn_params("bn", 3)
        .bn("bn", "x", "y")
}

#[test]
fn a_bn_whose_running_statistics_are_read_stays() {
    let model = Graph::new(9)
        .input("x", &[1, 2, 2, 2])
        .init("w", &[2, 2, 1, 1], &[1.0, 0.5, -0.5, 2.0])
        .bn_params("bn", 2)
        .node("Conv", &["x", "w"], &["c"])
        .node(
            "BatchNormalization",
            &["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            &["y", "running_mean"],
        )
        .output("y")
        .output("running_mean")
        .model();
    let (backward, forward, _) = only(model);
    assert_eq!(backward, "extra_outputs_used");
    assert_eq!(forward, None, "forward is not tried either");
}

#[test]
fn an_integer_weight_is_not_folded() {
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![3, 2],
        data_type: Some(DataType::Int32 as i32),
        int32_data: vec![1, 2, 3, 4, 5, 6],
        ..Default::default()
    };
    let model = Graph::new(13)
        .input("x", &[4, 3])
        .tensor(w)
        .bn_params("bn", 2)
        .node("MatMul", &["x", "w"], &["m"])
        .bn("bn", "m", "y")
        .output("y")
        .model();
    let (backward, _, _) = only(model);
    assert_eq!(backward, "unsupported_dtype");
}

#[test]
fn a_matmul_with_its_constant_on_the_left_is_not_folded_into() {
    let model = Graph::new(13)
        .input("x", &[3, 2])
        .init("w", &[4, 3], &[0.5; 12])
        .bn_params("bn", 2)
        .node("MatMul", &["w", "x"], &["m"])
        .bn("bn", "m", "y")
        .output("y")
        .model();
    let (backward, forward, _) = only(model);
    assert_eq!(backward, "mat_mul_weight_on_left");
    assert_eq!(forward.as_deref(), Some("no_consumer"));
}

#[test]
fn forward_needs_one_consumer() {
    let model = bn_on_input(13)
        .node("Relu", &["y"], &["a"])
        .node("Relu", &["y"], &["b"])
        .output("a")
        .output("b")
        .model();
    let (backward, forward, message) = only(model);
    assert_eq!(backward, "no_producer");
    assert_eq!(forward.as_deref(), Some("consumer_output_shared"));
    assert!(message.contains("'y' feeds several nodes"), "{message}");
}

#[test]
fn forward_needs_a_consumer() {
    let (_, forward, _) = only(bn_on_input(13).output("y").model());
    assert_eq!(forward.as_deref(), Some("no_consumer"));
}

#[test]
fn forward_needs_a_layer_that_absorbs_it() {
    let model = bn_on_input(13)
        .node("Relu", &["y"], &["r"])
        .output("r")
        .model();
    let (_, forward, message) = only(model);
    assert_eq!(forward.as_deref(), Some("consumer_not_foldable"));
    assert!(message.contains("Relu"), "{message}");
}

#[test]
fn forward_under_padding_needs_every_scale_non_zero() {
    let mut bn = Graph::new(13).input("x", &[1, 2, 3, 3]);
    bn = bn
        .init("bn.scale", &[2], &[1.0, 0.0])
        .init("bn.bias", &[2], &[0.5, 0.5])
        .init("bn.mean", &[2], &[0.0, 0.0])
        .init("bn.var", &[2], &[1.0, 1.0]);
    let model = bn
        .bn("bn", "x", "y")
        .init("w", &[1, 2, 3, 3], &[0.1; 18])
        .node("Conv", &["y", "w"], &["c"])
        .ints("pads", &[1, 1, 1, 1])
        .output("c")
        .model();
    let (_, forward, message) = only(model);
    assert_eq!(forward.as_deref(), Some("zero_scale_under_padding"));
    assert!(message.contains("channel 1"), "{message}");
}

#[test]
fn forward_through_a_flatten_that_mixes_channels_and_samples_is_refused() {
    let model = Graph::new(13)
        .input("x", &[2, 3, 4])
        .bn_params("bn", 3)
        .bn("bn", "x", "y")
        .node_with("Flatten", &["y"], &["f"], &[("axis", 2)])
        .init("w", &[4, 5], &[0.5; 20])
        .node("Gemm", &["f", "w"], &["g"])
        .output("g")
        .model();
    let (_, forward, _) = only(model);
    assert_eq!(forward.as_deref(), Some("reshape_mixes_channels"));
}

#[test]
fn forward_into_matmul_needs_a_gemm_with_broadcast_c() {
    // Opset 6: Gemm's C does not broadcast yet. BatchNormalization-6 in inference mode.
    let model = Graph::new(6)
        .input("x", &[2, 3])
        .bn_params("bn", 3)
        .node_with(
            "BatchNormalization",
            &["x", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            &["y"],
            &[("is_test", 1)],
        )
        .init("w", &[3, 4], &[0.5; 12])
        .node("MatMul", &["y", "w"], &["m"])
        .output("m")
        .model();
    let (_, forward, message) = only(model);
    assert_eq!(forward.as_deref(), Some("no_broadcast_gemm"));
    assert!(message.contains("opset 6"), "{message}");
}

#[test]
fn forward_needs_the_bn_on_the_data_input() {
    let model = bn_on_input(13)
        .init("a", &[4, 2], &[0.5; 8])
        .node("Gemm", &["a", "y"], &["g"])
        .output("g")
        .model();
    let (_, forward, _) = only(model);
    assert_eq!(forward.as_deref(), Some("consumer_not_on_data_input"));
}

#[test]
fn forward_into_a_gemm_with_transposed_a_is_refused() {
    let model = bn_on_input(13)
        .init("w", &[2, 4], &[0.5; 8])
        .node_with("Gemm", &["y", "w"], &["g"], &[("transA", 1)])
        .output("g")
        .model();
    let (_, forward, _) = only(model);
    assert_eq!(forward.as_deref(), Some("gemm_transposed_a"));
}

#[test]
fn the_graph_builder_makes_a_model_that_folds() {
    // The builder itself: the plain Conv → BN folds.
    let model = Graph::new(13)
        .input("x", &[1, 2, 2, 2])
        .init("w", &[2, 2, 1, 1], &[1.0, 0.5, -0.5, 2.0])
        .bn_params("bn", 2)
        .node("Conv", &["x", "w"], &["c"])
        .bn("bn", "c", "y")
        .output("y")
        .model();
    let mut model = Model::from_proto(model, ExternalStore::none()).unwrap();
    let report = fold(&mut model, &FoldOptions::default()).unwrap();
    assert_eq!(report.folds.len(), 1);
    assert!(report.skips.is_empty());
}
