//! `LocalStore`: a stratum-0 storage directory on a local file system.

use crate::error::{Error, Result};
use crate::store::{read_at_most, root_files, ObjectStore};
use catalog_writer::hash::{ContentHash, Suffix};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Objects under `<dir>/data/XX/…`, scratch files in `<dir>/data/txn`, root files in `<dir>`.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    counter: AtomicU64,
    /// Start of this instance's scratch file names: `tmp.<pid>.` (or with a scope, see
    /// [`LocalStore::scoped`], so one transaction's leftovers can be told apart).
    temp_prefix: String,
    /// Bytes of small objects written since writeback was last started (see
    /// [`LocalStore::note_small_write`]).
    unsynced: AtomicU64,
    /// A background `syncfs` is running.
    syncing: Arc<AtomicBool>,
    /// Bytes of small objects after which a background `syncfs` starts.
    sync_every: u64,
    /// Objects are written as unnamed files (`O_TMPFILE`) and linked into place; cleared for
    /// good when the file system (or a missing `/proc`) cannot.
    unnamed: AtomicBool,
    /// Unnamed files are linked by descriptor (`AT_EMPTY_PATH`); cleared for good when the
    /// kernel wants a capability for that (before Linux 6.10), then through `/proc/self/fd`.
    link_by_fd: AtomicBool,
    /// `data/00`..`data/ff`, each opened when first written to or asked about, shared with
    /// [`scoped`](Self::scoped) handles: object files are created and looked up relative to
    /// them, so the kernel does not walk the storage path for every object.
    dirs: Arc<ObjectDirs>,
}

/// The open object directories of a store, by the first byte of the hash.
#[derive(Debug)]
struct ObjectDirs([OnceLock<File>; 256]);

impl Default for ObjectDirs {
    fn default() -> ObjectDirs {
        ObjectDirs(std::array::from_fn(|_| OnceLock::new()))
    }
}

