//! One function per command; each returns the process exit code.

use crate::args::*;
use crate::output::{event_json, Counting, Output};
use crate::paths::{home_dir, repo_path};
use anyhow::{anyhow, bail, Context, Result};
use catalog_writer::entry::Entry;
use catalog_writer::tree::{Dir, Node};
use publisher::{CommitOutcome, CommitSettings, InitOptions, Repository};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

mod concurrent;
mod convert;
mod gc;
mod inspect;
mod layers;
mod ledger;
mod migrate;
mod plan;
mod push;
mod schedule;
mod tags;

/// `--keys DIR` of a command other than `init`: looked in first for key files, this run only.
static KEYS_FIRST: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub fn run(cli: Cli, out: Output) -> Result<i32> {
    let g = cli.global;
    let home = home_dir(g.home.clone());
    if let (Some(dir), false) = (&g.keys, matches!(cli.command, Command::Init(_))) {
        let _ = KEYS_FIRST.set(dir.clone());
    }
    // The demo makes a home of its own, in the system's temporary directory.
    if !matches!(cli.command, Command::Demo(_)) {
        prepare_scratch(&home);
    }
    match cli.command {
        Command::Init(a) => init(&home, &g, &a, out),
        Command::Publish(a) => publish(&home, &g, &a, out),
        Command::Ingest(a) => ingest_tar(&home, &g, &a, out),
        Command::Check(a) => check(&home, &a, out),
        Command::Resign(a) => resign(&home, &g, &a, out),
        Command::Info(a) => info(&home, &a.fqrn, out),
        Command::Repoinfo(a) => repoinfo(&home, &g, &a, out),
        Command::Gc(a) => gc::gc(&home, &g, &a, out),
        Command::Tag(a) => tags::tag(&home, &g, &a, out),
        Command::Rollback(a) => tags::rollback(&home, &g, &a, out),
        Command::Diff(a) => inspect::diff(&home, &a, out),
        Command::ListCatalogs(a) => inspect::list_catalogs(&home, &a, out),
        Command::Push(a) => push::push(&home, &g, &a, out),
        Command::Convert(a) => convert::convert(&home, &g, &a, out),
        Command::Sync(a) => convert::sync(&home, &g, &a, out),
        Command::Migrate(a) => migrate::migrate(&home, &g, &a, out),
        Command::Cache(CacheCommand::Seed(a)) => cache_seed(&home, &a.fqrn, out),
        Command::Cache(CacheCommand::Stats(a)) => cache_stats(&home, &a.fqrn, out),
        Command::Demo(a) => crate::demo::run(&a, &g, out),
    }
}

/// Every command but `demo` (whose home is in its own directory) may open temporary databases
/// (history, reflog, catalogs being read): they go to `<home>/tmp` (`publisher::tempdb` says
/// why there), and first what killed runs left there, and in `TMPDIR` where versions before
/// this one put them, is removed. Only directories whose owner is gone are (their lock is free), so concurrent runs
/// are safe. Best effort and silent, like the scratch files a transaction clears: housekeeping
/// that fails must not stop the command, and it has nothing to report to a script.
fn prepare_scratch(home: &Path) {
    let root = home.join("tmp");
    for dir in [root.clone(), std::env::temp_dir()] {
        let _ = publisher::tempdb::sweep(&dir);
    }
    publisher::tempdb::set_scratch_root(root);
}

/// Says that a damaged cache database was moved aside (`what` names the cache).
pub(crate) fn note_set_aside(aside: Option<&Path>, what: &str, out: Output) {
    if let Some(aside) = aside {
        out.event(
            &format!(
                "note: the {what} was damaged: moved aside to {}, starting an empty one \
                 (a cache: it only saves work)",
                aside.display()
            ),
            event_json(
                "cache-set-aside",
                json!({"cache": what, "moved_to": aside.display().to_string()}),
            ),
        );
    }
}

/// Runs `locked` (which takes the repository's or the storage's lock first, then works) without
/// waiting; when a lock is held by another process and `wait`, says so once, so that a command
/// queued behind a long conversion or a garbage collection does not look hung, and runs it
/// again, waiting.
pub(crate) fn waiting<T>(
    fqrn: &str,
    wait: bool,
    out: Output,
    locked: impl Fn(bool) -> publisher::Result<T>,
) -> publisher::Result<T> {
    let (text, path) = match locked(false) {
        Err(publisher::Error::Locked { path, .. }) if wait => (
            format!(
                "waiting for the lock {} of {fqrn} (another process holds it)",
                path.display()
            ),
            path,
        ),
        Err(publisher::Error::StorageBusy { holder, path, .. }) if wait => (
            format!(
                "waiting for {holder} to finish with the storage of {fqrn} (lock {})",
                path.display()
            ),
            path,
        ),
        other => return other,
    };
    out.notice(&text, event_json("waiting", json!({"lock": path})));
    locked(true)
}

