//! The five benchmark cases. Each computes its floor first (in this process), then runs the
//! tool on a fresh repository below the work directory and measures it.

use crate::child::{self, load_average, ChildRun};
use crate::floor::{self, FloorReport};
use crate::oci::{Image, Layout};
use crate::{scale, tree, Error};
use serde::Serialize;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const FQRN: &str = "bench.cvmfs-oci.test";

/// Where things are and how to run the tool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tool: PathBuf,
    /// The bench binary itself, run as the measuring wrapper (see [`crate::child`]).
    pub measurer: PathBuf,
    pub testbed: PathBuf,
    pub registry: String,
    pub work: PathBuf,
    /// Piece size for the floor's compression (0 = whole contents).
    pub piece: usize,
    pub small_files: usize,
    /// Images of case 5.
    pub scale_images: usize,
    /// Runs of each floor and each fresh tool run; the fastest counts (peak RSS: the largest).
    pub repeat: usize,
}

/// What a case must achieve.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Limit {
    /// wall ≤ factor × reference (the floor, or case 1's wall for case 2).
    RatioAtMost(f64),
    SecondsAtMost(f64),
    /// Measured for comparison only.
    Informative,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub limit: Limit,
    pub rss_mib: Option<u64>,
}

impl Target {
    pub fn describe(&self) -> String {
        let main = match self.limit {
            Limit::RatioAtMost(r) if r < 0.5 => format!("<={:.0}% of 1", r * 100.0),
            Limit::RatioAtMost(r) => format!("<={r:.2}x"),
            Limit::SecondsAtMost(s) => format!("<={s:.0}s"),
            Limit::Informative => "informative".to_string(),
        };
        match self.rss_mib {
            Some(m) => format!("{main},<={m}MiB"),
            None => main,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub title: String,
    pub wall_s: Option<f64>,
    /// Uncompressed input: layer tar bytes summed over the converted images, or file bytes.
    pub input_bytes: u64,
    /// Regular files of the flattened images (summed), or of the tree.
    pub files: u64,
    pub peak_rss_kib: Option<u64>,
    pub cpu_s: Option<f64>,
    /// Growth of the storage's data/ during the timed command.
    pub stored_bytes: Option<u64>,
    /// What the ratio is taken against: "floor" or "case 1".
    pub reference: String,
    pub reference_s: Option<f64>,
    pub ratio: Option<f64>,
    /// Tool CPU seconds / floor CPU seconds: less sensitive to other load than wall times.
    pub cpu_ratio: Option<f64>,
    /// 1-minute load average before the floor and after the tool.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub target: Target,
    /// `target` in words, as in the table.
    pub target_text: String,
    pub pass: Option<bool>,
    /// Which limits were missed: "time", "rss".
    pub miss: Vec<&'static str>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub floor: Option<FloorReport>,
    /// The last outcome event the tool printed (see [`last_outcome_event`]).
    pub tool: Option<Value>,
    pub run: Option<ChildRun>,
}

impl CaseResult {
    fn new(case: &str, title: String, target: Target) -> CaseResult {
        CaseResult {
            case: case.to_string(),
            title,
            wall_s: None,
            input_bytes: 0,
            files: 0,
            peak_rss_kib: None,
            cpu_s: None,
            stored_bytes: None,
            reference: "floor".to_string(),
            reference_s: None,
            ratio: None,
            cpu_ratio: None,
            load_before: load_average(),
            load_after: None,
            target_text: target.describe(),
            target,
            pass: None,
            miss: Vec::new(),
            error: None,
            warnings: Vec::new(),
            floor: None,
            tool: None,
            run: None,
        }
    }

    fn set_floor(&mut self, f: FloorReport) {
        self.input_bytes = f.input_bytes;
        self.files = f.files;
        self.reference_s = Some(f.floor_s);
        self.floor = Some(f);
    }

    /// Records a finished tool run and decides PASS/MISS.
    fn set_run(&mut self, run: ChildRun, stored: u64) {
        self.wall_s = Some(run.wall_s);
        self.peak_rss_kib = Some(run.peak_rss_kib);
        self.cpu_s = Some(run.user_s + run.sys_s);
        self.stored_bytes = Some(stored);
        self.tool = last_outcome_event(&run.stdout);
        self.load_after = load_average();
        if let Some(f) = self.floor.as_ref().filter(|f| f.cpu_s > 0.0) {
            self.cpu_ratio = Some((run.user_s + run.sys_s) / f.cpu_s);
        }
        if let Some(r) = self.reference_s.filter(|r| *r > 0.0) {
            self.ratio = Some(run.wall_s / r);
        }
        let time_ok = match self.target.limit {
            Limit::RatioAtMost(max) => self.ratio.map(|r| r <= max),
            Limit::SecondsAtMost(max) => Some(run.wall_s <= max),
            Limit::Informative => None,
        };
        let rss_ok = self
            .target
            .rss_mib
            .is_none_or(|m| run.peak_rss_kib <= m * 1024);
        self.pass = time_ok.map(|t| t && rss_ok);
        self.miss = match (time_ok, rss_ok) {
            (Some(false), false) => vec!["time", "rss"],
            (Some(false), true) => vec!["time"],
            (_, false) => vec!["rss"],
            _ => Vec::new(),
        };
        self.run = Some(run);
    }

    fn failed(mut self, e: impl std::fmt::Display) -> CaseResult {
        self.error = Some(e.to_string());
        self.pass = Some(false);
        self
    }
}

/// A repository made for one case.
#[derive(Debug, Clone)]
pub struct Repo {
    pub home: PathBuf,
    pub storage: PathBuf,
}

/// The tool's last outcome event: the JSON line that reports a revision made (or found
/// unchanged) with its counters. Its `action` names the command (`publish`, `convert`,
/// `migrate`, …; every command reported `publish` before), so it is told by its fields, which
/// every publishing command reports alike.
pub fn last_outcome_event(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("revision").is_some() && v.get("bytes_in").is_some())
}

/// Total size of the files below `storage/data` (0 if it does not exist yet).
pub fn data_bytes(storage: &Path) -> u64 {
    walkdir::WalkDir::new(storage.join("data"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// True when `GET /v2/` on the registry answers 200.
pub fn registry_alive(registry: &str) -> bool {
    let Ok(addr) = registry.parse::<std::net::SocketAddr>() else {
        return TcpStream::connect(registry).is_ok();
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: {registry}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let n = s.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).contains(" 200")
}

/// GET of a plain-HTTP URL path on `registry`; the body when the status is 200.
fn http_get(registry: &str, path: &str, accept: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(registry).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {registry}\r\nAccept: {accept}\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status =
        String::from_utf8_lossy(resp.get(..split)?.split(|&b| b == b'\n').next()?).into_owned();
    status.contains(" 200").then(|| resp[split + 4..].to_vec())
}

/// A warning unless the registry's manifest of `name` (`REPO:TAG`) lists the same layer
/// digests as `image` of the OCI layout the floor reads.
pub fn check_same_layers(registry: &str, name: &str, image: &Image) -> Option<String> {
    let Some((repo, tag)) = name.rsplit_once(':') else {
        return Some(format!("{name}: no tag in the image name"));
    };
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let Some(body) = http_get(registry, &format!("/v2/{repo}/manifests/{tag}"), accept) else {
        return Some(format!("{name}: no manifest from {registry}"));
    };
    let Ok(manifest) = serde_json::from_slice::<Value>(&body) else {
        return Some(format!(
            "{name}: {registry} served a manifest that is not JSON"
        ));
    };
    let served: Vec<&str> = manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["digest"].as_str()).collect())
        .unwrap_or_default();
    let local: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    (served != local).then(|| {
        format!(
            "{name}: the registry serves other layers than the OCI layout the floor read ({} vs {})",
            served.len(),
            local.len()
        )
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Settings {
    fn tool(&self, repo: &Repo) -> Command {
        let mut c = Command::new(&self.tool);
        c.arg("--home").arg(&repo.home);
        c
    }

    /// A new, empty repository in `work/NAME` (a previous one is moved aside first).
    pub fn fresh_repo(&self, name: &str) -> Result<Repo, Error> {
        let dir = self.fresh_dir(name)?;
        let repo = Repo {
            home: dir.join("home"),
            storage: dir.join("storage"),
        };
        let mut cmd = self.tool(&repo);
        cmd.arg("init")
            .arg(FQRN)
            .arg("--storage")
            .arg(&repo.storage);
        self.checked(cmd)?;
        Ok(repo)
    }

    /// A new, empty directory `work/NAME`; a previous one is moved to the trash, not deleted.
    fn fresh_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let dir = self.work.join(name);
        if dir.exists() {
            // Deleting a large tree right before a timed run makes ext4 slow at creating the
            // next files (recently freed inodes are skipped): move it aside, delete it later.
            let trash = trash_dir(&self.work);
            std::fs::create_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let aside = trash.join(format!("{name}-{nanos}"));
            std::fs::rename(&dir, &aside).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    fn checked(&self, cmd: Command) -> Result<ChildRun, Error> {
        let run = child::run(&self.measurer, &cmd)?;
        if !run.ok() {
            return Err(Error::Child {
                what: format!("{cmd:?}"),
                message: format!("exit status {}: {}", run.status, tail(&run.stderr, 8)),
            });
        }
        Ok(run)
    }

    fn image_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.registry)
    }

    /// `convert` of the registry's `images` in one command; returns the run and the growth of
    /// data/.
    pub fn convert(&self, repo: &Repo, images: &[String]) -> Result<(ChildRun, u64), Error> {
        let refs: Vec<String> = images.iter().map(|i| self.image_ref(i)).collect();
        self.convert_refs(repo, &refs)
    }

    /// `convert` of image references (`docker://`, `oci:`) in one command.
    fn convert_refs(&self, repo: &Repo, refs: &[String]) -> Result<(ChildRun, u64), Error> {
        let before = data_bytes(&repo.storage);
        let mut cmd = self.tool(repo);
        cmd.arg("--json").arg("convert").arg(FQRN);
        cmd.args(refs);
        cmd.arg("--insecure-registry").arg(&self.registry);
        let run = self.checked(cmd)?;
        Ok((run, data_bytes(&repo.storage).saturating_sub(before)))
    }

    /// `migrate` of the registry's [`scale::PREFIX`] images (those `include` selects, or all).
    fn migrate(&self, repo: &Repo, include: &[String]) -> Result<(ChildRun, u64), Error> {
        let before = data_bytes(&repo.storage);
        let mut cmd = self.tool(repo);
        cmd.arg("--json").arg("migrate").arg(FQRN);
        cmd.arg(format!("docker://{}/{}", self.registry, scale::PREFIX));
        for glob in include {
            cmd.arg("--include").arg(glob);
        }
        cmd.arg("--insecure-registry").arg(&self.registry);
        let run = self.checked(cmd)?;
        Ok((run, data_bytes(&repo.storage).saturating_sub(before)))
    }

    fn layout_image(&self, layout: &str, name: &str) -> Result<Image, Error> {
        Layout::open(&self.testbed.join(layout))?.image(name)
    }
}

/// A tool run: the child, the growth of `data/`, the repository.
type ToolRun = (ChildRun, u64, Repo);

/// The fastest of `n` floors and of `n` tool runs (each on a fresh repository), taken in turn:
/// floor, run, floor, run, … This machine has slow spells lasting tens of seconds; measured
/// all floors first, a spell would fall on one side of a case's ratio only. Peak RSS is the
/// largest seen. A floor error ends the case; a run error is the run's result.
fn best_alternating(
    n: usize,
    mut floor: impl FnMut() -> Result<FloorReport, Error>,
    mut run: impl FnMut() -> Result<ToolRun, Error>,
) -> Result<(FloorReport, Result<ToolRun, Error>), Error> {
    let mut floor = || {
        child::flush_writeback();
        floor()
    };
    let mut best_floor = floor()?;
    let mut best_run = run();
    for _ in 1..n {
        let f = floor()?;
        if f.floor_s < best_floor.floor_s {
            best_floor = f;
        }
        let Ok((best, stored, _)) = best_run else {
            break;
        };
        best_run = run().map(|(next, next_stored, repo)| {
            let rss = best.peak_rss_kib.max(next.peak_rss_kib);
            let (mut faster, stored) = if next.wall_s < best.wall_s {
                (next, next_stored)
            } else {
                (best, stored)
            };
            faster.peak_rss_kib = rss;
            (faster, stored, repo)
        });
    }
    Ok((best_floor, best_run))
}

/// `r` with the outcome of [`best_alternating`]; the repository of the last run.
fn record(
    mut r: CaseResult,
    outcome: Result<(FloorReport, Result<ToolRun, Error>), Error>,
) -> (CaseResult, Option<Repo>) {
    let (f, run) = match outcome {
        Ok(o) => o,
        Err(e) => return (r.failed(format!("floor: {e}")), None),
    };
    r.set_floor(f);
    match run {
        Ok((run, stored, repo)) => {
            r.set_run(run, stored);
            (r, Some(repo))
        }
        Err(e) => (r.failed(e), None),
    }
}

/// Case 1: fresh conversion of `testbed/app:oci-gzip`. Returns the repository for case 2.
pub fn case1(s: &Settings) -> (CaseResult, Option<Repo>) {
    let target = Target {
        limit: Limit::RatioAtMost(1.15),
        rss_mib: Some(256),
    };
    let r = CaseResult::new("1", "fresh convert testbed/app:oci-gzip".into(), target);
    let image = match s.layout_image("oci", "app") {
        Ok(img) => img,
        Err(e) => return (r.failed(format!("floor: {e}")), None),
    };
    let outcome = best_alternating(
        s.repeat,
        || floor::images_floor(std::slice::from_ref(&image), s.piece),
        || {
            let repo = s.fresh_repo("case1")?;
            let (run, stored) = s.convert(&repo, &["testbed/app:oci-gzip".to_string()])?;
            Ok((run, stored, repo))
        },
    );
    record(r, outcome)
}

/// Case 2: the same content again under other tags/encodings, into case 1's repository;
/// each run is compared with case 1's wall time. Runs once whatever `repeat` is: a second
/// conversion of the same tag would measure "nothing changed" instead.
pub fn case2(s: &Settings, case1: &CaseResult, repo: &Repo) -> Vec<CaseResult> {
    let target = Target {
        limit: Limit::RatioAtMost(0.05),
        rss_mib: Some(256),
    };
    let mut out = Vec::new();
    for (id, tag) in [("2a", "docker-gzip"), ("2b", "oci-zstd")] {
        let image = format!("testbed/app:{tag}");
        let mut r = CaseResult::new(id, format!("again as {image}"), target);
        r.reference = "case 1".into();
        r.reference_s = case1.wall_s;
        r.input_bytes = case1.input_bytes;
        r.files = case1.files;
        out.push(match s.convert(repo, &[image]) {
            Ok((run, stored)) => {
                r.set_run(run, stored);
                r
            }
            Err(e) => r.failed(e),
        });
    }
    out
}

/// The corpus image names (`corpus/NAME:TAG`) from `corpus.txt`, registry prefix removed.
pub fn corpus_names(testbed: &Path) -> Result<Vec<String>, Error> {
    let path = testbed.join("corpus.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('/') {
            Some((host, rest)) if host.contains(':') || host.contains('.') => rest.to_string(),
            _ => l.to_string(),
        })
        .collect())
}

/// Case 3: the whole corpus in one `convert`, against converting its distinct content once.
pub fn case3(s: &Settings) -> CaseResult {
    let target = Target {
        limit: Limit::RatioAtMost(1.2),
        rss_mib: Some(256),
    };
    let names = match corpus_names(&s.testbed) {
        Ok(n) => n,
        Err(e) => return CaseResult::new("3", "corpus batch".into(), target).failed(e),
    };
    let mut r = CaseResult::new(
        "3",
        format!("{}-image corpus, one batch", names.len()),
        target,
    );
    let images = Layout::open(&s.testbed.join("corpus/oci")).and_then(|layout| {
        names
            .iter()
            .map(|n| layout.image(n))
            .collect::<Result<Vec<_>, _>>()
    });
    let images = match images {
        Ok(images) => images,
        Err(e) => return r.failed(format!("floor: {e}")),
    };
    for (name, image) in names.iter().zip(&images) {
        r.warnings
            .extend(check_same_layers(&s.registry, name, image));
    }
    let outcome = best_alternating(
        s.repeat,
        || floor::images_floor(&images, s.piece),
        || {
            let repo = s.fresh_repo("case3")?;
            let (run, stored) = s.convert(&repo, &names)?;
            Ok((run, stored, repo))
        },
    );
    record(r, outcome).0
}

/// Case 3L (informative): the same corpus converted from its OCI layout on disk, which the
/// floor reads too, instead of from the registry. On a machine of two cores the registry's
/// own CPU (serving 173 MB of blobs) comes out of the tool's; this case shows how much.
pub fn case3_layout(s: &Settings, case3: &CaseResult) -> CaseResult {
    let target = Target {
        limit: Limit::Informative,
        rss_mib: None,
    };
    let r = CaseResult::new("3L", "the corpus again, from its OCI layout".into(), target);
    let (Some(floor), Ok(names)) = (case3.floor.clone(), corpus_names(&s.testbed)) else {
        return r.failed("case 3 has no floor or no image list");
    };
    let layout = s.testbed.join("corpus/oci");
    let refs: Vec<String> = names
        .iter()
        .map(|n| format!("oci:{}:{n}", layout.display()))
        .collect();
    let outcome = best_alternating(
        s.repeat,
        || Ok(floor.clone()),
        || {
            let repo = s.fresh_repo("case3")?;
            let (run, stored) = s.convert_refs(&repo, &refs)?;
            Ok((run, stored, repo))
        },
    );
    let mut r = record(r, outcome).0;
    r.reference = "case 3".into();
    r
}

/// Case 4: `publish` of a generated tree of small files.
pub fn case4(s: &Settings) -> CaseResult {
    let target = Target {
        limit: Limit::SecondsAtMost(5.0),
        rss_mib: None,
    };
    let n = s.small_files;
    let r = CaseResult::new(
        "4",
        format!("publish {n} small files in {} dirs", tree::dirs(n)),
        target,
    );
    let root = s.work.join(format!("tree-{n}"));
    if let Err(e) = tree::ensure(&root, n) {
        return r.failed(format!("tree/floor: {e}"));
    }
    let outcome = best_alternating(
        s.repeat,
        || floor::tree_floor(&root, s.piece, &s.fresh_dir("case4-floor-objects")?),
        || {
            let repo = s.fresh_repo("case4")?;
            let before = data_bytes(&repo.storage);
            let mut cmd = s.tool(&repo);
            cmd.arg("--json").arg("publish").arg(FQRN).arg(&root);
            let run = s.checked(cmd)?;
            Ok((run, data_bytes(&repo.storage).saturating_sub(before), repo))
        },
    );
    record(r, outcome).0
}

/// Case 5: `migrate` of a registry of many small images on one base ([`scale`]), first of a
/// quarter of its repositories, then of all, each into a fresh repository. Time per image must
/// not grow with the number of images (the whole run within 1.25× four quarter runs), nor peak
/// memory beyond the batch's own (`--batch`, 50).
pub fn case5(s: &Settings) -> CaseResult {
    let target = Target {
        limit: Limit::RatioAtMost(1.25),
        rss_mib: Some(256),
    };
    let repos = (s.scale_images / 20).max(4);
    let (n, quarter) = (repos * 20, repos / 4 * 20);
    let mut r = CaseResult::new(
        "5",
        format!("migrate {n} small images on one base (files = images), 50 per revision"),
        target,
    );
    r.reference = format!("x{n}/{quarter}");
    r.files = n as u64;
    if let Err(e) = scale::ensure(&s.registry, repos, 20) {
        return r.failed(format!("pushing the images: {e}"));
    }
    let some: Vec<String> = (0..repos / 4)
        .map(|i| format!("{}:*", scale::repo_name(i)))
        .collect();
    let runs = s
        .fresh_repo("case5")
        .and_then(|repo| s.migrate(&repo, &some))
        .and_then(|q| {
            let all = s.fresh_repo("case5")?;
            Ok((q, s.migrate(&all, &[])?))
        });
    let ((q, _), (run, stored)) = match runs {
        Ok(runs) => runs,
        Err(e) => return r.failed(e),
    };
    r.reference_s = Some(q.wall_s * n as f64 / quarter as f64);
    r.warnings.push(format!(
        "{quarter} images: {:.2} s, peak RSS {:.1} MiB; {n} images: {:.2} s, peak RSS {:.1} MiB",
        q.wall_s,
        q.peak_rss_kib as f64 / 1024.0,
        run.wall_s,
        run.peak_rss_kib as f64 / 1024.0
    ));
    r.set_run(run, stored);
    r
}

/// Where `fresh_repo` moves old repositories; emptied by [`empty_trash`] after the timed runs.
pub fn trash_dir(work: &std::path::Path) -> PathBuf {
    work.join(".trash")
}

/// Deletes the repositories moved aside during this run (not timed), writes the freed inodes
/// out and stamps the time, so that the next run can wait for the deletions to age.
pub fn empty_trash(work: &std::path::Path) {
    let trash = trash_dir(work);
    if !trash.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(&trash);
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let _ = std::fs::write(deletion_stamp(work), b"");
}

fn deletion_stamp(work: &std::path::Path) -> PathBuf {
    work.join(".trash-emptied")
}

/// How long freed inodes slow file creation: ext4 without a journal skips inodes freed less
/// than 60 s ago, 6 min while their inode table block is dirty (as it is again as soon as new
/// files take inodes next to them), when it allocates new ones, one buffer lookup per skipped
/// inode (`recently_deleted` in fs/ext4/ialloc.c). Measured here: case 3 right after the
/// previous case-3 repository was deleted took 7.1 s (3.7 s system) instead of 5.3 s (0.4 s).
const DELETION_AGE: std::time::Duration = std::time::Duration::from_secs(365);

/// Waits until the previous run's deletions (written out by [`empty_trash`]) are old enough
/// not to slow this run's file creation.
pub fn settle_after_deletions(work: &std::path::Path) {
    let age = std::fs::metadata(deletion_stamp(work))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if let Some(wait) = age.and_then(|age| DELETION_AGE.checked_sub(age)) {
        eprintln!(
            "bench: waiting {} s for the last run's deletions to age (freshly freed inodes \
             slow file creation on ext4 without a journal)",
            wait.as_secs() + 1
        );
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_is_found_whatever_the_command() {
        let stdout = [
            r#"{"action":"image","image":"a","status":"converted"}"#,
            r#"{"action":"convert","source":"1 image(s)","revision":2,"changed":true,"files":3,"bytes_in":10,"objects_new":1}"#,
            r#"{"action":"summary","images":1,"objects_new":1}"#,
            "not json",
        ]
        .join("\n");
        let event = last_outcome_event(&stdout).unwrap();
        assert_eq!(
            (event["action"].as_str(), event["files"].as_u64()),
            (Some("convert"), Some(3))
        );
        let old = r#"{"action":"publish","revision":3,"bytes_in":5,"files":1}"#;
        assert_eq!(last_outcome_event(old).unwrap()["revision"], 3);
        assert!(last_outcome_event(r#"{"action":"info","revision":3}"#).is_none());
    }
}
