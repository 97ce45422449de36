//! `--report-html` and `bnfold inspect --html`: one self-contained page (inline SVG, nothing to
//! fetch), the report's parts in it, names escaped, and the same care as every other output
//! (claimed before anything is written, never over an input). Rendering it in a browser is a
//! check by hand (README: HTML report).

mod common;

use std::path::PathBuf;

use common::build::Graph;
use common::{bnfold, fixture, s, stderr, write};

/// What a page must hold: a doctype, its sections, SVG plots, and nothing that loads.
fn assert_self_contained(page: &str, sections: &[&str]) {
    assert!(
        page.starts_with("<!DOCTYPE html>"),
        "{}",
        &page[..60.min(page.len())]
    );
    assert!(page.trim_end().ends_with("</html>"));
    for section in sections {
        assert!(
            page.contains(&format!("<h2>{section}")),
            "no section {section}"
        );
    }
    for forbidden in ["<script", "src=", "href=", "<link", "@import", "url("] {
        assert!(
            !page.contains(forbidden),
            "the page loads something: {forbidden}"
        );
    }
    let external = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!external.contains("http"), "a URL besides SVG's namespace");
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
}

/// The fixture `model` folded with `flags` and `--report-html` (exit 0 asserted): the directory
/// holding the fused model and the page, and their paths.
fn fold_with_page(model: &str, flags: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (out, html) = (
        dir.path().join("fused.onnx"),
        dir.path().join("report.html"),
    );
    let model = fixture(model);
    let mut args = vec![s(&model), "-o", s(&out), "--report-html", s(&html), "-q"];
    args.extend_from_slice(flags);
    let o = bnfold(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (dir, out, html)
}

#[test]
fn a_fold_writes_its_report_as_one_page_with_plots() {
    let (_dir, out, html) = fold_with_page("torch_preact_block_op13.onnx", &[]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(
        &page,
        &[
            "Operators",
            "Folded (1)",
            "Left in place (1)",
            "INT8 readiness",
            "Verification",
        ],
    );
    // One SQNR chart, a channel-range plot per worst layer (up to 4).
    let plots = page.matches("<svg").count();
    assert!((2..=5).contains(&plots), "{plots} plots");
    assert!(page.contains("passed"));
    assert!(page.contains(&format!("wrote {}", s(&out))));
}

#[test]
fn names_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .init("w", &[2, 2, 1, 1], &[1.0, 0.5, -0.5, 2.0])
        .bn_params("bn", 2)
        .node("Conv", &["x", "w"], &["c<script>&"])
        .bn("bn", "c<script>&", "y")
        .output("y")
        .model();
    let path = dir.path().join("m.onnx");
    write(&path, &model);
    let html = dir.path().join("r.html");
    let o = bnfold(&["inspect", s(&path), "--html", s(&html), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&page, &["Normalizations (1)", "INT8 readiness"]);
    assert!(
        page.contains("c&lt;script&gt;&amp;"),
        "the layer's name, escaped"
    );
}

#[test]
fn verify_writes_a_page_and_the_page_never_replaces_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(fixture("conv_bn.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let html = dir.path().join("v.html");
    let o = bnfold(&["verify", s(&model), s(&model), "--html", s(&html), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_self_contained(&std::fs::read_to_string(&html).unwrap(), &["Verification"]);
    // The page may not be the input, even with --force; nothing is written.
    let out = dir.path().join("fused.onnx");
    let o = bnfold(&[
        s(&model),
        "-o",
        s(&out),
        "--report-html",
        s(&model),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--report-html"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&model).unwrap(), before);
    assert!(!out.exists());
}

#[test]
fn an_equalized_fold_draws_each_pair_before_and_after() {
    let model = "paddle/ppocr_mobile_v2_cls_op11.onnx";
    let (_dir, _, html) = fold_with_page(model, &["--equalize", "--no-verify"]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&page, &["Equalized (15)"]);
    // Up to 4 pairs drawn, each channel a light bar (before) and a dark one (after).
    let drawn = page.matches("aria-label=\"equalized ranges of").count();
    assert_eq!(drawn, 4);
    let (before, after) = (
        page.matches(" before: ").count(),
        page.matches(" after: ").count(),
    );
    assert!(before > 0 && before == after, "{before} against {after}");
}

/// By hand (`apt-get install chromium`, then `cargo test --test html_report -- --ignored`):
/// headless Chromium renders a real page to a PNG, and the page asks for nothing on the way.
#[test]
#[ignore = "needs Debian's chromium"]
fn headless_chromium_renders_the_page() {
    let (dir, _, html) = fold_with_page("paddle/ppocr_mobile_v2_cls_op11.onnx", &["--equalize"]);
    let png = dir.path().join("report.png");
    let profile = dir.path().join("profile");
    let run = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", s(&profile)),
            "--window-size=1280,2400",
            &format!("--screenshot={}", s(&png)),
            &format!("file://{}", s(&html)),
        ])
        .output()
        .expect("chromium on PATH");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 50_000);
}
