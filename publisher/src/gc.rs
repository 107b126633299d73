//! Garbage collection of a garbage-collectable repository (manifest `G=yes`), as
//! `cvmfs_server gc` does it: the revisions to keep are the current one, its predecessors
//! (`previous_revision` of each root catalog) back to a depth or a time, and every revision a
//! tag of the history database names (`trunk-previous` included). Every catalog of those
//! trees is read and everything they reference is marked, together with the manifest's
//! certificate, history and meta-info.
//!
//! Unlike `cvmfs_server gc`, which deletes only what the catalogs listed in the reflog
//! reference, the sweep lists `data/00..ff`: objects that no catalog ever referenced (left by
//! a killed publish) go too. An object file modified after the collection started is never
//! deleted, and names that are not object names are left alone.
//!
//! Order, so that a crash anywhere leaves a valid repository and a rerun finishes the job:
//! mark → the reflog without the condemned objects and the manifest re-signed with its new
//! `Y` (same revision; compare-and-swap against the manifest the marking started from) →
//! deletion (and of `data/txn` scratch files a day old) → the content index and the layer
//! memo forget the deleted objects → `state/last_gc` and `last_gc` in `.cvmfs_status.json`.
//! The home's lock is held throughout, and the storage's collection lock
//! (`data/txn/collect.lock`) exclusively: every transaction, of any home writing this
//! storage, holds that one shared from begin to commit, so a collection waits for running
//! publishes (or is refused with `--no-wait`) and no publisher can deduplicate against an
//! object while it is being deleted. A dry run takes only the home's lock.
//!
//! ```no_run
//! use publisher::{GcOptions, Keep, Repository};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = Repository::open("/var/lib/cvmfs-oci".as_ref(), "sw.example.org")?;
//! let report = repo.gc(&GcOptions {
//!     keep: Keep::Revisions(2), // the current revision and two before it
//!     dry_run: true,
//!     wait: true,
//!     deletion_log: None,
//! })?;
//! println!("{} objects, {} bytes to delete", report.objects_deleted, report.bytes_deleted);
//! # Ok(()) }
//! ```

use crate::catalogs::{load_catalog, walk_catalog_hashes};
use crate::error::{Error, Result};
use crate::history::History;
use crate::local::LocalStore;
use crate::reflog::Reflog;
use crate::repo::{
    compare_and_swap_check, load_keys, lock, now_unix, parse_hash_field, replace_manifest,
    storage_lock, Repository, StorageUse,
};
use crate::store::{root_files, ObjectStore};
use crate::txn::verified_manifest;
use catalog_writer::hash::{ContentHash, Suffix, EMPTY_OBJECT};
use catalog_writer::namespace::CatalogRef;
use rayon::prelude::*;
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which predecessors of the current revision survive (tagged revisions always do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The current revision and this many before it (`cvmfs_server gc -r N`).
    Revisions(u64),
    /// Revisions published at or after this time (unix seconds), plus the one that was
    /// current then (`cvmfs_server gc -t`).
    Since(i64),
}

/// Options of [`Repository::gc`].
#[derive(Clone, Debug)]
pub struct GcOptions {
    pub keep: Keep,
    /// Mark and list what would go, change nothing.
    pub dry_run: bool,
    /// Wait for the repository lock instead of failing when it is held.
    pub wait: bool,
    /// Append the deleted objects' names (`<hash><suffix>`, one per line) to this file (in a
    /// dry run, those it would delete).
    pub deletion_log: Option<PathBuf>,
}

/// A revision kept by garbage collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptRevision {
    pub revision: u64,
    pub root: ContentHash,
    /// The root catalog's `last_modified`.
    pub timestamp: i64,
    /// Tags naming it (empty for an untagged predecessor).
    pub tags: Vec<String>,
}

