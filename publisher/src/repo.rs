//! `Repository`: creating a repository (home, keys, storage, revision 1), taking over one that
//! exists already, opening it, reporting on it, re-signing its whitelist, and the publish tail
//! shared by `init` and commits.

use crate::catalogs::load_catalog;
use crate::config::{validate_fqrn, Chunking, Config, RepoHome};
use crate::content_index::SqliteContentIndex;
use crate::error::{Error, Result};
use crate::history::History;
use crate::layer_memo::LayerMemo;
use crate::local::LocalStore;
use crate::reflog::{RefKind, Reflog};
use crate::repoinfo::{store_meta_info, SKELETON};
use crate::stat_cache::SqliteStatCache;
use crate::store::{put_named, root_files, stored_bound, ObjectStore, StoreObjects};
use crate::txn::{fault_point, Transaction};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::{CatalogRef, CommitOptions, Namespace};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Choices for [`Repository::init`]; `Default` gives cvmfs_server's defaults.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Keys directory; default `<home>/<fqrn>/keys`. Existing keys there are reused.
    pub keys_dir: Option<PathBuf>,
    pub ttl: u32,
    pub whitelist_days: u32,
    pub chunking: Chunking,
    pub max_catalog_entries: u64,
    pub gc: bool,
    pub memory_budget: u64,
    /// See [`Config::auto_gc_seconds`]; needs `gc`.
    pub auto_gc_seconds: Option<u64>,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        let c = Config::new("a.b", Path::new(""), Path::new(""));
        InitOptions {
            keys_dir: None,
            ttl: c.ttl,
            whitelist_days: c.whitelist_days,
            chunking: c.chunking,
            max_catalog_entries: c.max_catalog_entries,
            gc: c.gc,
            memory_budget: c.memory_budget,
            auto_gc_seconds: c.auto_gc_seconds,
        }
    }
}

/// The published tree, read without the repository lock (see [`Repository::snapshot`]).
pub struct Snapshot {
    store: Arc<LocalStore>,
    namespace: Namespace,
}

impl Snapshot {
    /// The entry at `path` (absolute, `b""` is the root) in the revision the snapshot read.
    pub fn entry(&mut self, path: &[u8]) -> Result<Option<catalog_writer::entry::Entry>> {
        Ok(self
            .namespace
            .entry(path, &StoreObjects(self.store.as_ref()))?)
    }
}

/// A summary of the published state.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    pub fqrn: String,
    pub storage: PathBuf,
    pub public_key: PathBuf,
    pub revision: u64,
    pub root_catalog: String,
    pub root_size: u64,
    /// Manifest `T`.
    pub timestamp: i64,
    pub ttl: u32,
    /// Whitelist expiry (unix seconds), if the whitelist could be read.
    pub whitelist_expires: Option<i64>,
    /// Root catalog `statistics` (`self_regular`, `subtree_dir`, ...).
    pub statistics: BTreeMap<String, i64>,
}

/// An existing repository: its home (config, lock, state) and its local storage.
#[derive(Debug)]
pub struct Repository {
    home: RepoHome,
    pub(crate) config: Config,
    store: Arc<LocalStore>,
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The home of a repository about to be created or taken over: none may exist yet.
fn new_home(home: &Path, fqrn: &str) -> Result<RepoHome> {
    validate_fqrn(fqrn)?;
    let home = std::path::absolute(home).map_err(|e| Error::io_path(home, e))?;
    let repo_home = RepoHome::new(&home, fqrn);
    if repo_home.config_path().exists() {
        return Err(Error::Invalid(format!(
            "repository {fqrn} already exists in {}",
            repo_home.dir().display()
        )));
    }
    Ok(repo_home)
}

/// The home's directory, `state/` and lock file (`config.json` comes last, when complete).
fn create_home_dirs(repo_home: &RepoHome) -> Result<()> {
    // Private whatever the umask: it holds the keys (by default), the lock and the caches
    // that decide what is taken as stored.
    let dir = repo_home.dir();
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io_path(dir, e))?;
    }
    create_dir(&repo_home.state_dir())?;
    open_lock_file(&repo_home.lock_path())?;
    Ok(())
}