/// Numbers the scopes handed out by [`LocalStore::scoped`] within this process.
static SCOPES: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// Creates `dir` (if needed) with `data/00`..`data/ff` and `data/txn`, and nothing else.
    pub fn create(dir: &Path) -> Result<LocalStore> {
        let data = dir.join("data");
        for i in 0..=255u8 {
            let sub = data.join(format!("{i:02x}"));
            fs::create_dir_all(&sub).map_err(|e| Error::io_path(&sub, e))?;
        }
        let txn = data.join("txn");
        fs::create_dir_all(&txn).map_err(|e| Error::io_path(&txn, e))?;
        LocalStore::open(dir)
    }

    /// The storage's collection lock: publishers hold it shared, `gc` exclusive. It is in the
    /// storage because publishers with other homes may write the same storage; next to the
    /// scratch files, of which `gc` removes only `tmp.*`.
    pub fn collect_lock_path(&self) -> PathBuf {
        self.root.join("data/txn/collect.lock")
    }

    /// Takes the storage's commit lock, exclusive, until the file is dropped: a lock on the
    /// `data/txn` directory itself (no file is added to the storage). Publishers of every
    /// home sharing the storage hold it from their last compare-and-swap check of
    /// `.cvmfspublished` to its rename, so two of them cannot both pass the check.
    pub(crate) fn commit_lock(&self) -> Result<fs::File> {
        let dir = self.root.join("data/txn");
        let file = fs::File::open(&dir).map_err(|e| Error::io_path(&dir, e))?;
        file.lock().map_err(|e| Error::io_path(&dir, e))?;
        Ok(file)
    }

    /// Opens an existing storage directory (it must contain `data/`).
    pub fn open(dir: &Path) -> Result<LocalStore> {
        let data = dir.join("data");
        if !data.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not a CVMFS storage directory (no data/)",
                dir.display()
            )));
        }
        Ok(LocalStore {
            root: dir.to_path_buf(),
            counter: AtomicU64::new(0),
            temp_prefix: format!("tmp.{}.", std::process::id()),
            unsynced: AtomicU64::new(0),
            syncing: Arc::new(AtomicBool::new(false)),
            sync_every: BACKGROUND_SYNC_BYTES,
            unnamed: AtomicBool::new(true),
            link_by_fd: AtomicBool::new(true),
            dirs: Arc::default(),
        })
    }

    /// Another handle on the same storage whose scratch files carry a name prefix no other
    /// handle uses (`tmp.<pid>.s<n>-`), so [`LocalStore::remove_temps`] finds only its own.
    pub fn scoped(&self) -> LocalStore {
        let n = SCOPES.fetch_add(1, Ordering::Relaxed);
        LocalStore {
            root: self.root.clone(),
            counter: AtomicU64::new(0),
            temp_prefix: format!("tmp.{}.s{n}-", std::process::id()),
            unsynced: AtomicU64::new(0),
            syncing: Arc::new(AtomicBool::new(false)),
            sync_every: self.sync_every,
            unnamed: AtomicBool::new(self.unnamed.load(Ordering::Relaxed)),
            link_by_fd: AtomicBool::new(self.link_by_fd.load(Ordering::Relaxed)),
            dirs: self.dirs.clone(),
        }
    }

    /// Like [`ObjectStore::put`], and tells whether this call created the object (`false`:
    /// it existed already, or a concurrent writer stored it first).
    pub fn put_new(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<bool> {
        if disk_full_simulated() {
            let full = io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(with_path(&self.object_path(hash, suffix), full));
        }
        // No existence check first: callers that expect many hits (the pipeline) ask
        // `contains` themselves, and the no-replace link or rename settles it either way.
        if self.unnamed.load(Ordering::Relaxed) {
            match self.put_unnamed(hash, suffix, bytes) {
                Ok(Some(created)) => return Ok(created),
                // Cannot here: named scratch files from now on.
                Ok(None) => self.unnamed.store(false, Ordering::Relaxed),
                Err(e) => return Err(with_path(&self.object_path(hash, suffix), e)),
            }
        }
        let dest = self.object_path(hash, suffix);
        let tmp = self
            .write_temp(&hash.to_hex(), bytes, false)
            .map_err(|e| with_path(&dest, e))?;
        let moved = rename_noreplace(&tmp, &dest);
        // When the object existed already (or on an error), the temp remains.
        if !matches!(moved, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        moved.map_err(|e| with_path(&dest, e))
    }

    /// Writes `bytes` to an unnamed file in the object's directory (`O_TMPFILE`) and links it
    /// in under the object's name unless that exists. Unlike a named scratch file in
    /// `data/txn`, writers of different objects do not queue for one directory's lock (the
    /// store thread and the workers write at once), and a crash leaves nothing behind. `None`:
    /// the file system or a missing `/proc` does not allow it, and nothing is left behind.
    fn put_unnamed(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        bytes: &[u8],
    ) -> io::Result<Option<bool>> {
        let dir = self.object_dir(hash)?;
        // SAFETY: a valid descriptor and a NUL-terminated path; the new descriptor is owned
        // by the `File` made from it below.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                OBJECT_MODE as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // EISDIR: a kernel without O_TMPFILE; EOPNOTSUPP/EINVAL: a file system without it.
            return match e.raw_os_error() {
                Some(libc::EISDIR | libc::EOPNOTSUPP | libc::EINVAL) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let mut f = unsafe { File::from_raw_fd(fd) };
        self.fill(&mut f, bytes, false)?;
        let name = CString::new(object_name(hash, suffix))?;
        self.link_unnamed(&f, dir, &name)
    }

    /// The open `data/XX` directory of `hash`.
    fn object_dir(&self, hash: &ContentHash) -> io::Result<&File> {
        let slot = &self.dirs.0[usize::from(hash.0[0])];
        if let Some(dir) = slot.get() {
            return Ok(dir);
        }
        let path = self.root.join(format!("data/{:02x}", hash.0[0]));
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)
            .map_err(|e| with_path(&path, e))?;
        // A concurrent first use may have set it: either descriptor names the directory.
        Ok(slot.get_or_init(|| dir))
    }

    /// Gives the unnamed file `f` the name `name` in `dir` unless that exists (`Some(false)`):
    /// by descriptor, or through `/proc/self/fd` where the kernel wants a capability for that.
    /// `None` when `/proc` is missing or linking is refused.
    fn link_unnamed(
        &self,
        f: &File,
        dir: &File,
        name: &std::ffi::CStr,
    ) -> io::Result<Option<bool>> {
        if self.link_by_fd.load(Ordering::Relaxed) {
            match link_at(f.as_raw_fd(), c"", dir, name, libc::AT_EMPTY_PATH) {
                Ok(created) => return Ok(Some(created)),
                // ENOENT: no CAP_DAC_READ_SEARCH before Linux 6.10; EPERM/EINVAL: refused.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EPERM | libc::EINVAL)
                    ) =>
                {
                    self.link_by_fd.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            }
        }
        link_through_proc(f, dir, name)
    }

    /// Like [`ObjectStore::put_file`], and tells whether this call created the object. The
    /// file is renamed into place (mode 0644) when it lies on the storage's file system,
    /// else copied; either way it is gone afterwards.
    pub fn put_file_new(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        path: &Path,
    ) -> io::Result<bool> {
        let dest = self.object_path(hash, suffix);
        let res = self.move_into_place(hash, suffix, path, &dest);
        // After a lost race or an error, the file remains.
        if !matches!(res, Ok(true)) {
            let _ = fs::remove_file(path);
        }
        res.map_err(|e| with_path(&dest, e))
    }

    fn move_into_place(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        path: &Path,
        dest: &Path,
    ) -> io::Result<bool> {
        // Explicit chmod: temp files are created 0600, the web server must read objects.
        fs::set_permissions(path, fs::Permissions::from_mode(OBJECT_MODE))?;
        match rename_noreplace(path, dest) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Another file system: copy through a scratch file of our own.
                let bytes = fs::read(path)?;
                let created = self.put_new(hash, suffix, &bytes)?;
                fs::remove_file(path)?;
                Ok(created)
            }
            other => other,
        }
    }

    /// Deletes an object file; one that is already gone is fine.
    pub fn remove_object(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<()> {
        let path = self.object_path(hash, suffix);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(&path, e)),
            _ => Ok(()),
        }
    }

    /// Deletes this handle's scratch files left in `data/txn`; returns how many there were.
    /// Only meaningful for a [`scoped`](LocalStore::scoped) handle: the plain prefix also
    /// matches the scratch files of every other handle of this process.
    pub fn remove_temps(&self) -> io::Result<usize> {
        let dir = self.root.join("data/txn");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| with_path(&dir, e))? {
            let entry = entry.map_err(|e| with_path(&dir, e))?;
            if !entry
                .file_name()
                .as_bytes()
                .starts_with(self.temp_prefix.as_bytes())
            {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(&entry.path(), e)),
            }
        }
        Ok(removed)
    }

    /// The object files of `data/<prefix>/` with the object each holds; names that are not
    /// object names are skipped, and a missing directory has none.
    pub(crate) fn object_files(
        &self,
        prefix: u8,
    ) -> Result<Vec<(fs::DirEntry, ContentHash, Suffix)>> {
        let dir = self.root.join(format!("data/{prefix:02x}"));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io_path(&dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io_path(&dir, e))?;
            if let Some((hash, suffix)) = parse_object_name(prefix, &entry.file_name()) {
                files.push((entry, hash, suffix));
            }
        }
        Ok(files)
    }

    /// The storage directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute location of an object file.
    pub fn object_path(&self, hash: &ContentHash, suffix: Suffix) -> PathBuf {
        self.root.join(hash.object_path(suffix))
    }

    /// Makes every write done so far durable, with one `syncfs` on the storage file system
    /// (cheaper than an fsync per object; called once before the manifest is replaced).
    pub fn sync(&self) -> io::Result<()> {
        sync_dir_fs(&self.root.join("data"))
    }

    /// Counts a small object written without starting its writeback, and every
    /// [`BACKGROUND_SYNC_BYTES`] starts a background `syncfs`, so that however many
    /// small objects a run writes, the `syncfs` before the manifest finds at most that much
    /// left (plus the catalogs). Rarely: each `syncfs` stalls the writers for a while.
    fn note_small_write(&self, len: usize) {
        let total = self.unsynced.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if total >= self.sync_every {
            self.start_background_sync();
        }
    }

    /// Starts a `syncfs` on a thread of its own unless one is running, so that a later
    /// [`sync`](Self::sync) finds little left to write. Advisory: only `sync` guarantees
    /// durability.
    pub fn start_background_sync(&self) {
        if self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unsynced.store(0, Ordering::Relaxed);
        let (data, syncing) = (self.root.join("data"), self.syncing.clone());
        let started = std::thread::Builder::new()
            .name("store-writeback".into())
            .spawn(move || {
                let _ = sync_dir_fs(&data);
                syncing.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.syncing.store(false, Ordering::Release);
        }
    }

    /// A fresh scratch file name in `data/txn` (unique per process, handle and call).
    fn temp_path(&self, tag: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("data/txn")
            .join(format!("{}{n}.{tag}", self.temp_prefix))
    }

    /// Writes `bytes` to a new scratch file with mode 0644; `durable` adds an fsync.
    fn write_temp(&self, tag: &str, bytes: &[u8], durable: bool) -> io::Result<PathBuf> {
        let tmp = self.temp_path(tag);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(OBJECT_MODE)
            .open(&tmp)?;
        if let Err(e) = self.fill(&mut f, bytes, durable) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Writes `bytes` to a new object or root file `f` and sets its mode; `durable` adds an
    /// fsync, else its writeback is started (large) or counted (small).
    fn fill(&self, f: &mut File, bytes: &[u8], durable: bool) -> io::Result<()> {
        f.write_all(bytes)?;
        // The umask must not decide what the web server may read: chmod when it took
        // bits away (one system call per object saved otherwise).
        if umask_masks_object_mode() {
            f.set_permissions(fs::Permissions::from_mode(OBJECT_MODE))?;
        }
        if durable {
            f.sync_all()?;
        } else if bytes.len() >= EARLY_WRITEBACK_MIN {
            start_writeback(f);
        } else {
            self.note_small_write(bytes.len());
        }
        Ok(())
    }
}

/// Gives the unnamed file `f` the name `name` in `dir` unless that exists (`Some(false)`),
/// through `/proc/self/fd` (no capability needed); `None` when `/proc` is missing or linking
/// is refused.
fn link_through_proc(f: &File, dir: &File, name: &std::ffi::CStr) -> io::Result<Option<bool>> {
    let src = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    match link_at(libc::AT_FDCWD, &src, dir, name, libc::AT_SYMLINK_FOLLOW) {
        Ok(created) => Ok(Some(created)),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) if !Path::new("/proc/self/fd").is_dir() => Ok(None),
            // Linking an open file refused (a file system or security module that does not
            // allow it): the named scratch file and rename work without it.
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL) => Ok(None),
            _ => Err(e),
        },
    }
}