/// What [`Repository::gc`] did (or, in a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// The manifest's revision (unchanged by the collection).
    pub revision: u64,
    /// Newest first; tagged revisions older than the kept chain at the end.
    pub kept: Vec<KeptRevision>,
    /// Catalogs of the kept revisions.
    pub catalogs_kept: usize,
    /// Distinct objects the kept revisions and the manifest reference.
    pub objects_kept: usize,
    /// Objects deleted (would be deleted, in a dry run).
    pub objects_deleted: usize,
    pub bytes_deleted: u64,
    /// Catalog objects among those deleted.
    pub catalogs_deleted: usize,
    /// Unreferenced objects spared because they were written after the collection began.
    pub objects_too_new: usize,
    /// Reflog entries removed.
    pub reflog_removed: usize,
    /// Content-index entries forgotten.
    pub index_forgotten: usize,
    /// Layer memos forgotten (they referenced a deleted object).
    pub memos_forgotten: usize,
    /// Scratch files of `data/txn` older than [`STALE_SCRATCH_SECONDS`] removed (left by a
    /// killed writer where objects cannot be written as unnamed files).
    pub scratch_removed: usize,
    /// Untagged earlier revisions within the window that were not kept because catalogs of
    /// theirs are gone already (a collection by an older version stopped half-way, or files
    /// deleted by hand): they cannot be served, and what is left of them goes now.
    pub incomplete_dropped: Vec<u64>,
    pub dry_run: bool,
}

/// An object to delete; its path is derived when needed (a path per object would double
/// the memory a large collection holds).
struct Condemned {
    hash: ContentHash,
    suffix: Suffix,
    bytes: u64,
}

/// Age from which a scratch file in `data/txn` counts as left behind: a writer renames its
/// scratch file within moments, and a day leaves room for a publisher of another home.
pub const STALE_SCRATCH_SECONDS: u64 = 86_400;

/// The same age when nobody holds the storage (a transaction found the collection lock free):
/// only `tmp.*` files written without that lock (a re-signed whitelist, within moments) can
/// then be in use.
pub const ABANDONED_SCRATCH_SECONDS: u64 = 3_600;

/// Least time between two automatic collections (`CVMFS_AUTO_GC_LAPSE`'s default).
pub const AUTO_GC_LAPSE_SECONDS: i64 = 86_400;

impl Repository {
    /// After a publish: collects garbage keeping the revisions of the last
    /// [`Config::auto_gc_seconds`](crate::Config::auto_gc_seconds), if that is set and no
    /// collection ran in the last [`AUTO_GC_LAPSE_SECONDS`]; `None` when it did not run.
    pub fn auto_gc(&self) -> Result<Option<GcReport>> {
        let Some(span) = self.config().auto_gc_seconds else {
            return Ok(None);
        };
        if !self.auto_gc_due() {
            return Ok(None);
        }
        let _lock = lock(&self.home().lock_path(), &self.config().fqrn, true)?;
        // Asked again under the lock: two publishers that finish together both found it due,
        // and the one that waited must not collect a second time.
        if !self.auto_gc_due() {
            return Ok(None);
        }
        let span = i64::try_from(span).unwrap_or(i64::MAX);
        let opts = GcOptions {
            keep: Keep::Since(now_unix().saturating_sub(span)),
            dry_run: false,
            wait: true,
            deletion_log: None,
        };
        self.gc_locked(&opts).map(Some)
    }

