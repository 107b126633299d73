//! SQLite databases that travel as bytes (history, reflog, catalogs being inspected): opened
//! from a private temporary directory, serialized back by closing and reading the file.
//!
//! Each database gets a directory `cvmfs-oci-db*` of its own under the scratch root, holding
//! the file and `owner.lock`, which the owning process keeps locked (`flock`, exclusive) for
//! the life of the [`TempDb`]. Dropping the `TempDb` removes the directory; a process killed
//! with SIGKILL or by the OOM killer cannot, but the kernel releases its locks, so [`sweep`]
//! removes exactly the directories whose lock it can take: never one a live process (another
//! publisher of any repository, any home) is using, whatever pids have been reused since. A
//! lock works across pid namespaces (containers sharing the directory) too, where pids would
//! not.
//!
//! The scratch root is `<home>/tmp` when the binary sets it ([`set_scratch_root`]), else
//! `TMPDIR`. The home because a catalog being read can be gigabytes: `/tmp` is often a tmpfs,
//! whose pages are memory (charged to the process's cgroup), and is shared by every user,
//! while the home is the user's own, on the file system that already holds the repository's
//! state and was sized for it, and is where a user looks for what the tool keeps. It also
//! needs nothing new: the home already has to support SQLite and `flock` (`content.db`, the
//! publisher lock). `TMPDIR` remains for library users and tests, and as the fallback when
//! the home's `tmp` cannot be made (a read-only home used by `check --storage`).

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tempfile::TempDir;

/// Names every temporary database directory, those of versions before the lock too.
const PREFIX: &str = "cvmfs-oci-db";
/// The file whose `flock` says the directory's owner is alive.
const LOCK: &str = "owner.lock";
/// The lock file before it is locked: renamed to [`LOCK`] once locked, so that a sweeper never
/// finds [`LOCK`] unlocked in a directory whose owner is alive but has not locked it yet.
const LOCK_STAGED: &str = "owner.lock.new";
/// A directory without [`LOCK`] is being made right now, or its maker was killed between
/// making and locking it, or it comes from a version before the lock (whose process may still
/// run): removed only when its last change is this old.
const LOCKLESS_GRACE: Duration = Duration::from_secs(24 * 3600);

static SCRATCH_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Makes `dir` (created on first use, private) the parent of the temporary databases this
/// process makes from now on; false if a root was set already (it stays).
pub fn set_scratch_root(dir: PathBuf) -> bool {
    SCRATCH_ROOT.set(dir).is_ok()
}

/// Where the next temporary database goes: the root set by [`set_scratch_root`] if it exists
/// or can be made, else `TMPDIR` (a home that cannot be written must not stop a read-only
/// command such as `check --storage`).
fn scratch_root() -> PathBuf {
    match SCRATCH_ROOT.get() {
        Some(dir) if make_private_dir(dir).is_ok() => dir.clone(),
        _ => std::env::temp_dir(),
    }
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new directory for one database under `root`, with its owner lock held.
fn owned_dir(root: &Path) -> io::Result<(TempDir, File)> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(root)?;
    let staged = dir.path().join(LOCK_STAGED);
    let owner = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    // Nobody else opens the staged name: this never waits.
    owner.lock()?;
    fs::rename(&staged, dir.path().join(LOCK))?;
    Ok((dir, owner))
}

/// [`owned_dir`] in `root`, else in `TMPDIR`: a scratch root that exists but cannot be
/// written (a home mounted read only, or another user's, used by `check --storage`) must not
/// stop a command that only reads.
fn owned_dir_or_tmpdir(root: &Path) -> io::Result<(TempDir, File)> {
    let first = match owned_dir(root) {
        Ok(owned) => return Ok(owned),
        Err(e) => e,
    };
    let tmp = std::env::temp_dir();
    if tmp == root {
        return Err(first);
    }
    owned_dir(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("{first}; then in {}: {e}", tmp.display())))
}

/// What [`sweep`] found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Directories removed (their owner gone).
    pub removed: usize,
    /// Directories kept: locked by a live owner, or without a lock and too young to tell.
    pub kept: usize,
    /// Directories that could not be examined or removed, each error naming its path.
    pub failed: Vec<Error>,
}

