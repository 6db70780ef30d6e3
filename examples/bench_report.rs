//! Turns the benchmark harness's `docs/benchmarks.json` into `docs/benchmarks.md` and the chart
//! `docs/benchmarks.png`, in Rust, with nothing to install: `plotters`' bitmap backend draws the
//! chart and an 8×8 bitmap font (`font8x8`) its labels, so no system font is needed.
//!
//! ```text
//! cargo run --release -p pgkafka-examples --example bench_report -- \
//!     docs/benchmarks.json docs/benchmarks.md docs/benchmarks.png
//! ```
//!
//! A hand-written `docs/benchmarks-notes.md` beside the JSON (profiles of missed targets, what
//! bounds them), when present, is appended to the markdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::Path;

use font8x8::UnicodeFonts as _;
use plotters::prelude::*;
use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let (json_path, md_path, png_path) = (arg(0, "docs/benchmarks.json"), arg(1, "docs/benchmarks.md"), arg(2, "docs/benchmarks.png"));
    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|e| panic!("cannot read {json_path}: {e}"));
    let results: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{json_path} is not the harness's JSON: {e}"));
    let notes_path = Path::new(&json_path).with_file_name("benchmarks-notes.md");
    let notes = std::fs::read_to_string(notes_path).ok();
    let png_name = Path::new(&png_path).file_name().and_then(|n| n.to_str()).unwrap_or("benchmarks.png").to_owned();
    std::fs::write(&md_path, markdown(&results, notes.as_deref(), &png_name)).unwrap_or_else(|e| panic!("cannot write {md_path}: {e}"));
    chart(&results, &png_path).unwrap_or_else(|e| panic!("cannot draw {png_path}: {e}"));
    eprintln!("bench_report: wrote {md_path} and {png_path}");
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A value in the way its unit reads best: thousands separated for rates, one decimal otherwise.
fn show(value: f64, unit: &str) -> String {
    if unit.ends_with("/s") && value >= 1000.0 {
        let whole = value.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with(prefix))?.split_once(':').map(|(_, v)| v.trim().to_owned())
}

fn machine() -> String {
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next().and_then(|k| k.parse::<f64>().ok()))
        .map_or_else(|| "?".into(), |kib| format!("{:.0}", kib / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |k| k.trim().to_owned());
    format!("{} cores ({cpu}), {mem_gib} GiB memory, Linux {kernel}", cores)
}