/// `linkat(from_dir, from, dir, name, flags)`: `true` if it made the link, `false` if `name`
/// exists already in `dir`.
fn link_at(
    from_dir: libc::c_int,
    from: &std::ffi::CStr,
    dir: &File,
    name: &std::ffi::CStr,
    flags: libc::c_int,
) -> io::Result<bool> {
    // SAFETY: `from_dir` and `dir` are valid descriptors (or AT_FDCWD) and both names are
    // NUL-terminated for the duration of the call.
    let rc = unsafe {
        libc::linkat(
            from_dir,
            from.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        _ => Err(err),
    }
}

/// An object's file name in its `data/XX` directory.
fn object_name(hash: &ContentHash, suffix: Suffix) -> String {
    format!("{}{}", &hash.to_hex()[2..], suffix.as_str())
}

/// The object a file of `data/<prefix>/` holds, if its name is an object name (lower-case
/// hex, as `from_hex` insists, and a known suffix): the inverse of [`object_name`].
pub(crate) fn parse_object_name(
    prefix: u8,
    name: &std::ffi::OsStr,
) -> Option<(ContentHash, Suffix)> {
    let name = name.to_str()?;
    let (hex, suffix) = (name.get(..38)?, name.get(38..)?);
    let hash = ContentHash::from_hex(&format!("{prefix:02x}{hex}"))?;
    Some((hash, Suffix::from_str_opt(suffix)?))
}

/// Mode of objects and root files: the web server must be able to read them.
const OBJECT_MODE: u32 = 0o644;

/// Whether the process's umask removes bits of [`OBJECT_MODE`] (read once, from
/// `/proc/self/status`; where that cannot be read, assume it does).
fn umask_masks_object_mode() -> bool {
    static MASKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MASKS.get_or_init(|| match process_umask() {
        Some(mask) => mask & OBJECT_MODE != 0,
        None => true,
    })
}

/// The umask from `/proc/self/status` (Linux 4.7+); `umask(2)` cannot be read without
/// setting it, which would race with other threads creating files.
fn process_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// `syncfs` of the file system holding `dir`.
fn sync_dir_fs(dir: &Path) -> io::Result<()> {
    let dir = File::open(dir)?;
    use std::os::fd::AsRawFd;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Small objects written between two background `syncfs` calls. Large: the writeback of
/// the small objects of a run best overlaps the catalog writing, when a core is idle
/// ([`start_background_sync`](LocalStore::start_background_sync) at commit), and a `syncfs`
/// in mid-run stalls the writers of new files (measured with 8 MiB: 100 000 small files,
/// 5.1–6.7 s instead of 4.7–4.8 s; the 20-image corpus 6.4–6.8 s instead of 6.0–6.5 s).
const BACKGROUND_SYNC_BYTES: u64 = 256 << 20;

/// Objects from this size on start their writeback when written. Per small file the call
/// costs more kernel time than it saves (100 000 small files: +6 s of system time).
const EARLY_WRITEBACK_MIN: usize = 128 << 10;

/// Starts writing `f`'s pages to disk without waiting for it, so the `syncfs` before the
/// manifest finds little left to do instead of flushing the whole revision while the CPUs idle.
/// Advisory: a file system that cannot do it still gets everything synced by `syncfs`.
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open descriptor for the duration of the call; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Opens `path` for reading if it is a regular file. Without blocking, so that a FIFO in its
/// place is refused instead of waiting for a writer; a device (`/dev/zero`) is refused too,
/// as it could be read without end.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file; refusing to read it",
        ));
    }
    Ok(file)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Renames `from` to `to` unless `to` exists; returns whether the rename happened (then
/// `from` is gone; else it is left alone).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    let c_from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let c_to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both strings are valid NUL-terminated paths for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // File systems without RENAME_NOREPLACE: a hard link fails the same way on EEXIST.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => match fs::hard_link(from, to) {
            Ok(()) => {
                let _ = fs::remove_file(from);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(err),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ObjectStore for LocalStore {
    fn contains(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<bool> {
        let dir = match self.object_dir(hash) {
            Ok(dir) => dir,
            // A storage directory that lacks `data/XX` (copied partially) has no such object.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let name = CString::new(object_name(hash, suffix))?;
        // SAFETY: a valid descriptor, a NUL-terminated name and a stat buffer the call fills.
        let rc = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::NotFound => Ok(false),
            _ => Err(with_path(&self.object_path(hash, suffix), e)),
        }
    }

    fn put(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()> {
        self.put_new(hash, suffix, bytes).map(|_| ())
    }

    fn put_if_absent(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<bool> {
        self.put_new(hash, suffix, bytes)
    }

    fn get(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        self.get_at_most(hash, suffix, u64::MAX)
    }

    fn get_at_most(&self, hash: &ContentHash, suffix: Suffix, limit: u64) -> io::Result<Vec<u8>> {
        let path = self.object_path(hash, suffix);
        let file = open_regular(&path).map_err(|e| with_path(&path, e))?;
        read_at_most(file, limit, &path.display().to_string())
    }

    fn put_root_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let dest = self.root.join(name);
        let tmp = self
            .write_temp(name.trim_start_matches('.'), bytes, true)
            .map_err(|e| with_path(&dest, e))?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(with_path(&dest, e));
        }
        fsync_dir(&self.root).map_err(|e| with_path(&self.root, e))
    }

    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.root.join(name);
        let file = match open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(with_path(&path, e)),
        };
        let limit = root_files::max_bytes(name);
        read_at_most(file, limit, &path.display().to_string()).map(Some)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_file(&self, hash: &ContentHash, suffix: Suffix, path: &Path) -> io::Result<()> {
        self.put_file_new(hash, suffix, path).map(|_| ())
    }

    /// `data/txn`: same file system as the objects, so `put_file` is a rename.
    fn scratch_dir(&self) -> Option<PathBuf> {
        Some(self.root.join("data/txn"))
    }
}

/// Whether the fault `objects-disk-full` is armed (`CVMFS_OCI_CRASH_AT`): every object
/// write fails as on a full disk, for tests of how a command reports it.
fn disk_full_simulated() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| crate::txn::fault_armed("objects-disk-full"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_temps_takes_only_the_scopes_own_scratch_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = LocalStore::create(dir.path()).unwrap();
        let scoped = base.scoped();
        let other = base.scoped();
        let mine = scoped.write_temp("x", b"1", false).unwrap();
        let theirs = other.write_temp("x", b"2", false).unwrap();
        let plain = base.write_temp("x", b"3", false).unwrap();
        assert_eq!(scoped.remove_temps().unwrap(), 1);
        assert!(!mine.exists() && theirs.exists() && plain.exists());
        assert_eq!(scoped.remove_temps().unwrap(), 0);
    }

    #[test]
    fn put_new_tells_who_created_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let h = ContentHash::of(b"z");
        assert!(store.put_new(&h, Suffix::None, b"z").unwrap());
        assert!(!store.put_new(&h, Suffix::None, b"z").unwrap());
        store.remove_object(&h, Suffix::None).unwrap();
        assert!(!store.contains(&h, Suffix::None).unwrap());
        store.remove_object(&h, Suffix::None).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn objects_are_linked_in_whole_and_leave_no_scratch_files() {
        // Unnamed files (O_TMPFILE, which /tmp's file system here has) linked by descriptor
        // and through /proc, then named ones.
        for (unnamed, by_fd) in [(true, true), (true, false), (false, false)] {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::create(dir.path()).unwrap();
            store.unnamed.store(unnamed, Ordering::Relaxed);
            store.link_by_fd.store(by_fd, Ordering::Relaxed);
            let h = ContentHash::of(b"obj");
            assert!(!store.contains(&h, Suffix::None).unwrap());
            assert!(store.put_new(&h, Suffix::None, b"obj").unwrap());
            assert!(!store.put_new(&h, Suffix::None, b"other").unwrap());
            assert!(store.contains(&h, Suffix::None).unwrap());
            assert!(!store.contains(&h, Suffix::Catalog).unwrap());
            let elsewhere = ContentHash([0xab; 20]);
            fs::remove_dir(dir.path().join("data/ab")).unwrap();
            assert!(!store.contains(&elsewhere, Suffix::None).unwrap());
            let dest = store.object_path(&h, Suffix::None);
            assert_eq!(fs::read(&dest).unwrap(), b"obj");
            let mode = fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
            let scratch = store.scratch_dir().unwrap();
            assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
            assert_eq!(store.unnamed.load(Ordering::Relaxed), unnamed);
            // Root may link by descriptor on any kernel, others from Linux 6.10 on.
            if by_fd && is_root() {
                assert!(store.link_by_fd.load(Ordering::Relaxed));
            }
        }
    }

    #[test]
    fn small_objects_start_a_background_writeback_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::create(dir.path()).unwrap();
        store.sync_every = 1 << 20;
        let obj = vec![7u8; 64 << 10];
        let n = store.sync_every as usize / obj.len();
        for i in 0..n {
            store
                .put(&ContentHash::of(&i.to_le_bytes()), Suffix::None, &obj)
                .unwrap();
        }
        // The object that reached the threshold started a `syncfs` and reset the count.
        assert_eq!(store.unsynced.load(Ordering::Relaxed), 0);
        store
            .put(&ContentHash::of(b"one more"), Suffix::None, &obj)
            .unwrap();
        assert_eq!(store.unsynced.load(Ordering::Relaxed), obj.len() as u64);
    }

    #[test]
    fn put_file_renames_a_scratch_file_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let scratch = store.scratch_dir().unwrap();
        let h = ContentHash::of(b"obj");
        let tmp = scratch.join("x");
        fs::write(&tmp, b"obj").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(store.put_file_new(&h, Suffix::None, &tmp).unwrap());
        assert!(!tmp.exists());
        let dest = store.object_path(&h, Suffix::None);
        assert_eq!(fs::read(&dest).unwrap(), b"obj");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // Existing object: left as is, the file is removed all the same.
        fs::write(&tmp, b"other").unwrap();
        assert!(!store.put_file_new(&h, Suffix::None, &tmp).unwrap());
        assert!(!tmp.exists());
        assert_eq!(fs::read(&dest).unwrap(), b"obj");
        // A file elsewhere (maybe another file system) works too.
        let outside = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        fs::write(&outside, b"second").unwrap();
        let h2 = ContentHash::of(b"second");
        store.put_file(&h2, Suffix::Partial, &outside).unwrap();
        assert!(!outside.exists());
        assert_eq!(store.get(&h2, Suffix::Partial).unwrap(), b"second");
    }

    #[test]
    fn root_files_are_read_no_further_than_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        // Sparse: 2 MiB long, nothing on disk.
        let manifest = dir.path().join(root_files::MANIFEST);
        File::create(&manifest).unwrap().set_len(2 << 20).unwrap();
        let err = store.get_root_file(root_files::MANIFEST).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&manifest.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("limit of {}", root_files::MAX_SMALL)),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        // The reflog may be larger than the other root files.
        let reflog = dir.path().join(root_files::REFLOG);
        File::create(&reflog).unwrap().set_len(2 << 20).unwrap();
        let bytes = store.get_root_file(root_files::REFLOG).unwrap().unwrap();
        assert_eq!(bytes.len(), 2 << 20);
    }

    #[test]
    fn devices_and_fifos_are_refused_as_root_files_and_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        // /dev/zero would be read without end, a FIFO would wait for a writer.
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(root_files::MANIFEST)).unwrap();
        let fifo = CString::new(
            dir.path()
                .join(root_files::WHITELIST)
                .as_os_str()
                .as_bytes(),
        )
        .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for name in [root_files::MANIFEST, root_files::WHITELIST] {
            let msg = store.get_root_file(name).unwrap_err().to_string();
            assert!(
                msg.contains(name) && msg.contains("not a regular file"),
                "{msg}"
            );
        }
        let h = ContentHash::of(b"zero");
        let path = store.object_path(&h, Suffix::Catalog);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let msg = store.get(&h, Suffix::Catalog).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    }

    #[test]
    fn objects_longer_than_the_callers_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let h = ContentHash::of(b"eleven byte");
        store.put(&h, Suffix::None, b"eleven byte").unwrap();
        assert_eq!(
            store.get_at_most(&h, Suffix::None, 11).unwrap(),
            b"eleven byte"
        );
        let msg = store
            .get_at_most(&h, Suffix::None, 10)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&h.object_path(Suffix::None)) && msg.contains("limit of 10"));
    }
}
