//! `Transaction`: one publish. Holds the repository lock, the verified base manifest and the
//! namespace being changed; `commit` writes catalogs and replaces the manifest last.
//!
//! A transaction that is dropped or aborted, or whose commit fails before the manifest is
//! replaced, deletes the objects it created, so the storage is left byte for byte as it was; see [`tracked`] for why that is safe and its one caveat. A killed
//! process cannot clean up: its objects stay, unreferenced, which is harmless.

mod tracked;
pub(crate) mod unsynced;

pub use tracked::RollBack;
use tracked::TrackedStore;
pub use unsynced::Recovery;

use crate::config::{Config, RepoHome};
use crate::error::{Error, Result};
use crate::local::LocalStore;
use crate::repo::{
    load_keys, lock, now_unix, open_content_index, open_layer_memo, open_lock_file,
    publish_revision, storage_lock, HistoryChange, PublishInput, Repository, StorageUse,
    MAX_CERTIFICATE_BYTES,
};
use crate::store::{root_files, stored_bound, ObjectStore, StoreObjects};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::{CatalogRef, CommitOptions, Namespace};
use std::fs::File;
use std::sync::Arc;

/// Environment variable naming the fault point at which the process aborts (crash tests).
pub const CRASH_ENV: &str = "CVMFS_OCI_CRASH_AT";
/// Environment variable naming the fault point where a process waits for a line on its stdin:
/// tests use it to let another process act at exactly that moment.
pub const PAUSE_ENV: &str = "CVMFS_OCI_PAUSE_AT";

/// Aborts the process when `CVMFS_OCI_CRASH_AT` equals `name`. Points used by the publisher:
/// `after-catalogs`, `after-history`, `before-manifest`; the ingest pipeline uses `after-objects`.
pub fn fault_point(name: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == name) {
        eprintln!("{CRASH_ENV}={name}: aborting on purpose");
        std::process::abort();
    }
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == name) {
        eprintln!("{PAUSE_ENV}={name}: paused until a line arrives on stdin");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
}

/// Whether the fault `name` is asked for (`CVMFS_OCI_CRASH_AT`), for faults that are
/// simulated rather than crashed into (e.g. a lost reply).
pub(crate) fn fault_armed(name: &str) -> bool {
    std::env::var_os(CRASH_ENV).is_some_and(|v| v == name)
}

/// Removes the scratch files a killed writer left in `data/txn` (a large file streamed
/// through a scratch file, where objects cannot be unnamed files), so that a repository that
/// is never garbage-collected does not keep them: only when no transaction, tag, push or gc of
/// any home holds the storage (its collection lock is free right now), and only files an hour
/// old. Best effort: whatever stays is gc's, after a day.
fn clear_abandoned_scratch(store: &LocalStore) {
    let Ok(file) = open_lock_file(&store.collect_lock_path()) else {
        return;
    };
    if file.try_lock().is_ok() {
        let now = std::time::SystemTime::now();
        let _ = crate::gc::remove_stale_scratch(store, now, crate::gc::ABANDONED_SCRATCH_SECONDS);
    }
}

/// Options of one commit.
#[derive(Clone, Debug)]
pub struct CommitSettings {
    /// Publish time; `None` = now. Never goes below the previous manifest's `T`.
    pub timestamp: Option<i64>,
    /// Apply `/.cvmfsdirtab` rules when writing catalogs.
    pub apply_dirtab: bool,
    /// A tag for the new revision (`cvmfs_server publish -a NAME -m TEXT`), in the same
    /// history database as its `trunk`. An unchanged commit makes no revision to tag (see
    /// [`Repository::add_tag`] to name the current one).
    pub tag: Option<crate::tags::NewTag>,
}

impl Default for CommitSettings {
    fn default() -> CommitSettings {
        CommitSettings {
            timestamp: None,
            apply_dirtab: true,
            tag: None,
        }
    }
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Nothing changed: no catalogs written, the manifest is untouched.
    Unchanged {
        revision: u64,
    },
    Published(Published),
}

/// A new revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub revision: u64,
    pub root: CatalogRef,
    /// Manifest `T` (also `last_modified` of the written catalogs).
    pub timestamp: i64,
    pub catalogs_written: usize,
    pub catalogs_total: usize,
    /// The history object (`H`).
    pub history: ContentHash,
}