/// The dedup index of `home` (`state/content.db`).
pub(crate) fn open_content_index(home: &RepoHome) -> Result<SqliteContentIndex> {
    create_dir(&home.state_dir())?;
    SqliteContentIndex::open(&home.content_db_path())
}

/// The layer memo of `home` (`state/layers.db`).
pub(crate) fn open_layer_memo(home: &RepoHome) -> Result<LayerMemo> {
    create_dir(&home.state_dir())?;
    LayerMemo::open(&home.layer_db_path())
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io_path(path, e))
}

impl Repository {
    /// Creates `<home>/<fqrn>/`, keys (reusing keys already in the keys directory), the
    /// storage directory and revision 1 (an empty root directory).
    pub fn init(home: &Path, fqrn: &str, storage: &Path, opts: InitOptions) -> Result<Repository> {
        let repo_home = new_home(home, fqrn)?;
        if storage.join(root_files::MANIFEST).exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a repository (.cvmfspublished exists)",
                storage.display()
            )));
        }
        let config = init_config(&repo_home, fqrn, storage, &opts)?;
        check_auto_gc(&config)?;
        create_home_dirs(&repo_home)?;
        let keys = create_or_load_keys(&config)?;
        let store = Arc::new(LocalStore::create(&config.storage)?);
        // The storage path may have been a dangling symlink into the keys' tree: check again.
        config.check_keys_outside_storage()?;
        // Made now so that a transaction leaves a new storage as it found it (a storage
        // taken over gets it from its first transaction).
        open_lock_file(&store.collect_lock_path())?;
        publish_first_revision(&store, &keys, &config)?;
        // As `cvmfs_server mkfs`: stratum 1s may replicate the repository (push copies it).
        store
            .put_root_file(root_files::MASTER_REPLICA, root_files::MASTER_REPLICA_TEXT)
            .map_err(|e| {
                Error::io(
                    format!("{}/{}", store.describe(), root_files::MASTER_REPLICA),
                    e,
                )
            })?;
        // Written last: a home with config.json is a complete repository.
        config.save(&repo_home.config_path())?;
        Ok(Repository {
            home: repo_home,
            config,
            store,
        })
    }

    /// Takes over the repository already in `storage` (written by `cvmfs_server`, or by
    /// cvmfs-oci with a lost home): creates only its home. The keys must be the ones that
    /// sign it (`FQRN.key`, `FQRN.crt` and `FQRN.pub` in the keys directory, as in
    /// `/etc/cvmfs/keys`). The repository is checked like `check` does (signatures, every
    /// catalog, object presence) and refused on any problem, except an expired whitelist,
    /// which is re-signed when the master key is there. TTL and garbage-collection flag come
    /// from its manifest; the next publish continues its revisions, history and reflog.
    pub fn adopt(
        home: &Path,
        fqrn: &str,
        storage: &Path,
        opts: InitOptions,
    ) -> Result<(Repository, Adopted)> {
        let repo_home = new_home(home, fqrn)?;
        let mut config = init_config(&repo_home, fqrn, storage, &opts)?;
        let keys = load_keys(&config)?;
        let (manifest, report, resign) = takeover_checks(&config, &keys)?;
        // Git or rsync may have dropped the empty `data/XX` directories: a writer needs them.
        let store = Arc::new(LocalStore::create(&config.storage)?);
        let mut adopted = Adopted {
            revision: manifest.revision,
            catalogs: report.catalogs,
            entries: report.entries,
            whitelist_expires: None,
        };
        if let (true, Some(master)) = (resign, keys.master.as_ref()) {
            let days = config.whitelist_days;
            let expires = write_whitelist(&store, &keys, master, fqrn, now_unix(), days)?;
            adopted.whitelist_expires = Some(expires);
        }
        config.ttl = manifest.ttl;
        config.gc = manifest.gc;
        check_auto_gc(&config)?;
        create_home_dirs(&repo_home)?;
        // Written last: a home with config.json is a complete repository.
        config.save(&repo_home.config_path())?;
        let repo = Repository {
            home: repo_home,
            config,
            store,
        };
        Ok((repo, adopted))
    }

    /// Opens the repository `fqrn` whose home is `<home>/<fqrn>/`.
    pub fn open(home: &Path, fqrn: &str) -> Result<Repository> {
        validate_fqrn(fqrn)?;
        let repo_home = RepoHome::new(home, fqrn);
        let path = repo_home.config_path();
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "no repository {fqrn} in {} (missing {})",
                home.display(),
                path.display()
            )));
        }
        let config = Config::load(&path)?;
        if config.fqrn != fqrn {
            return Err(Error::Invalid(format!(
                "{}: names repository {:?}, expected {fqrn:?}",
                path.display(),
                config.fqrn
            )));
        }
        config.check_keys_outside_storage()?;
        let store = Arc::new(LocalStore::open(&config.storage)?);
        Ok(Repository {
            home: repo_home,
            config,
            store,
        })
    }

    pub fn fqrn(&self) -> &str {
        &self.config.fqrn
    }

    /// Looks for key files in `dir` first, for this run only (`--keys DIR` of a command other
    /// than `init`); refused inside the storage directory.
    pub fn with_keys_first(mut self, dir: &Path) -> Result<Repository> {
        let dir = std::path::absolute(dir).map_err(|e| Error::io_path(dir, e))?;
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "--keys {}: not a directory",
                dir.display()
            )));
        }
        self.config.keys_first = Some(dir);
        self.config.check_keys_outside_storage()?;
        Ok(self)
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn home(&self) -> &RepoHome {
        &self.home
    }
    pub fn store(&self) -> Arc<LocalStore> {
        self.store.clone()
    }

    /// The dedup index in `state/content.db`.
    pub fn content_index(&self) -> Result<SqliteContentIndex> {
        open_content_index(&self.home)
    }

    /// The stat cache in `state/stat.db`, for the source tree at `root` (canonical) published
    /// in chunking `mode` (`chunks MIN/AVG/MAX` or `whole`).
    pub fn stat_cache(&self, root: &Path, mode: &str) -> Result<SqliteStatCache> {
        create_dir(&self.home.state_dir())?;
        SqliteStatCache::open(&self.home.stat_db_path(), root, mode)
    }

    /// The source trees `state/stat.db` knows, with their number of files and last use.
    pub fn stat_cache_roots(&self) -> Result<Vec<crate::stat_cache::StatRoot>> {
        crate::stat_cache::roots(&self.home.stat_db_path())
    }

    /// The layer memo in `state/layers.db`.
    pub fn layer_memo(&self) -> Result<LayerMemo> {
        open_layer_memo(&self.home)
    }

    /// Starts a transaction (see [`Transaction`]); `wait` blocks on a busy lock.
    pub fn begin(&self, wait: bool) -> Result<Transaction> {
        Transaction::begin(self, wait)
    }

    /// The current manifest, parsed (signature not verified: for reading, not publishing).
    pub(crate) fn published_manifest(&self) -> Result<signer::Manifest> {
        crate::store::published_manifest(self.store.as_ref())
    }

    /// The current revision's tree, for reading only: takes no lock, so it neither waits for
    /// nor holds up a publish (a forecast, `migrate --dry-run`, changes nothing). Catalogs of
    /// the revision read stay in the storage until a gc that no longer keeps it.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let m = self.published_manifest()?;
        let root = CatalogRef {
            hash: parse_hash_field("C", &m.root_catalog)?,
            size: m.root_size,
        };
        let namespace = Namespace::open(root, &StoreObjects(self.store.as_ref()))?;
        Ok(Snapshot {
            store: self.store.clone(),
            namespace,
        })
    }

    /// Current revision, root catalog, timestamps and root catalog counters (no verification).
    pub fn info(&self) -> Result<RepoInfo> {
        let m = self.published_manifest()?;
        let root = CatalogRef {
            hash: parse_hash_field("C", &m.root_catalog)?,
            size: m.root_size,
        };
        let statistics = load_catalog(self.store.as_ref(), &root)?.statistics()?;
        let whitelist_expires = self
            .store
            .get_root_file(root_files::WHITELIST)
            .ok()
            .flatten()
            .and_then(|b| signer::Whitelist::parse(&b).ok())
            .map(|w| w.whitelist.expires);
        Ok(RepoInfo {
            fqrn: self.config.fqrn.clone(),
            storage: self.config.storage.clone(),
            public_key: self.config.public_key_path(),
            revision: m.revision,
            root_catalog: m.root_catalog,
            root_size: m.root_size,
            timestamp: m.timestamp,
            ttl: m.ttl,
            whitelist_expires,
            statistics,
        })
    }

    /// Signs a fresh whitelist valid for `config.whitelist_days`; needs the master key.
    /// Returns the new expiry (unix seconds). Waits for the repository lock, so do not call it
    /// while this process holds an open [`Transaction`].
    pub fn resign(&self) -> Result<i64> {
        self.resign_for(self.config.whitelist_days, true)
    }

    /// Like [`Repository::resign`], with a validity of `days` days; without `wait`, a held
    /// repository lock is an error ([`Error::Locked`]).
    pub fn resign_for(&self, days: u32, wait: bool) -> Result<i64> {
        let _lock = lock(&self.home.lock_path(), &self.config.fqrn, wait)?;
        let keys = load_keys(&self.config)?;
        let master = keys.master.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "master key {}.masterkey not available in {}: cannot re-sign the whitelist \
                 of {} (name the directory holding it with --keys)",
                self.config.fqrn,
                self.config.describe_key_dirs(),
                self.config.fqrn
            ))
        })?;
        let now = now_unix();
        write_whitelist(&self.store, &keys, master, &self.config.fqrn, now, days)
    }

    /// Lines of a client configuration for this repository (`/etc/cvmfs/config.d/<fqrn>.conf`).
    pub fn client_config(&self) -> Vec<String> {
        let fqrn = &self.config.fqrn;
        vec![
            format!(
                "# serve {} at http://<host>/cvmfs/{fqrn} and use CVMFS_SERVER_URL=http://<host>/cvmfs/@fqrn@",
                self.config.storage.display()
            ),
            format!("CVMFS_SERVER_URL=file://{}", self.config.storage.display()),
            format!("CVMFS_PUBLIC_KEY={}", self.config.public_key_path().display()),
            "CVMFS_HTTP_PROXY=DIRECT".to_string(),
        ]
    }
}