/// Starts a transaction, and says what it repaired after an unclean shutdown.
pub(crate) fn begin(repo: &Repository, wait: bool, out: Output) -> Result<publisher::Transaction> {
    let txn = waiting(repo.fqrn(), wait, out, |w| repo.begin(w))?;
    warn_whitelist_expiry(repo, out);
    if let Some(r) = txn.recovery() {
        out.event(
            &format!(
                "note: an earlier run stopped before its objects were synced, and the machine \
                 has restarted since: {} objects it may have written re-hashed, {} damaged ones \
                 deleted (stored again when needed)",
                r.verified,
                r.removed.len()
            ),
            event_json(
                "recovery",
                json!({"verified": r.verified, "removed": r.removed.len()}),
            ),
        );
    }
    Ok(txn)
}

/// Warn this long before the whitelist expires.
const WHITELIST_WARNING_SECONDS: i64 = 7 * 86_400;

/// Clients refuse a repository whose whitelist has expired (and publishing fails then): in
/// its last week, every publish says so, with the command that renews it.
fn warn_whitelist_expiry(repo: &Repository, out: Output) {
    use publisher::store::{root_files::WHITELIST, ObjectStore};
    let expires = repo
        .store()
        .get_root_file(WHITELIST)
        .ok()
        .flatten()
        .and_then(|b| signer::Whitelist::parse(&b).ok())
        .map(|w| w.whitelist.expires);
    let Some(expires) = expires else {
        return;
    };
    let left = expires - unix_now();
    if left <= 0 || left > WHITELIST_WARNING_SECONDS {
        return;
    }
    let fqrn = repo.fqrn();
    out.notice(
        &format!(
            "cvmfs-oci: warning: the whitelist of {fqrn} expires {} (in {:.1} days): clients \
             then refuse the repository; renew it with `cvmfs-oci resign {fqrn}`",
            signer::utc_stamp(expires),
            left as f64 / 86_400.0
        ),
        event_json(
            "warning",
            json!({"warning": "whitelist expires soon", "whitelist_expires": expires}),
        ),
    );
}

pub fn init(home: &Path, g: &Global, a: &InitArgs, out: Output) -> Result<i32> {
    let mut opts = InitOptions {
        keys_dir: g.keys.clone(),
        ttl: a.ttl,
        whitelist_days: a.whitelist_days,
        gc: a.gc,
        max_catalog_entries: a.max_catalog_entries,
        auto_gc_seconds: a
            .auto_gc
            .as_deref()
            .map(|d| gc::parse_duration(d).with_context(|| format!("--auto-gc {d:?}")))
            .transpose()?,
        ..InitOptions::default()
    };
    opts.chunking.enabled = !a.no_chunking;
    if a.existing {
        return take_over(home, a, opts, out);
    }
    let repo = Repository::init(home, &a.fqrn, &a.storage, opts)
        .with_context(|| format!("init {}", a.fqrn))?;
    let info = repo.info()?;
    out.event(
        &format!(
            "created {} (revision {}) storage {} keys {}",
            a.fqrn,
            info.revision,
            a.storage.display(),
            repo.config().keys_dir.display()
        ),
        event_json(
            "init",
            json!({"fqrn": a.fqrn, "revision": info.revision, "storage": a.storage,
                   "keys": repo.config().keys_dir, "client_config": repo.client_config()}),
        ),
    );
    print_client_config(&repo, out);
    Ok(0)
}

/// `init --existing`: a home for the repository already in the storage.
fn take_over(home: &Path, a: &InitArgs, opts: InitOptions, out: Output) -> Result<i32> {
    let (repo, adopted) = Repository::adopt(home, &a.fqrn, &a.storage, opts)
        .with_context(|| format!("init --existing {}", a.fqrn))?;
    let resigned = adopted.whitelist_expires.map(signer::utc_stamp);
    out.event(
        &format!(
            "took over {} at revision {} ({} catalogs, {} entries) storage {} keys {}{}",
            a.fqrn,
            adopted.revision,
            adopted.catalogs,
            adopted.entries,
            a.storage.display(),
            repo.config().keys_dir.display(),
            resigned
                .as_ref()
                .map(|e| format!("; expired whitelist re-signed until {e}"))
                .unwrap_or_default()
        ),
        event_json(
            "init",
            json!({"fqrn": a.fqrn, "existing": true, "revision": adopted.revision,
                   "catalogs": adopted.catalogs, "entries": adopted.entries,
                   "whitelist_resigned_until": resigned, "storage": a.storage,
                   "keys": repo.config().keys_dir, "client_config": repo.client_config()}),
        ),
    );
    warn_not_replicable(&a.storage, out);
    out.say(&format!(
        "next: `cvmfs-oci cache seed {}` indexes its content, so it is never compressed again",
        a.fqrn
    ));
    print_client_config(&repo, out);
    Ok(0)
}

