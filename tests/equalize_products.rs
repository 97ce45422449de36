//! `--equalize` on the pair kinds beyond ungrouped convolutions and Gemms: MatMul pairs (a
//! MatMul's bias is the `Add` after it), MatMul beside Gemm, and grouped ConvTransposes on either
//! side. Each is checked against the formula (the ranges on both sides of every channel equal
//! after), against the original with the verification (each pair proven locally), and on real
//! torch exports.

mod common;

use bnfold::tensor::Tensor;
use bnfold::Model;
use common::build::Graph;
use common::equalizing::{equalized, exported_pairs, pair_kinds, passes, range};

/// The ranges of the first layer's output channels before equalization.
const RANGES: [f32; 4] = [1.0, 50.0, 0.02, 3.0];

/// A weight's value, by name, as written.
fn weight(model: &Model, name: &str) -> Tensor {
    model.initializer_value(name).unwrap().unwrap()
}

/// The initializer a node of `op_type` (the `nth` one) reads on input `input`.
fn input_of(model: &Model, op_type: &str, nth: usize, input: usize) -> Tensor {
    let graph = model.proto.graph.as_ref().unwrap();
    let node = graph
        .node
        .iter()
        .filter(|n| n.op_type() == op_type)
        .nth(nth);
    weight(model, &node.unwrap().input[input])
}

/// `x0 [2, 3, 5] → Sigmoid → MatMul(wa [5, 4]) → Add(ba [4]) → Relu → second → y`, with A's
/// output channels of ranges [`RANGES`]; `bias_first` puts the bias on the Add's first input;
/// `second` is `MatMul` (wb `[4, 3]`) or `Gemm` (wb `[3, 4]`, transB = 1, on a 2-D input).
fn matmul_pair(bias_first: bool, second: &str) -> Graph {
    let wa: Vec<f32> = (0..5 * 4)
        .map(|k| RANGES[k % 4] * (((k * 7) % 13) as f32 / 6.0 - 1.0))
        .collect();
    let wb: Vec<f32> = (0..12).map(|k| ((k * 5) % 11) as f32 / 5.0 - 1.0).collect();
    let add_inputs = match bias_first {
        true => ["ba", "ma"],
        false => ["ma", "ba"],
    };
    let input_dims: &[i64] = match second {
        "Gemm" => &[3, 5],
        _ => &[2, 3, 5],
    };
    let graph = Graph::new(13)
        .input("x0", input_dims)
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &[5, 4], &wa)
        .init("ba", &[4], &[0.5, -1.0, 0.25, 2.0])
        .node("MatMul", &["x", "wa"], &["ma"])
        .node("Add", &add_inputs, &["a"])
        .node("Relu", &["a"], &["r"]);
    match second {
        "Gemm" => {
            graph
                .init("wb", &[3, 4], &wb)
                .node_with("Gemm", &["r", "wb"], &["y"], &[("transB", 1)])
        }
        _ => graph
            .init("wb", &[4, 3], &wb)
            .node("MatMul", &["r", "wb"], &["y"]),
    }
    .output("y")
}

#[test]
fn a_matmul_pair_equalizes_its_weights_and_the_bias_add_and_is_proven() {
    for bias_first in [true, false] {
        let (original, fused, report) = equalized(matmul_pair(bias_first, "MatMul").model());
        assert_eq!(report.equalizations.len(), 1, "bias first: {bias_first}");
        let e = &report.equalizations[0];
        assert_eq!(
            (e.first_op_type.as_str(), e.second_op_type.as_str()),
            ("MatMul", "MatMul")
        );
        assert_eq!((e.channels, e.activation.as_deref()), (4, Some("Relu")));
        assert!(
            e.worst_channel_after_db > e.worst_channel_before_db + 10.0,
            "{e:?}"
        );
        // After: column i of A ([K, N]) and row i of B ([N, P]) have the same range, each the
        // geometric mean of the two before; A's column and its bias are divided by one factor.
        let (wa0, ba0) = (weight(&original, "wa"), weight(&original, "ba"));
        let (wa, wb) = (
            input_of(&fused, "MatMul", 0, 1),
            input_of(&fused, "MatMul", 1, 1),
        );
        let graph = fused.proto.graph.as_ref().unwrap();
        let add = graph.node.iter().find(|n| n.op_type() == "Add").unwrap();
        let ba = weight(&fused, &add.input[usize::from(!bias_first)]);
        for i in 0..4 {
            let ra = range((0..5).map(|k| &wa.data[k * 4 + i]));
            let rb = range(&wb.data[i * 3..(i + 1) * 3]);
            assert!(
                (ra / rb - 1.0).abs() < 1e-5,
                "channel {i}: {ra} against {rb}"
            );
            let s = range((0..5).map(|k| &wa0.data[k * 4 + i])) / ra;
            assert!(
                (ba.data[i] * s / ba0.data[i] - 1.0).abs() < 1e-6,
                "bias {i}"
            );
        }
        passes(&original, &fused);
    }
}

