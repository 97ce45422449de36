//! `--equalize` on the other layer pairs: Gemm → Gemm in either weight layout, Conv and
//! ConvTranspose either way, and the pairs of real exports (an MLP whose Linear layers export as
//! MatMul + Add, decoders with a grouped ConvTranspose). Checked against the balanced ranges and
//! by the verification; a Gemm that reads its input transposed ends no pair.

mod common;

use common::build::Graph;
use common::equalizing::{equalized, exported_pairs, passes};

/// `x0 → Sigmoid → Gemm(a: 4 outputs, ranges 1, 50, 0.02, 3; transB as given) → Relu →
/// Gemm(b: 3 outputs, transB = 1, `trans_a` as given) → y`, biases `[4]` and `[1, 3]`.
fn gemm_pair(trans_b: i64, trans_a_second: i64) -> Graph {
    let ranges = [1.0f32, 50.0, 0.02, 3.0];
    // Weight A as [N = 4, K = 5]; stored [K, N] when transB = 0.
    let rows: Vec<Vec<f32>> = (0..4)
        .map(|o| {
            (0..5)
                .map(|k| ranges[o] * ((((o * 5 + k) * 7) % 13) as f32 / 6.0 - 1.0))
                .collect()
        })
        .collect();
    let (a_dims, a): ([i64; 2], Vec<f32>) = match trans_b {
        1 => ([4, 5], rows.concat()),
        _ => (
            [5, 4],
            (0..5)
                .flat_map(|k| rows.iter().map(move |r| r[k]))
                .collect(),
        ),
    };
    let b: Vec<f32> = (0..3 * 4)
        .map(|k| ((k * 5) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let (x, r) = match trans_a_second {
        1 => ("rt", "rt"),
        _ => ("r", "r"),
    };
    let graph = Graph::new(13)
        .input("x0", &[2, 5])
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &a_dims, &a)
        .init("ba", &[4], &[0.5, -1.0, 0.25, 2.0])
        .init("wb", &[3, 4], &b)
        .init("bb", &[1, 3], &[0.1, 0.2, 0.3])
        .node_with("Gemm", &["x", "wa", "ba"], &["ga"], &[("transB", trans_b)])
        .node("Relu", &["ga"], &["r"]);
    let graph = match trans_a_second {
        1 => graph.node("Transpose", &["r"], &[x]),
        _ => graph,
    };
    graph
        .node_with(
            "Gemm",
            &[r, "wb", "bb"],
            &["y"],
            &[("transB", 1), ("transA", trans_a_second)],
        )
        .output("y")
}

#[test]
fn a_gemm_pair_equalizes_in_either_weight_layout_and_is_proven() {
    for trans_b in [1, 0] {
        let (original, fused, report) = equalized(gemm_pair(trans_b, 0).model());
        assert_eq!(report.equalizations.len(), 1, "transB={trans_b}");
        let e = &report.equalizations[0];
        assert_eq!(
            (e.first_op_type.as_str(), e.second_op_type.as_str()),
            ("Gemm", "Gemm")
        );
        assert_eq!(e.channels, 4);
        assert!(
            e.worst_channel_after_db > e.worst_channel_before_db + 10.0,
            "{e:?}"
        );
        // After: the range of A's output channel i equals that of B's input column i.
        let graph = fused.proto.graph.as_ref().unwrap();
        let weight = |op_index: usize| {
            let gemm = graph
                .node
                .iter()
                .filter(|n| n.op_type() == "Gemm")
                .nth(op_index);
            fused
                .initializer_value(&gemm.unwrap().input[1])
                .unwrap()
                .unwrap()
        };
        let (wa, wb) = (weight(0), weight(1));
        for i in 0..4 {
            let ra = (0..5)
                .map(|k| match trans_b {
                    1 => wa.data[i * 5 + k],
                    _ => wa.data[k * 4 + i],
                })
                .fold(0.0, |m: f64, v| m.max(v.abs()));
            let rb = (0..3).fold(0.0, |m: f64, o| m.max(wb.data[o * 4 + i].abs()));
            assert!(
                (ra / rb - 1.0).abs() < 1e-5,
                "transB={trans_b} channel {i}: {ra} against {rb}"
            );
        }
        passes(&original, &fused);
    }
}

#[test]
fn a_gemm_reading_its_input_transposed_ends_no_pair() {
    let (_, _, report) = equalized(gemm_pair(1, 1).model());
    assert!(
        report.equalizations.is_empty(),
        "{:?}",
        report.equalizations
    );
}

/// `x0 → Sigmoid → first → Relu → second → y` where each layer is a `Conv` or an ungrouped
/// `ConvTranspose` (3 × 3, stride 1, padded 1 so shapes stay 6 × 6): the first has 4 output
/// channels of ranges 1, 50, 0.02, 3, the second 3 outputs.
fn convolution_pair(first: &str, second: &str) -> Graph {
    let ranges = [1.0f32, 50.0, 0.02, 3.0];
    // Element (o, i, t) of the first weight, whatever its storage order.
    let a = |o: usize, i: usize, t: usize| {
        ranges[o] * ((((o * 2 + i) * 9 + t) * 7 % 13) as f32 / 6.0 - 1.0)
    };
    let b = |o: usize, i: usize, t: usize| ((((o * 4 + i) * 9 + t) * 5 % 11) as f32) / 5.0 - 1.0;
    let stored = |op: &str,
                  outputs: usize,
                  inputs: usize,
                  w: &dyn Fn(usize, usize, usize) -> f32| {
        let mut v = Vec::new();
        match op {
            "ConvTranspose" => (0..inputs)
                .for_each(|i| (0..outputs).for_each(|o| (0..9).for_each(|t| v.push(w(o, i, t))))),
            _ => (0..outputs)
                .for_each(|o| (0..inputs).for_each(|i| (0..9).for_each(|t| v.push(w(o, i, t))))),
        }
        let dims: Vec<i64> = match op {
            "ConvTranspose" => vec![inputs as i64, outputs as i64, 3, 3],
            _ => vec![outputs as i64, inputs as i64, 3, 3],
        };
        (dims, v)
    };
    let (da, wa) = stored(first, 4, 2, &a);
    let (db, wb) = stored(second, 3, 4, &b);
    Graph::new(13)
        .input("x0", &[1, 2, 6, 6])
        .node("Sigmoid", &["x0"], &["x"])
        .init("wa", &da, &wa)
        .init("ba", &[4], &[0.5, -1.0, 0.25, 2.0])
        .init("wb", &db, &wb)
        .node(first, &["x", "wa", "ba"], &["ca"])
        .ints("pads", &[1, 1, 1, 1])
        .node("Relu", &["ca"], &["r"])
        .node(second, &["r", "wb"], &["y"])
        .ints("pads", &[1, 1, 1, 1])
        .output("y")
}

#[test]
fn conv_transpose_pairs_either_way_equalize_and_are_proven() {
    for (first, second) in [
        ("ConvTranspose", "Conv"),
        ("Conv", "ConvTranspose"),
        ("ConvTranspose", "ConvTranspose"),
    ] {
        let (original, fused, report) = equalized(convolution_pair(first, second).model());
        assert_eq!(report.equalizations.len(), 1, "{first} → {second}");
        let e = &report.equalizations[0];
        assert_eq!(
            (e.first_op_type.as_str(), e.second_op_type.as_str()),
            (first, second)
        );
        assert!(
            e.worst_channel_after_db > e.worst_channel_before_db + 10.0,
            "{e:?}"
        );
        // After: the range of the first's output channel i equals that of the second's input i,
        // each read in its own storage order.
        let graph = fused.proto.graph.as_ref().unwrap();
        let layers: Vec<_> = graph
            .node
            .iter()
            .filter(|n| n.op_type().starts_with("Conv"))
            .collect();
        let weight = |k: usize| {
            fused
                .initializer_value(&layers[k].input[1])
                .unwrap()
                .unwrap()
        };
        let (wa, wb) = (weight(0), weight(1));
        let range = |w: &bnfold::tensor::Tensor, channel: usize, on_axis: usize| {
            let (d0, d1) = (w.dims[0], w.dims[1]);
            (0..d0)
                .flat_map(|p| (0..d1).map(move |q| (p, q)))
                .filter(|&(p, q)| [p, q][on_axis] == channel)
                .flat_map(|(p, q)| &w.data[(p * d1 + q) * 9..(p * d1 + q + 1) * 9])
                .fold(0.0, |m: f64, v| m.max(v.abs()))
        };
        let output_axis = |op: &str| usize::from(op == "ConvTranspose");
        for i in 0..4 {
            let ra = range(&wa, i, output_axis(first));
            let rb = range(&wb, i, 1 - output_axis(second));
            assert!(
                (ra / rb - 1.0).abs() < 1e-5,
                "{first} → {second} channel {i}: {ra} against {rb}"
            );
        }
        passes(&original, &fused);
    }
}

#[test]
fn exported_gemm_and_conv_transpose_pairs_equalize_and_are_proven() {
    for (name, kinds) in [
        (
            "torch_mlp_bn_relu_op13.onnx",
            [("Gemm", "Gemm"), ("Gemm", "Gemm")],
        ),
        (
            "torch_decoder_convtranspose_bn_op13.onnx",
            [("Conv", "ConvTranspose"), ("ConvTranspose", "Conv")],
        ),
    ] {
        let report = exported_pairs(name, &kinds);
        assert!(report
            .equalizations
            .iter()
            .all(|e| e.worst_channel_after_db >= e.worst_channel_before_db));
    }
}