/// A storage without `.cvmfs_master_replica` (made with `alterfs -m off`, or copied without
/// its dot files) is refused by stratum 1s; taking it over does not add the file, as that
/// would change what its operator chose.
fn warn_not_replicable(storage: &Path, out: Output) {
    use publisher::store::root_files::MASTER_REPLICA;
    let marker = storage.join(MASTER_REPLICA);
    if marker.exists() {
        return;
    }
    out.notice(
        &format!(
            "cvmfs-oci: warning: {} has no {MASTER_REPLICA}: stratum 1s will not replicate it \
             (`echo replicable > {}` allows it)",
            storage.display(),
            marker.display()
        ),
        event_json(
            "warning",
            json!({"storage": storage, "warning": format!("no {MASTER_REPLICA}: not replicable")}),
        ),
    );
}

fn print_client_config(repo: &Repository, out: Output) {
    out.say("client settings (e.g. /etc/cvmfs/config.d/<fqrn>.conf), with the storage served over HTTP:");
    for line in repo.client_config() {
        out.say(&format!("  {line}"));
    }
}

/// Settings of the object pipeline from the repository config and command-line tuning.
pub fn pipeline_config(
    repo: &Repository,
    t: &TuningArgs,
) -> Result<ingest::pipeline::PipelineConfig> {
    let c = repo.config();
    let chunking = if c.chunking.enabled && !t.no_chunking {
        Some(
            ingest::chunker::ChunkSizes::new(
                c.chunking.min as usize,
                c.chunking.avg as usize,
                c.chunking.max as usize,
            )
            .map_err(|e| anyhow!("{}: chunking settings: {e}", c.fqrn))?,
        )
    } else {
        None
    };
    let mut cfg = ingest::pipeline::PipelineConfig {
        chunking,
        ..Default::default()
    };
    if let Some(w) = t.workers {
        cfg.workers = w.max(1);
    }
    cfg.memory_budget = match t.memory_mib {
        Some(m) => m.max(16) << 20,
        None => c.memory_budget as usize,
    };
    Ok(cfg)
}

pub(crate) fn open_repo(home: &Path, fqrn: &str) -> Result<Repository> {
    let repo = Repository::open(home, fqrn).with_context(|| format!("repository {fqrn}"))?;
    match KEYS_FIRST.get() {
        Some(dir) => Ok(repo.with_keys_first(dir)?),
        None => Ok(repo),
    }
}

/// What a `publish` or `ingest` puts into the repository.
struct SourceGraft<'a> {
    /// Repository path (root when empty).
    path: &'a [u8],
    /// `None`: nothing grafted, only `deletes` (an ingest of `--delete` alone).
    tree: Option<Dir>,
    /// `--catalog` and `--owner`.
    how: &'a GraftArgs,
    /// Paths removed in the same revision.
    deletes: &'a [Vec<u8>],
    /// The source, for messages.
    what: String,
    /// The command (`publish`, `ingest`): the action of the event that reports the outcome.
    command: &'static str,
    /// What the walk learnt for the stat cache, written once the revision is committed.
    stat_cache: Option<(publisher::SqliteStatCache, publisher::StatCacheUpdate)>,
    /// `--tag`: a name for the revision.
    tag: Option<publisher::NewTag>,
    /// Wait for the repository lock (to tag an unchanged revision).
    wait: bool,
}

/// Grafts the source tree and commits; prints the outcome.
fn graft_and_commit(
    repo: &Repository,
    mut txn: publisher::Transaction,
    mut job: SourceGraft<'_>,
    started: Instant,
    stats: &ingest::pipeline::PipelineStats,
    out: Output,
) -> Result<i32> {
    let now = unix_now();
    let (uid, gid) = job.how.owner.unwrap_or((0, 0));
    if let Some(tree) = job.tree.as_mut() {
        sanitize_xattrs(tree, &mut job.path.to_vec(), None, out);
        if job.how.owner.is_some() {
            set_owner(tree, uid, gid);
        }
        if job.how.catalog {
            if job.path.is_empty() {
                bail!("--catalog: the root has its catalog already; give --path a subdirectory");
            }
            let marker = catalog_writer::rows::marker_entry(&tree.meta);
            tree.children
                .entry(b".cvmfscatalog".to_vec())
                .or_insert(Node::Leaf(marker));
        }
    }
    {
        let (ns, objects) = txn.namespace_and_objects();
        for d in job.deletes {
            ns.remove(d, &objects)
                .with_context(|| format!("--delete {}", String::from_utf8_lossy(d)))?;
        }
        if let Some(tree) = job.tree {
            let parent = Entry::directory(0o755, uid, gid, now);
            let shown = String::from_utf8_lossy(job.path).into_owned();
            ns.replace(job.path, Node::Dir(tree), &parent, &objects)
                .with_context(|| format!("{}: grafting at {shown:?}", job.what))?;
        }
    }
    publisher::fault_point("after-objects");
    let settings = CommitSettings {
        tag: job.tag.clone(),
        ..CommitSettings::default()
    };
    let outcome = commit_recording_stats(txn, &settings, job.stat_cache)?;
    report_outcome(job.command, &job.what, &outcome, started, stats, out);
    tag_revision(repo, job.wait, &outcome, job.tag.as_ref(), out)?;
    gc::after_publish(repo, &outcome, out);
    push::after_publish(repo, &outcome, out)?;
    Ok(0)
}