    /// Whether no collection finished in the last [`AUTO_GC_LAPSE_SECONDS`].
    fn auto_gc_due(&self) -> bool {
        let now = now_unix();
        let last = fs::read_to_string(self.home().last_gc_path())
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok());
        !last.is_some_and(|t| now - t < AUTO_GC_LAPSE_SECONDS && t <= now)
    }

    /// Collects the garbage of this repository; see the module documentation.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let _lock = lock(&self.home().lock_path(), &self.config().fqrn, opts.wait)?;
        self.gc_locked(opts)
    }

    /// [`Repository::gc`] with the home's lock held.
    fn gc_locked(&self, opts: &GcOptions) -> Result<GcReport> {
        let config = self.config();
        let fqrn = config.fqrn.as_str();
        let store = self.store();
        // A dry run deletes nothing, so it need not stop publishers of other homes.
        let _storage_lock = match opts.dry_run {
            false => Some(storage_lock(&store, fqrn, StorageUse::Collect, opts.wait)?),
            true => None,
        };
        let started = SystemTime::now();
        let keys = load_keys(config)?;
        let (base_bytes, base) = verified_manifest(&store, fqrn, &keys)?;
        if !base.gc {
            return Err(Error::Invalid(format!(
                "{fqrn} is not garbage-collectable (its manifest says G=no): clients and \
                 replicas expect its objects to stay; create repositories to be collected \
                 with `init --gc`"
            )));
        }
        let mut report = GcReport {
            revision: base.revision,
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let marked = mark(&store, &base, opts.keep, &mut report)?;
        let condemned = sweep_list(&store, &marked, started, &mut report)?;
        report.objects_deleted = condemned.len();
        report.bytes_deleted = condemned.iter().map(|c| c.bytes).sum();
        report.catalogs_deleted = condemned
            .iter()
            .filter(|c| c.suffix == Suffix::Catalog)
            .count();
        if let Some(path) = &opts.deletion_log {
            log_deletions(path, fqrn, opts.dry_run, &condemned)?;
        }
        if opts.dry_run {
            return Ok(report);
        }
        report.reflog_removed =
            rewrite_reflog(&store, &keys, &base, &base_bytes, &marked, &condemned)?;
        let heads = abandoned_roots(&store, &report.kept);
        delete(&store, &condemned, &heads)?;
        report.scratch_removed = remove_stale_scratch(&store, started, STALE_SCRATCH_SECONDS)?;
        // The caches forget every object gone: deleted now, or by another home's collection
        // earlier (each home keeps its own caches). What the kept revisions reference is
        // there; anything else is looked up.
        report.index_forgotten = self
            .content_index()?
            .forget_missing(store.as_ref(), &marked)?;
        report.memos_forgotten = self.layer_memo()?.forget_missing(store.as_ref(), &marked)?;
        let now = now_unix();
        let last = self.home().last_gc_path();
        fs::write(&last, format!("{now}\n")).map_err(|e| Error::io_path(&last, e))?;
        record_status(&store, now)?;
        Ok(report)
    }
}

/// The hashes (any suffix) that the revisions of `manifest` which the storage still holds
/// need: every predecessor whose root catalog is there, and every tagged revision. What a
/// push with `delete` must leave in the bucket whatever the storage lost.
pub(crate) fn referenced_by_kept(
    store: &LocalStore,
    manifest: &signer::Manifest,
) -> Result<HashSet<ContentHash>> {
    mark(
        store,
        manifest,
        Keep::Revisions(u64::MAX),
        &mut GcReport::default(),
    )
}

/// The hashes (any suffix, as `cvmfs_server gc` compares them) the kept revisions need.
fn mark(
    store: &LocalStore,
    manifest: &signer::Manifest,
    keep: Keep,
    report: &mut GcReport,
) -> Result<HashSet<ContentHash>> {
    let head = CatalogRef {
        hash: parse_hash_field("C", &manifest.root_catalog)?,
        size: manifest.root_size,
    };
    report.kept = kept_chain(store, head, keep)?;
    // Only the current root's size is known (`B`); the others are inflated unbounded.
    let size_of = |h: ContentHash| if h == head.hash { head.size } else { 0 };
    let mut roots: Vec<(String, CatalogRef)> = report
        .kept
        .iter()
        .map(|k| {
            (
                format!("revision {}", k.revision),
                catalog(k.root, size_of(k.root)),
            )
        })
        .collect();
    // Every commit stores the empty object: no need to delete it now and write it again.
    let mut named: Vec<ContentHash> = vec![EMPTY_OBJECT];
    for (field, text) in [
        ("X", Some(manifest.certificate.as_str())),
        ("H", manifest.history.as_deref()),
        ("M", manifest.meta_info.as_deref()),
    ] {
        if let Some(text) = text {
            named.push(parse_hash_field(field, text)?);
        }
    }
    if let Some(h) = &manifest.history {
        let history = History::load(store, &parse_hash_field("H", h)?)?;
        for tag in history.tags()? {
            match report.kept.iter_mut().find(|k| k.root == tag.hash) {
                Some(k) => k.tags.push(tag.name),
                None => {
                    let label = format!("revision {} (tag {})", tag.revision, tag.name);
                    roots.push((label, catalog(tag.hash, tag.size)));
                    report.kept.push(KeptRevision {
                        revision: tag.revision,
                        root: tag.hash,
                        timestamp: tag.timestamp,
                        tags: vec![tag.name],
                    });
                }
            }
        }
    }
    report.kept.sort_by_key(|k| std::cmp::Reverse(k.revision));
    // The walk reads every catalog once; a kept catalog that cannot be read would hide what
    // it references, so nothing may be deleted then.
    let mut walk = walk_catalog_hashes(store, roots.clone());
    if !walk.problems.is_empty() {
        report.incomplete_dropped = drop_incomplete(store, head.hash, &mut report.kept, &mut roots);
        if !report.incomplete_dropped.is_empty() {
            walk = walk_catalog_hashes(store, roots);
        }
    }
    if let Some(first) = walk.problems.first() {
        return Err(Error::Invalid(format!(
            "{}: not collecting garbage: {} problem(s) reading the kept revisions, first: {first}",
            store.describe(),
            walk.problems.len()
        )));
    }
    report.catalogs_kept = walk.catalogs;
    // The walk's set becomes the marked set: for millions of objects, no second copy.
    let mut marked = std::mem::take(&mut walk.hashes);
    marked.extend(named);
    marked.extend(walk.bulk);
    report.objects_kept = marked.len();
    Ok(marked)
}

