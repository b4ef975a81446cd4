//! `ripple-bench report`: reads the JSON lines of several runs (one per scenario and server)
//! and renders one markdown comparison table with ratios to the baseline server, the issue's
//! targets as met/missed, and an SVG bar chart of the main figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{fmt_value, Better, Figure, Report};

/// Reads reports from JSON lines; other lines are ignored.
pub fn parse_lines(text: &str) -> Vec<Report> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Report>(l).ok())
        .collect()
}

/// Combines repeated runs: reports with the same (scenario, server) become one, in the order
/// they first appear. Each figure (in the first run's order) is the median of that figure's
/// measured values across the runs (`null` if none measured it); errors are summed (the first
/// five messages kept); protocol and parameters are the first run's. A merged report of more
/// than one run also says how many (`runs`) and, for the CPU per delivered update, the lowest
/// and highest run, so the spread is visible.
pub fn merge_repeats(reports: Vec<Report>) -> Vec<Report> {
    let mut groups: Vec<Vec<Report>> = Vec::new();
    for r in reports {
        match groups
            .iter_mut()
            .find(|g| g[0].scenario == r.scenario && g[0].server == r.server)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups.into_iter().filter_map(merge_runs).collect()
}

fn merge_runs(runs: Vec<Report>) -> Option<Report> {
    let n = runs.len();
    let first = runs.first()?;
    if n == 1 {
        return runs.into_iter().next();
    }
    let mut out = Report::new(
        &first.scenario,
        &first.server,
        &first.protocol,
        first.params.clone(),
    );
    let values = |key: &str| -> Vec<f64> { runs.iter().filter_map(|r| r.value(key)).collect() };
    for f in &first.figures {
        out.fig(&f.key, &f.label, median(values(&f.key)), &f.unit, f.better);
    }
    for r in &runs {
        let (e, sum) = (&r.errors, &mut out.errors);
        sum.connect_failures += e.connect_failures;
        sum.disconnects += e.disconnects;
        sum.protocol_errors += e.protocol_errors;
        sum.missing_updates += e.missing_updates;
        sum.convergence_mismatches += e.convergence_mismatches;
        for m in &e.samples {
            sum.note(m.clone());
        }
    }
    out.fig(
        "runs",
        "runs (figures are medians)",
        Some(n as f64),
        "",
        Better::None,
    );
    const CPU: &str = "cpu_us_per_delivered";
    if first.figures.iter().any(|f| f.key == CPU) {
        let cpu = values(CPU);
        let lowest = cpu.iter().copied().reduce(f64::min);
        let highest = cpu.iter().copied().reduce(f64::max);
        for (suffix, which, v) in [("min", "lowest", lowest), ("max", "highest", highest)] {
            out.fig(
                &format!("{CPU}_{suffix}"),
                &format!("server CPU per delivered update, {which} run"),
                v,
                "µs",
                Better::None,
            );
        }
    }
    Some(out)
}

/// The median (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Servers in the order they first appear, baseline first.
fn servers(reports: &[Report], baseline: &str) -> Vec<String> {
    let mut out = vec![baseline.to_owned()];
    for r in reports {
        if !out.contains(&r.server) {
            out.push(r.server.clone());
        }
    }
    out
}

fn scenarios(reports: &[Report]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in reports {
        if !out.contains(&r.scenario) {
            out.push(r.scenario.clone());
        }
    }
    out
}

fn find<'a>(reports: &'a [Report], scenario: &str, server: &str) -> Option<&'a Report> {
    // The last run wins if a scenario was repeated and not merged (see `merge_repeats`).
    reports
        .iter()
        .rev()
        .find(|r| r.scenario == scenario && r.server == server)
}

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b != 0.0 => Some(v / b),
        _ => None,
    }
}