#[test]
fn matmul_and_gemm_pair_with_each_other() {
    // On a 2-D input, with no bias between (the fold turns MatMul → Add into a Gemm there).
    let wa: Vec<f32> = (0..5 * 4)
        .map(|k| RANGES[k % 4] * (((k * 7) % 13) as f32 / 6.0 - 1.0))
        .collect();
    for (first, second) in [("MatMul", "Gemm"), ("Gemm", "MatMul")] {
        let model = Graph::new(13)
            .input("x0", &[3, 5])
            .node("Sigmoid", &["x0"], &["x"])
            .init("wa", &[5, 4], &wa)
            .init(
                "wb",
                &[4, 3],
                &[
                    0.5, -0.25, 1.0, 0.75, 0.1, -1.0, 0.3, 0.6, -0.2, 0.9, 0.4, -0.7,
                ],
            )
            .node(first, &["x", "wa"], &["m"])
            .node("Relu", &["m"], &["r"])
            .node(second, &["r", "wb"], &["y"])
            .output("y")
            .model();
        let (original, fused, report) = equalized(model);
        assert_eq!(pair_kinds(&report), [(first, second)]);
        // Both weights are `[K, N]`: column i of A against row i of B.
        let (wa, wb) = (
            weight(
                &fused,
                &fused.proto.graph.as_ref().unwrap().node[1].input[1],
            ),
            weight(
                &fused,
                &fused.proto.graph.as_ref().unwrap().node[3].input[1],
            ),
        );
        for i in 0..4 {
            let ra = range((0..5).map(|k| &wa.data[k * 4 + i]));
            let rb = range(&wb.data[i * 3..(i + 1) * 3]);
            assert!(
                (ra / rb - 1.0).abs() < 1e-5,
                "{first} → {second}, channel {i}"
            );
        }
        passes(&original, &fused);
    }
}

#[test]
fn an_add_that_is_no_per_channel_bias_ends_no_pair() {
    // The constant varies per row (`[3, 4]`), or the Add's other input is a graph input.
    let with_bias = |name: &str, graph: Graph| {
        let mut model = graph.model();
        let graph = model.graph.as_mut().unwrap();
        let add = graph
            .node
            .iter_mut()
            .find(|n| n.op_type() == "Add")
            .unwrap();
        add.input[1] = name.into();
        Graph::from_model(model)
    };
    let per_row = with_bias(
        "rows",
        matmul_pair(false, "MatMul").init("rows", &[3, 4], &[0.25; 12]),
    );
    let input = with_bias("z", matmul_pair(false, "MatMul").input("z", &[4]));
    for model in [per_row.model(), input.model()] {
        let (_, _, report) = equalized(model);
        assert!(
            report.equalizations.is_empty(),
            "{:?}",
            report.equalizations
        );
    }
}