/// Takes the untagged predecessors whose catalogs cannot all be read out of `kept` and
/// `roots`; returns their revision numbers. The current revision and tagged ones stay (a
/// problem there still stops the collection: what their missing catalogs reference is unknown).
fn drop_incomplete(
    store: &LocalStore,
    head: ContentHash,
    kept: &mut Vec<KeptRevision>,
    roots: &mut Vec<(String, CatalogRef)>,
) -> Vec<u64> {
    let broken: Vec<(u64, ContentHash)> = kept
        .iter()
        .filter(|k| k.tags.is_empty() && k.root != head)
        .filter(|k| {
            let alone = vec![(String::new(), catalog(k.root, 0))];
            !walk_catalog_hashes(store, alone).problems.is_empty()
        })
        .map(|k| (k.revision, k.root))
        .collect();
    kept.retain(|k| !broken.iter().any(|(_, root)| *root == k.root));
    roots.retain(|(_, r)| !broken.iter().any(|(_, root)| *root == r.hash));
    broken.into_iter().map(|(revision, _)| revision).collect()
}

fn catalog(hash: ContentHash, size: u64) -> CatalogRef {
    CatalogRef { hash, size }
}

/// The current revision and the predecessors `keep` asks for, newest first. The chain ends
/// early where a predecessor is gone (an earlier collection took it).
fn kept_chain(store: &LocalStore, head: CatalogRef, keep: Keep) -> Result<Vec<KeptRevision>> {
    let mut kept = Vec::new();
    let mut next = Some(head);
    while let Some(cat) = next.take() {
        let loaded = load_catalog(store, &cat)?;
        let number = |key: &str| -> Result<i64> {
            let text = loaded.property(key)?.unwrap_or_default();
            text.parse().map_err(|_| {
                Error::corrupt(
                    format!("catalog {}", cat.hash),
                    format!("property {key} is {text:?}"),
                )
            })
        };
        let timestamp = number("last_modified")?;
        kept.push(KeptRevision {
            revision: u64::try_from(number("revision")?).unwrap_or(0),
            root: cat.hash,
            timestamp,
            tags: Vec::new(),
        });
        let older_wanted = match keep {
            Keep::Revisions(n) => (kept.len() as u64) <= n,
            Keep::Since(t) => timestamp >= t,
        };
        let previous = loaded.property("previous_revision")?;
        if let Some(prev) = previous.filter(|_| older_wanted) {
            let hash = ContentHash::from_hex(&prev).ok_or_else(|| {
                Error::corrupt(
                    format!("catalog {}", cat.hash),
                    format!("previous_revision is {prev:?}"),
                )
            })?;
            let present = store
                .contains(&hash, Suffix::Catalog)
                .map_err(|e| Error::io(hash.object_path(Suffix::Catalog), e))?;
            next = present.then(|| catalog(hash, 0));
        }
    }
    Ok(kept)
}