/// Commits, meanwhile writing what the walk learnt into the stat cache on another thread
/// (0.25 s for 100 000 files, which would otherwise follow the mostly single-threaded
/// commit); the rows are kept only if the commit succeeds.
fn commit_recording_stats(
    txn: publisher::Transaction,
    settings: &CommitSettings,
    stat_cache: Option<(publisher::SqliteStatCache, publisher::StatCacheUpdate)>,
) -> Result<CommitOutcome> {
    let Some((mut cache, update)) = stat_cache else {
        return Ok(txn.commit(settings)?);
    };
    std::thread::scope(|scope| {
        // Dropped with this closure, also when the commit panics: the writer then rolls back
        // instead of waiting for a verdict forever.
        let (verdict, wait_verdict) = std::sync::mpsc::channel::<bool>();
        let writer = scope
            .spawn(move || cache.apply_if(&update, move || wait_verdict.recv().unwrap_or(false)));
        let outcome = txn.commit(settings);
        let _ = verdict.send(outcome.is_ok());
        // Only a cache: a publish that could not record its reads stands.
        match writer.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => crate::output::to_stderr(&format!(
                "cvmfs-oci: warning: stat cache not updated: {e}"
            )),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        Ok(outcome?)
    })
}

/// After a commit with `--tag`: reports the tagged revision; a commit that made none (nothing
/// changed) tags the current one, as the content asked for is what it holds.
pub(crate) fn tag_revision(
    repo: &Repository,
    wait: bool,
    outcome: &CommitOutcome,
    tag: Option<&publisher::NewTag>,
    out: Output,
) -> Result<()> {
    let Some(tag) = tag else {
        return Ok(());
    };
    let revision = match outcome {
        CommitOutcome::Published(p) => p.revision,
        CommitOutcome::Unchanged { revision } => {
            repo.add_tag(&tag.name, Some(*revision), &tag.description, wait)?;
            *revision
        }
    };
    out.event(
        &format!("{}: revision {revision} tagged {}", repo.fqrn(), tag.name),
        event_json("tag", json!({"tag": tag.name, "revision": revision})),
    );
    Ok(())
}

/// Every entry of `dir` (itself included) owned by `uid`:`gid`.
fn set_owner(dir: &mut Dir, uid: u32, gid: u32) {
    (dir.meta.uid, dir.meta.gid) = (uid, gid);
    for node in dir.children.values_mut() {
        match node {
            Node::Dir(d) => set_owner(d, uid, gid),
            Node::Leaf(e) => (e.uid, e.gid) = (uid, gid),
        }
    }
}

