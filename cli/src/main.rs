//! `cvmfs-oci`: turn container images and directory trees into signed CernVM-FS repositories.

mod args;
mod commands;
mod demo;
mod memory;
mod output;
mod paths;

use clap::Parser;

/// Variables the options fall back to: set but empty counts as unset, as with Docker, skopeo
/// and the AWS tools (a CI secret a fork's pull request does not get is exported empty).
const OPTION_ENV: [&str; 3] = ["CVMFS_OCI_HOME", "CVMFS_OCI_CREDS", "AWS_ENDPOINT_URL"];

fn main() {
    for name in OPTION_ENV {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // Before any thread starts.
            std::env::remove_var(name);
        }
    }
    let cli = args::Cli::try_parse().unwrap_or_else(|err| usage_error(err));
    batch_scheduling();
    raise_open_file_limit();
    memory::tune_allocator();
    // An MFA code asked for during a push is typed where no progress bar redraws over it.
    publisher::set_terminal_prompter(Box::new(|prompt| {
        output::without_bars(|| publisher::ask_at_terminal(prompt))
    }));
    let out = output::Output {
        json: cli.global.json,
        // Leaked: one string for the life of the process, so that `Output` stays `Copy`.
        fqrn: cli
            .command
            .fqrn()
            .map(|fqrn| &*Box::leak(fqrn.to_owned().into_boxed_str())),
    };
    match commands::run(cli, out) {
        Ok(code) => match output::stdout_failure() {
            Some(e) => {
                // The work is done; whoever reads the results did not get them.
                output::to_stderr(&format!(
                    "cvmfs-oci: error: writing the results to stdout: {e}"
                ));
                std::process::exit(if code == 0 { 1 } else { code });
            }
            None => std::process::exit(code),
        },
        Err(err) => {
            // One line: the chain of causes, joined, so scripts can grep it.
            let line = output::error_line(&err);
            if out.json {
                out.event(
                    "",
                    output::event_json("error", serde_json::json!({ "error": line })),
                );
            }
            crate::output::to_stderr(&format!("cvmfs-oci: error: {line}"));
            std::process::exit(1);
        }
    }
}

/// Ends the process on what clap could not parse, with clap's exit code. `--help` and
/// `--version` stay plain text; a usage error on a command line that asks for `--json` is
/// also the JSON error event on stdout (as other errors are), since whoever reads stdout
/// expects JSON only.
fn usage_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if err.use_stderr() && asks_for_json(std::env::args_os()) {
        let message = match err.kind() {
            // Its rendering is the whole help text.
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                "a command is required (see --help)".to_string()
            }
            _ => usage_message(&err.render().to_string()),
        };
        let out = output::Output {
            json: true,
            fqrn: None,
        };
        out.event(
            "",
            output::event_json(
                "error",
                serde_json::json!({ "kind": "usage", "error": message }),
            ),
        );
    }
    err.exit()
}

/// Whether `--json` is among the options (before a `--` that ends them).
fn asks_for_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// The first paragraph of clap's rendered error on one line, without its `error: ` label:
/// what is wrong (with the missing arguments it lists below), as other errors say it; the
/// tip and usage paragraphs after it are for a terminal.
fn usage_message(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    output::printable(line.strip_prefix("error: ").unwrap_or(&line))
}

/// Asks the kernel to schedule this process (and the threads it starts) as batch work
/// (`SCHED_BATCH`): a thread that wakes up, such as a reader handed a block or the store
/// thread handed an object, then waits for the running compressor's time slice instead of
/// preempting it. Fewer switches and warmer caches on a machine with fewer cores than
/// threads (20-image corpus on 2 cores: 14 100–15 100 instead of 16 400–16 800 involuntary
/// switches).
/// Advisory: any process may ask for it, and a refusal changes nothing else.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is this thread (the only one so far); `param` lives across the call.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}

/// Raises the soft limit of open files to the hard one, as Go programs (Docker, containerd)
/// do at start: the local store keeps a descriptor for each of the 256 `data/XX` directories
/// it writes to, the publish walk up to 32 for the tree and the readers theirs, so a soft
/// limit of 256 (some CI runners) failed a publish of a few hundred files.
fn raise_open_file_limit() {
    // SAFETY: an all-zero rlimit is a valid value of the plain C struct.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is writable for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit; a refusal leaves the limit as it was.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}