/// Object files of `data/00..ff` that are not marked and are older than the collection.
fn sweep_list(
    store: &LocalStore,
    marked: &HashSet<ContentHash>,
    started: SystemTime,
    report: &mut GcReport,
) -> Result<Vec<Condemned>> {
    let per_dir: Vec<Result<(Vec<Condemned>, usize)>> = (0..=255u8)
        .into_par_iter()
        .map(|i| sweep_dir(store, i, marked, started))
        .collect();
    let mut condemned = Vec::new();
    for r in per_dir {
        let (c, too_new) = r?;
        condemned.extend(c);
        report.objects_too_new += too_new;
    }
    Ok(condemned)
}

fn sweep_dir(
    store: &LocalStore,
    prefix: u8,
    marked: &HashSet<ContentHash>,
    started: SystemTime,
) -> Result<(Vec<Condemned>, usize)> {
    let (mut condemned, mut too_new) = (Vec::new(), 0);
    for (entry, hash, suffix) in store.object_files(prefix)? {
        if marked.contains(&hash) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_path(&entry.path(), e)),
        };
        if !meta.is_file() {
            continue;
        }
        if meta.modified().map_or(true, |m| m >= started) {
            too_new += 1;
            continue;
        }
        condemned.push(Condemned {
            hash,
            suffix,
            bytes: meta.len(),
        });
    }
    Ok((condemned, too_new))
}

/// Removes the condemned objects from the reflog and, if it changed, re-signs the manifest
/// (same revision, new `Y`); returns the entries removed. Either way the manifest must still
/// be the one the marking started from (compare-and-swap: a publish from another home may
/// reference what is about to go).
fn rewrite_reflog(
    store: &LocalStore,
    keys: &signer::RepoKeys,
    base: &signer::Manifest,
    base_bytes: &[u8],
    marked: &HashSet<ContentHash>,
    condemned: &[Condemned],
) -> Result<usize> {
    let conflict = |e: Error| match e {
        Error::Conflict { path } => Error::Invalid(format!(
            "{} changed while collecting garbage (a publish from another home?): nothing \
             was deleted",
            path.display()
        )),
        e => e,
    };
    compare_and_swap_check(store, Some(base_bytes)).map_err(conflict)?;
    let what = format!("{}/.cvmfsreflog", store.describe());
    let Some(bytes) = store
        .get_root_file(root_files::REFLOG)
        .map_err(|e| Error::io(what.as_str(), e))?
    else {
        return Ok(0);
    };
    let mut log = Reflog::from_bytes(&bytes, &what)?;
    let deleted: HashSet<ContentHash> = condemned.iter().map(|c| c.hash).collect();
    let mut removed = 0;
    for r in log.refs()? {
        // Entries of objects deleted now, or by an earlier collection (or by hand).
        let gone = deleted.contains(&r.hash)
            || (!marked.contains(&r.hash) && !store_has_any(store, &r.hash));
        if gone && log.remove(&r.hash)? {
            removed += 1;
        }
    }
    // A collection stopped between the reflog and the manifest left a reflog the manifest
    // does not name (`cvmfs_swissknife check` fails on it): its rerun, which finds nothing
    // more to remove, signs the manifest for the reflog as it is.
    let named = base.reflog.as_deref();
    let stale = named.is_some_and(|n| !n.eq_ignore_ascii_case(&ContentHash::of(&bytes).to_hex()));
    if removed == 0 && !stale {
        return Ok(0);
    }
    let reflog = match removed {
        0 => bytes,
        _ => log.to_bytes()?,
    };
    let manifest = signer::Manifest {
        reflog: Some(ContentHash::of(&reflog).to_hex()),
        ..base.clone()
    };
    replace_manifest(store, keys, &manifest, Some(&reflog), Some(base_bytes)).map_err(conflict)?;
    Ok(removed)
}

/// Whether some object file with this hash exists (reflog entries carry no suffix).
fn store_has_any(store: &LocalStore, hash: &ContentHash) -> bool {
    [
        Suffix::Catalog,
        Suffix::Certificate,
        Suffix::History,
        Suffix::MetaInfo,
    ]
    .iter()
    .any(|s| store.contains(hash, *s).unwrap_or(true))
}