/// An open publish. Dropping it without a successful `commit` leaves the storage as it was:
/// the objects stored through it are deleted again (see the module documentation).
pub struct Transaction {
    config: Config,
    store: Arc<TrackedStore>,
    keys: signer::RepoKeys,
    base_bytes: Vec<u8>,
    base: signer::Manifest,
    namespace: Namespace,
    /// Publish time, fixed by the first catalog written (early ones included) so that every
    /// catalog of the revision says the same `last_modified`.
    timestamp: Option<i64>,
    /// The objects created belong to a published revision (or may): never roll back.
    settled: bool,
    /// The home's state directory, which holds the unsynced mark (see [`unsynced`]).
    state_dir: std::path::PathBuf,
    /// Whose content index and layer memo a roll back updates.
    home: RepoHome,
    /// What the start found and repaired after another boot's unfinished transaction.
    recovery: Option<Recovery>,
    _lock: File,
    /// Shared: gc (of any home) waits until this transaction ends.
    _storage_lock: File,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: a failed deletion leaves an unreferenced object, which is allowed.
            self.roll_back();
        }
    }
}

impl Transaction {
    pub(crate) fn begin(repo: &Repository, wait: bool) -> Result<Transaction> {
        let config = repo.config().clone();
        let lock = lock(&repo.home().lock_path(), &config.fqrn, wait)?;
        let store = repo.store();
        clear_abandoned_scratch(&store);
        let storage_lock = storage_lock(&store, &config.fqrn, StorageUse::Publish, wait)?;
        let state_dir = repo.home().state_dir();
        let recovery = unsynced::begin(&state_dir, &store)?;
        if let Some(r) = recovery.as_ref().filter(|r| !r.removed.is_empty()) {
            forget_removed(repo.home(), &r.removed)?;
        }
        let keys = load_keys(&config)?;
        let (base_bytes, base) = verified_manifest(&store, &config.fqrn, &keys)?;
        let store = Arc::new(TrackedStore::new(&store));
        let root = CatalogRef {
            hash: ContentHash::from_hex(&base.root_catalog).ok_or_else(|| {
                Error::corrupt(
                    ".cvmfspublished",
                    format!("C is not a hash text: {:?}", base.root_catalog),
                )
            })?,
            size: base.root_size,
        };
        let namespace = Namespace::open(root, &StoreObjects(store.as_ref()))?;
        Ok(Transaction {
            config,
            store,
            keys,
            base_bytes,
            base,
            namespace,
            timestamp: None,
            settled: false,
            state_dir,
            home: repo.home().clone(),
            recovery,
            _lock: lock,
            _storage_lock: storage_lock,
        })
    }