fn postgres_version() -> String {
    let bin = std::env::var("PGKAFKA_TEST_PG_BIN").unwrap_or_default();
    std::process::Command::new(Path::new(&bin).join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn markdown(r: &Value, notes: Option<&str>, png_name: &str) -> String {
    let w = &r["workload"];
    let repeats = w["repeats"].as_u64().unwrap_or(1);
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Produced by `scripts/bench.sh` (the harness is `examples/bench.rs`, this page `examples/bench_report.rs`). \
         Every line ran {repeats} times, interleaved: each round runs a limit and the pgkafka measurement compared \
         with it back to back, so a noisy moment hits both. Shown: the median, the min–max of the runs, and the \
         spread (max − min) / median. Each ratio is the ratio of medians; its range is that of the per-round ratios.\n"
    );
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(md, "- PostgreSQL: {}, on the same machine, fsync off (throwaway test cluster)", postgres_version());
    let _ = writeln!(md, "- Broker: Tansu (Kafka wire protocol, memory storage) on the same machine");
    let _ = writeln!(
        md,
        "- Workload: {} inserted rows of a {}-column table, {} rows per transaction, topic of {} partitions, JSON values of {:.0} bytes on average",
        show(f(&w["rows"]), "rows/s"), w["columns"], show(f(&w["rows_per_tx"]), "rows/s"), w["partitions"], f(&w["record_value_bytes_avg"])
    );
    let _ = writeln!(
        md,
        "- Idempotent consumer: {} ops batched (batches of up to {}), {} ops one per transaction; latency: {} s at each of {} transactions/s",
        show(f(&w["idempotent_ops"]), "ops/s"), w["batch_size"], show(f(&w["unbatched_ops"]), "ops/s"), w["latency_secs"],
        w["latency_rates"].as_array().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")).unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "- Command: `scripts/bench.sh` (BENCH_REPEATS, BENCH_ROWS, BENCH_ROWS_PER_TX, BENCH_PARTITIONS, BENCH_IDEMPOTENT_OPS, \
         BENCH_UNBATCHED_OPS, BENCH_BATCH_SIZE, BENCH_LATENCY_TPS, BENCH_LATENCY_SECS override the defaults)\n"
    );

    let _ = writeln!(md, "In short (medians, min–max of the runs in brackets; ready to quote in the README): {}\n", summary(r));
    md.push_str("## Targets\n\n| target | median | per-round range | goal | |\n|---|---|---|---|---|\n");
    for t in r["targets"].as_array().into_iter().flatten() {
        let unit = t["unit"].as_str().unwrap_or("");
        let (value, lo, hi) = (f(&t["value"]), f(&t["round_min"]), f(&t["round_max"]));
        let (shown, range) = if t["kind"] == "ratio" {
            (format!("{value:.2}×"), format!("{lo:.2}–{hi:.2}"))
        } else {
            (format!("{value:.1} {unit}"), format!("{lo:.1}–{hi:.1} {unit}"))
        };
        let verdict = match t["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "(no target)",
        };
        let goal = t["goal"].as_str().unwrap_or("");
        let _ = writeln!(md, "| {} | {shown} | {range} | {goal} | {verdict} |", t["name"].as_str().unwrap_or("?"));
    }

    md.push_str("\n## Measurements\n\n| measurement | median | min–max | spread | runs |\n|---|---|---|---|---|\n");
    let mut widest = (0.0, String::new());
    for m in r["measurements"].as_array().into_iter().flatten() {
        let unit = m["unit"].as_str().unwrap_or("");
        let (median, lo, hi) = (f(&m["median"]), f(&m["min"]), f(&m["max"]));
        let spread = if median > 0.0 { (hi - lo) / median * 100.0 } else { 0.0 };
        let label = m["label"].as_str().unwrap_or("?");
        if unit.ends_with("/s") && spread > widest.0 {
            widest = (spread, label.to_owned());
        }
        let runs = m["runs"].as_array().map(|a| a.iter().map(|v| show(f(v), unit)).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        let _ = writeln!(md, "| {label} | {} {unit} | {}–{} | {spread:.0}% | {runs} |", show(median, unit), show(lo, unit), show(hi, unit));
    }
    let _ = writeln!(md, "\nThe widest spread among the throughputs: {:.0}% ({}).", widest.0, widest.1);
    cpu_table(r, &mut md);
    let _ = writeln!(md, "\n![pgkafka against its limits, ratios of medians with per-round ranges]({png_name})");
    if let Some(notes) = notes {
        md.push('\n');
        md.push_str(notes.trim_end());
        md.push('\n');
    }
    md
}

/// Where the CPU went during each measurement: the median over rounds of the cores each process
/// group used (CPU seconds over the run's wall seconds), read from `/proc` by the harness.
fn cpu_table(r: &Value, md: &mut String) {
    let Some(runs) = r["cpu"].as_array().filter(|a| !a.is_empty()) else { return };
    const GROUPS: [(&str, &str); 7] = [
        ("pgkafka", "pgkafka process"),
        ("harness", "harness (raw clients, consumers)"),
        ("children", "its children (pg_recvlogical, psql, an exited pgkafka)"),
        ("postgres", "PostgreSQL"),
        ("broker", "broker"),
        ("other", "other processes"),
        ("machine", "machine busy"),
    ];
    let cores = runs.first().map_or(f64::NAN, |c| f(&c["cores"]["cores"]));
    let _ = writeln!(
        md,
        "\n## Where the CPU went\n\nCores used during each measurement (CPU seconds over its wall seconds, median over the \
         rounds) by each group of processes, of the machine's {cores:.0}. Everything shares these cores: a rate is bounded \
         by what the others take, and \"other processes\" shows a load from outside the benchmark.\n"
    );
    md.push_str("| measurement |");
    for (_, label) in GROUPS {
        let _ = write!(md, " {label} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(GROUPS.len()));
    md.push('\n');
    let mut keys: Vec<&str> = Vec::new();
    for run in runs {
        if let Some(key) = run["key"].as_str().filter(|k| !keys.contains(k)) {
            keys.push(key);
        }
    }
    for key in keys {
        let label = r["measurements"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["key"] == key)
            .and_then(|m| m["label"].as_str())
            .unwrap_or(key);
        let _ = write!(md, "| {label} |");
        for (group, _) in GROUPS {
            let mut values: Vec<f64> = runs.iter().filter(|c| c["key"] == key).map(|c| f(&c["cores"][group])).filter(|v| v.is_finite()).collect();
            values.sort_by(f64::total_cmp);
            let median = match values.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => values[n / 2],
                n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            };
            let _ = write!(md, " {} |", if median.is_finite() { format!("{median:.2}") } else { "–".into() });
        }
        md.push('\n');
    }
}

/// The measurement `key`'s median with its range, in its unit: `139,000 rows/s (120,000–150,000)`.
fn quote(r: &Value, key: &str) -> String {
    let Some(m) = r["measurements"].as_array().into_iter().flatten().find(|m| m["key"] == key) else { return "?".into() };
    let unit = m["unit"].as_str().unwrap_or("");
    format!("{} {unit} ({}–{})", show(f(&m["median"]), unit), show(f(&m["min"]), unit), show(f(&m["max"]), unit))
}

/// A target's ratio of medians with its per-round range: `0.85× (0.80–0.90)`.
fn quote_ratio(r: &Value, name_start: &str) -> String {
    r["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"].as_str().is_some_and(|n| n.starts_with(name_start)))
        .map_or_else(|| "?".into(), |t| format!("{:.2}× ({:.2}–{:.2})", f(&t["value"]), f(&t["round_min"]), f(&t["round_max"])))
}

/// One paragraph of the headline medians with their spread.
fn summary(r: &Value) -> String {
    let mut text = format!(
        "producer {}, {} of min(`pg_recvlogical` {}, raw rdkafka producer {}); peak RSS through one {}-row transaction {}; \
         basic consumer {}, {} of the JSON-decoding reference {} and {} of the no-decode limit {}; \
         idempotent consumer {} batched, {} of a plain sqlx loop, and {} one op per transaction, {} of the loop",
        quote(r, "pgkafka_producer"),
        quote_ratio(r, "producer /"),
        quote(r, "pg_recvlogical"),
        quote(r, "rdkafka_producer"),
        show(f(&r["workload"]["rows"]), "rows/s"),
        quote(r, "one_transaction_peak_rss"),
        quote(r, "basic_consumer"),
        quote_ratio(r, "basic consumer / JSON"),
        quote(r, "rdkafka_consumer_json"),
        quote_ratio(r, "basic consumer / no-decode"),
        quote(r, "rdkafka_consumer_no_decode"),
        quote(r, "idempotent_batched"),
        quote_ratio(r, "idempotent consumer / plain loop, batched"),
        quote(r, "idempotent_unbatched"),
        quote_ratio(r, "idempotent consumer / plain loop, one"),
    );
    for tps in r["workload"]["latency_rates"].as_array().into_iter().flatten() {
        let _ = write!(text, "; COMMIT to handler at {tps} tx/s p50 {}, p99 {}", quote(r, &format!("latency_{tps}_p50")), quote(r, &format!("latency_{tps}_p99")));
    }
    text.push('.');
    text
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `text` in the 8×8 bitmap font at `scale` pixels per font pixel, top-left at (x, y).
fn label(area: &Area<'_>, text: &str, (x, y): (i32, i32), scale: i32, color: &RGBColor) -> DrawResult {
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(c).or_else(|| font8x8::LATIN_FONTS.get(c)).unwrap_or([0; 8]);
        let left = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (left + col * scale, y + row as i32 * scale);
                    for (dx, dy) in (0..scale).flat_map(|dx| (0..scale).map(move |dy| (dx, dy))) {
                        area.draw_pixel((px + dx, py + dy), color)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// One horizontal bar per ratio target: the ratio of medians, a whisker over the per-round
/// ratios, and the goal as a red mark.
fn chart(r: &Value, path: &str) -> DrawResult {
    let ratios: Vec<&Value> = r["targets"].as_array().into_iter().flatten().filter(|t| t["kind"] == "ratio").collect();
    let (width, row_height, top) = (1000i32, 56i32, 70i32);
    let height = top + row_height * ratios.len() as i32 + 50;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let grey = RGBColor(120, 120, 120);
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    label(&root, "pgkafka / its limit (ratio of medians; whisker: per-round range; red: target)", (20, 16), 1, &BLACK)?;
    let repeats = r["workload"]["repeats"].as_u64().unwrap_or(1);
    label(&root, &format!("{repeats} interleaved runs each"), (20, 34), 1, &grey)?;
    let (x0, x1) = (430i32, width - 40);
    let max_ratio = ratios
        .iter()
        .flat_map(|t| [f(&t["value"]), f(&t["round_max"])])
        .filter(|v| v.is_finite())
        .fold(1.2f64, f64::max)
        .min(5.0);
    let scale_max = (max_ratio * 4.0).ceil() / 4.0;
    let x_of = |v: f64| x0 + ((v.clamp(0.0, scale_max) / scale_max) * f64::from(x1 - x0)).round() as i32;
    let bottom = top + row_height * ratios.len() as i32;
    let mut tick = 0.0;
    while tick <= scale_max + 1e-9 {
        let x = x_of(tick);
        root.draw(&PathElement::new(vec![(x, top - 6), (x, bottom)], RGBColor(225, 225, 225)))?;
        label(&root, &format!("{tick:.2}"), (x - 16, bottom + 8), 1, &grey)?;
        tick += 0.25;
    }
    let one = x_of(1.0);
    root.draw(&PathElement::new(vec![(one, top - 6), (one, bottom)], grey.stroke_width(1)))?;
    for (i, t) in ratios.iter().enumerate() {
        let y = top + row_height * i as i32;
        let name = t["name"].as_str().unwrap_or("?");
        for (line, chunk) in wrap(name, 50).iter().enumerate() {
            label(&root, chunk, (20, y + 10 + line as i32 * 12), 1, &BLACK)?;
        }
        let (value, lo, hi) = (f(&t["value"]), f(&t["round_min"]), f(&t["round_max"]));
        let color = match t["met"].as_bool() {
            Some(false) => red,
            _ => blue,
        };
        root.draw(&Rectangle::new([(x0, y + 8), (x_of(value), y + 36)], color.mix(0.75).filled()))?;
        if lo.is_finite() && hi.is_finite() {
            let mid = y + 22;
            root.draw(&PathElement::new(vec![(x_of(lo), mid), (x_of(hi), mid)], BLACK.stroke_width(2)))?;
            for end in [lo, hi] {
                root.draw(&PathElement::new(vec![(x_of(end), mid - 6), (x_of(end), mid + 6)], BLACK.stroke_width(2)))?;
            }
        }
        if let Some(goal) = t["goal"].as_str().and_then(|g| g.trim_start_matches(">= ").parse::<f64>().ok()) {
            let gx = x_of(goal);
            root.draw(&Rectangle::new([(gx - 1, y + 2), (gx + 1, y + 42)], red.filled()))?;
        }
        label(&root, &format!("{value:.2}"), (x_of(value).max(x_of(hi.min(scale_max))) + 8, y + 18), 1, &BLACK)?;
    }
    root.present()?;
    Ok(())
}

/// `text` cut at spaces into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let current = lines.last_mut().unwrap();
        if !current.is_empty() && current.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    lines
}