/// The markdown table: one row per scenario figure, one column per server; each peer cell
/// holds the value and its ratio to the baseline (peer ÷ baseline).
pub fn markdown(reports: &[Report], baseline: &str) -> String {
    let servers = servers(reports, baseline);
    let mut out = String::new();
    let _ = write!(out, "| scenario | figure | better |");
    for s in &servers {
        let _ = write!(out, " {s} |");
    }
    out.push('\n');
    let _ = write!(out, "|---|---|---|");
    for _ in &servers {
        out.push_str("---:|");
    }
    out.push('\n');
    for scenario in scenarios(reports) {
        // One row per figure any server reported, in the order they first appear.
        let mut figures: Vec<&Figure> = Vec::new();
        for r in servers.iter().filter_map(|s| find(reports, &scenario, s)) {
            for f in &r.figures {
                if !figures.iter().any(|g| g.key == f.key) {
                    figures.push(f);
                }
            }
        }
        for fig in figures {
            let better = match fig.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
                Better::None => "",
            };
            let unit = if fig.unit.is_empty() {
                String::new()
            } else {
                format!(" ({})", fig.unit)
            };
            let _ = write!(out, "| {scenario} | {}{unit} | {better} |", fig.label);
            let base = find(reports, &scenario, baseline).and_then(|r| r.value(&fig.key));
            for s in &servers {
                let v = find(reports, &scenario, s).and_then(|r| r.value(&fig.key));
                let cell = match (s == baseline, ratio(v, base)) {
                    (false, Some(x)) => format!("{} (×{})", fmt_value(v), fmt_ratio(x)),
                    _ => fmt_value(v),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "| {scenario} | **errors** (failures/disconnects/protocol/missing/diverged) | |"
        );
        for s in &servers {
            let cell = match find(reports, &scenario, s) {
                Some(r) => {
                    let e = &r.errors;
                    let text = format!(
                        "{}/{}/{}/{}/{}",
                        e.connect_failures,
                        e.disconnects,
                        e.protocol_errors,
                        e.missing_updates,
                        e.convergence_mismatches
                    );
                    if e.total() > 0 {
                        format!("**{text}**")
                    } else {
                        text
                    }
                }
                None => "not run".into(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

fn fmt_ratio(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// One target of the issue, checked against the runs.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    /// What the target says.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `met`, `MISSED`, `not measured`, or `info` (informational rows, no target).
    pub verdict: &'static str,
}

/// This machine's floor for one delivered update (see `ripple-bench floor` and
/// `ripple-bench fsync`): what no server can go below.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    /// CPU of one small loopback TCP send, in µs.
    pub send_us: f64,
    /// CPU of one 64-byte write + fdatasync, in µs.
    pub fsync_cpu_us: f64,
}

/// `value ≤ factor × limit` with a little slack for floating-point rounding.
fn within(value: f64, factor: f64, limit: f64) -> bool {
    value <= factor * limit * (1.0 + 1e-9)
}

/// How a scenario is named in a target: the JS-client variants say so.
fn scenario_title(scenario: &str) -> String {
    if scenario.ends_with("-js") {
        format!("{scenario} (with JS clients)")
    } else {
        scenario.to_owned()
    }
}

/// Checks the targets of issue 14 and the earlier ones that must not regress.
///
/// `baseline` is Ripple with strict durability, `memory` Ripple with `--persist none`,
/// `reference` `@y/websocket-server`. With a `floor`, informational rows show fanout's CPU per
/// delivered update as a multiple of this machine's floor.
pub fn targets(
    reports: &[Report],
    baseline: &str,
    memory: &str,
    reference: &str,
    floor: Option<Floor>,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let val = |scenario: &str, server: &str, key: &str| {
        find(reports, scenario, server).and_then(|r| r.value(key))
    };
    // `ours ≤ factor × theirs`, both measured in the same scenario.
    let relative = |target: String,
                    scenario: &str,
                    key: &str,
                    (ours, theirs): (&str, &str),
                    factor: f64,
                    unit: &str| {
        let (measured, verdict) = match (val(scenario, ours, key), val(scenario, theirs, key)) {
            (Some(o), Some(t)) => (
                format!(
                    "{} {unit} = {} × {} {unit}",
                    fmt_value(Some(o)),
                    ratio(Some(o), Some(t)).map_or("n/a".into(), fmt_ratio),
                    fmt_value(Some(t)),
                ),
                if within(o, factor, t) {
                    "met"
                } else {
                    "MISSED"
                },
            ),
            _ => {
                let show = |server: &str| match find(reports, scenario, server) {
                    None => format!("{server} not run"),
                    Some(r) => format!("{server} {} {unit}", fmt_value(r.value(key))),
                };
                (format!("{}, {}", show(ours), show(theirs)), "not measured")
            }
        };
        TargetCheck {
            target,
            measured,
            verdict,
        }
    };
    const CPU: &str = "cpu_us_per_delivered";
    for scenario in ["fanout", "fanout-js"] {
        let s = scenario_title(scenario);
        out.push(relative(
            format!(
                "{s}, strict: server CPU per delivered update ≤ 1.3 × Ripple's own --persist none"
            ),
            scenario,
            CPU,
            (baseline, memory),
            1.3,
            "µs",
        ));
        out.push(relative(
            format!("{s}, strict: server CPU per delivered update ≤ 0.33 × @y/websocket-server"),
            scenario,
            CPU,
            (baseline, reference),
            0.33,
            "µs",
        ));
        out.push(relative(
            format!("{s}, none: server CPU per delivered update ≤ 0.25 × @y/websocket-server"),
            scenario,
            CPU,
            (memory, reference),
            0.25,
            "µs",
        ));
        out.push(relative(
            format!("{s}, strict: latency p99 ≤ 0.6 × @y/websocket-server's p99"),
            scenario,
            "latency_p99_ms",
            (baseline, reference),
            0.6,
            "ms",
        ));
    }
    for scenario in ["burst", "burst-js"] {
        out.push(relative(
            format!(
                "{}, strict: server CPU per delivered update ≤ 0.25 × @y/websocket-server",
                scenario_title(scenario)
            ),
            scenario,
            CPU,
            (baseline, reference),
            0.25,
            "µs",
        ));
    }

    // No regression on the earlier targets.
    let rss = val("idle", baseline, "rss_kib_per_conn");
    out.push(TargetCheck {
        target: "idle: server RSS per idle connection ≤ 2 KiB".into(),
        measured: rss.map_or("not measured".into(), |v| {
            format!("{} KiB (limit 2 KiB)", fmt_value(Some(v)))
        }),
        verdict: match rss {
            Some(v) if v <= 2.0 => "met",
            Some(_) => "MISSED",
            None => "not measured",
        },
    });
    out.push(relative(
        "bigdoc: server CPU per join ≤ 1/10 of @y/websocket-server".into(),
        "bigdoc",
        "cpu_ms_per_join",
        (baseline, reference),
        0.1,
        "ms",
    ));
    // 10,000 concurrent connections on one node.
    let big = reports
        .iter()
        .filter(|r| r.server == baseline && r.scenario.starts_with("connect"))
        .filter_map(|r| r.value("clients").map(|c| (c, r.errors.total())))
        .fold(None, |best: Option<(f64, u64)>, x| match best {
            Some(b) if b.0 >= x.0 => Some(b),
            _ => Some(x),
        });
    out.push(TargetCheck {
        target: "10,000 concurrent connections on one node".into(),
        measured: big.map_or("not measured".into(), |(c, e)| {
            format!("{c:.0} connected, {e} errors")
        }),
        verdict: match big {
            Some((c, 0)) if c >= 10_000.0 => "met",
            Some(_) => "MISSED",
            None => "not measured",
        },
    });
    let p99 = val("fanout", baseline, "latency_p99_ms");
    let rate = val("fanout", baseline, "delivered_per_sec");
    out.push(TargetCheck {
        target: "fanout, strict: p99 < 2 ms at 1,000 delivered updates/s (on a quiet machine)"
            .into(),
        measured: match (p99, rate) {
            (Some(p), Some(r)) => {
                format!("p99 {} ms at {} /s", fmt_value(Some(p)), fmt_value(Some(r)))
            }
            _ => "not measured".into(),
        },
        verdict: match (p99, rate) {
            (Some(p), Some(r)) if p < 2.0 && r >= 950.0 => "met",
            (Some(_), Some(_)) => "MISSED",
            _ => "not measured",
        },
    });

    // Where fanout stands against what this machine cannot go below.
    if let Some(floor) = floor {
        for scenario in ["fanout", "fanout-js"] {
            for (server, mode, strict) in [(baseline, "strict", true), (memory, "none", false)] {
                out.push(floor_check(reports, scenario, server, mode, strict, floor));
            }
        }
    }
    out
}

/// One informational row: a run's CPU per delivered update over the machine's floor (one send,
/// plus for strict durability one fsync per write shared by that write's deliveries).
fn floor_check(
    reports: &[Report],
    scenario: &str,
    server: &str,
    mode: &str,
    strict: bool,
    floor: Floor,
) -> TargetCheck {
    let target = format!(
        "{}, {mode}: CPU per delivered update as a multiple of this machine's floor",
        scenario_title(scenario)
    );
    let report = find(reports, scenario, server);
    let get = |key: &str| report.and_then(|r| r.value(key));
    let fsync_share = if strict {
        match (get("writes"), get("delivered")) {
            (Some(w), Some(d)) if d > 0.0 => Some(floor.fsync_cpu_us * w / d),
            _ => None,
        }
    } else {
        Some(0.0)
    };
    let (Some(cpu), Some(share)) = (get("cpu_us_per_delivered"), fsync_share) else {
        return TargetCheck {
            target,
            measured: match report {
                None => format!("{server} not run"),
                Some(_) => "not measured".into(),
            },
            verdict: "not measured",
        };
    };
    let parts = if strict {
        format!("send {:.1} µs + fsync share {share:.1} µs", floor.send_us)
    } else {
        format!("send {:.1} µs", floor.send_us)
    };
    let total = floor.send_us + share;
    let multiple = if total > 0.0 {
        format!("{:.1}", cpu / total)
    } else {
        "n/a".into()
    };
    TargetCheck {
        target,
        measured: format!("{cpu:.1} µs = {multiple} × floor ({parts})"),
        verdict: "info",
    }
}

/// The targets as a markdown table.
pub fn targets_markdown(checks: &[TargetCheck]) -> String {
    let mut out = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for c in checks {
        let verdict = if c.verdict == "MISSED" {
            "**MISSED**"
        } else {
            c.verdict
        };
        let _ = writeln!(out, "| {} | {} | {verdict} |", c.target, c.measured);
    }
    out
}

/// The figures charted: (scenario, key, title).
const CHART: &[(&str, &str, &str)] = &[
    (
        "fanout",
        "cpu_us_per_delivered",
        "fanout: server CPU per delivered update (µs, lower is better)",
    ),
    (
        "fanout",
        "latency_p99_ms",
        "fanout: latency p99 (ms, lower is better)",
    ),
    (
        "burst",
        "delivered_per_sec",
        "burst: delivered updates/s (higher is better)",
    ),
    (
        "burst",
        "cpu_us_per_delivered",
        "burst: server CPU per delivered update (µs, lower is better)",
    ),
    (
        "fanout-js",
        "cpu_us_per_delivered",
        "fanout-js (JS clients): server CPU per delivered update (µs, lower is better)",
    ),
    (
        "fanout-js",
        "latency_p99_ms",
        "fanout-js (JS clients): latency p99 (ms, lower is better)",
    ),
    (
        "burst-js",
        "cpu_us_per_delivered",
        "burst-js (JS clients): server CPU per delivered update (µs, lower is better)",
    ),
    (
        "connect",
        "connects_per_sec",
        "connect: connections/s (higher is better)",
    ),
    (
        "connect",
        "rss_kib_per_conn",
        "connect: server RSS per connection (KiB, lower is better)",
    ),
    (
        "idle",
        "rss_kib_per_conn",
        "idle: server RSS per idle connection (KiB, lower is better)",
    ),
    (
        "bigdoc",
        "cpu_ms_per_join",
        "bigdoc: server CPU per join (ms, lower is better)",
    ),
    (
        "bigdoc",
        "join_p50_ms",
        "bigdoc: join until synced p50 (ms, lower is better)",
    ),
];

const COLORS: &[&str] = &[
    "#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#718096",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG grid of bar charts, one panel per charted figure, one bar per server.
pub fn svg(reports: &[Report], baseline: &str, title: &str) -> String {
    let servers = servers(reports, baseline);
    let panels: Vec<_> = CHART
        .iter()
        .filter(|(sc, key, _)| {
            servers
                .iter()
                .any(|s| find(reports, sc, s).and_then(|r| r.value(key)).is_some())
        })
        .collect();
    let (cols, pw, label_w) = (3usize, 400.0f64, 130.0f64);
    let bar_h = 18.0;
    let ph = 40.0 + servers.len() as f64 * (bar_h + 6.0) + 10.0;
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (cols as f64 * pw + 20.0, rows as f64 * ph + 50.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, (sc, key, ptitle)) in panels.iter().enumerate() {
        let x0 = 10.0 + (i % cols) as f64 * pw;
        let y0 = 40.0 + (i / cols) as f64 * ph;
        let _ = writeln!(
            out,
            r#"<text x="{x0}" y="{}" font-weight="bold" font-size="11">{}</text>"#,
            y0 + 16.0,
            esc(ptitle)
        );
        let vals: Vec<Option<f64>> = servers
            .iter()
            .map(|s| find(reports, sc, s).and_then(|r| r.value(key)))
            .collect();
        let max = vals.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
        let span = pw - label_w - 80.0;
        for (j, (s, v)) in servers.iter().zip(&vals).enumerate() {
            let y = y0 + 28.0 + j as f64 * (bar_h + 6.0);
            let _ = writeln!(out, r#"<text x="{x0}" y="{}">{}</text>"#, y + 13.0, esc(s));
            let bw = match v {
                Some(v) if max > 0.0 => (v / max * span).max(1.0),
                _ => 0.0,
            };
            let color = COLORS[j % COLORS.len()];
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{y}" width="{bw:.1}" height="{bar_h}" fill="{color}"/>"#,
                x0 + label_w
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                x0 + label_w + bw + 4.0,
                y + 13.0,
                esc(&fmt_value(*v))
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Groups reports by scenario then server (for tests and callers that want the raw values).
pub fn by_scenario(reports: &[Report]) -> BTreeMap<(String, String), &Report> {
    reports
        .iter()
        .map(|r| ((r.scenario.clone(), r.server.clone()), r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rep(scenario: &str, server: &str, figs: &[(&str, f64)]) -> Report {
        let mut r = Report::new(scenario, server, "yws", json!({}));
        for (k, v) in figs {
            r.fig(k, k, Some(*v), "µs", Better::Lower);
        }
        r
    }

    fn check<'a>(checks: &'a [TargetCheck], target: &str) -> &'a TargetCheck {
        checks
            .iter()
            .find(|c| c.target == target)
            .unwrap_or_else(|| panic!("no target {target:?} in {checks:#?}"))
    }

    #[test]
    fn table_shows_ratios_and_targets_judge_against_the_reference() {
        let reports = vec![
            rep(
                "fanout",
                "ripple",
                &[
                    ("cpu_us_per_delivered", 2.0),
                    ("latency_p99_ms", 1.5),
                    ("delivered_per_sec", 1000.0),
                ],
            ),
            rep(
                "fanout",
                "ref",
                &[
                    ("cpu_us_per_delivered", 30.0),
                    ("latency_p99_ms", 3.0),
                    ("delivered_per_sec", 1000.0),
                ],
            ),
            rep("burst", "ripple", &[("cpu_us_per_delivered", 5.0)]),
            rep("burst", "ref", &[("cpu_us_per_delivered", 20.0)]),
        ];
        let md = markdown(&reports, "ripple");
        assert!(
            md.contains("| fanout | cpu_us_per_delivered (µs) | lower | 2.00 | 30.00 (×15.0) |"),
            "{md}"
        );
        let checks = targets(&reports, "ripple", "mem", "ref", None);
        let strict_vs_ref =
            "fanout, strict: server CPU per delivered update ≤ 0.33 × @y/websocket-server";
        assert_eq!(check(&checks, strict_vs_ref).verdict, "met");
        assert_eq!(
            check(&checks, strict_vs_ref).measured,
            "2.00 µs = 0.07 × 30.00 µs"
        );
        // p99 1.5 ms is 0.5 × the reference's 3 ms.
        let p99 = "fanout, strict: latency p99 ≤ 0.6 × @y/websocket-server's p99";
        assert_eq!(check(&checks, p99).verdict, "met");
        // burst: 5 µs is 0.25 × 20 µs exactly: met (≤).
        let burst = "burst, strict: server CPU per delivered update ≤ 0.25 × @y/websocket-server";
        assert_eq!(check(&checks, burst).verdict, "met");
        let burst_js =
            "burst-js (with JS clients), strict: server CPU per delivered update ≤ 0.25 × @y/websocket-server";
        assert_eq!(check(&checks, burst_js).verdict, "not measured");
        assert_eq!(
            check(&checks, "idle: server RSS per idle connection ≤ 2 KiB").verdict,
            "not measured"
        );
        assert_eq!(
            check(
                &checks,
                "fanout, strict: p99 < 2 ms at 1,000 delivered updates/s (on a quiet machine)"
            )
            .verdict,
            "met"
        );
        // No floor given: no informational rows.
        assert!(checks.iter().all(|c| c.verdict != "info"));
        let table = targets_markdown(&checks);
        assert!(
            table.starts_with("| target | measured | verdict |\n"),
            "{table}"
        );
        let chart = svg(&reports, "ripple", "t");
        assert!(chart.starts_with("<svg") && chart.contains("30.0"));
        // Panels whose scenario was not run are left out.
        assert!(chart.contains("fanout: latency p99"), "{chart}");
        assert!(
            !chart.contains("fanout-js") && !chart.contains("burst-js"),
            "{chart}"
        );
        assert_eq!(by_scenario(&reports).len(), 4);
    }

    #[test]
    fn repeats_merge_into_medians_with_the_spread_and_summed_errors() {
        let mut runs = Vec::new();
        for (i, (cpu, p99)) in [(10.0, 3.0), (30.0, 1.0), (20.0, 2.0)]
            .into_iter()
            .enumerate()
        {
            let mut r = rep(
                "fanout",
                "ripple",
                &[("cpu_us_per_delivered", cpu), ("latency_p99_ms", p99)],
            );
            // A figure measured in one run only, and one never measured.
            r.fig("rss", "rss", (i == 1).then_some(7.0), "KiB", Better::Lower);
            r.fig("gone", "gone", None, "", Better::None);
            r.errors.disconnects = i as u64 + 1;
            r.errors.missing_updates = 2;
            for k in 0..3 {
                r.errors.note(format!("run {i} error {k}"));
            }
            runs.push(r);
            // Other (scenario, server) pairs interleaved, once each.
            runs.push(rep(
                "fanout",
                "ref",
                &[("cpu_us_per_delivered", 50.0 + i as f64)],
            ));
        }
        runs.insert(0, rep("burst", "ripple", &[("cpu_us_per_delivered", 4.0)]));
        let merged = merge_repeats(runs);
        let order: Vec<_> = merged
            .iter()
            .map(|r| (r.scenario.as_str(), r.server.as_str()))
            .collect();
        assert_eq!(
            order,
            [("burst", "ripple"), ("fanout", "ripple"), ("fanout", "ref")]
        );
        let m = &merged[1];
        assert_eq!(m.value("cpu_us_per_delivered"), Some(20.0));
        assert_eq!(m.value("latency_p99_ms"), Some(2.0));
        assert_eq!(m.value("rss"), Some(7.0));
        assert_eq!(m.value("gone"), None);
        assert_eq!(m.value("runs"), Some(3.0));
        assert_eq!(m.value("cpu_us_per_delivered_min"), Some(10.0));
        assert_eq!(m.value("cpu_us_per_delivered_max"), Some(30.0));
        let keys: Vec<_> = m.figures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cpu_us_per_delivered",
                "latency_p99_ms",
                "rss",
                "gone",
                "runs",
                "cpu_us_per_delivered_min",
                "cpu_us_per_delivered_max"
            ]
        );
        let runs_fig = &m.figures[4];
        assert_eq!(runs_fig.label, "runs (figures are medians)");
        assert_eq!(runs_fig.better, Better::None);
        assert_eq!(m.errors.disconnects, 1 + 2 + 3);
        assert_eq!(m.errors.missing_updates, 6);
        assert_eq!(m.errors.total(), 12);
        assert_eq!(
            m.errors.samples,
            [
                "run 0 error 0",
                "run 0 error 1",
                "run 0 error 2",
                "run 1 error 0",
                "run 1 error 1"
            ]
        );
        // Even count: the mean of the middle two.
        assert_eq!(merged[2].value("cpu_us_per_delivered"), Some(51.0));
        // A single run is left as it was: no runs figure, no spread.
        assert_eq!(merged[0].figures.len(), 1);
        assert_eq!(merged[0].value("runs"), None);
        let md = markdown(&merged, "ripple");
        assert!(
            md.contains("| fanout | runs (figures are medians) |  | 3.00 |"),
            "{md}"
        );
        assert!(md.contains("| fanout | **errors** (failures/disconnects/protocol/missing/diverged) | | **0/6/0/6/0** | 0/0/0/0/0 |"), "{md}");
    }

    #[test]
    fn strict_against_memory_is_judged_at_one_point_three() {
        let rule =
            "fanout, strict: server CPU per delivered update ≤ 1.3 × Ripple's own --persist none";
        for (strict, verdict) in [(12.9, "met"), (13.1, "MISSED")] {
            let reports = vec![
                rep("fanout", "ripple", &[("cpu_us_per_delivered", strict)]),
                rep("fanout", "ripple-memory", &[("cpu_us_per_delivered", 10.0)]),
            ];
            let checks = targets(&reports, "ripple", "ripple-memory", "ref", None);
            let c = check(&checks, rule);
            assert_eq!(c.verdict, verdict, "{c:?}");
            assert_eq!(
                c.measured,
                format!("{strict:.2} µs = {:.2} × 10.00 µs", strict / 10.0)
            );
            // The reference was not run: the rules against it are not judged.
            let vs_ref = check(
                &checks,
                "fanout, none: server CPU per delivered update ≤ 0.25 × @y/websocket-server",
            );
            assert_eq!(vs_ref.verdict, "not measured");
            assert_eq!(vs_ref.measured, "ripple-memory 10.00 µs, ref not run");
        }
    }

    #[test]
    fn floor_rows_share_the_fsync_among_a_writes_deliveries() {
        let figs = |cpu: f64| {
            [
                ("cpu_us_per_delivered", cpu),
                ("writes", 2000.0),
                ("delivered", 20000.0),
            ]
        };
        let reports = vec![
            rep("fanout", "ripple", &figs(19.2)),
            rep("fanout", "ripple-memory", &figs(12.0)),
        ];
        let floor = Floor {
            send_us: 4.7,
            fsync_cpu_us: 20.0,
        };
        let checks = targets(&reports, "ripple", "ripple-memory", "ref", Some(floor));
        let strict = check(
            &checks,
            "fanout, strict: CPU per delivered update as a multiple of this machine's floor",
        );
        // 20 µs × 2000 writes / 20000 deliveries = 2.0 µs; 19.2 / 6.7 = 2.87.
        assert_eq!(
            strict.measured,
            "19.2 µs = 2.9 × floor (send 4.7 µs + fsync share 2.0 µs)"
        );
        assert_eq!(strict.verdict, "info");
        let none = check(
            &checks,
            "fanout, none: CPU per delivered update as a multiple of this machine's floor",
        );
        assert_eq!(none.measured, "12.0 µs = 2.6 × floor (send 4.7 µs)");
        assert_eq!(none.verdict, "info");
        let js = check(
            &checks,
            "fanout-js (with JS clients), strict: CPU per delivered update as a multiple of this machine's floor",
        );
        assert_eq!(js.verdict, "not measured");
        assert_eq!(js.measured, "ripple not run");
        assert_eq!(
            checks.iter().filter(|c| c.target.contains("floor")).count(),
            4
        );
    }
}