/// What [`Repository::adopt`] found.
#[derive(Clone, Debug)]
pub struct Adopted {
    /// The revision the repository is at; the next publish is this + 1.
    pub revision: u64,
    pub catalogs: usize,
    pub entries: u64,
    /// Set when the expired whitelist was re-signed: its new expiry (unix seconds).
    pub whitelist_expires: Option<i64>,
}

/// Everything [`Repository::adopt`] verifies before it writes anything: the repository checks
/// out (an expired whitelist only if the master key can re-sign it) and is signed with the
/// keys. Returns its manifest, the check and whether the whitelist needs re-signing.
fn takeover_checks(
    config: &Config,
    keys: &signer::RepoKeys,
) -> Result<(signer::Manifest, crate::CheckReport, bool)> {
    let fqrn = config.fqrn.as_str();
    let store = LocalStore::open(&config.storage)?;
    let manifest = current_manifest(&store)?;
    let masters = std::slice::from_ref(&keys.master_public);
    let report = crate::check::check_repository(&store, fqrn, masters, false)?;
    let resign = report.whitelist_expired && report.problems.len() == 1;
    let acceptable = report.is_ok() || (resign && keys.master.is_some());
    if !acceptable {
        let hint = if resign {
            format!(
                " (with {fqrn}.masterkey in {} it would be re-signed)",
                config.keys_dir.display()
            )
        } else {
            String::new()
        };
        return Err(takeover_refused(&store, fqrn, &report, &hint));
    }
    check_signed_with(&store, keys, &manifest, fqrn)?;
    Ok((manifest, report, resign))
}