/// Removes the temporary database directories under `root` whose owner is gone (see the
/// module comment); directories of other users and anything not named `cvmfs-oci-db*` are
/// never touched. A missing `root` holds nothing.
pub fn sweep(root: &Path) -> Result<Swept> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(Error::io_path(root, e)),
    };
    let now = SystemTime::now();
    let mut swept = Swept::default();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_path(root, e))?;
        if !entry.file_name().as_bytes().starts_with(PREFIX.as_bytes()) {
            continue;
        }
        match reclaim(&entry.path(), now) {
            Ok(Some(true)) => swept.removed += 1,
            Ok(Some(false)) => swept.kept += 1,
            Ok(None) => {}
            Err(e) => swept.failed.push(e),
        }
    }
    Ok(swept)
}

/// Removes `dir` if its owner is gone: `Some(true)` removed, `Some(false)` kept (in use, or
/// too young to tell), `None` not ours (another user's, not a directory, already gone).
fn reclaim(dir: &Path, now: SystemTime) -> Result<Option<bool>> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io_path(dir, e)),
    };
    // SAFETY: geteuid has no preconditions.
    if !meta.is_dir() || meta.uid() != unsafe { libc::geteuid() } {
        return Ok(None);
    }
    let lock_path = dir.join(LOCK);
    // Held while the directory is removed, so that a concurrent sweeper finds it in use.
    let _lock = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
    {
        Ok(file) => match file.try_lock() {
            Ok(()) => Some(file),
            Err(TryLockError::WouldBlock) => return Ok(Some(false)),
            Err(TryLockError::Error(e)) => return Err(Error::io_path(&lock_path, e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let changed = meta.modified().unwrap_or(now);
            if now.duration_since(changed).unwrap_or_default() < LOCKLESS_GRACE {
                return Ok(Some(false));
            }
            None
        }
        Err(e) => return Err(Error::io_path(&lock_path, e)),
    };
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(Some(true)),
        // Another sweeper was first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io_path(dir, e)),
    }
}

pub(crate) struct TempDb {
    conn: Connection,
    path: PathBuf,
    what: String,
    // Fields drop in this order: the connection closes, the directory goes, and only then is
    // the lock that kept sweepers away released.
    _dir: TempDir,
    _owner: File,
}

impl TempDb {
    /// A new, empty database; `what` names it in error messages.
    pub(crate) fn create(what: &str) -> Result<TempDb> {
        TempDb::with_bytes(what, None, false)
    }

    /// Opens a copy of `bytes`; `read_only` forbids changes.
    pub(crate) fn from_bytes(what: &str, bytes: &[u8], read_only: bool) -> Result<TempDb> {
        TempDb::with_bytes(what, Some(bytes), read_only)
    }

    fn with_bytes(what: &str, bytes: Option<&[u8]>, read_only: bool) -> Result<TempDb> {
        TempDb::in_root(&scratch_root(), what, bytes, read_only)
    }

