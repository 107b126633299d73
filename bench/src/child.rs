//! Runs the tool as a child process and measures it as the kernel sees it: wall time from
//! spawn to reap, and `wait4`'s resource usage (peak RSS of the child and of its waited-for
//! descendants, user and system CPU).

use crate::Error;
use serde::Serialize;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one run of the child measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChildRun {
    pub wall_s: f64,
    pub peak_rss_kib: u64,
    pub user_s: f64,
    pub sys_s: f64,
    /// Exit code, or 128 + signal number.
    pub status: i32,
    #[serde(skip)]
    pub stdout: String,
    #[serde(skip)]
    pub stderr: String,
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

/// Spawns `cmd` with stdout and stderr captured, reaps it with `wait4` and returns the numbers.
pub fn run(cmd: &mut Command) -> Result<ChildRun, Error> {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Child {
            what: what.clone(),
            message: e.to_string(),
        })?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
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
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    // The child is reaped; dropping `child` neither waits nor kills.
    drop(child);
    Ok(ChildRun {
        wall_s,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        user_s: timeval_s(usage.ru_utime),
        sys_s: timeval_s(usage.ru_stime),
        status: code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