/// `x0 [1, 4, 6, 6] → Sigmoid → first → Relu → second → y`, 3 × 3 kernels padded 1: one of the
/// two a ConvTranspose of 2 groups, the other a Conv. A (4 output channels of ranges
/// [`RANGES`]) is `ConvTranspose` weight `[4, 2, 3, 3]` (each group: 2 inputs, 2 outputs) or
/// `Conv` `[4, 4, 3, 3]`; B is `Conv` `[3, 4, 3, 3]` or `ConvTranspose` `[4, 1, 3, 3]` (each
/// group: 2 inputs, 1 output).
fn grouped_pair(transposed_first: bool) -> Graph {
    let wave = |k: usize| ((k * 7) % 13) as f32 / 6.0 - 1.0;
    // ConvTranspose A's element (i, j, t) belongs to output channel (i / 2) · 2 + j.
    let transposed_a = |k: usize| RANGES[(k / 18 / 2) * 2 + (k / 9) % 2] * wave(k);
    let (a, b) = match transposed_first {
        true => (
            (
                "ConvTranspose",
                [4, 2, 3, 3],
                (0..72).map(transposed_a).collect::<Vec<f32>>(),
            ),
            (
                "Conv",
                [3, 4, 3, 3],
                (0..108).map(|k| wave(k * 5) * 0.5).collect::<Vec<f32>>(),
            ),
        ),
        false => (
            (
                "Conv",
                [4, 4, 3, 3],
                (0..144).map(|k| RANGES[k / 36] * wave(k)).collect(),
            ),
            (
                "ConvTranspose",
                [4, 1, 3, 3],
                (0..36).map(|k| wave(k * 5) * 0.5).collect::<Vec<f32>>(),
            ),
        ),
    };
    let group = |op: &str| 1 + i64::from(op == "ConvTranspose");
    Graph::new(13)
        .input("x0", &[1, 4, 6, 6])
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &a.1, &a.2)
        .init("ba", &[4], &[0.5, -1.0, 0.25, 2.0])
        .init("wb", &b.1, &b.2)
        .node_with(a.0, &["x", "wa", "ba"], &["ca"], &[("group", group(a.0))])
        .ints("pads", &[1, 1, 1, 1])
        .node("Relu", &["ca"], &["r"])
        .node_with(b.0, &["r", "wb"], &["y"], &[("group", group(b.0))])
        .ints("pads", &[1, 1, 1, 1])
        .output("y")
}

#[test]
fn a_grouped_conv_transpose_equalizes_on_either_side_and_is_proven() {
    for transposed_first in [true, false] {
        let (original, fused, report) = equalized(grouped_pair(transposed_first).model());
        assert_eq!(report.equalizations.len(), 1, "{:?}", report.equalizations);
        let e = &report.equalizations[0];
        assert_eq!(e.channels, 4);
        assert!(
            e.worst_channel_after_db > e.worst_channel_before_db + 10.0,
            "{e:?}"
        );
        let graph = fused.proto.graph.as_ref().unwrap();
        let (wa, wb) = (
            weight(&fused, &graph.node[1].input[1]),
            weight(&fused, &graph.node[3].input[1]),
        );
        for i in 0..4 {
            // A's output channel i; B's weights reading channel i.
            let ra = match transposed_first {
                // [4, 2, 9]: input channels 2g and 2g + 1 of group g = i / 2, output j = i % 2.
                true => range(
                    (0..2)
                        .map(|r| ((i / 2) * 2 + r) * 2 + i % 2)
                        .flat_map(|row| &wa.data[row * 9..(row + 1) * 9]),
                ),
                false => range(&wa.data[i * 36..(i + 1) * 36]),
            };
            let rb = match transposed_first {
                true => range((0..3).flat_map(|o| &wb.data[(o * 4 + i) * 9..(o * 4 + i + 1) * 9])),
                // [4, 1, 9]: input channel i's one output.
                false => range(&wb.data[i * 9..(i + 1) * 9]),
            };
            assert!(
                (ra / rb - 1.0).abs() < 1e-5,
                "ConvTranspose first: {transposed_first}, channel {i}: {ra} against {rb}"
            );
        }
        passes(&original, &fused);
    }
}

#[test]
fn exported_matmul_and_grouped_conv_transpose_pairs_equalize_and_are_proven() {
    for (name, kinds) in [
        (
            "torch_mlp3d_matmul_relu_op13.onnx",
            [("MatMul", "MatMul"), ("MatMul", "MatMul")],
        ),
        (
            "torch_decoder_grouped_convtranspose_bn_op13.onnx",
            [("Conv", "ConvTranspose"), ("ConvTranspose", "Conv")],
        ),
    ] {
        let report = exported_pairs(name, &kinds);
        assert!(
            report
                .equalizations
                .iter()
                .all(|e| e.worst_channel_after_db > e.worst_channel_before_db),
            "{name}: {:?}",
            report.equalizations
        );
    }
}
