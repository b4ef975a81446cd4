//! A scenario's result: named figures and error counts, printed as a human table and as one
//! JSON line (which `ripple-bench report` reads back to build the comparison).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Whether a bigger figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Smaller is better (latency, CPU, memory).
    Lower,
    /// Bigger is better (throughput).
    Higher,
    /// Informational.
    None,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// Stable key, e.g. `latency_p99_ms`.
    pub key: String,
    /// Human label.
    pub label: String,
    /// The value (`null` in JSON when it could not be measured, e.g. no `--server-pid`).
    pub value: Option<f64>,
    /// Unit.
    pub unit: String,
    /// Direction.
    pub better: Better,
}

/// Everything that went wrong. Nothing is hidden: a run with errors still reports its figures,
/// and the table shows these next to them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Errors {
    /// Connections that could not be opened or did not sync in time.
    pub connect_failures: u64,
    /// Connections that closed or broke before the scenario ended them.
    pub disconnects: u64,
    /// Server frames that did not decode or apply.
    pub protocol_errors: u64,
    /// Writes that some still-connected client never received (after the drain timeout).
    pub missing_updates: u64,
    /// Clients whose final document differs from their room's (state vectors compared).
    pub convergence_mismatches: u64,
    /// The first few error messages, for diagnosis.
    pub samples: Vec<String>,
}

impl Errors {
    /// Total count of errors.
    pub fn total(&self) -> u64 {
        self.connect_failures
            + self.disconnects
            + self.protocol_errors
            + self.missing_updates
            + self.convergence_mismatches
    }

    /// Keeps a message (up to 5).
    pub fn note(&mut self, msg: impl Into<String>) {
        if self.samples.len() < 5 {
            self.samples.push(msg.into());
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Server label (`--label`).
    pub server: String,
    /// Wire protocol used.
    pub protocol: String,
    /// Parameters, as given.
    pub params: serde_json::Value,
    /// Figures in display order.
    pub figures: Vec<Figure>,
    /// Errors.
    pub errors: Errors,
}

impl Report {
    /// Starts a report.
    pub fn new(scenario: &str, server: &str, protocol: &str, params: serde_json::Value) -> Self {
        Self {
            scenario: scenario.into(),
            server: server.into(),
            protocol: protocol.into(),
            params,
            figures: Vec::new(),
            errors: Errors::default(),
        }
    }

    /// Adds a figure.
    pub fn fig(&mut self, key: &str, label: &str, value: Option<f64>, unit: &str, better: Better) {
        self.figures.push(Figure {
            key: key.into(),
            label: label.into(),
            value: value.filter(|v| v.is_finite()),
            unit: unit.into(),
            better,
        });
    }

    /// A figure's value by key.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.key == key)
            .and_then(|f| f.value)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {} against {} ({}) {}",
            self.scenario, self.server, self.protocol, self.params
        );
        let width = self
            .figures
            .iter()
            .map(|f| f.label.len())
            .max()
            .unwrap_or(10);
        for f in &self.figures {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>14} {}",
                f.label,
                fmt_value(f.value),
                f.unit
            );
        }
        let e = &self.errors;
        let _ = writeln!(
            out,
            "  errors: connect failures {}, disconnects {}, protocol errors {}, missing updates {}, convergence mismatches {}",
            e.connect_failures, e.disconnects, e.protocol_errors, e.missing_updates, e.convergence_mismatches
        );
        for s in &e.samples {
            let _ = writeln!(out, "    - {s}");
        }
        out
    }

    /// The JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Formats a figure with about four significant digits.
pub fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(0.0) => "0".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).map(|v| *v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(51.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn json_line_round_trips() {
        let mut r = Report::new("fanout", "ripple", "yws", serde_json::json!({"rooms": 1}));
        r.fig("x", "X", Some(1.5), "ms", Better::Lower);
        r.fig("y", "Y", None, "ms", Better::Lower);
        let back: Report = serde_json::from_str(&r.json_line()).expect("parses");
        assert_eq!(back.value("x"), Some(1.5));
        assert_eq!(back.value("y"), None);
        assert!(!r.json_line().contains('\n'));
    }
}
