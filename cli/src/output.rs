//! What the user sees: human lines, or one JSON object per line with `--json`; progress bars
//! only on a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Writes results and events in the chosen format.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// A result or event. In JSON mode `fields` is printed as one line; otherwise `text`.
    pub fn event(&self, text: &str, fields: Value) {
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{fields}")
        } else {
            writeln!(out, "{text}")
        };
    }

    /// A line for humans only (headings, hints); JSON mode skips it.
    pub fn say(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    /// A spinner/bar on stderr when it is a terminal and not in JSON mode; hidden otherwise.
    pub fn progress(&self, message: String, total: Option<u64>) -> ProgressBar {
        let visible = !self.json && std::io::stderr().is_terminal();
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        if !visible {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            return bar;
        }
        let style = match total {
            Some(_) => ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            ),
            None => ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}"),
        };
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// The standard shape of a JSON event.
pub fn event_json(action: &str, extra: Value) -> Value {
    let mut v = json!({ "action": action });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}