/// Says what a commit made; `action` names the command in the JSON event.
pub fn report_outcome(
    action: &str,
    what: &str,
    outcome: &CommitOutcome,
    started: Instant,
    s: &ingest::pipeline::PipelineStats,
    out: Output,
) {
    let secs = started.elapsed().as_secs_f64();
    let mbps = s.bytes_in as f64 / 1e6 / secs.max(1e-9);
    let (revision, changed, root) = match outcome {
        CommitOutcome::Unchanged { revision } => (*revision, false, None),
        CommitOutcome::Published(p) => (p.revision, true, Some(p.root.hash.to_hex())),
    };
    // Files the stat cache vouched for were not read (publish only).
    let reused = match s.files_reused {
        0 => String::new(),
        n => format!(", {n} unchanged files not read (stat cache)"),
    };
    let text = if changed {
        format!(
            "{what}: published revision {revision}: {} files read, {:.1} MB in, {} new objects, {} already stored{reused}, {:.2} s ({mbps:.1} MB/s)",
            s.files, s.bytes_in as f64 / 1e6, s.objects_new, s.objects_existing, secs
        )
    } else {
        format!(
            "{what}: nothing changed, still revision {revision} ({} files read{reused})",
            s.files
        )
    };
    out.event(
        &text,
        event_json(
            action,
            json!({"source": what, "revision": revision, "changed": changed, "root": root,
                   "files": s.files,
                   "files_read": s.files, "files_reused": s.files_reused,
                   "bytes_in": s.bytes_in, "bytes_compressed": s.bytes_compressed,
                   "objects_new": s.objects_new, "objects_existing": s.objects_existing,
                   "index_hits": s.index_hits, "seconds": secs}),
        ),
    );
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn new_pipeline(
    repo: &Repository,
    txn: &publisher::Transaction,
    t: &TuningArgs,
    out: Output,
) -> Result<ingest::pipeline::ObjectPipeline> {
    let index = repo.content_index()?;
    note_set_aside(index.set_aside(), "content index", out);
    let index: Arc<dyn publisher::ContentIndex> = Arc::new(index);
    Ok(ingest::pipeline::ObjectPipeline::new(
        txn.objects(),
        Some(index),
        pipeline_config(repo, t)?,
    )?)
}

/// The stat cache for publishing `source`; `None`, with a warning, when its database cannot
/// be used (locked by another program, unreadable): it only saves reads, so the publish reads
/// every file instead of failing.
fn stat_cache(
    repo: &Repository,
    source: &Path,
    pipeline: &ingest::pipeline::ObjectPipeline,
    out: Output,
) -> Option<publisher::SqliteStatCache> {
    let mode = chunking_mode(pipeline.chunking());
    match repo.stat_cache(source, &mode) {
        Ok(cache) => {
            note_set_aside(cache.set_aside(), "stat cache", out);
            Some(cache)
        }
        Err(e) => {
            crate::output::to_stderr(&format!(
                "cvmfs-oci: warning: stat cache not used, every file is read: {e}"
            ));
            None
        }
    }
}

/// How a publish cuts files into objects, as the stat cache keys its rows: a row made in
/// another mode names objects this publish would not make.
fn chunking_mode(chunking: Option<ingest::chunker::ChunkSizes>) -> String {
    match chunking {
        Some(c) => format!("chunks {}/{}/{}", c.min, c.avg, c.max),
        None => "whole".to_string(),
    }
}

pub fn publish(home: &Path, g: &Global, a: &PublishArgs, out: Output) -> Result<i32> {
    let path = repo_path(&a.graft.path)?;
    // The source itself may be a symbolic link to a directory (`/srv/sw/current`); links
    // below it are published as links.
    let source = std::fs::canonicalize(&a.source)
        .with_context(|| format!("publish source {}", a.source.display()))?;
    if !source.is_dir() {
        bail!("publish source {}: not a directory", a.source.display());
    }
    let repo = open_repo(home, &a.fqrn)?;
    let started = Instant::now();
    let txn = begin(&repo, !g.no_wait, out)?;
    let pipeline = new_pipeline(&repo, &txn, &a.tuning, out)?;
    let cache = stat_cache(&repo, &source, &pipeline, out);
    // Rows of another boot are not used (see `publisher::stat_cache`): all is read again.
    let lookup = cache
        .as_ref()
        .filter(|c| !a.rescan && c.trusted())
        .map(|c| c as &dyn publisher::StatCache);
    let progress = out.follow_pipeline(a.source.display().to_string(), pipeline.watch());
    let walked = ingest::tree_from_dir_cached(&source, &pipeline, lookup)
        .with_context(|| format!("publish {}", a.source.display()))?;
    drop(progress);
    let stats = pipeline.finish()?.stats;
    let job = SourceGraft {
        path: &path,
        tree: Some(walked.tree),
        how: &a.graft,
        deletes: &[],
        what: a.source.display().to_string(),
        command: "publish",
        stat_cache: cache.map(|c| (c, walked.update)),
        tag: a.tag.new_tag(),
        wait: !g.no_wait,
    };
    graft_and_commit(&repo, txn, job, started, &stats, out)
}

pub fn ingest_tar(home: &Path, g: &Global, a: &IngestArgs, out: Output) -> Result<i32> {
    let path = repo_path(&a.graft.path)?;
    let deletes = a
        .delete
        .iter()
        .map(|d| crate::paths::option_path("--delete", d))
        .collect::<Result<Vec<_>>>()?;
    let Some(tar) = a.tar.as_deref() else {
        return delete_only(home, g, a, &deletes, out);
    };
    let repo = open_repo(home, &a.fqrn)?;
    let reader: Box<dyn std::io::Read + Send> = if tar == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(tar).with_context(|| format!("ingest source {tar}"))?)
    };
    let started = Instant::now();
    let txn = begin(&repo, !g.no_wait, out)?;
    let pipeline = new_pipeline(&repo, &txn, &a.tuning, out)?;
    let what = if tar == "-" { "stdin" } else { tar }.to_string();
    let opts = ingest::TarOptions {
        archive_name: what.clone(),
        ..Default::default()
    };
    let progress = out.follow_pipeline(what.clone(), pipeline.watch());
    let tree = ingest::tree_from_tar(reader, &pipeline, &opts)?;
    drop(progress);
    let stats = pipeline.finish()?.stats;
    if tree.children.is_empty() {
        // Grafting it would replace the path with an empty directory: almost certainly an
        // empty stdin or `/dev/null` meant to only delete (the whole repository, at `/`).
        bail!(
            "{what}: the archive holds no entries; it would replace {} with an empty \
             directory (to only remove paths, give --delete without an archive)",
            shown_path(&path)
        );
    }
    let job = SourceGraft {
        path: &path,
        tree: Some(tree),
        how: &a.graft,
        deletes: &deletes,
        what,
        command: "ingest",
        stat_cache: None,
        tag: a.tag.new_tag(),
        wait: !g.no_wait,
    };
    graft_and_commit(&repo, txn, job, started, &stats, out)
}

