//! The readiness figures of stored weights measured while the model folds ([`EarlyFigures`]):
//! which weights are measured early, and that the figures the command line reports are those
//! of the folded model's weights read whole, to the last digit, whether an early guess holds
//! (taken over) or not (measured again).

mod common;

use bnfold::external::ExternalStore;
use bnfold::model::FoldedWatcher;
use bnfold::output::WritePlan;
use bnfold::proto::ModelProto;
use bnfold::readiness::{EarlyFigures, LayerFigures, LayerReadiness};
use bnfold::scaled::SourceRead;
use bnfold::{fold, FoldOptions, Model, SaveOptions};
use common::build::Graph;

/// `model` with every float initializer stored as raw little-endian bytes, as exporters store
/// weights (the builder writes typed `float_data`).
fn raw(mut model: ModelProto) -> Model {
    if let Some(graph) = model.graph.as_mut() {
        for t in &mut graph.initializer {
            let bytes: Vec<u8> = t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.raw_data = Some(bytes.into());
            t.float_data.clear();
        }
    }
    Model::from_proto(model, ExternalStore::none()).unwrap()
}

/// A weight of `[4, 4, 1, 1]` named `name`, its output channels' ranges far apart.
fn weight(graph: Graph, name: &str, seed: usize) -> Graph {
    let scales = [1.0f32, 50.0, 0.02, 3.0];
    let values: Vec<f32> = (0..16)
        .map(|k| scales[k / 4] * (((k * 7 + seed * 3) % 13) as f32 / 6.0 - 1.0))
        .collect();
    graph.init(name, &[4, 4, 1, 1], &values)
}

/// What [`measured`] gives: the figures measured early, those of the folded model read whole,
/// and how many early weights were taken over and how many measured again.
type Measured = (Vec<LayerReadiness>, Vec<LayerReadiness>, usize, usize);

/// The figures of `loaded` folded with `options` and written, measured early (waiting for
/// the thread to take every early weight first when `wait`); `None` if the folded model is
/// refused when written (a fold that overflows its dtype).
fn measured(loaded: &Model, options: &FoldOptions, wait: bool) -> Option<Measured> {
    let early = EarlyFigures::start(loaded).unwrap();
    if wait {
        early.wait_until_taken();
    }
    // A clone shares the loaded model's stored bytes, as the fold's own model does.
    let mut model = loaded.clone();
    fold(&mut model, options).unwrap();
    let whole = LayerFigures::start(&model).unwrap().finish().unwrap();
    let mut figures = early.start_for_write(&model).unwrap();
    let (adopted, rejected) = (figures.adopted_early(), figures.rejected_early());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("fused.onnx");
    let mut plan = WritePlan::new(false);
    let staged = model
        .stage_watched(&target, SaveOptions::default(), &mut plan, &mut figures)
        .ok()?;
    // Stored weights the figures read in place are written from the input's mapping, the others
    // copied with `pread`: the same bytes as a write that copies every one.
    let other = tempfile::tempdir().unwrap();
    let copied = other.path().join("fused.onnx");
    let copied = model
        .stage_watched(
            &copied,
            SaveOptions::default(),
            &mut WritePlan::new(false),
            &mut (),
        )
        .unwrap();
    let read = |path: &std::path::Path| std::fs::read(path).unwrap();
    assert_eq!(read(staged.path()), read(copied.path()));
    Some((figures.finish().unwrap(), whole, adopted, rejected))
}

#[test]
fn weights_that_no_fold_reaches_are_measured_early() {
    let base = || {
        weight(
            weight(Graph::new(13).input("x", &[1, 4, 2, 2]), "w", 1),
            "v",
            2,
        )
    };
    let cases: Vec<(&str, Graph, usize)> = vec![
        (
            "Conv then Relu, Conv then output",
            base()
                .node("Conv", &["x", "w"], &["h"])
                .node("Relu", &["h"], &["r"])
                .node("Conv", &["r", "v"], &["y"]),
            2,
        ),
        (
            "Conv then BatchNormalization",
            base()
                .bn_params("bn", 4)
                .node("Conv", &["x", "w"], &["h"])
                .bn("bn", "h", "y"),
            0,
        ),
        (
            "Conv then Identity then BatchNormalization",
            base()
                .bn_params("bn", 4)
                .node("Conv", &["x", "w"], &["h"])
                .node("Identity", &["h"], &["i"])
                .bn("bn", "i", "y"),
            0,
        ),
        (
            "Conv then Add and Mul by constants",
            base()
                .init("b", &[4, 1, 1], &[1.0; 4])
                .init("s", &[4, 1, 1], &[2.0; 4])
                .node("Conv", &["x", "w"], &["h"])
                .node("Add", &["h", "b"], &["a"])
                .node("Mul", &["a", "s"], &["y"]),
            0,
        ),
        (
            "Conv then Mul by a computed value (SiLU)",
            base()
                .node("Conv", &["x", "w"], &["h"])
                .node("Sigmoid", &["h"], &["g"])
                .node("Mul", &["h", "g"], &["y"]),
            1,
        ),
        (
            "Conv into a Concat then BatchNormalization",
            base()
                .bn_params("bn", 8)
                .node("Conv", &["x", "w"], &["h"])
                .node("Conv", &["x", "v"], &["k"])
                .node_with("Concat", &["h", "k"], &["c"], &[("axis", 1)])
                .bn("bn", "c", "y"),
            0,
        ),
        (
            "BatchNormalization then Conv",
            base()
                .bn_params("bn", 4)
                .bn("bn", "x", "n")
                .node("Conv", &["n", "w"], &["y"]),
            0,
        ),
    ];
    for (case, graph, early) in cases {
        let model = raw(graph.output("y").model());
        let figures = EarlyFigures::start(&model).unwrap();
        assert_eq!(figures.weights(), early, "{case}");
    }
}

