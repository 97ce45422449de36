//! The page's drawings, inline SVG: per-layer SQNR bars, a layer's per-channel weight ranges,
//! and an equalized pair's ranges before and after.

use std::fmt::Write as _;

use super::{escape, truncate, Page, EQUALIZATION_PLOTS};
use crate::readiness::LayerReadiness;
use crate::report::{AbsorptionCheck, EqualizationRecord};

impl Page {
    /// One row per layer, in graph order: per-tensor bar, per-channel mark, 0 to 60 dB.
    pub(super) fn sqnr_bars(&mut self, layers: &[LayerReadiness]) {
        let (label, plot, row) = (220.0, 480.0, 14.0);
        let scale = |db: f64| (db.clamp(0.0, 60.0) / 60.0) * plot;
        let height = row * layers.len() as f64 + 24.0;
        self.svg_start(label + plot + 60.0, height, "INT8 SQNR per layer");
        for (i, l) in layers.iter().enumerate() {
            let y = row * i as f64;
            let name = escape(&truncate(&l.node, 34));
            let _ = write!(
                self.html,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>",
                label - 6.0,
                y + 11.0
            );
            if let Some(t) = l.sqnr_per_tensor_db {
                let _ = write!(
                    self.html,
                    "<rect x=\"{label}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#4a78b5\">\
                     <title>{name}: {t:.1} dB per tensor</title></rect>",
                    y + 2.0,
                    scale(t),
                    row - 4.0
                );
            }
            if let Some(c) = l.sqnr_per_channel_db {
                let _ = write!(
                    self.html,
                    "<rect x=\"{:.1}\" y=\"{}\" width=\"3\" height=\"{}\" fill=\"#e07b00\">\
                     <title>{name}: {c:.1} dB per channel</title></rect>",
                    label + scale(c) - 1.5,
                    y + 1.0,
                    row - 2.0
                );
            }
            self.html.push('\n');
        }
        let axis = row * layers.len() as f64 + 14.0;
        for db in [0, 20, 40, 60] {
            let _ = write!(
                self.html,
                "<text x=\"{:.1}\" y=\"{axis}\" text-anchor=\"middle\">{db} dB</text>",
                label + scale(f64::from(db))
            );
        }
        self.html.push_str("</svg>\n");
    }

    /// A layer's per-output-channel weight ranges, with the per-tensor grid's 4-bit line.
    pub(super) fn range_plot(&mut self, l: &LayerReadiness) {
        let (width, height) = (700.0, 120.0);
        let max = l.channel_ranges.iter().copied().fold(0.0, f64::max);
        if max <= 0.0 || !max.is_finite() {
            return;
        }
        let _ = writeln!(
            self.html,
            "<h3>{} ({}): channel ranges max |W_c|, spread {:.1}×, {} of {} channels under 4 bits \
             per tensor</h3>",
            escape(&l.node),
            escape(&l.op_type),
            l.range_spread,
            l.starved_channels,
            l.channels
        );
        self.svg_start(width, height, &format!("channel ranges of {}", l.node));
        let step = width / l.channel_ranges.len().max(1) as f64;
        let bars = Bars {
            height,
            step,
            offset: 0.0,
            width: (step - 0.5).max(0.5),
            fill: "#4a78b5",
            when: "",
        };
        self.channel_bars(&l.channel_ranges, max, &bars);
        // Below this range a channel has fewer than 4 effective bits on the per-tensor grid.
        let starved = max / 127.0 * 2f64.powi(3);
        let y = height - (starved / max) * (height - 10.0);
        let _ = writeln!(
            self.html,
            "<line x1=\"0\" x2=\"{width}\" y1=\"{y:.2}\" y2=\"{y:.2}\" stroke=\"#b00020\" \
             stroke-dasharray=\"4 3\"><title>4 effective bits per tensor</title></line></svg>"
        );
    }