/// `ingest FQRN --delete /p...` without an archive: a revision that only removes those paths.
fn delete_only(
    home: &Path,
    g: &Global,
    a: &IngestArgs,
    deletes: &[Vec<u8>],
    out: Output,
) -> Result<i32> {
    if a.graft.catalog || a.graft.owner.is_some() || a.graft.path != "/" {
        bail!("--path, --catalog and --owner describe where an archive goes: give one, or leave them out to only --delete");
    }
    let repo = open_repo(home, &a.fqrn)?;
    let started = Instant::now();
    let txn = begin(&repo, !g.no_wait, out)?;
    let job = SourceGraft {
        path: &[],
        tree: None,
        how: &a.graft,
        deletes,
        what: "--delete".to_string(),
        command: "ingest",
        stat_cache: None,
        tag: a.tag.new_tag(),
        wait: !g.no_wait,
    };
    let stats = ingest::pipeline::PipelineStats::default();
    graft_and_commit(&repo, txn, job, started, &stats, out)
}

/// A repository path as users write it (`/` for the root).
fn shown_path(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// The storage at `storage` (a directory, or an `http(s)://` URL), else the storage of the
/// repository `fqrn` in `home`.
fn storage_or_home(
    home: &Path,
    fqrn: &str,
    storage: Option<&str>,
) -> Result<Box<dyn publisher::ObjectStore>> {
    Ok(match storage {
        Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
            Box::new(publisher::HttpStore::new(s)?)
        }
        Some(s) => Box::new(publisher::LocalStore::open(Path::new(s))?),
        None => Box::new(publisher::LocalStore::open(
            &open_repo(home, fqrn)?.config().storage,
        )?),
    })
}

/// A repository to read or check (`check`, `diff`, `list-catalogs`): its storage, and the
/// master public keys its whitelist must be signed by.
pub(crate) struct TrustedStorage {
    pub store: Box<dyn publisher::ObjectStore>,
    pub masters: Vec<signer::PublicKey>,
}

/// The storage `--storage` names (else the home's repository `fqrn`) with the master keys
/// `--key` names (else, for the home's repository, its own public key). A foreign storage
/// without `--key` is refused: nothing would tell a forged stratum 1 from the real one.
pub(crate) fn trusted_storage(
    home: &Path,
    command: &str,
    fqrn: &str,
    storage: Option<&str>,
    keys: &[std::path::PathBuf],
) -> Result<TrustedStorage> {
    let mut keys = keys.to_vec();
    if keys.is_empty() {
        match storage {
            Some(s) => bail!(
                "{command} --storage {s}: no --key: the master public key that signs {fqrn} \
                 (e.g. {fqrn}.pub) is needed to verify the storage's signatures"
            ),
            None => keys.push(open_repo(home, fqrn)?.config().public_key_path()),
        }
    }
    let masters = keys
        .iter()
        .map(|k| signer::load_public_key(k).with_context(|| format!("key {}", k.display())))
        .collect::<Result<Vec<_>>>()?;
    Ok(TrustedStorage {
        store: storage_or_home(home, fqrn, storage)?,
        masters,
    })
}