    fn in_root(root: &Path, what: &str, bytes: Option<&[u8]>, read_only: bool) -> Result<TempDb> {
        let (dir, owner) = owned_dir_or_tmpdir(root).map_err(|e| {
            Error::io(
                format!("{what}: temporary directory in {}", root.display()),
                e,
            )
        })?;
        let path = dir.path().join("db.sqlite");
        if let Some(b) = bytes {
            fs::write(&path, b).map_err(|e| Error::io(format!("{what}: {}", path.display()), e))?;
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| Error::sql(what, e))?;
        if bytes.is_some() {
            // Fetched bytes: a view or trigger in them would run on our queries.
            let object = catalog_writer::sql::executable_schema_object(&conn)
                .map_err(|e| Error::sql(what, e))?;
            if let Some(object) = object {
                return Err(Error::corrupt(
                    what,
                    format!("holds a {object} (CVMFS databases hold only tables and indexes)"),
                ));
            }
        }
        if !read_only {
            // A scratch file read back whole: durability comes from storing its bytes, so no
            // journal file and no fsyncs (they were ~40 ms at the end of every publish).
            // MEMORY keeps the rollback-journal file format (header bytes 18/19 == 1).
            conn.execute_batch("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
                .map_err(|e| Error::sql(what, e))?;
        }
        Ok(TempDb {
            conn,
            path,
            what: what.to_string(),
            _dir: dir,
            _owner: owner,
        })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A value of the `properties` table every cvmfs SQLite database has.
    pub(crate) fn property(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row("SELECT value FROM properties WHERE key = ?1", [key], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(|e| Error::sql(self.what(), e))
    }

    /// Sets a value of the `properties` table.
    pub(crate) fn set_property(&self, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO properties (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .map(|_| ())
            .map_err(|e| Error::sql(self.what(), e))
    }

    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Closes the database (rollback journal, nothing pending) and returns the file bytes.
    pub(crate) fn into_bytes(self) -> Result<Vec<u8>> {
        let TempDb {
            conn,
            path,
            what,
            _dir,
            _owner,
        } = self;
        conn.close()
            .map_err(|(_, e)| Error::sql(what.as_str(), e))?;
        let bytes =
            fs::read(&path).map_err(|e| Error::io(format!("{what}: {}", path.display()), e));
        // The directory first, then the lock (see the struct).
        drop(_dir);
        drop(_owner);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs_in(root: &Path) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs
    }

    /// Fetched databases (history, reflog, catalogs) with a view or trigger are refused before
    /// any query could run one: a view named `tags` over an endless recursive query made every
    /// command reading the history spin for ever.
    #[test]
    fn fetched_databases_with_code_in_their_schema_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE tags_t (name TEXT); CREATE VIEW tags AS SELECT * FROM tags_t WHERE \
             (WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
              SELECT count(*) FROM r) > 0;",
        )
        .unwrap();
        drop(conn);
        let bytes = fs::read(&path).unwrap();
        for read_only in [true, false] {
            let err = TempDb::from_bytes("history h", &bytes, read_only)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("history h") && err.contains("holds a view \"tags\""),
                "{err}"
            );
        }
        let plain = Connection::open_in_memory().unwrap();
        plain
            .execute_batch("CREATE TABLE tags (name TEXT);")
            .unwrap();
        let bytes = plain.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
        assert!(TempDb::from_bytes("history h", &bytes, true).is_ok());
    }

    /// What a SIGKILL leaves: the directory and its lock file, and nobody holding the lock.
    fn abandoned(root: &Path) -> PathBuf {
        let db = TempDb::in_root(root, "abandoned", None, false).unwrap();
        let TempDb {
            conn, _dir, _owner, ..
        } = db;
        drop(conn);
        let path = _dir.keep();
        drop(_owner);
        path
    }

    #[test]
    fn a_dead_owners_directory_goes_and_a_live_ones_stays() {
        let root = tempfile::tempdir().unwrap();
        let live = TempDb::in_root(root.path(), "live", None, false).unwrap();
        live.conn()
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        let dead = abandoned(root.path());
        assert!(dead.join("db.sqlite").exists());
        assert_eq!(dirs_in(root.path()).len(), 2);

        let swept = sweep(root.path()).unwrap();
        assert_eq!((swept.removed, swept.kept), (1, 1));
        assert!(swept.failed.is_empty(), "{:?}", swept.failed);
        assert!(!dead.exists());
        // The survivor still works and still serializes.
        assert!(!live.into_bytes().unwrap().is_empty());
        assert!(
            dirs_in(root.path()).is_empty(),
            "drop removes the directory"
        );
    }

    #[test]
    fn a_directory_without_a_lock_goes_only_once_a_day_old() {
        let root = tempfile::tempdir().unwrap();
        let (young, old) = (
            root.path().join("cvmfs-oci-dbYoung"),
            root.path().join("cvmfs-oci-dbOld1"),
        );
        let other = root.path().join("unrelated");
        for dir in [&young, &old, &other] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join("db.sqlite"), b"x").unwrap();
        }
        let day_ago = SystemTime::now() - LOCKLESS_GRACE - Duration::from_secs(60);
        File::open(&old).unwrap().set_modified(day_ago).unwrap();
        File::open(&other).unwrap().set_modified(day_ago).unwrap();

        let swept = sweep(root.path()).unwrap();
        assert_eq!((swept.removed, swept.kept), (1, 1));
        assert_eq!(dirs_in(root.path()), vec![young, other]);
    }

    #[test]
    fn a_missing_root_holds_nothing() {
        let root = tempfile::tempdir().unwrap();
        let swept = sweep(&root.path().join("tmp")).unwrap();
        assert_eq!((swept.removed, swept.kept), (0, 0));
    }

    #[test]
    fn a_root_that_cannot_hold_directories_falls_back_to_tmpdir() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the root should be: nothing can be made in it, even by root.
        let root = tmp.path().join("tmp");
        fs::write(&root, b"").unwrap();
        let db = TempDb::in_root(&root, "fallback", None, false).unwrap();
        assert!(db._dir.path().starts_with(std::env::temp_dir()));
        db.conn()
            .execute_batch("CREATE TABLE t (x INTEGER);")
            .unwrap();
        assert!(!db.into_bytes().unwrap().is_empty());
    }
}