    /// The pairs `--equalize` balanced: a table, then the first weight's channel ranges before
    /// and after for the pairs whose worst channel gained most.
    pub(super) fn equalizations(
        &mut self,
        pairs: &[EqualizationRecord],
        absorption: Option<&AbsorptionCheck>,
    ) {
        self.section(&format!("Equalized ({})", pairs.len()));
        self.para(
            "Per-tensor symmetric INT8 SQNR of each weight, and of the first weight's worst \
             output channel on that grid, before → after.",
        );
        if let Some(check) = absorption {
            let change = check
                .output_change
                .map_or("not measured".into(), |c| format!("{c:.1e}"));
            let status = check.status.words();
            self.para(&escape(&format!(
                "High bias absorbed into {} pairs (an approximation): the float model changes by \
                 {change} at the outputs against the exact model, which the verification proves \
                 (nothing else differs: {status}).",
                check.pairs
            )));
        }
        let change = |before: f64, after: f64| format!("{before:.1} → {after:.1} dB");
        let rows: Vec<Vec<String>> = pairs
            .iter()
            .map(|e| {
                vec![
                    escape(&format!("{} {}", e.first_op_type, e.first)),
                    escape(e.activation.as_deref().unwrap_or("")),
                    escape(&format!("{} {}", e.second_op_type, e.second)),
                    e.channels.to_string(),
                    change(e.sqnr_first_before_db, e.sqnr_first_after_db),
                    change(e.sqnr_second_before_db, e.sqnr_second_after_db),
                    change(e.worst_channel_before_db, e.worst_channel_after_db),
                ]
                .into_iter()
                .chain(absorption.map(|_| absorbed(e)))
                .collect()
            })
            .collect();
        let header = [
            "first",
            "between",
            "second",
            "channels",
            "first",
            "second",
            "worst channel",
            "high bias absorbed",
        ];
        self.table(
            &header[..header.len() - usize::from(absorption.is_none())],
            &rows,
        );
        let mut by_gain: Vec<&EqualizationRecord> = pairs.iter().collect();
        let gain = |e: &EqualizationRecord| e.worst_channel_after_db - e.worst_channel_before_db;
        by_gain.sort_by(|a, b| {
            gain(b)
                .total_cmp(&gain(a))
                .then_with(|| a.first.cmp(&b.first))
        });
        for e in by_gain.into_iter().take(EQUALIZATION_PLOTS) {
            self.equalization_plot(e);
        }
    }

    /// The first weight's per-channel ranges, before (light) and after (dark), each scaled to
    /// its own largest: the shape the per-tensor grid sees.
    fn equalization_plot(&mut self, e: &EqualizationRecord) {
        let (width, height) = (700.0, 120.0);
        let largest = |r: &[f64]| {
            r.iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max)
        };
        let (max_before, max_after) = (
            largest(&e.first_ranges_before),
            largest(&e.first_ranges_after),
        );
        if max_before <= 0.0 || max_after <= 0.0 {
            return;
        }
        let _ = writeln!(
            self.html,
            "<h3>{} → {}: channel ranges of {} before (light) and after (dark), each relative to \
             its largest</h3>",
            escape(&e.first),
            escape(&e.second),
            escape(&e.first)
        );
        self.svg_start(width, height, &format!("equalized ranges of {}", e.first));
        let step = width / e.first_ranges_before.len().max(1) as f64;
        let half = Bars {
            height,
            step,
            offset: 0.0,
            width: (step * 0.5 - 0.25).max(0.5),
            fill: "#a9c1e0",
            when: " before",
        };
        self.channel_bars(&e.first_ranges_before, max_before, &half);
        let after = Bars {
            offset: 0.5 * step,
            fill: "#1f4e8c",
            when: " after",
            ..half
        };
        self.channel_bars(&e.first_ranges_after, max_after, &after);
        self.html.push_str("</svg>\n");
    }

    /// Opens an SVG drawing of `width` × `height` named `label` for screen readers.
    fn svg_start(&mut self, width: f64, height: f64, label: &str) {
        let _ = writeln!(
            self.html,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             role=\"img\" aria-label=\"{}\">",
            escape(label)
        );
    }

    /// One bar per channel, `ranges` relative to `max`, each titled with its channel and value.
    fn channel_bars(&mut self, ranges: &[f64], max: f64, bars: &Bars) {
        for (c, r) in ranges.iter().enumerate() {
            let h = (r / max).clamp(0.0, 1.0) * (bars.height - 10.0);
            let _ = write!(
                self.html,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" \
                 fill=\"{}\"><title>channel {c}{}: {r:.4e}</title></rect>",
                c as f64 * bars.step + bars.offset,
                bars.height - h,
                bars.width,
                bars.fill,
                bars.when
            );
        }
    }
}

/// How [`Page::channel_bars`] draws: the plot's height, each channel's slot and where in it the
/// bar stands, its colour, and a word for its title (` before`, ` after`, or none).
#[derive(Clone, Copy)]
struct Bars {
    height: f64,
    step: f64,
    offset: f64,
    width: f64,
    fill: &'static str,
    when: &'static str,
}

/// A pair's absorption: channels, and the change at its second layer.
fn absorbed(e: &EqualizationRecord) -> String {
    match &e.absorption {
        Some(a) => {
            let change = a
                .float_change
                .map_or("not measured".into(), |c| format!("change {c:.1e}"));
            escape(&format!("{} channels, {change}", a.channels))
        }
        None => String::new(),
    }
}