pub fn check(home: &Path, a: &CheckArgs, out: Output) -> Result<i32> {
    let started = Instant::now();
    let TrustedStorage { store, masters } =
        trusted_storage(home, "check", &a.fqrn, a.storage.as_deref(), &a.key)?;
    let report = publisher::check_repository(store.as_ref(), &a.fqrn, &masters, a.full)?;
    for n in &report.notes {
        out.event(
            &format!("note: {n}"),
            event_json("note", json!({"fqrn": a.fqrn, "note": n})),
        );
    }
    for p in &report.problems {
        out.event(
            p,
            event_json("problem", json!({"fqrn": a.fqrn, "problem": p})),
        );
    }
    let ok = report.problems.is_empty();
    out.event(
        &format!(
            "{}: {} (revision {}, {} catalogs, {} entries, {} objects, {:.1} MB read, {:.2} s)",
            a.fqrn,
            if ok { "OK" } else { "FAILED" },
            report.revision,
            report.catalogs,
            report.entries,
            report.objects,
            report.bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        ),
        event_json(
            "check",
            json!({"fqrn": a.fqrn, "ok": ok, "problems": report.problems.len(),
                   "revision": report.revision, "catalogs": report.catalogs,
                   "entries": report.entries, "objects": report.objects, "full": a.full}),
        ),
    );
    Ok(if ok { 0 } else { 1 })
}

pub fn resign(home: &Path, g: &Global, a: &ResignArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let expires = waiting(&a.fqrn, !g.no_wait, out, |w| repo.resign_for(a.days, w))?;
    out.event(
        &format!(
            "{}: whitelist renewed, expires {}",
            a.fqrn,
            signer::utc_stamp(expires)
        ),
        event_json("resign", json!({"fqrn": a.fqrn, "expires": expires})),
    );
    Ok(0)
}

pub fn repoinfo(home: &Path, g: &Global, a: &RepoinfoArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    if let Some(path) = &a.set {
        let json = if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("stdin")?;
            buf
        } else {
            std::fs::read(path).with_context(|| format!("{}", path.display()))?
        };
        let hash = waiting(&a.fqrn, !g.no_wait, out, |w| repo.set_meta_info(&json, w))
            .with_context(|| format!("repoinfo {}", a.fqrn))?;
        out.event(
            &format!("{}: meta-info replaced ({hash})", a.fqrn),
            event_json(
                "repoinfo",
                json!({"fqrn": a.fqrn, "meta_info": hash.to_hex()}),
            ),
        );
        return Ok(0);
    }
    let Some(json) = repo.meta_info()? else {
        bail!(
            "{}: the manifest names no meta-info (set one with --set FILE)",
            a.fqrn
        );
    };
    if out.json {
        let value: serde_json::Value = serde_json::from_slice(&json)
            .with_context(|| format!("{}: meta-info is not JSON", a.fqrn))?;
        out.event(
            "",
            event_json("repoinfo", json!({"fqrn": a.fqrn, "info": value})),
        );
    } else {
        print!("{}", String::from_utf8_lossy(&json));
    }
    Ok(0)
}

pub fn info(home: &Path, fqrn: &str, out: Output) -> Result<i32> {
    let repo = open_repo(home, fqrn)?;
    let i = repo.info()?;
    let stat = |k: &str| i.statistics.get(k).copied().unwrap_or(0);
    let files = stat("self_regular") + stat("subtree_regular");
    let dirs = stat("self_dir") + stat("subtree_dir");
    let catalogs = 1 + stat("self_nested") + stat("subtree_nested");
    let bytes = stat("self_file_size") + stat("subtree_file_size");
    let text = format!(
        "{fqrn}\n  revision     {}\n  root catalog {} ({} bytes)\n  published    {}\n  whitelist    expires {}\n  storage      {}\n  public key   {}\n  files {files}, directories {dirs}, catalogs {catalogs}, {:.1} MB of file data",
        i.revision,
        i.root_catalog,
        i.root_size,
        signer::utc_stamp(i.timestamp),
        i.whitelist_expires.map(signer::utc_stamp).unwrap_or_else(|| "unreadable".into()),
        i.storage.display(),
        i.public_key.display(),
        bytes as f64 / 1e6
    );
    out.event(
        &text,
        event_json(
            "info",
            json!({"fqrn": fqrn, "revision": i.revision, "root": i.root_catalog,
                   "root_catalog": i.root_catalog,
                   "root_size": i.root_size, "timestamp": i.timestamp,
                   "whitelist_expires": i.whitelist_expires, "storage": i.storage,
                   "files": files, "directories": dirs, "catalogs": catalogs, "file_bytes": bytes,
                   "statistics": i.statistics}),
        ),
    );
    Ok(0)
}

