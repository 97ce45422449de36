//! The readiness figures the command line computes while it writes a model (folded weights
//! measured on the bytes the writer writes) are those of the weights read whole and scaled
//! again, to the last digit, on every fixture: real exports and hand-built graphs, f16, bf16
//! and f64 weights, forward folds, ConvTranspose, Gemm, MatMul and external data.

mod common;

use std::path::{Path, PathBuf};

use bnfold::model::FoldedWatcher;
use bnfold::output::WritePlan;
use bnfold::readiness::LayerFigures;
use bnfold::{fold, FoldOptions, Model, SaveOptions};

/// Every `.onnx` under `dir`, sorted.
fn models(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            models(&path, out);
        } else if path.extension().is_some_and(|e| e == "onnx") {
            out.push(path);
        }
    }
}

#[test]
fn figures_measured_as_written_are_the_figures_measured_whole() {
    let mut paths = Vec::new();
    models(&common::fixture(""), &mut paths);
    let (mut compared, mut as_written) = (0, 0);
    for path in &paths {
        // Fixtures that are refused on purpose (malformed, unsupported) have no figures.
        let Ok(mut model) = Model::load(path) else {
            continue;
        };
        if fold(&mut model, &FoldOptions::default()).is_err() {
            continue;
        }
        let whole = LayerFigures::start(&model).unwrap().finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("fused.onnx");
        let mut figures = LayerFigures::start_for_write(&model).unwrap();
        let planned = figures.measured_as_written();
        // Weights measured as written are measured on the thread, which the writer leaves a
        // core to; with no weight at all, there is no thread.
        let busy = figures.busy_threads();
        assert!(busy == usize::from(planned > 0) || (busy == 1 && !whole.is_empty()));
        let mut plan = WritePlan::new(false);
        let written = model.stage_watched(&target, SaveOptions::default(), &mut plan, &mut figures);
        if written.is_err() {
            // A fold that overflows its dtype is refused when written.
            continue;
        }
        let (measured, counted) = figures.finish_counted().unwrap();
        // Debug prints every f64 in its shortest exact form (and a NaN equal to a NaN).
        assert_eq!(
            format!("{measured:?}"),
            format!("{whole:?}"),
            "{}",
            path.display()
        );
        // Each weight planned to be measured as written was (none fell back to a second read).
        assert_eq!(counted, planned, "{}", path.display());
        compared += 1;
        as_written += counted;
    }
    // Most fixtures fold, and most folded weights are Conv or Gemm weights measured as written.
    assert!(compared >= 70, "{compared} fixtures compared");
    assert!(
        as_written >= 150,
        "{as_written} weights measured as written"
    );
}
