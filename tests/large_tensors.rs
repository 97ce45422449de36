//! Tensors large enough to take every path of the writer and of the readiness thread fold to
//! the same bytes from a mapped file and from memory, and compute what the originals compute.

mod random;

use bnfold::model::FoldedWatcher;
use bnfold::output::WritePlan;
use bnfold::readiness::LayerFigures;
use bnfold::scaled::SourceRead;
use bnfold::tensor::{Dtype, Tensor};
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use random::{ints, model, node, Case, Rng};

/// Tensors large enough to take every path of the writer: a folded weight spanning several
/// scaling chunks (Conv, per output row; Gemm without transB, per column, so the factors cycle
/// across chunk boundaries), an unchanged payload large enough for a kernel copy, and a folded
/// weight over the size from which the model is written on a second thread (9 MB). Loaded
/// from a file (mapped) and from memory, the fused models are the same bytes, and they compute
/// what the originals compute.
#[test]
fn large_tensors_fold_the_same_from_a_mapped_file_and_from_memory() {
    let mut rng = Rng(7);
    let conv = Case {
        description: "large Conv".into(),
        producer: node(
            "Conv",
            "producer",
            &["x", "w"],
            "p",
            vec![ints("pads", &[1, 1, 1, 1])],
        ),
        input_dims: vec![1, 64, 6, 6],
        channels: 96,
        initializers: vec![
            (
                "w".into(),
                Tensor::new(
                    Dtype::F32,
                    vec![96, 64, 3, 3],
                    rng.values(96 * 64 * 9, -1.0, 1.0),
                ),
            ),
            (
                "unused".into(),
                Tensor::new(Dtype::F32, vec![100_000], rng.values(100_000, -1.0, 1.0)),
            ),
        ],
    };
    let gemm = Case {
        description: "large Gemm".into(),
        producer: node("Gemm", "producer", &["x", "w"], "p", vec![]),
        input_dims: vec![2, 250],
        channels: 301,
        initializers: vec![
            (
                "w".into(),
                Tensor::new(Dtype::F32, vec![250, 301], rng.values(250 * 301, -1.0, 1.0)),
            ),
            (
                "unused".into(),
                Tensor::new(Dtype::F32, vec![100_000], rng.values(100_000, -1.0, 1.0)),
            ),
        ],
    };
    let wide = Case {
        description: "Conv written on a second thread".into(),
        producer: node("Conv", "producer", &["x", "w"], "p", vec![]),
        input_dims: vec![1, 512, 3, 3],
        channels: 512,
        initializers: vec![(
            "w".into(),
            Tensor::new(
                Dtype::F32,
                vec![512, 512, 3, 3],
                rng.values(512 * 512 * 9, -1.0, 1.0),
            ),
        )],
    };
    for case in [conv, gemm, wide] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.onnx");
        let proto = model(&case, &mut rng, Dtype::F32, false);
        Model::from_proto(proto, Default::default())
            .unwrap()
            .save(&input, Default::default())
            .unwrap();

        let original = Model::load(&input).unwrap();
        let mut mapped = original.clone();
        fold(&mut mapped, &FoldOptions::default()).unwrap();
        let out = dir.path().join("fused.onnx");
        mapped.save(&out, Default::default()).unwrap();

        let mut in_memory = Model::from_bytes(std::fs::read(&input).unwrap()).unwrap();
        let report = fold(&mut in_memory, &FoldOptions::default()).unwrap();
        assert_eq!(report.folds.len(), 1, "{}", case.description);
        assert!(
            std::fs::read(&out).unwrap() == in_memory.to_bytes().unwrap(),
            "{}: mapped and in-memory folds differ",
            case.description
        );

        // Written beside the readiness figures, a weight whose ranges the readiness thread
        // reads ahead from the mapping is read in place by the writer too: the same bytes, and
        // the same figures as the weights read whole.
        let mut figures = LayerFigures::start_for_write(&mapped).unwrap();
        let in_place = mapped
            .proto
            .graph
            .iter()
            .flat_map(|g| &g.initializer)
            .filter(|t| figures.source_read(t.name()) == SourceRead::InPlace)
            .count();
        assert_eq!(
            in_place,
            usize::from(case.channels == 512),
            "{}",
            case.description
        );
        let watched = dir.path().join("watched.onnx");
        let mut plan = WritePlan::new(false);
        let staged = mapped
            .stage_watched(&watched, Default::default(), &mut plan, &mut figures)
            .unwrap();
        staged.commit().unwrap();
        assert!(
            std::fs::read(&watched).unwrap() == std::fs::read(&out).unwrap(),
            "{}: written beside the figures, the fold differs",
            case.description
        );
        let whole = LayerFigures::start(&mapped).unwrap().finish().unwrap();
        let as_written = figures.finish().unwrap();
        assert_eq!(format!("{as_written:?}"), format!("{whole:?}"));

        let written = Model::load(&out).unwrap();
        let check = verify(&original, &written, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(
            check.status,
            Status::Passed,
            "{}: {:?}",
            case.description,
            check.reason
        );
    }
}