pub fn cache_seed(home: &Path, fqrn: &str, out: Output) -> Result<i32> {
    let repo = open_repo(home, fqrn)?;
    let started = Instant::now();
    let bar = out.progress(
        format!("{fqrn}: seeding content index"),
        Some(0),
        Counting::Items("objects"),
    );
    let stats = publisher::seed_repository(&repo, &mut |p| {
        bar.set_length(p.objects_total);
        bar.set_position(p.objects_done);
    })?;
    bar.finish_and_clear();
    for p in &stats.problems {
        out.event(
            p,
            event_json("problem", json!({"fqrn": fqrn, "problem": p})),
        );
    }
    out.event(
        &format!(
            "{fqrn}: content index seeded: {} objects in {} catalogs, {} recorded, {} already indexed, {:.1} MB inflated, {:.2} s",
            stats.objects, stats.catalogs, stats.recorded, stats.already_indexed,
            stats.plain_bytes as f64 / 1e6, started.elapsed().as_secs_f64()
        ),
        event_json(
            "cache-seed",
            json!({"fqrn": fqrn, "objects": stats.objects, "catalogs": stats.catalogs,
                   "recorded": stats.recorded, "already_indexed": stats.already_indexed,
                   "plain_bytes": stats.plain_bytes, "problems": stats.problems.len()}),
        ),
    );
    Ok(if stats.problems.is_empty() { 0 } else { 1 })
}

pub fn cache_stats(home: &Path, fqrn: &str, out: Output) -> Result<i32> {
    let repo = open_repo(home, fqrn)?;
    let layers = repo.layer_memo()?.list()?;
    let complete = layers.iter().filter(|l| l.complete).count();
    let index = repo.content_index()?.summary()?;
    // Only a cache: one that cannot be read is reported, the rest is still shown.
    let (trees, stat_error) = match repo.stat_cache_roots() {
        Ok(trees) => (trees, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let stat_files: u64 = trees.iter().map(|t| t.files).sum();
    out.event(
        &format!(
            "{fqrn}: content index: {} plaintexts -> {} objects ({:.1} MB plain, {:.1} MB \
             compressed); layer memo: {} layers ({complete} complete); stat cache: \
             {stat_files} files of {} source trees",
            index.entries,
            index.objects,
            index.plain_bytes as f64 / 1e6,
            index.compressed_bytes as f64 / 1e6,
            layers.len(),
            trees.len()
        ),
        event_json(
            "cache-stats",
            json!({"fqrn": fqrn, "layers": layers.len(), "complete": complete,
                   "index_entries": index.entries, "index_objects": index.objects,
                   "index_plain_bytes": index.plain_bytes,
                   "index_compressed_bytes": index.compressed_bytes,
                   "stat_files": stat_files, "stat_error": stat_error,
                   "stat_trees": trees.iter().map(|t| json!({
                       "source": t.path.display().to_string(), "mode": t.mode, "files": t.files,
                       "last_publish": t.used.map(rfc3339)})).collect::<Vec<_>>()}),
        ),
    );
    if let Some(e) = &stat_error {
        crate::output::to_stderr(&format!("cvmfs-oci: warning: stat cache unreadable: {e}"));
    }
    for t in &trees {
        let when = t.used.map_or("never".to_string(), rfc3339);
        out.say(&format!(
            "  stat cache: {} ({}: {} files, last published {when}; dropped {} days after)",
            t.path.display(),
            t.mode,
            t.files,
            publisher::stat_cache::ROOT_TTL_SECS / 86_400
        ));
    }
    Ok(0)
}

/// `2026-11-27T18:22:37Z` for seconds since the epoch.
fn rfc3339(unix: i64) -> String {
    let s = signer::utc_stamp(unix); // YYYYMMDDhhmmss
    let f = |r: std::ops::Range<usize>| s.get(r).unwrap_or("00");
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        f(0..4),
        f(4..6),
        f(6..8),
        f(8..10),
        f(10..12),
        f(12..14)
    )
}

/// Drops extended attributes CVMFS cannot represent (values over 255 bytes and the like),
/// warning once per attribute, so one odd file does not fail a whole publish. `image` names
/// the image the tree is of, for `convert`'s warnings.
pub fn sanitize_xattrs(
    dir: &mut Dir,
    path: &mut Vec<u8>,
    image: Option<&str>,
    out: Output,
) -> usize {
    let mut dropped = warn_dropped(&mut dir.meta.xattrs, path, image, out);
    for (name, node) in dir.children.iter_mut() {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        dropped += match node {
            Node::Dir(d) => sanitize_xattrs(d, path, image, out),
            Node::Leaf(e) => warn_dropped(&mut e.xattrs, path, image, out),
        };
        path.truncate(len);
    }
    dropped
}

fn warn_dropped(
    x: &mut catalog_writer::entry::Xattrs,
    path: &[u8],
    image: Option<&str>,
    out: Output,
) -> usize {
    if x.is_empty() {
        return 0;
    }
    let reasons = catalog_writer::xattr::retain_representable(x);
    for r in &reasons {
        let p = String::from_utf8_lossy(path);
        let place = image.map_or(String::new(), |i| format!("image {i}: "));
        crate::output::to_stderr(&format!("cvmfs-oci: warning: {place}{p}: {r}"));
        if out.json {
            let fields = json!({"path": p, "warning": r, "image": image});
            out.event("", event_json("warning", fields));
        }
    }
    reasons.len()
}