/// The manifest in `store` (signature not checked here).
fn current_manifest(store: &LocalStore) -> Result<signer::Manifest> {
    let bytes = store
        .get_root_file(root_files::MANIFEST)
        .map_err(|e| Error::io(store.describe(), e))?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no .cvmfspublished, no repository to take over (use init without --existing)",
                store.describe()
            ))
        })?;
    Ok(signer::Manifest::parse(&bytes)
        .map_err(|e| Error::signature(format!("{}/.cvmfspublished", store.describe()), e))?
        .manifest)
}

/// The refusal of a take-over: the number of problems and the first ones.
fn takeover_refused(
    store: &LocalStore,
    fqrn: &str,
    report: &crate::CheckReport,
    hint: &str,
) -> Error {
    let first: Vec<&str> = report.problems.iter().take(3).map(String::as_str).collect();
    Error::Invalid(format!(
        "{}: not taking over {fqrn}: {} problem(s): {}{}{hint}",
        store.describe(),
        report.problems.len(),
        first.join("; "),
        if report.problems.len() > first.len() {
            "; ..."
        } else {
            ""
        }
    ))
}

/// The repository's certificate (`X`) must be `FQRN.crt`: manifests signed with the keys are
/// then accepted by clients under the same whitelist entry.
/// Largest certificate (PEM) read: one certificate is about 1 KiB.
pub(crate) const MAX_CERTIFICATE_BYTES: u64 = 1 << 20;

