//! Runs the tool as a child process and measures it as the kernel sees it: wall time from
//! spawn to reap, and `wait4`'s resource usage (peak RSS of the child and of its waited-for
//! descendants, user and system CPU).
//!
//! Why a wrapper process: Linux carries the high-water RSS of the address space a process
//! `exec`s from into its `ru_maxrss` (`setmax_mm_hiwater_rss` in `exec_mmap`). Spawned
//! straight from this process, which holds hundreds of MB of floor contents, the tool would
//! report our peak as its own. So [`run`] starts `MEASURER __measure OUT PROGRAM ARGS…` (this
//! binary, freshly exec'ed and small), which spawns the tool, reaps it with `wait4` and writes
//! the numbers to OUT; see [`measure_main`].

use crate::Error;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The first argument that makes the bench binary act as the measuring wrapper.
pub const MEASURE_ARG: &str = "__measure";

/// What one run of the child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRun {
    pub wall_s: f64,
    pub peak_rss_kib: u64,
    pub user_s: f64,
    pub sys_s: f64,
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// The machine's busy and idle core-seconds while the child ran (from `/proc/stat`): what
    /// was busy beyond the child's own CPU is other processes (the registry serving it) and
    /// the kernel's own threads (writeback of what it wrote); idle is cores left unused.
    #[serde(default)]
    pub machine: Option<MachineTime>,
    #[serde(skip)]
    pub stdout: String,
    #[serde(skip)]
    pub stderr: String,
}

/// Core-seconds of the whole machine over an interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MachineTime {
    pub busy_s: f64,
    pub idle_s: f64,
}

impl MachineTime {
    /// Busy and idle (idle + iowait) core-seconds since boot, from `/proc/stat`'s `cpu` line.
    fn now() -> Option<MachineTime> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        // USER_HZ, which Linux fixes at 100 for /proc/stat.
        let idle = ticks.get(3)? + ticks.get(4)?;
        let all: f64 = ticks.iter().sum();
        Some(MachineTime {
            busy_s: (all - idle) / 100.0,
            idle_s: idle / 100.0,
        })
    }

    fn since(self, earlier: MachineTime) -> MachineTime {
        MachineTime {
            busy_s: self.busy_s - earlier.busy_s,
            idle_s: self.idle_s - earlier.idle_s,
        }
    }
}

impl ChildRun {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
}

/// User + system CPU seconds this process (all its threads) has used so far.
pub fn self_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    timeval_s(usage.ru_utime) + timeval_s(usage.ru_stime)
}

/// The 1-minute load average (other work on the machine skews every wall time).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn timeval_s(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Spawns `cmd` (stdio as configured), reaps it with `wait4` and returns the numbers.
fn spawn_and_reap(cmd: &mut Command) -> Result<ChildRun, Error> {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| Error::Child {
        what: what.clone(),
        message: e.to_string(),
    })?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; the pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Child {
                what,
                message: format!("wait4: {e}"),
            });
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    // The child is reaped; dropping the handle neither waits nor kills.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok(ChildRun {
        wall_s,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        user_s: timeval_s(usage.ru_utime),
        sys_s: timeval_s(usage.ru_stime),
        status: code,
        machine: None,
        stdout: String::new(),
        stderr: String::new(),
    })
}

/// The wrapper's `main`: `args` = [OUT, PROGRAM, ARGS…]. Runs PROGRAM with this process's
/// stdio, writes its [`ChildRun`] as JSON to OUT and returns the exit status to use.
pub fn measure_main(args: &[OsString]) -> i32 {
    let [out, program, rest @ ..] = args else {
        eprintln!("usage: cvmfs-oci-bench {MEASURE_ARG} OUT PROGRAM [ARGS...]");
        return 2;
    };
    let run = match spawn_and_reap(Command::new(program).args(rest)) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("{e}");
            return 127;
        }
    };
    let json = serde_json::to_vec(&run).unwrap_or_default();
    if let Err(e) = std::fs::write(out, json) {
        eprintln!("{}: {e}", Path::new(out).display());
        return 2;
    }
    0
}

/// Runs `cmd` (program and arguments only) through the wrapper `measurer` (the bench binary)
/// with stdout and stderr captured, and returns what the wrapper measured.
pub fn run(measurer: &Path, cmd: &Command) -> Result<ChildRun, Error> {
    let what = format!("{cmd:?}");
    let fail = |message: String| Error::Child {
        what: what.clone(),
        message,
    };
    let out = std::env::temp_dir().join(format!(
        "cvmfs-oci-bench-{}-{}.json",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut wrapper = Command::new(measurer);
    wrapper
        .arg(MEASURE_ARG)
        .arg(&out)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    flush_writeback();
    let machine_before = MachineTime::now();
    let mut child = wrapper
        .spawn()
        .map_err(|e| fail(format!("{}: {e}", measurer.display())))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = child.wait().map_err(|e| fail(format!("wait: {e}")))?;
    let machine = MachineTime::now()
        .zip(machine_before)
        .map(|(after, before)| after.since(before));
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let measured = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    let mut run: ChildRun = match measured {
        Ok(bytes) if status.success() => {
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("{}: {e}", out.display())))?
        }
        _ => {
            return Err(fail(format!(
                "measuring wrapper failed ({status}): {stderr}"
            )))
        }
    };
    run.stdout = stdout;
    run.stderr = stderr;
    run.machine = machine;
    Ok(run)
}

/// Writes out what earlier work left dirty (the release build `scripts/bench` ran a moment
/// ago, the `init` before a timed run): the tool's `syncfs` before its manifest would wait
/// for all of it, as the whole file system is synced, and the kernel's flusher would take
/// CPU from a floor. Measured: a corpus conversion right after 600 MB were written took
/// 8.18 s twice (1.02 core-s idle in one), 7.72 and 8.06 s with them synced first.
pub fn flush_writeback() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_time_of_an_interval_adds_up_to_the_cores_time() {
        let started = std::time::Instant::now();
        let before = MachineTime::now().expect("/proc/stat");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let m = MachineTime::now().expect("/proc/stat").since(before);
        let elapsed = started.elapsed().as_secs_f64();
        assert!(m.busy_s >= 0.0 && m.idle_s >= 0.0, "{m:?}");
        // The CPUs /proc/stat counts (`cpuN` lines), whatever limits this process has.
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as f64;
        // Every core's time goes somewhere: the interval on each, give or take 10 ms ticks.
        let total = m.busy_s + m.idle_s;
        let (low, high) = (
            (elapsed - 0.05) * cores * 0.9,
            (elapsed + 0.05) * cores * 1.1,
        );
        assert!(
            low <= total && total <= high,
            "{m:?} over {elapsed} s, {cores} cores"
        );
    }
}
