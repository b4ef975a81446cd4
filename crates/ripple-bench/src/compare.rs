//! `ripple-bench report`: reads the JSON lines of several runs (one per scenario and server)
//! and renders one markdown comparison table with ratios to the baseline server, the issue's
//! targets as met/missed, and an SVG bar chart of the main figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{fmt_value, Better, Report};

/// Reads reports from JSON lines; other lines are ignored.
pub fn parse_lines(text: &str) -> Vec<Report> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Report>(l).ok())
        .collect()
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
    // The last run wins if a scenario was repeated.
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
        let Some(first) = servers.iter().find_map(|s| find(reports, &scenario, s)) else {
            continue;
        };
        for fig in &first.figures {
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
    /// Met, missed, or not measured.
    pub verdict: &'static str,
}

/// Checks the issue's targets. `reference` is the label of `@y/websocket-server`.
pub fn targets(reports: &[Report], baseline: &str, reference: &str) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let val = |scenario: &str, server: &str, key: &str| {
        find(reports, scenario, server).and_then(|r| r.value(key))
    };
    let mut vs_ref = |target: &str, scenario: &str, key: &str, factor: f64, unit: &str| {
        let ours = val(scenario, baseline, key);
        let theirs = val(scenario, reference, key);
        let (measured, verdict) = match (ours, theirs) {
            (Some(o), Some(t)) => (
                format!(
                    "{} {unit} vs {} {unit} (÷{})",
                    fmt_value(Some(o)),
                    fmt_value(Some(t)),
                    fmt_ratio(t / o)
                ),
                if o * factor <= t { "met" } else { "MISSED" },
            ),
            _ => ("not measured".into(), "not measured"),
        };
        out.push(TargetCheck {
            target: target.into(),
            measured,
            verdict,
        });
    };
    vs_ref(
        "fanout: server CPU per delivered update ≤ 1/10 of @y/websocket-server",
        "fanout",
        "cpu_us_per_delivered",
        10.0,
        "µs",
    );
    vs_ref(
        "burst: server CPU per delivered update ≤ 1/10 of @y/websocket-server",
        "burst",
        "cpu_us_per_delivered",
        10.0,
        "µs",
    );
    vs_ref(
        "idle: server RSS per idle connection ≤ 1/5 of @y/websocket-server",
        "idle",
        "rss_kib_per_conn",
        5.0,
        "KiB",
    );
    vs_ref(
        "bigdoc: server CPU per join ≤ 1/10 of @y/websocket-server",
        "bigdoc",
        "cpu_ms_per_join",
        10.0,
        "ms",
    );
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
        target: "fan-out p99 < 2 ms at 1,000 delivered updates/s, durable persistence on".into(),
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
    out
}

/// The targets as a markdown table.
pub fn targets_markdown(checks: &[TargetCheck]) -> String {
    let mut out = String::from("| target | Ripple vs reference | verdict |\n|---|---|---|\n");
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
        let checks = targets(&reports, "ripple", "ref");
        assert_eq!(checks[0].verdict, "met");
        assert_eq!(checks[1].verdict, "MISSED");
        assert_eq!(checks[2].verdict, "not measured");
        assert_eq!(checks[5].verdict, "met");
        let chart = svg(&reports, "ripple", "t");
        assert!(chart.starts_with("<svg") && chart.contains("30.0"));
        assert_eq!(by_scenario(&reports).len(), 4);
    }
}
