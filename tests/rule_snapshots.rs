//! Each rule on the smallest graph that shows it, before and after, as text snapshots (insta):
//! what a rule does to a graph, readable in review. The numbers are checked elsewhere (against
//! the formula, tract and onnxruntime); here the structure is the claim.

mod common;

use std::fmt::Write as _;

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::{fold, FoldOptions, Model};
use common::build::Graph;

/// One line per node (`outputs = Op(inputs)`), then each initializer's name and shape.
fn render(model: &Model) -> String {
    let graph = model.proto.graph.as_ref().unwrap();
    let mut s = String::new();
    for n in &graph.node {
        let _ = writeln!(
            s,
            "{} = {}({})",
            n.output.join(", "),
            n.op_type(),
            n.input.join(", ")
        );
    }
    let mut inits: Vec<String> = graph
        .initializer
        .iter()
        .map(|t| format!("{} {:?}", t.name(), t.dims))
        .collect();
    inits.sort();
    let _ = writeln!(s, "-- initializers: {}", inits.join(", "));
    s
}

/// The graph before and after folding with `options`.
fn before_after(model: ModelProto, options: &FoldOptions) -> String {
    let mut m = Model::from_proto(model, ExternalStore::none()).unwrap();
    let before = render(&m);
    fold(&mut m, options).unwrap();
    format!("{before}-- after --\n{}", render(&m))
}

fn default_fold(model: ModelProto) -> String {
    before_after(model, &FoldOptions::default())
}

fn conv_input() -> Graph {
    Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("w", &[2, 2, 3, 3], &[0.5; 36])
        .bn_params("bn", 2)
}

#[test]
fn conv_then_bn() {
    let model = conv_input()
        .node("Conv", &["x", "w"], &["c"])
        .bn("bn", "c", "y")
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn conv_transpose_then_bn() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("w", &[2, 3, 3, 3], &[0.5; 54])
        .bn_params("bn", 3)
        .node("ConvTranspose", &["x", "w"], &["c"])
        .bn("bn", "c", "y")
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn gemm_and_matmul_then_bn() {
    let mut s = String::new();
    for op in ["Gemm", "MatMul"] {
        let model = Graph::new(13)
            .input("x", &[4, 3])
            .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .bn_params("bn", 2)
            .node(op, &["x", "w"], &["p"])
            .bn("bn", "p", "y")
            .output("y")
            .model();
        s += &default_fold(model);
        s += "\n";
    }
    insta::assert_snapshot!(s);
}

#[test]
fn frozen_batch_norm_as_mul_and_add() {
    let model = conv_input()
        .init("scale", &[1, 2, 1, 1], &[2.0, 3.0])
        .init("shift", &[1, 2, 1, 1], &[0.5, -0.5])
        .node("Conv", &["x", "w"], &["c"])
        .node("Mul", &["c", "scale"], &["m"])
        .node("Add", &["m", "shift"], &["y"])
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn relu_bn_then_padded_conv_folds_forward_keeping_the_shift() {
    let model = conv_input()
        .node("Relu", &["x"], &["r"])
        .bn("bn", "r", "n")
        .node("Conv", &["n", "w"], &["y"])
        .ints("pads", &[1, 1, 1, 1])
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn bn_then_flatten_then_gemm_folds_forward() {
    let model = Graph::new(13)
        .input("x", &[2, 2, 1, 1])
        .init("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .bn_params("bn", 2)
        .node("Relu", &["x"], &["r"])
        .bn("bn", "r", "n")
        .node("Flatten", &["n"], &["f"])
        .node("Gemm", &["f", "w"], &["y"])
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn bn_after_concat_splits_into_its_convs() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .init("wa", &[1, 2, 1, 1], &[1.0, 2.0])
        .init("wb", &[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0])
        .bn_params("bn", 3)
        .node("Conv", &["x", "wa"], &["a"])
        .node("Conv", &["x", "wb"], &["b"])
        .node_with("Concat", &["a", "b"], &["cat"], &[("axis", 1)])
        .bn("bn", "cat", "y")
        .output("y")
        .model();
    insta::assert_snapshot!(default_fold(model));
}

#[test]
fn a_standalone_bn_decomposed() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 4, 4])
        .bn_params("bn", 2)
        .node("Relu", &["x"], &["r"])
        .bn("bn", "r", "y")
        .output("y")
        .model();
    let options = FoldOptions {
        decompose_standalone: true,
        ..FoldOptions::default()
    };
    insta::assert_snapshot!(before_after(model, &options));
}

#[test]
fn repvgg_branches_merged() {
    let model = conv_input()
        .init("w1", &[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0])
        .node("Relu", &["x"], &["r"])
        .node("Conv", &["r", "w"], &["k3"])
        .ints("pads", &[1, 1, 1, 1])
        .node("Conv", &["r", "w1"], &["k1"])
        .bn("bn", "r", "id")
        .node("Add", &["k3", "k1"], &["s"])
        .node("Add", &["s", "id"], &["y"])
        .output("y")
        .model();
    let options = FoldOptions {
        merge_branches: true,
        ..FoldOptions::default()
    };
    insta::assert_snapshot!(before_after(model, &options));
}
