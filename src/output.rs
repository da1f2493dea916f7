//! What `release` prints: on a TTY a spinner (or a byte bar) per step; otherwise one timestamped
//! line per event; with `--output json` one JSON object per event and a final summary object.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub struct Reporter {
    format: Format,
    tty: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

fn stamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Unix seconds as RFC 3339 (UTC, whole seconds).
pub fn rfc3339_seconds(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64),
    )
    .to_string()
}

impl Reporter {
    pub fn new(format: Format) -> Self {
        let tty =
            (format == Format::Human && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Reporter {
            format,
            tty,
            bars: Mutex::new(HashMap::new()),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn json(&self, mut v: Value) {
        v["time"] = json!(stamp());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
    }

    fn line(&self, text: &str) {
        match &self.tty {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{} {text}", stamp()),
        }
    }

    pub fn start(&self, step: &str, what: &str) {
        match (self.format, &self.tty) {
            (Format::Json, _) => {
                self.json(json!({"event": "step_started", "step": step, "detail": what}))
            }
            (Format::Human, Some(m)) => {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                        .expect("a valid template"),
                );
                bar.set_prefix(step.to_string());
                bar.set_message(what.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bars
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(step.to_string(), bar);
            }
            (Format::Human, None) => self.line(&format!("{step}: {what}")),
        }
    }

    pub fn progress(&self, step: &str, what: &str) {
        match (self.format, &self.tty) {
            (Format::Json, _) => {
                self.json(json!({"event": "step_progress", "step": step, "detail": what}))
            }
            (Format::Human, Some(_)) => {
                if let Some(bar) = self
                    .bars
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(step)
                {
                    bar.set_message(what.to_string());
                }
            }
            (Format::Human, None) => self.line(&format!("{step}: {what}")),
        }
    }

    /// A byte counter for `step` (pushing an image): a bar on a TTY, nothing otherwise.
    pub fn bytes(&self, step: &str, done: u64, total: u64) {
        if let (Format::Human, Some(_)) = (self.format, &self.tty)
            && let Some(bar) = self
                .bars
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(step)
        {
            if bar.length() != Some(total) {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
                    )
                    .expect("a valid template"),
                );
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }

    pub fn finish(&self, step: &str, ok: bool, what: &str, took: Duration) {
        let secs = took.as_secs_f64();
        match (self.format, &self.tty) {
            (Format::Json, _) => self.json(json!({"event": "step_finished", "step": step, "ok": ok, "detail": what, "seconds": secs})),
            (Format::Human, Some(_)) => {
                let bar = self.bars.lock().unwrap_or_else(|p| p.into_inner()).remove(step);
                let mark = if ok { "ok " } else { "FAILED " };
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                self.line(&format!("{mark}{step}: {what} ({secs:.1} s)"));
            }
            (Format::Human, None) => self.line(&format!("{step}: {} {what} ({secs:.1} s)", if ok { "done," } else { "FAILED:" })),
        }
    }

    pub fn note(&self, text: &str) {
        match self.format {
            Format::Json => self.json(json!({"event": "note", "detail": text})),
            Format::Human => self.line(text),
        }
    }

    /// The final summary: a JSON object, or aligned `key: value` lines on stdout.
    pub fn summary(&self, summary: &Value) {
        match self.format {
            Format::Json => self.json(json!({"event": "summary", "summary": summary})),
            Format::Human => {
                let mut out = std::io::stdout().lock();
                if let Some(map) = summary.as_object() {
                    for (k, v) in map {
                        let v = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        let _ = writeln!(out, "{k:>14}: {v}");
                    }
                }
            }
        }
    }
}
