//! `bench … --plot FILE`: latency CDFs (with a log-scale tail panel) for benches that keep
//! latency samples, and horizontal throughput bars for every bench with pages/s cases. SVG and
//! PNG through `plotters` without system libraries: text is laid out with `ab_glyph` from a
//! TrueType file found at run time (DejaVu Sans from Debian's fonts-dejavu-core by default).
//!
//! Owns: nothing shared (only the file it writes); it drives `plotters` over `BenchRecord`s and
//! latency series and may not be imported by the library's other modules.

use super::BenchRecord;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The family name the charts ask for; registered once with the font file's bytes.
const FONT: &str = "sans-serif";
/// Checked in order; `UDPF_PLOT_FONT` names another file.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Points drawn per CDF line: enough for a smooth curve, bounded for file size.
const MAX_CDF_POINTS: usize = 2000;
/// Bars per chart; a larger run is cut (the table and JSON still hold every case).
const MAX_BARS: usize = 64;
const WIDTH: u32 = 1100;

/// One case's latency samples, µs, sorted ascending.
#[derive(Debug, Clone)]
pub struct LatencySeries {
    pub bench: String,
    pub case: String,
    pub sorted_us: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

enum Chart<'a> {
    Cdf {
        bench: &'a str,
        series: Vec<&'a LatencySeries>,
    },
    Bars {
        bench: &'a str,
        rows: Vec<(String, &'a str, f64)>,
    },
}

/// Writes the charts for `records` and `latencies`. A run of one bench writes `FILE.svg` and
/// `FILE.png` (only one of them when FILE ends in .svg or .png); a run of several writes
/// `FILE-<bench>.svg`/`.png` per bench. Returns the files written.
pub fn write(
    path: &Path,
    records: &[BenchRecord],
    latencies: &[LatencySeries],
) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut benches: Vec<&str> = Vec::new();
    for b in latencies
        .iter()
        .map(|l| l.bench.as_str())
        .chain(records.iter().map(|r| r.bench.as_str()))
    {
        if !benches.contains(&b) {
            benches.push(b);
        }
    }
    let charts: Vec<Chart> = benches
        .iter()
        .filter_map(|&bench| {
            let series: Vec<&LatencySeries> =
                latencies.iter().filter(|l| l.bench == bench).collect();
            if !series.is_empty() {
                return Some(Chart::Cdf { bench, series });
            }
            let rows: Vec<(String, &str, f64)> = records
                .iter()
                .filter(|r| r.bench == bench && r.unit == "pages/s")
                .take(MAX_BARS)
                .map(|r| (bar_label(r), r.case.as_str(), r.value))
                .collect();
            (!rows.is_empty()).then_some(Chart::Bars { bench, rows })
        })
        .collect();
    let (stem, formats) = match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => (path.with_extension(""), vec![Format::Svg]),
        Some("png") => (path.with_extension(""), vec![Format::Png]),
        _ => (path.to_path_buf(), vec![Format::Svg, Format::Png]),
    };
    let mut written = Vec::new();
    for chart in &charts {
        let bench = match chart {
            Chart::Cdf { bench, .. } | Chart::Bars { bench, .. } => *bench,
        };
        for &format in &formats {
            let mut name = stem.as_os_str().to_owned();
            if benches.len() > 1 {
                name.push(format!("-{bench}"));
            }
            name.push(format!(".{}", format.ext()));
            let file = PathBuf::from(name);
            render(chart, &file, format)
                .map_err(|e| anyhow::anyhow!("plotting {}: {e}", file.display()))?;
            written.push(file);
        }
    }
    Ok(written)
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let env = std::env::var("UDPF_PLOT_FONT").ok();
            let candidates = env
                .iter()
                .map(String::as_str)
                .chain(FONT_PATHS.iter().copied());
            for p in candidates {
                if let Ok(bytes) = std::fs::read(p) {
                    // plotters keeps the font for the life of the process: leaked once.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    return plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                        .map_err(|_| format!("{p} is not a usable TrueType font"));
                }
            }
            Err(format!(
                "no TrueType font for plot text (tried {}); install fonts-dejavu-core or set \
                 UDPF_PLOT_FONT to a .ttf file",
                FONT_PATHS.join(", ")
            ))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The case and the params that tell its bars apart (scan's delay, loss and CPU work).
fn bar_label(r: &BenchRecord) -> String {
    let mut label = r.case.clone();
    for (key, short, suffix) in [
        ("delay_us", "delay ", "µs"),
        ("drop", "drop ", ""),
        ("cpu_per_page_us", "cpu ", "µs"),
        ("threads", "", "t"),
    ] {
        if let Some(v) = r.params.get(key) {
            label.push_str(&format!("  {short}{v}{suffix}"));
        }
    }
    label
}

/// Blue for the TCP designs, red for UDP (green for an idle reference), something else for the
/// rest; the same case always gets the same colour.
fn colour(case: &str) -> RGBColor {
    if case.ends_with("-idle") {
        RGBColor(44, 160, 44)
    } else if case.starts_with("udp") {
        RGBColor(214, 39, 40)
    } else if case.starts_with("tcp-pipelined") {
        RGBColor(31, 119, 180)
    } else if case.starts_with("tcp") {
        RGBColor(127, 127, 127)
    } else {
        let h = case
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let c = Palette99::pick(h).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }
}

fn render(chart: &Chart, file: &Path, format: Format) -> anyhow::Result<()> {
    let height = match chart {
        Chart::Cdf { .. } => 520,
        Chart::Bars { rows, .. } => 110 + 26 * rows.len() as u32,
    };
    match format {
        Format::Svg => {
            let root = SVGBackend::new(file, (WIDTH, height)).into_drawing_area();
            draw(chart, &root)?;
            root.present()?;
        }
        Format::Png => {
            let root = BitMapBackend::new(file, (WIDTH, height)).into_drawing_area();
            draw(chart, &root)?;
            root.present()?;
        }
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(chart: &Chart, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    match chart {
        Chart::Cdf { bench, series } => draw_cdf(bench, series, root),
        Chart::Bars { bench, rows } => draw_bars(bench, rows, root),
    }
}

/// Evenly spaced points of the empirical CDF, always including the maximum.
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let step = n.div_ceil(MAX_CDF_POINTS).max(1);
    (0..n)
        .step_by(step)
        .chain(n.checked_sub(1))
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect()
}

fn draw_cdf<DB: DrawingBackend>(
    bench: &str,
    series: &[&LatencySeries],
    root: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let all = series.iter().flat_map(|s| s.sorted_us.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(1.0) * 0.9;
    let hi = all.fold(0.0, f64::max).max(lo * 2.0) * 1.1;
    let root = root.titled(&format!("{bench}: foreground GetPage latency"), (FONT, 22))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let mut cdf = ChartBuilder::on(&left)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .caption("CDF", (FONT, 16))
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    let micros = |v: &f64| format!("{v:.0}");
    cdf.configure_mesh()
        .x_labels(8)
        .x_label_formatter(&micros)
        .x_desc("latency, µs (log)")
        .y_desc("fraction of reads")
        .label_style((FONT, 13))
        .draw()?;
    // The tail, where head-of-line blocking shows: 1 - CDF on a log scale down to 1/n.
    let min_tail = series
        .iter()
        .map(|s| 1.0 / s.sorted_us.len().max(1) as f64)
        .fold(1.0, f64::min)
        * 0.5;
    let mut tail = ChartBuilder::on(&right)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption("tail: 1 - CDF", (FONT, 16))
        .build_cartesian_2d((lo..hi).log_scale(), (min_tail..1.0).log_scale())?;
    tail.configure_mesh()
        .x_labels(8)
        .x_label_formatter(&micros)
        .x_desc("latency, µs (log)")
        .y_desc("fraction slower")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style((FONT, 13))
        .draw()?;
    for s in series {
        let c = colour(&s.case);
        let points = cdf_points(&s.sorted_us);
        let p99 = crate::compute::scan::percentile(&s.sorted_us, 0.99);
        cdf.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(format!("{} (p99 {p99:.0} µs)", s.case))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        let tail_points = points
            .iter()
            .map(|&(x, y)| (x, (1.0 - y).max(min_tail)))
            .collect::<Vec<_>>();
        tail.draw_series(LineSeries::new(tail_points, c.stroke_width(2)))?;
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    bench: &str,
    rows: &[(String, &str, f64)],
    root: &DrawingArea<DB, Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let max = rows.iter().map(|r| r.2).fold(0.0, f64::max).max(1.0);
    let n = rows.len();
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .caption(format!("{bench}: throughput"), (FONT, 22))
        .x_label_area_size(40)
        .y_label_area_size(330)
        // A segmented 0..=k range has k + 1 rows.
        .build_cartesian_2d(0.0..max * 1.18, (0..n - 1).into_segmented())?;
    // Rows are drawn top to bottom in the order of the table: row i sits in slot n - 1 - i.
    let slot = |i: usize| n - 1 - i;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(s) if *s < n => rows[slot(*s)].0.clone(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label_of)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("pages/s")
        .label_style((FONT, 13))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, case, v))| {
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(slot(i))),
                (*v, SegmentValue::Exact(slot(i) + 1)),
            ],
            colour(case).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    let value_style =
        TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, _, v))| {
        Text::new(
            format!(" {v:.0}"),
            (*v, SegmentValue::CenterOf(slot(i))),
            value_style.clone(),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_for_cdfs_and_bars() {
        let dir = tempfile::tempdir().expect("temp dir");
        let records = vec![
            BenchRecord::new("scan", "tcp-pipelined", "pages/s", 1000.0).param("delay_us", 200),
            BenchRecord::new("scan", "udp", "pages/s", 2000.0)
                .param("delay_us", 200)
                .param("drop", 0.05),
            BenchRecord::new("hol", "udp-idle", "us", 250.0),
        ];
        let latencies = vec![LatencySeries {
            bench: "hol".into(),
            case: "udp-idle".into(),
            sorted_us: (1..=500).map(|i| 200.0 + f64::from(i)).collect(),
        }];
        let written = write(&dir.path().join("out"), &records, &latencies).expect("plots");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["out-hol.svg", "out-hol.png", "out-scan.svg", "out-scan.png"]
        );
        for p in &written {
            assert!(std::fs::metadata(p).expect("written").len() > 1000, "{p:?}");
        }
        let png = std::fs::read(&written[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // One bench and an explicit extension: exactly that file.
        let one = write(&dir.path().join("scan.svg"), &records[..2], &[]).expect("plot");
        assert_eq!(one, [dir.path().join("scan.svg")]);
    }

    #[test]
    fn cdf_points_are_bounded_and_end_at_the_maximum() {
        let sorted: Vec<f64> = (0..100_000).map(f64::from).collect();
        let pts = cdf_points(&sorted);
        assert!(pts.len() <= MAX_CDF_POINTS + 1);
        assert_eq!(pts.last(), Some(&(99_999.0, 1.0)));
        assert!(cdf_points(&[]).is_empty());
    }
}
