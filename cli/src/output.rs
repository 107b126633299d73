//! What the user sees: human lines, or one JSON object per line with `--json`; progress bars
//! only on a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Writes results and events in the chosen format.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
    /// The repository the command works on, named by every JSON event (`fqrn`) so that the
    /// events of several runs can be told apart; `None` when it names none (a usage error).
    pub fqrn: Option<&'static str>,
}

impl Output {
    /// A result or event. In JSON mode `fields` is printed as one line (with `fqrn` added
    /// where it is missing); otherwise `text`.
    pub fn event(&self, text: &str, mut fields: Value) {
        let mut out = std::io::stdout().lock();
        let written = if self.json {
            if let (Some(fqrn), Value::Object(map)) = (self.fqrn, &mut fields) {
                map.entry("fqrn").or_insert_with(|| json!(fqrn));
            }
            writeln!(out, "{fields}")
        } else {
            writeln!(out, "{}", printable_lines(text))
        };
        note_stdout(written);
    }

    /// Progress someone may wait on (a lock held by another process, a retry): the text on
    /// stderr, since stdout holds the results a script reads; with `--json` the event on
    /// stdout, where every event goes.
    pub fn notice(&self, text: &str, fields: Value) {
        if self.json {
            self.event(text, fields);
        } else {
            let _ = writeln!(std::io::stderr().lock(), "{}", printable_lines(text));
        }
    }

    /// A line for humans only (headings, hints); JSON mode skips it.
    pub fn say(&self, text: &str) {
        if !self.json {
            note_stdout(writeln!(
                std::io::stdout().lock(),
                "{}",
                printable_lines(text)
            ));
        }
    }

    /// A spinner/bar on stderr when it is a terminal and not in JSON mode; hidden otherwise.
    /// With a `total` it is a bar (its length may be set later), without one a spinner.
    pub fn progress(&self, message: String, total: Option<u64>, counting: Counting) -> ProgressBar {
        let visible = !self.json && std::io::stderr().is_terminal();
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        if !visible {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            return bar;
        }
        if let Ok(style) = ProgressStyle::with_template(&template(total.is_some(), counting)) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(printable(&message));
        bar.enable_steady_tick(Duration::from_millis(120));
        let mut live = LIVE_BARS.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|b| b.upgrade().is_some());
        live.push(bar.downgrade());
        bar
    }

    /// A spinner that follows a pipeline's counters while the returned guard lives: bytes
    /// read, their rate and the files added, for commands whose work is one long pipeline run
    /// (`publish`, `ingest`).
    pub fn follow_pipeline(&self, label: String, watch: ingest::PipelineWatch) -> Follower {
        let bar = self.progress(label.clone(), None, Counting::Bytes);
        Follower::start(bar, move |bar| {
            let s = watch.stats();
            bar.set_position(s.bytes_in);
            bar.set_message(printable(&format!("{label}: {} files read", s.files)));
        })
    }
}

/// What a progress display counts.
#[derive(Clone, Copy)]
pub enum Counting {
    Bytes,
    /// Things of this name ("objects").
    Items(&'static str),
}

fn template(bar: bool, counting: Counting) -> String {
    let shape = if bar { " [{bar:30}]" } else { "" };
    match counting {
        Counting::Bytes if bar => {
            format!("{{spinner}} {{msg}}{shape} {{bytes}}/{{total_bytes}} {{bytes_per_sec}}")
        }
        Counting::Bytes => "{spinner} {msg} {bytes} {bytes_per_sec}".to_string(),
        Counting::Items(what) if bar => {
            format!("{{spinner}} {{msg}}{shape} {{human_pos}}/{{human_len}} {what}")
        }
        Counting::Items(what) => format!("{{spinner}} {{msg}} {{human_pos}} {what}"),
    }
}

/// Updates a progress display from counters another part of the program keeps, a few times a
/// second on its own thread, until dropped. Nothing runs when the display is hidden.
/// The bars drawn on the terminal, to hide while something is asked there.
static LIVE_BARS: std::sync::Mutex<Vec<indicatif::WeakProgressBar>> =
    std::sync::Mutex::new(Vec::new());

/// Runs `f` with every progress bar hidden (not redrawn over what `f` shows and reads at the
/// terminal), then shows them again.
pub fn without_bars<T>(f: impl FnOnce() -> T) -> T {
    let bars: Vec<ProgressBar> = LIVE_BARS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|b| b.upgrade())
        .collect();
    suspended(&bars, f)
}

fn suspended<T>(bars: &[ProgressBar], f: impl FnOnce() -> T) -> T {
    match bars.split_first() {
        None => f(),
        Some((bar, rest)) => bar.suspend(|| suspended(rest, f)),
    }
}

pub struct Follower {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    pub fn start(
        bar: ProgressBar,
        mut update: impl FnMut(&ProgressBar) + Send + 'static,
    ) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (!bar.is_hidden()).then(|| {
            let (bar, stop) = (bar.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    update(&bar);
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            })
        });
        Follower { bar, stop, thread }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

