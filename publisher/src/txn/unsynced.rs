//! The unsynced mark (`state/unsynced` in the home): which boot wrote objects since when that
//! no `syncfs` has made durable yet.
//!
//! A transaction's objects are made durable by the one `syncfs` before its manifest. A run
//! killed before that leaves objects that are whole in the page cache, and the kernel writes
//! them back in time. A power loss or a kernel crash, though, can leave them empty or torn on
//! disk (ext4's delayed allocation), and the rerun would take them as stored: an object whose
//! name exists is never written again. So a transaction writes the mark durably when it starts
//! and removes it once its objects are synced; the next transaction that finds a mark left:
//! - from this boot: the leftovers are whole in the page cache, one `syncfs` makes them durable;
//! - from another boot (or unreadable): re-hashes every object written since the mark's time
//!   and deletes those whose bytes no longer hash to their name, so they are stored again.

use crate::error::{Error, Result};
use crate::local::{parse_object_name, LocalStore};
use crate::repo::now_unix;
use crate::store::ObjectStore;
use catalog_writer::hash::{ContentHash, Suffix};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the recovery after another boot's unfinished transaction found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Objects written since the mark's time, re-hashed.
    pub verified: usize,
    /// Those whose bytes did not hash to their name: deleted.
    pub removed: Vec<(ContentHash, Suffix)>,
}

/// A mark: the boot that wrote it and when its transaction started (unix seconds).
struct Mark {
    boot: Option<String>,
    since: i64,
}

fn mark_path(state_dir: &Path) -> PathBuf {
    state_dir.join("unsynced")
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel tells it.
pub(crate) fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

/// Reads the mark; `None` when there is none. One that cannot be parsed counts as another
/// boot's, written when the file was last modified.
fn read_mark(path: &Path) -> Result<Option<Mark>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io_path(path, e)),
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let since = field("since ").and_then(|s| s.parse::<i64>().ok());
    let since = match since {
        Some(s) => s,
        None => fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
    };
    let boot = field("boot ").filter(|_| field("since ").is_some());
    Ok(Some(Mark { boot, since }))
}

/// Writes the mark durably (temp file, fsync, rename, fsync of the directory).
fn write_mark(path: &Path, mark: &Mark) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = format!(
        "boot {}\nsince {}\n",
        mark.boot.as_deref().unwrap_or("unknown"),
        mark.since
    );
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| Error::io_path(path, e))
}

/// Called when a transaction starts (holding the home's lock): deals with a mark left by an
/// earlier one (see the module doc), then marks this one. Returns the recovery, if another
/// boot's objects had to be verified.
pub(crate) fn begin(state_dir: &Path, store: &LocalStore) -> Result<Option<Recovery>> {
    fs::create_dir_all(state_dir).map_err(|e| Error::io_path(state_dir, e))?;
    let path = mark_path(state_dir);
    let boot = boot_id();
    let recovery = match read_mark(&path)? {
        None => None,
        Some(old) if old.boot.is_some() && old.boot == boot => {
            store
                .sync()
                .map_err(|e| Error::io(format!("{}: syncfs", store.describe()), e))?;
            None
        }
        Some(old) => Some(verify_since(store, old.since)?),
    };
    write_mark(
        &path,
        &Mark {
            boot,
            since: now_unix(),
        },
    )?;
    Ok(recovery)
}

/// Called once the transaction's objects are durable: removes the mark.
pub(crate) fn clear(state_dir: &Path) -> Result<()> {
    let path = mark_path(state_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path(&path, e)),
    }
}

/// Re-hashes the objects modified since `since` (a second of slack for coarse clocks) and
/// deletes those whose bytes do not hash to their name.
fn verify_since(store: &LocalStore, since: i64) -> Result<Recovery> {
    let limit = UNIX_EPOCH + Duration::from_secs(since.saturating_sub(1).max(0) as u64);
    let mut recovery = Recovery::default();
    for prefix in 0..=255u8 {
        let dir = store.root().join(format!("data/{prefix:02x}"));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_path(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io_path(&dir, e))?;
            let Some((hash, suffix)) = parse_object_name(prefix, &entry.file_name()) else {
                continue;
            };
            if !modified_since(&entry, limit) {
                continue;
            }
            recovery.verified += 1;
            let path = entry.path();
            let intact = fs::read(&path).is_ok_and(|bytes| ContentHash::of(&bytes) == hash);
            if !intact {
                match fs::remove_file(&path) {
                    Ok(()) => recovery.removed.push((hash, suffix)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io_path(&path, e)),
                }
            }
        }
    }
    Ok(recovery)
}

/// Whether the directory entry's file changed at or after `limit` (the status change time:
/// writing, linking and renaming set it, and nothing in user space can set it back).
fn modified_since(entry: &fs::DirEntry, limit: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    entry.metadata().is_ok_and(|m| {
        let ctime = UNIX_EPOCH + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32);
        ctime >= limit
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage in a directory of its own (tests run in parallel threads of one process).
    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("storage")).unwrap();
        (dir, store)
    }

    #[test]
    fn another_boots_torn_objects_are_deleted_and_whole_ones_kept() {
        let (dir, store) = store();
        let state = dir.path().join("state");
        let old = ContentHash::of(b"old object");
        store.put_new(&old, Suffix::None, b"old object").unwrap();
        assert!(begin(&state, &store).unwrap().is_none(), "no mark yet");
        let whole = ContentHash::of(b"whole object");
        store
            .put_new(&whole, Suffix::None, b"whole object")
            .unwrap();
        let torn = ContentHash::of(b"torn object");
        store
            .put_new(&torn, Suffix::Catalog, b"torn object")
            .unwrap();
        // A power loss: the file is there, its bytes are not.
        fs::write(store.object_path(&torn, Suffix::Catalog), b"").unwrap();
        // The mark as another boot left it.
        let since = read_mark(&mark_path(&state)).unwrap().unwrap().since;
        write_mark(
            &mark_path(&state),
            &Mark {
                boot: Some("another-boot".into()),
                since,
            },
        )
        .unwrap();
        let recovery = begin(&state, &store).unwrap().expect("recovered");
        assert_eq!(recovery.removed, vec![(torn, Suffix::Catalog)]);
        assert!(recovery.verified >= 2, "{recovery:?}");
        assert!(store.object_path(&whole, Suffix::None).exists());
        assert!(!store.object_path(&torn, Suffix::Catalog).exists());
        // This boot's mark now: a second start verifies nothing.
        assert!(begin(&state, &store).unwrap().is_none());
        clear(&state).unwrap();
        assert!(!mark_path(&state).exists());
        clear(&state).unwrap();
    }

    #[test]
    fn an_unreadable_mark_counts_as_another_boots() {
        let (dir, store) = store();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(mark_path(&state), b"garbage").unwrap();
        let torn = ContentHash::of(b"torn");
        store.put_new(&torn, Suffix::None, b"torn").unwrap();
        fs::write(store.object_path(&torn, Suffix::None), b"x").unwrap();
        let recovery = begin(&state, &store).unwrap().expect("recovered");
        assert_eq!(recovery.removed, vec![(torn, Suffix::None)]);
    }
}