fn check_signed_with(
    store: &LocalStore,
    keys: &signer::RepoKeys,
    manifest: &signer::Manifest,
    fqrn: &str,
) -> Result<()> {
    let x = parse_hash_field("X", &manifest.certificate)?;
    let what = format!("{}: certificate {x}", store.describe());
    let stored = store
        .get_at_most(&x, Suffix::Certificate, stored_bound(MAX_CERTIFICATE_BYTES))
        .map_err(|e| Error::io(what.as_str(), e))?;
    let pem = catalog_writer::zlib::decompress(&stored, MAX_CERTIFICATE_BYTES)
        .map_err(|e| Error::io(what.as_str(), e))?;
    let theirs = signer::parse_certificate_pem(&pem)
        .and_then(|c| signer::certificate_fingerprint(&c))
        .map_err(|e| Error::signature(what.as_str(), e))?;
    let ours = keys
        .fingerprint()
        .map_err(|e| Error::signature(format!("certificate of {fqrn}"), e))?;
    if theirs != ours {
        return Err(Error::Invalid(format!(
            "{what} (fingerprint {theirs}) is not {fqrn}.crt (fingerprint {ours}): take over \
             with the keys that sign the repository"
        )));
    }
    Ok(())
}

/// Automatic garbage collection needs a garbage-collectable repository.
fn check_auto_gc(config: &Config) -> Result<()> {
    if config.auto_gc_seconds.is_some() && !config.gc {
        return Err(Error::Invalid(format!(
            "automatic garbage collection needs a garbage-collectable repository ({}: init \
             --gc, manifest G=yes)",
            config.fqrn
        )));
    }
    Ok(())
}

/// The configuration of a new repository, keys directory checked against the storage.
fn init_config(
    repo_home: &RepoHome,
    fqrn: &str,
    storage: &Path,
    opts: &InitOptions,
) -> Result<Config> {
    let storage = std::path::absolute(storage).map_err(|e| Error::io_path(storage, e))?;
    let mut config = Config::new(fqrn, &storage, repo_home.dir());
    if let Some(k) = &opts.keys_dir {
        config.keys_dir = std::path::absolute(k).map_err(|e| Error::io_path(k, e))?;
    }
    config.ttl = opts.ttl;
    config.whitelist_days = opts.whitelist_days;
    config.chunking = opts.chunking.clone();
    config.max_catalog_entries = opts.max_catalog_entries;
    config.gc = opts.gc;
    config.memory_budget = opts.memory_budget;
    config.auto_gc_seconds = opts.auto_gc_seconds;
    config.check_keys_outside_storage()?;
    Ok(config)
}

/// Whitelist, empty root catalog with revision 1 (clients special-case 0), history, manifest.
fn publish_first_revision(
    store: &LocalStore,
    keys: &signer::RepoKeys,
    config: &Config,
) -> Result<()> {
    let now = now_unix();
    let master = keys.master.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: master key missing, cannot sign the whitelist",
            config.keys_dir.display()
        ))
    })?;
    write_whitelist(
        store,
        keys,
        master,
        &config.fqrn,
        now,
        config.whitelist_days,
    )?;
    let commit = Namespace::empty(now).commit(
        &CommitOptions {
            revision: 1,
            timestamp: now,
            ttl: config.ttl,
            max_entries: config.max_catalog_entries,
            apply_dirtab: false,
        },
        &StoreObjects(store),
    )?;
    publish_revision(&PublishInput {
        store,
        objects: store,
        keys,
        config,
        root: commit.root,
        revision: 1,
        timestamp: now,
        previous: None,
        expected_manifest: None,
        history_change: HistoryChange::Publish(None),
        // As `cvmfs_server mkfs`: its skeleton, to be filled in with `repoinfo --set`.
        meta_info: Some(store_meta_info(store, SKELETON.as_bytes())?.to_hex()),
    })?;
    Ok(())
}