/// The standard shape of a JSON event.
/// The first failure to write the results to stdout other than its reader going away.
static STDOUT_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A reader that went away (`| head`) must not stop the work, so a write to stdout never
/// fails a command at once; any other failure (a full disk under `> results.json`) is kept,
/// and the command then ends with an error instead of success ([`stdout_failure`]).
fn note_stdout(written: std::io::Result<()>) {
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_FAILURE.set(e.to_string());
        }
    }
}

/// Why some results could not be written to stdout, if they could not.
pub fn stdout_failure() -> Option<&'static str> {
    note_stdout(std::io::stdout().lock().flush());
    STDOUT_FAILURE.get().map(String::as_str)
}

/// Writes `line` to stderr, ignoring failure: when whoever reads stderr has gone away
/// (`2>&1 | head`, a dropped ssh session), `eprintln!` would panic, killing the run half-way
/// or leaving it waiting on a thread that died with the repository lock held. Escaped with
/// [`printable`]: whatever the line quotes (a member name, an attribute, a server's words)
/// cannot break it or drive the terminal.
pub fn to_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", printable(line));
}

pub fn event_json(action: &str, extra: Value) -> Value {
    let mut v = json!({ "action": action });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// `err` and its causes as one line. A cause whose text its wrapper already printed (errors
/// that show their source in their own message) is left out, and so is a `context: ` prefix
/// repeated inside the message, so each fact appears once.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        // A line break inside is escaped, not made a space: a member named `a\nb` must not
        // read as `a b`.
        let text = printable(cause.to_string().trim_end_matches('\n'));
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    drop_repeated_prefixes(&line)
}

/// `text` with every character that could move the cursor or change what a terminal shows
/// (controls, line and paragraph separators, bidirectional overrides) written as an escape:
/// names from archives and registries are input, and must not rewrite the line they are in.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// [`printable`] for each line of a text whose line breaks are meant.
fn printable_lines(text: &str) -> String {
    text.split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes later copies of a `…: ` segment run that already came earlier, e.g.
/// `image X layer Y: a: image X layer Y: b` → `image X layer Y: a: b`. A backstop: tar
/// member errors (`ingest::Error::Tar`) and layer-open errors say the layer once at their
/// source, but I/O errors read through a layer stream still carry its name a second time.
fn drop_repeated_prefixes(line: &str) -> String {
    // Empty segments come from a context with nothing to name (`layer …: : reason`).
    let parts: Vec<&str> = line.split(": ").filter(|p| !p.is_empty()).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        // The longest run starting at `i` that already appears, contiguous, in what is kept:
        // one segment if it is long enough to be a context (`image X layer Y`), else at least
        // two, so that a short common word is kept.
        let mut skip = 0;
        for len in (1..=parts.len() - i).rev() {
            let run = &parts[i..i + len];
            if len == 1 && run[0].len() < 16 {
                continue;
            }
            if kept.windows(len).any(|w| w == run) {
                skip = len;
                break;
            }
        }
        if skip > 0 && i + skip < parts.len() {
            i += skip;
        } else {
            kept.push(parts[i]);
            i += 1;
        }
    }
    kept.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_shown_by_its_wrapper_appears_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let err = anyhow::Error::new(io).context("/x/index.json: No such file or directory");
        assert_eq!(error_line(&err), "/x/index.json: No such file or directory");
    }

    #[test]
    fn names_cannot_rewrite_the_terminal_line() {
        let err =
            anyhow::anyhow!("x\r\u{1b}[2Kfine.txt/../y: '..' path component").context("t.tar");
        assert_eq!(
            error_line(&err),
            "t.tar: x\\r\\u{1b}[2Kfine.txt/../y: '..' path component"
        );
        // A line break in a name stays visible as one: `a\nsecond line` is not `a second line`.
        let err = anyhow::anyhow!("a\nsecond line: unsupported tar member type 'p'\n");
        assert_eq!(
            error_line(&err),
            "a\\nsecond line: unsupported tar member type 'p'"
        );
        assert_eq!(
            printable("a:a\nb\u{85}\u{202e}c"),
            "a:a\\nb\\u{85}\\u{202e}c"
        );
        assert_eq!(printable_lines("one\ntwo\u{7}"), "one\ntwo\\u{7}");
        assert_eq!(printable("ok: ünïcode/名前"), "ok: ünïcode/名前");
    }

    #[test]
    fn repeated_context_runs_are_dropped() {
        let line = "image oci:a:img layer sha256:82: etc/b: image oci:a:img layer sha256:82: \
                    corrupt compressed data: gzip member 1: truncated";
        assert_eq!(
            drop_repeated_prefixes(line),
            "image oci:a:img layer sha256:82: etc/b: corrupt compressed data: gzip member 1: \
             truncated"
        );
        // A final run is the message itself: kept even if it came before.
        assert_eq!(drop_repeated_prefixes("a: b: c: a: b"), "a: b: c: a: b");
        assert_eq!(drop_repeated_prefixes("x: y"), "x: y");
        assert_eq!(
            drop_repeated_prefixes(
                "layer sha256:e485de: : after the end: layer sha256:e485de: bad"
            ),
            "layer sha256:e485de: after the end: bad"
        );
    }
}