    /// What the start repaired after another boot's unfinished transaction (objects whose
    /// bytes were lost are deleted, to be stored again); `None` when there was none.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// The manifest this transaction started from.
    pub fn base_manifest(&self) -> &signer::Manifest {
        &self.base
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn namespace_mut(&mut self) -> &mut Namespace {
        &mut self.namespace
    }

    /// The object store, for the ingest pipeline (`Arc<dyn ObjectStore>`). It records the
    /// objects it creates; once the transaction ends without publishing they are deleted and
    /// further `put`s fail.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The namespace together with the adapter it needs for loading/storing catalogs.
    pub fn namespace_and_objects(&mut self) -> (&mut Namespace, StoreObjects<'_>) {
        (&mut self.namespace, StoreObjects(self.store.as_ref()))
    }

    /// Writes the catalogs of the finished subtrees at `paths` (nested catalog roots) now, in
    /// parallel, while the caller still works on other paths; [`commit`](Self::commit) takes
    /// them as they are. `settings` must be those `commit` will get. Returns the number of
    /// catalogs written (none for a path that is not a changed catalog root, or when a
    /// `/.cvmfsdirtab` applies).
    pub fn commit_early(&mut self, paths: &[&[u8]], settings: &CommitSettings) -> Result<usize> {
        let opts = self.commit_options(settings);
        let objects = StoreObjects(self.store.as_ref());
        Ok(self.namespace.commit_subtrees(paths, &opts, &objects)?)
    }

    /// The options catalogs of the next revision are written with.
    fn commit_options(&mut self, settings: &CommitSettings) -> CommitOptions {
        let base = self.base.timestamp;
        let timestamp = *self
            .timestamp
            .get_or_insert_with(|| settings.timestamp.unwrap_or_else(now_unix).max(base));
        CommitOptions {
            revision: self.base.revision + 1,
            timestamp,
            ttl: self.config.ttl,
            max_entries: self.config.max_catalog_entries,
            apply_dirtab: settings.apply_dirtab,
        }
    }

    /// Ends the transaction without publishing: deletes the objects it created and its
    /// scratch files (what dropping it does, with a report).
    pub fn abort(mut self) -> RollBack {
        self.settled = true;
        self.roll_back()
    }

    /// Deletes the objects this transaction created, and makes the content index and the
    /// layer memo forget them: a memo recorded by an image of a batch that then failed whole
    /// would otherwise name objects that are gone until the next gc.
    fn roll_back(&self) -> RollBack {
        let mut report = self.store.roll_back();
        self.clear_unsynced_after(&report);
        if !report.removed.is_empty() {
            if let Err(e) = forget_removed(&self.home, &report.removed) {
                // Harmless if it fails: both verify what they name before it is used.
                report.errors.push(e.to_string());
            }
        }
        report
    }

    /// After a roll back that deleted every object this transaction created, nothing it
    /// wrote is left unsynced (earlier leftovers were dealt with at the start): the mark goes.
    fn clear_unsynced_after(&self, report: &RollBack) {
        if report.errors.is_empty() {
            // Best effort: a mark left behind costs the next start one `syncfs`.
            let _ = unsynced::clear(&self.state_dir);
        }
    }

    /// Publishes the changes as revision `S + 1`, or nothing when the catalogs come out the
    /// same as the published ones ([`CommitOutcome::Unchanged`]: the manifest is not touched).
    /// Both are successes and keep the objects stored through [`Transaction::objects`]: with
    /// unchanged catalogs every referenced object existed already, unless the storage had
    /// lost some and this transaction stored them again, a repair that must stay. When
    /// `commit` fails the objects are deleted unless the manifest moved (see below).
    pub fn commit(mut self, settings: &CommitSettings) -> Result<CommitOutcome> {
        let result = self.publish(settings);
        let keep = match &result {
            Ok(_) => true,
            // A manifest that is no longer the base one may be ours (a failure after the
            // rename) or another publisher's: either may reference what we stored.
            Err(_) => self.manifest_moved(),
        };
        if keep {
            self.store.forget();
            self.settled = true;
        }
        if let Ok(outcome) = &result {
            // Best effort, and after `settled`: a published revision's objects must never be
            // rolled back; a mark left behind costs the next start a `syncfs` or a re-hash.
            let _ = self.clear_unsynced(outcome);
        }
        // Otherwise `Drop` rolls back.
        result
    }

    /// Removes the unsynced mark once every object is durable: a published revision synced
    /// them before its manifest; objects an unchanged one stored (repairs) are synced here.
    fn clear_unsynced(&self, outcome: &CommitOutcome) -> Result<()> {
        if matches!(outcome, CommitOutcome::Unchanged { .. }) && self.store.created_any() {
            let local = self.store.local();
            local
                .sync()
                .map_err(|e| Error::io(format!("{}: syncfs", local.describe()), e))?;
        }
        unsynced::clear(&self.state_dir)
    }

    /// Whether `.cvmfspublished` differs from the bytes this transaction started from (or
    /// cannot be read, in which case assume it does).
    fn manifest_moved(&self) -> bool {
        let local = self.store.local();
        !matches!(local.get_root_file(root_files::MANIFEST), Ok(Some(b)) if b == self.base_bytes)
    }

    fn publish(&mut self, settings: &CommitSettings) -> Result<CommitOutcome> {
        let unchanged = CommitOutcome::Unchanged {
            revision: self.base.revision,
        };
        if !self.namespace.is_dirty() {
            return Ok(unchanged);
        }
        // The objects are all written: start making them durable while the catalogs are
        // written, so that the `syncfs` before the manifest has little left but the catalogs
        // (measured: 35 ms at the end of a 120 MB conversion).
        self.store.local().start_background_sync();
        let opts = self.commit_options(settings);
        let (revision, timestamp) = (opts.revision, opts.timestamp);
        let report = self
            .namespace
            .commit(&opts, &StoreObjects(self.store.as_ref()))?;
        // The namespace was opened at the base manifest's `C`: unchanged means the same root.
        if !report.changed {
            return Ok(unchanged);
        }
        fault_point("after-catalogs");
        let history = publish_revision(&PublishInput {
            store: self.store.local(),
            objects: self.store.as_ref(),
            keys: &self.keys,
            config: &self.config,
            root: report.root,
            revision,
            timestamp,
            previous: Some(&self.base),
            expected_manifest: Some(&self.base_bytes),
            history_change: HistoryChange::Publish(settings.tag.as_ref()),
            meta_info: self.base.meta_info.clone(),
        })?;
        Ok(CommitOutcome::Published(Published {
            revision,
            root: report.root,
            timestamp,
            catalogs_written: report.catalogs_written,
            catalogs_total: report.catalogs_total,
            history,
        }))
    }
}

/// Makes the content index and the layer memo of `home` forget objects a recovery or a roll
/// back deleted, so that no later run takes them as stored.
fn forget_removed(home: &RepoHome, removed: &[(ContentHash, Suffix)]) -> Result<()> {
    let hashes: Vec<ContentHash> = removed.iter().map(|(h, _)| *h).collect();
    open_content_index(home)?.invalidate_all(&hashes)?;
    open_layer_memo(home)?.forget_referencing(&hashes.into_iter().collect())?;
    Ok(())
}

/// The current `.cvmfspublished`: its bytes (for the compare-and-swap) and its verified
/// content (see [`verify_published`]).
pub(crate) fn verified_manifest(
    store: &LocalStore,
    fqrn: &str,
    keys: &signer::RepoKeys,
) -> Result<(Vec<u8>, signer::Manifest)> {
    let bytes = store
        .get_root_file(root_files::MANIFEST)
        .map_err(|e| Error::io(store.describe(), e))?
        .ok_or_else(|| Error::Invalid(format!("{}: no .cvmfspublished", store.describe())))?;
    let manifest = verify_published(store, &bytes, fqrn, keys)?;
    Ok((bytes, manifest))
}

/// The client's chain: manifest signed by the certificate `X` (whose object hash must match),
/// whitelist signed by our master public key, for this fqrn, unexpired, listing the certificate.
fn verify_published(
    store: &LocalStore,
    bytes: &[u8],
    fqrn: &str,
    keys: &signer::RepoKeys,
) -> Result<signer::Manifest> {
    let what = format!("{}/.cvmfspublished", store.describe());
    let parsed = signer::Manifest::parse(bytes)
        .map_err(|e| Error::signature(what.as_str(), e))?
        .manifest;
    let x = ContentHash::from_hex(&parsed.certificate).ok_or_else(|| {
        Error::corrupt(
            what.as_str(),
            format!("X is not a hash text: {:?}", parsed.certificate),
        )
    })?;
    let obj = store
        .get_at_most(&x, Suffix::Certificate, stored_bound(MAX_CERTIFICATE_BYTES))
        .map_err(|e| Error::io(format!("certificate {x}"), e))?;
    if ContentHash::of(&obj) != x {
        return Err(Error::corrupt(
            x.object_path(Suffix::Certificate),
            "stored bytes do not match the name",
        ));
    }
    let pem = catalog_writer::zlib::decompress(&obj, MAX_CERTIFICATE_BYTES)
        .map_err(|e| Error::io(format!("certificate {x}: inflate"), e))?;
    let cert = signer::parse_certificate_pem(&pem)
        .map_err(|e| Error::signature(format!("certificate {x}"), e))?;
    let manifest =
        signer::Manifest::verify(bytes, &cert).map_err(|e| Error::signature(what.as_str(), e))?;
    if manifest.fqrn != fqrn {
        return Err(Error::corrupt(
            what,
            format!("N is {:?}, expected {fqrn:?}", manifest.fqrn),
        ));
    }
    let wl_what = format!("{}/.cvmfswhitelist", store.describe());
    let wl_bytes = store
        .get_root_file(root_files::WHITELIST)
        .map_err(|e| Error::io(wl_what.as_str(), e))?
        .ok_or_else(|| Error::Invalid(format!("{wl_what}: missing")))?;
    let whitelist = signer::Whitelist::verify(
        &wl_bytes,
        std::slice::from_ref(&keys.master_public),
        fqrn,
        now_unix(),
    )
    .map_err(|e| Error::signature(format!("{wl_what} (re-sign it with `resign`)"), e))?;
    let fp = signer::certificate_fingerprint(&cert)
        .map_err(|e| Error::signature(format!("certificate {x}"), e))?;
    if !whitelist.lists_fingerprint(&fp) {
        return Err(Error::signature(
            wl_what,
            format!("does not list the certificate fingerprint {fp}"),
        ));
    }
    Ok(manifest)
}