pub(crate) fn parse_hash_field(field: &str, text: &str) -> Result<ContentHash> {
    ContentHash::from_hex(text).ok_or_else(|| {
        Error::corrupt(
            ".cvmfspublished",
            format!("{field} is not a hash text: {text:?}"),
        )
    })
}

pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io_path(path, e))
}

/// Takes the exclusive publisher lock (released when the file is dropped).
pub(crate) fn lock(path: &Path, fqrn: &str, wait: bool) -> Result<File> {
    let file = open_lock_file(path)?;
    let taken = if wait {
        file.lock().map(|()| true)
    } else {
        try_lock(file.try_lock())
    }
    .map_err(|e| Error::io_path(path, e))?;
    if !taken {
        return Err(Error::Locked {
            fqrn: fqrn.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Who takes the storage's collection lock, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageUse {
    /// A transaction, shared with other publishers: from its first dedup decision to its
    /// commit it relies on the objects it found staying.
    Publish,
    /// Garbage collection, exclusive: no publisher of any home may deduplicate against an
    /// object it is about to delete.
    Collect,
}

/// Takes the collection lock of the storage ([`LocalStore::collect_lock_path`], released when
/// the file is dropped). The home's lock orders publishers of one home; this one is in the
/// storage because publishers with other homes (other machines, `adopt`) may write it too.
pub(crate) fn storage_lock(
    store: &LocalStore,
    fqrn: &str,
    usage: StorageUse,
    wait: bool,
) -> Result<File> {
    let path = store.collect_lock_path();
    let file = open_lock_file(&path)?;
    let taken = match (usage, wait) {
        (StorageUse::Publish, true) => file.lock_shared().map(|()| true),
        (StorageUse::Collect, true) => file.lock().map(|()| true),
        (StorageUse::Publish, false) => try_lock(file.try_lock_shared()),
        (StorageUse::Collect, false) => try_lock(file.try_lock()),
    }
    .map_err(|e| Error::io_path(&path, e))?;
    if !taken {
        let holder = match usage {
            StorageUse::Publish => "garbage collection (or a push --delete)",
            StorageUse::Collect => "a publisher (of this or another home)",
        };
        return Err(Error::StorageBusy {
            fqrn: fqrn.to_string(),
            holder,
            path,
        });
    }
    Ok(file)
}

fn try_lock(r: std::result::Result<(), std::fs::TryLockError>) -> std::io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

pub(crate) fn load_keys(config: &Config) -> Result<signer::RepoKeys> {
    signer::RepoKeys::load_from(&config.key_dirs(), &config.fqrn).map_err(|e| {
        Error::signature(
            format!("keys of {} in {}", config.fqrn, config.describe_key_dirs()),
            e,
        )
    })
}

/// Reuses keys already in the keys directory (e.g. re-creating a repository), else makes new ones.
fn create_or_load_keys(config: &Config) -> Result<signer::RepoKeys> {
    if config
        .keys_dir
        .join(format!("{}.key", config.fqrn))
        .exists()
    {
        return load_keys(config);
    }
    // `write` creates the directory itself, 0700 whatever the umask.
    let keys = signer::RepoKeys::generate(&config.fqrn)
        .map_err(|e| Error::signature(format!("generating keys for {}", config.fqrn), e))?;
    keys.write(&config.keys_dir, &config.fqrn).map_err(|e| {
        Error::signature(format!("writing keys to {}", config.keys_dir.display()), e)
    })?;
    Ok(keys)
}

fn write_whitelist(
    store: &LocalStore,
    keys: &signer::RepoKeys,
    master: &openssl::pkey::PKey<openssl::pkey::Private>,
    fqrn: &str,
    now: i64,
    days: u32,
) -> Result<i64> {
    let fingerprint = keys
        .fingerprint()
        .map_err(|e| Error::signature("certificate fingerprint", e))?;
    let whitelist = signer::Whitelist::new(fqrn, fingerprint, now, days);
    let bytes = whitelist
        .sign(master)
        .map_err(|e| Error::signature(".cvmfswhitelist", e))?;
    store
        .put_root_file(root_files::WHITELIST, &bytes)
        .map_err(|e| Error::io(format!("{}/.cvmfswhitelist", store.describe()), e))?;
    Ok(whitelist.expires)
}

/// Everything needed to finish a revision once its catalogs are stored.
pub(crate) struct PublishInput<'a> {
    /// Root files, `syncfs` and the compare-and-swap.
    pub store: &'a LocalStore,
    /// Where the certificate and history objects go (a transaction's tracking store).
    pub objects: &'a dyn ObjectStore,
    pub keys: &'a signer::RepoKeys,
    pub config: &'a Config,
    pub root: CatalogRef,
    pub revision: u64,
    pub timestamp: i64,
    /// The manifest being replaced (`None` for the first revision).
    pub previous: Option<&'a signer::Manifest>,
    /// Exact bytes `.cvmfspublished` must still have (compare-and-swap); `None` = must not exist.
    pub expected_manifest: Option<&'a [u8]>,
    /// How the history records the revision.
    pub history_change: HistoryChange<'a>,
    /// The meta-info object (`M`) the manifest names, if any.
    pub meta_info: Option<String>,
}

/// What the history database records for a new revision.
pub(crate) enum HistoryChange<'a> {
    /// A publish: the revision becomes `trunk`, the old `trunk` becomes `trunk-previous`; and
    /// the tag named, if one is (moved when it names an earlier revision).
    Publish(Option<&'a crate::tags::NewTag>),
    /// A rollback to this tag (see [`History::roll_back`]).
    RollBack(&'a crate::history::Tag),
}

/// Certificate → history → sync → compare-and-swap → reflog → signed manifest. Returns the
/// new history object (`H`).
pub(crate) fn publish_revision(p: &PublishInput<'_>) -> Result<ContentHash> {
    let store = p.store;
    let fqrn = p.config.fqrn.as_str();
    let pem = p
        .keys
        .certificate_pem()
        .map_err(|e| Error::signature("repository certificate", e))?;
    let cert_obj = catalog_writer::zlib::compress(pem.as_ref());
    let cert = put_named(p.objects, &cert_obj, Suffix::Certificate, "certificate")?;

    let old_history = match p.previous.and_then(|m| m.history.as_deref()) {
        Some(text) => Some(parse_hash_field("H", text)?),
        None => None,
    };
    let mut history = match &old_history {
        Some(h) => History::load(p.objects, h)?,
        None => History::create(fqrn)?,
    };
    if let Some(h) = &old_history {
        history.set_previous_revision(h)?;
    }
    match p.history_change {
        HistoryChange::Publish(tag) => {
            history.advance_trunk(p.root.hash, p.revision, p.timestamp, p.root.size)?;
            if let Some(tag) = tag {
                history.set_tag(&crate::history::Tag {
                    name: tag.name.clone(),
                    hash: p.root.hash,
                    revision: p.revision,
                    timestamp: p.timestamp,
                    description: tag.description.clone(),
                    size: p.root.size,
                })?;
            }
        }
        HistoryChange::RollBack(target) => history.roll_back(
            target,
            &crate::history::Tag {
                hash: p.root.hash,
                revision: p.revision,
                timestamp: p.timestamp,
                size: p.root.size,
                ..target.clone()
            },
        )?,
    }
    let history = history.store(p.objects)?;
    fault_point("after-history");

    // The reflog is prepared in memory (its hash goes into Y) but written only right before
    // the manifest: the two root files can only disagree if we die between two renames.
    let mut refs = vec![
        (p.root.hash, RefKind::Catalog),
        (cert, RefKind::Certificate),
        (history, RefKind::History),
    ];
    // As cvmfs's signing tool: the meta-info is listed again with every revision.
    if let Some(m) = p.meta_info.as_deref() {
        refs.push((parse_hash_field("M", m)?, RefKind::MetaInfo));
    }
    let reflog = updated_reflog(store, fqrn, &refs, p.timestamp)?;
    store
        .sync()
        .map_err(|e| Error::io(format!("{}: syncfs", store.describe()), e))?;

    let manifest = signer::Manifest {
        root_catalog: p.root.hash.to_hex(),
        root_size: p.root.size,
        ttl: p.config.ttl,
        revision: p.revision,
        gc: p.config.gc,
        alt: false,
        fqrn: fqrn.to_string(),
        certificate: cert.to_hex(),
        history: Some(history.to_hex()),
        timestamp: p.timestamp,
        meta_info: p.meta_info.clone(),
        reflog: Some(ContentHash::of(&reflog).to_hex()),
    };
    replace_manifest(store, p.keys, &manifest, Some(&reflog), p.expected_manifest)?;
    Ok(history)
}

/// What a change of the published state starts from: the repository's lock and the storage's
/// publish lock (new objects must survive a `gc` of another home until the manifest names
/// them, as a transaction's objects do), the keys, and the verified current manifest.
pub(crate) struct Amendable {
    _lock: File,
    _storage: File,
    pub store: Arc<LocalStore>,
    pub keys: signer::RepoKeys,
    /// Exact bytes of `.cvmfspublished` (for the compare-and-swap).
    pub base_bytes: Vec<u8>,
    pub base: signer::Manifest,
}

impl Repository {
    pub(crate) fn amendable(&self, wait: bool) -> Result<Amendable> {
        let fqrn = self.fqrn();
        let lock = lock(&self.home().lock_path(), fqrn, wait)?;
        let store = self.store();
        let storage = storage_lock(&store, fqrn, StorageUse::Publish, wait)?;
        let keys = load_keys(self.config())?;
        let (base_bytes, base) = crate::txn::verified_manifest(&store, fqrn, &keys)?;
        Ok(Amendable {
            _lock: lock,
            _storage: storage,
            store,
            keys,
            base_bytes,
            base,
        })
    }
}

/// The current `.cvmfsreflog` (or a new one) plus `refs`, as file bytes.
pub(crate) fn updated_reflog(
    store: &LocalStore,
    fqrn: &str,
    refs: &[(ContentHash, RefKind)],
    now: i64,
) -> Result<Vec<u8>> {
    let what = format!("{}/.cvmfsreflog", store.describe());
    let mut log = match store
        .get_root_file(root_files::REFLOG)
        .map_err(|e| Error::io(what.as_str(), e))?
    {
        Some(bytes) => Reflog::from_bytes(&bytes, &what)?,
        None => Reflog::create(fqrn)?,
    };
    for (hash, kind) in refs {
        log.add(hash, *kind, now)?;
    }
    log.to_bytes()
}

/// Signs `manifest` and replaces `.cvmfsreflog` (if given), then `.cvmfspublished`, unless
/// the manifest is no longer `expected` (`None`: must not exist) ([`Error::Conflict`]).
pub(crate) fn replace_manifest(
    store: &LocalStore,
    keys: &signer::RepoKeys,
    manifest: &signer::Manifest,
    reflog: Option<&[u8]>,
    expected: Option<&[u8]>,
) -> Result<()> {
    let signed = manifest
        .sign(&keys.repo_key)
        .map_err(|e| Error::signature(".cvmfspublished", e))?;
    // Last check before anything visible changes: a lost race must not touch the winner's
    // files. Under the commit lock, so that no publisher of another home passes its check
    // between ours and our rename.
    let _commit = store.commit_lock()?;
    compare_and_swap_check(store, expected)?;
    fault_point("before-manifest");
    if let Some(reflog) = reflog {
        store
            .put_root_file(root_files::REFLOG, reflog)
            .map_err(|e| Error::io(format!("{}/.cvmfsreflog", store.describe()), e))?;
        fault_point("after-reflog");
    }
    store
        .put_root_file(root_files::MANIFEST, &signed)
        .map_err(|e| Error::io(format!("{}/.cvmfspublished", store.describe()), e))
}

pub(crate) fn compare_and_swap_check(store: &LocalStore, expected: Option<&[u8]>) -> Result<()> {
    let what = format!("{}/.cvmfspublished", store.describe());
    let current = store
        .get_root_file(root_files::MANIFEST)
        .map_err(|e| Error::io(what.as_str(), e))?;
    if current.as_deref() == expected {
        return Ok(());
    }
    Err(Error::Conflict {
        path: store.root().join(root_files::MANIFEST),
    })
}