#[test]
fn early_figures_are_those_of_the_folded_weights_on_every_fixture() {
    let (mut compared, mut adopted) = (0, 0);
    for path in walk(&common::fixture("")) {
        // Fixtures refused on purpose (malformed, unsupported) have no figures.
        let Ok(loaded) = Model::load(&path) else {
            continue;
        };
        if fold(&mut loaded.clone(), &FoldOptions::default()).is_err() {
            continue;
        }
        for wait in [true, false] {
            let Some((early, whole, taken, _)) = measured(&loaded, &FoldOptions::default(), wait)
            else {
                continue;
            };
            assert_eq!(
                format!("{early:?}"),
                format!("{whole:?}"),
                "{}",
                path.display()
            );
            adopted += taken * usize::from(wait);
            compared += usize::from(wait);
        }
    }
    assert!(compared >= 70, "{compared} fixtures compared");
    assert!(adopted >= 60, "{adopted} weights taken over");
}

#[test]
fn early_figures_of_weights_that_equalization_changes_are_measured_again() {
    // Two Convs with a Relu between: no BatchNormalization, so both weights are measured early,
    // and `--equalize` rescales both.
    let model = raw(weight(
        weight(Graph::new(13).input("x", &[1, 4, 2, 2]), "w", 1),
        "v",
        2,
    )
    .init("b", &[4], &[0.5, -1.0, 0.25, 2.0])
    .node("Sigmoid", &["x"], &["s"])
    .node("Conv", &["s", "w", "b"], &["h"])
    .node("Relu", &["h"], &["r"])
    .node("Conv", &["r", "v"], &["y"])
    .output("y")
    .model());
    let options = FoldOptions {
        equalize: true,
        ..FoldOptions::default()
    };
    let (early, whole, adopted, rejected) = measured(&model, &options, true).unwrap();
    assert_eq!((adopted, rejected), (0, 2));
    assert_eq!(format!("{early:?}"), format!("{whole:?}"));
    // Without equalization both are taken over.
    let (early, whole, adopted, rejected) =
        measured(&model, &FoldOptions::default(), true).unwrap();
    assert_eq!((adopted, rejected), (2, 0));
    assert_eq!(format!("{early:?}"), format!("{whole:?}"));
}

/// Every `.onnx` under `dir`, sorted.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "onnx") {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_large_stored_weight_measured_in_place_is_written_from_the_mapping() {
    // A Gemm weight of 300 KiB, past the size below which payloads are read into the write
    // buffer; the model loaded from a file, so its payloads lie in the input's mapping.
    let values: Vec<f32> = (0..256 * 300)
        .map(|k| (k % 97) as f32 / 50.0 - 1.0)
        .collect();
    let proto = Graph::new(13)
        .input("x", &[1, 300])
        .init("w", &[256, 300], &values)
        .node_with("Gemm", &["x", "w"], &["y"], &[("transB", 1)])
        .output("y")
        .model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemm.onnx");
    common::write(&path, &raw(proto).proto);
    let loaded = Model::load(&path).unwrap();
    let (early, whole, adopted, _) = measured(&loaded, &FoldOptions::default(), true).unwrap();
    assert_eq!(adopted, 1);
    assert_eq!(format!("{early:?}"), format!("{whole:?}"));
    let figures = EarlyFigures::start(&loaded).unwrap();
    let figures = figures.start_for_write(&loaded).unwrap();
    assert_eq!(figures.source_read("w"), SourceRead::InPlace);
}