/// Appends the names of the objects to delete (before deleting them: a collection stopped
/// half-way still leaves its list), or that a dry run would delete.
fn log_deletions(path: &Path, fqrn: &str, dry_run: bool, condemned: &[Condemned]) -> Result<()> {
    let what = if dry_run { "gc --dry-run" } else { "gc" };
    let mut text = format!(
        "# cvmfs-oci {what} of {fqrn} at {}: {} objects\n",
        crate::repo::now_unix(),
        condemned.len()
    );
    for c in condemned {
        text.push_str(&c.hash.to_hex());
        text.push_str(c.suffix.as_str());
        text.push('\n');
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io_path(path, e))
}

/// Removes the scratch files (`tmp.*`) of `data/txn` older than `age_secs` at `started`.
pub(crate) fn remove_stale_scratch(
    store: &LocalStore,
    started: SystemTime,
    age_secs: u64,
) -> Result<usize> {
    let dir = store.root().join("data/txn");
    let Some(limit) = started.checked_sub(std::time::Duration::from_secs(age_secs)) else {
        return Ok(0);
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io_path(&dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_path(&dir, e))?;
        let stale = entry.file_name().as_encoded_bytes().starts_with(b"tmp.")
            && entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|t| t < limit));
        if stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io_path(&entry.path(), e)),
            }
        }
    }
    Ok(removed)
}

/// Sets `last_gc` in the storage's `.cvmfs_status.json` (kept otherwise), as `cvmfs_server gc`
/// does for monitoring, in the form of `date --utc`.
fn record_status(store: &LocalStore, now: i64) -> Result<()> {
    let what = format!("{}/{}", store.describe(), root_files::STATUS);
    let old = store
        .get_root_file(root_files::STATUS)
        .map_err(|e| Error::io(what.as_str(), e))?;
    let mut status = old
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let when = chrono::DateTime::from_timestamp(now, 0)
        .map(|t| t.format("%a %b %e %H:%M:%S UTC %Y").to_string())
        .unwrap_or_default();
    status["last_gc"] = serde_json::Value::String(when);
    let mut bytes =
        serde_json::to_vec_pretty(&status).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    bytes.push(b'\n');
    store
        .put_root_file(root_files::STATUS, &bytes)
        .map_err(|e| Error::io(what.as_str(), e))
}

/// The root catalogs of the revisions no longer kept that `previous_revision` still leads to
/// from a kept one: those a tag or a rollback could still find.
fn abandoned_roots(store: &LocalStore, kept: &[KeptRevision]) -> HashSet<ContentHash> {
    let kept_roots: HashSet<ContentHash> = kept.iter().map(|k| k.root).collect();
    let mut found = HashSet::new();
    for k in kept {
        let mut cat = catalog(k.root, 0);
        // An unreadable catalog ends the chain: what lies behind it cannot be found either.
        while let Some(prev) = load_catalog(store, &cat)
            .ok()
            .and_then(|c| c.property("previous_revision").ok().flatten())
            .and_then(|p| ContentHash::from_hex(&p))
        {
            if kept_roots.contains(&prev) || !found.insert(prev) {
                break;
            }
            if !store.contains(&prev, Suffix::Catalog).unwrap_or(false) {
                break;
            }
            cat = catalog(prev, 0);
        }
    }
    found
}

/// Deletes the object files; one that is gone already is fine. The root catalogs of the
/// abandoned revisions (`heads`) go first, durably, and only then their nested catalogs and
/// files: a collection stopped half-way (killed, a power cut) must not leave a revision that
/// a tag or a rollback can still find by its root while parts of its tree are gone.
fn delete(store: &LocalStore, condemned: &[Condemned], heads: &HashSet<ContentHash>) -> Result<()> {
    let is_head = |c: &&Condemned| c.suffix == Suffix::Catalog && heads.contains(&c.hash);
    let (first, rest): (Vec<&Condemned>, Vec<&Condemned>) = condemned.iter().partition(is_head);
    delete_files(store, &first)?;
    if !first.is_empty() {
        store.sync().map_err(|e| Error::io(store.describe(), e))?;
        crate::txn::fault_point("gc-after-heads");
    }
    delete_files(store, &rest)
}

fn delete_files(store: &LocalStore, condemned: &[&Condemned]) -> Result<()> {
    condemned.par_iter().try_for_each(|c| {
        let path = store.object_path(&c.hash, c.suffix);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io_path(&path, e)),
            _ => Ok(()),
        }
    })
}
