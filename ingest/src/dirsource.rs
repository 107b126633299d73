//! A local directory tree as a tree: walks it without following symlinks and streams regular
//! files into the object pipeline.

use crate::error::{Error, Result};
use crate::fdwalk::{open_file_at, xattrat, FdWalk, Lstat, WalkEntry, XattrSource};
use crate::pipeline::{finalize, FileTicket, ObjectPipeline, PDir, PLeaf, PNode};
use catalog_writer::entry::{makedev, Entry, EntryKind, FileData, Xattrs};
use catalog_writer::hash::EMPTY_OBJECT;
use catalog_writer::tree::Dir;
use crossbeam_channel::{bounded, Receiver, Sender};
use publisher::stat_cache::{CachedFile, FileStat, StatCache, StatCacheUpdate};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Threads reading regular files for [`tree_from_dir`]. A file outside the page cache costs a
/// disk round trip, and a single reader waits for them one at a time (measured here: the
/// 100 000 small files of the publish benchmark read cold in 15 s by one reader, in 3.3 s by
/// eight). With the files cached, readers beyond the cores only wait for the compressors.
const SMALL_READERS: usize = 8;

/// Files larger than this go to their own [`LARGE_READERS`] threads. A reader holds the piece
/// it is assembling outside the pipeline's memory budget (up to the largest chunk): eight
/// readers of large files could hold 128 MiB; large files are read ahead by the kernel anyway.
const LARGE_FILE: u64 = 1 << 20;
const LARGE_READERS: usize = 2;

/// Files queued for each kind of reader: enough to keep them busy, few enough that a failure
/// stops the walk soon.
const READ_QUEUE: usize = 32;

/// Where the walker sends the regular files it placed in the tree.
struct ReadQueues {
    small: Sender<ReadJob>,
    large: Sender<ReadJob>,
}

/// A regular file placed in the tree, to be read into its reserved ticket.
struct ReadJob {
    ticket: FileTicket,
    path: PathBuf,
    /// The directory the walker found it in, and its name there.
    at: Option<(Arc<OwnedFd>, CString)>,
    size: u64,
    /// (dev, ino) the walker saw: the reader checks it opened that same file.
    inode: (u64, u64),
    /// Where the stat cache would keep the file, and its state when walked.
    record: Option<Record>,
}

/// A file to record in the stat cache once read, if it was read in the state the walk saw.
struct Record {
    /// Relative to the source root.
    path: Box<[u8]>,
    stat: FileStat,
    /// As the walk read them after its `lstat`: a change in between moves ctime, and the
    /// reader's fstat then differs from `stat`.
    xattrs: Xattrs,
    /// When the walk was about to `lstat` the file: reading it starts there.
    seen_ns: i64,
}

/// Files read that the stat cache may record: their rows (content filled in once the
/// pipeline resolved them) and, side by side, their tickets. Built in place, as the rows of
/// a first publish of a million files weigh a hundred megabytes.
#[derive(Default)]
struct Recorded {
    tickets: Vec<FileTicket>,
    rows: Vec<(Box<[u8]>, CachedFile)>,
}

/// A file's state is trusted only when its mtime and ctime are at least this much older than
/// the moment it was read. Timestamps are coarse (the kernel's tick, a file system's
/// granularity): a write in the same tick as the read would leave both unchanged and the file
/// would never be read again (git's "racy git" problem).
const RACY_NS: i64 = 2_000_000_000;

/// A tree read with a stat cache ([`tree_from_dir_cached`]).
pub struct CachedWalk {
    pub tree: Dir,
    /// What to write into the stat cache once the tree is published.
    pub update: StatCacheUpdate,
}

/// The walker's side of the stat cache: the rows of the directories it is in.
#[derive(Default)]
struct Known<'a> {
    cache: Option<&'a dyn StatCache>,
    /// Rows of each listed directory not yet matched to a walked file.
    rows: HashMap<Vec<u8>, HashMap<Vec<u8>, CachedFile>>,
    update: StatCacheUpdate,
}

impl Known<'_> {
    /// A directory the walk lists: its rows are loaded before its files come.
    fn enter(&mut self, dir: &[u8]) {
        self.update.dirs.insert(dir.to_vec());
        if let Some(cache) = self.cache {
            let rows: HashMap<_, _> = cache.files_in(dir).into_iter().collect();
            if !rows.is_empty() {
                self.rows.insert(dir.to_vec(), rows);
            }
        }
    }

    /// The row of a walked file if its state is the one recorded; a row that differs is
    /// stale.
    fn matching(&mut self, dir: &[u8], name: &[u8], stat: &FileStat) -> Option<CachedFile> {
        let rows = self.rows.get_mut(dir)?;
        let row = rows.remove(name)?;
        if rows.is_empty() {
            // A map does not shrink as it empties: give back a finished directory's rows.
            self.rows.remove(dir);
        }
        if row.stat == *stat {
            return Some(row);
        }
        self.stale(dir, name);
        None
    }

    fn stale(&mut self, dir: &[u8], name: &[u8]) {
        self.update.stale.push((dir.to_vec(), name.to_vec()));
    }

    /// Rows no walked file matched (removed, no longer regular files, second names of hard
    /// links) are stale.
    fn finish(mut self) -> StatCacheUpdate {
        for (dir, rows) in self.rows.drain() {
            for name in rows.into_keys() {
                self.update.stale.push((dir.clone(), name));
            }
        }
        self.update.replace_all = self.cache.is_none();
        self.update
    }
}

/// What the walker shares with the readers.
struct Shared<'a> {
    pipeline: &'a ObjectPipeline,
    failure: Mutex<Option<Error>>,
    read: Mutex<Recorded>,
}

/// Reads the tree below `path` (its own metadata becomes the root's). Hard links inside the
/// tree (same device and inode) share a hardlink id; `security.selinux` labels are skipped.
/// This thread walks the tree; reader threads read the regular files into `pipeline`.
pub fn tree_from_dir(path: &Path, pipeline: &ObjectPipeline) -> Result<Dir> {
    walk_and_read(path, pipeline, None).map(|(tree, _)| tree)
}

/// [`tree_from_dir`] with a stat cache: a regular file whose state (dev, inode, size, mtime,
/// ctime, mode, owner) is the one `cache` recorded is not read if the store still holds its
/// content. `cache` `None` reads every file (a rescan). Either way the walk returns what the
/// cache should learn: the files read in a state old enough to trust, and the stale rows.
pub fn tree_from_dir_cached(
    path: &Path,
    pipeline: &ObjectPipeline,
    cache: Option<&dyn StatCache>,
) -> Result<CachedWalk> {
    let known = Known {
        cache,
        ..Known::default()
    };
    let (tree, update) = walk_and_read(path, pipeline, Some(known))?;
    Ok(CachedWalk {
        tree,
        update: update.unwrap_or_default(),
    })
}

fn walk_and_read(
    path: &Path,
    pipeline: &ObjectPipeline,
    mut known: Option<Known<'_>>,
) -> Result<(Dir, Option<StatCacheUpdate>)> {
    let shared = Shared {
        pipeline,
        failure: Mutex::new(None),
        read: Mutex::new(Recorded::default()),
    };
    let walked = std::thread::scope(|s| {
        let (small, small_rx) = bounded::<ReadJob>(READ_QUEUE);
        let (large, large_rx) = bounded::<ReadJob>(READ_QUEUE);
        let kinds = [(SMALL_READERS, &small_rx), (LARGE_READERS, &large_rx)];
        for (i, rx) in kinds
            .iter()
            .flat_map(|(n, rx)| std::iter::repeat_n(*rx, *n))
            .enumerate()
        {
            let (rx, shared) = (rx.clone(), &shared);
            std::thread::Builder::new()
                .name(format!("dir-read-{i}"))
                .spawn_scoped(s, move || read_files(rx, shared))
                .map_err(|e| Error::Stopped(format!("cannot start a reader thread: {e}")))?;
        }
        let queues = ReadQueues { small, large };
        walk(path, &shared, &queues, known.as_mut())
        // The queues close here: the readers finish them and end, and the scope joins them.
    });
    let Shared { failure, read, .. } = shared;
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let walked = walked?;
    let update = match known {
        Some(known) => {
            let mut update = known.finish();
            let mut read = read.into_inner().unwrap_or_else(|p| p.into_inner());
            for (ticket, row) in read.tickets.iter().zip(read.rows.iter_mut()) {
                row.1.data = pipeline.resolve(*ticket)?.1;
            }
            update.recorded = read.rows;
            Some(update)
        }
        None => None,
    };
    let tree = finalize(walked, &Entry::directory(0o755, 0, 0, 0), pipeline)?;
    Ok((tree, update))
}

/// A reader thread: reads queued files until the queue closes. After the first failure (its
/// own or another reader's) it only drains the queue.
fn read_files(jobs: Receiver<ReadJob>, shared: &Shared<'_>) {
    for job in jobs {
        if failed(&shared.failure) {
            continue;
        }
        match read_file(&job, shared) {
            Ok(after) => {
                if let Some(r) = job.record {
                    if r.stat == stat_of(&Lstat::from(&after), r.stat.mnt)
                        && settled(&r.stat, r.seen_ns)
                    {
                        // Filled in with the file's objects once the pipeline has them.
                        let data = FileData::Whole(EMPTY_OBJECT);
                        let (stat, xattrs) = (r.stat, r.xattrs);
                        let row = (r.path, CachedFile { stat, data, xattrs });
                        let mut read = shared.read.lock().unwrap_or_else(|p| p.into_inner());
                        read.tickets.push(job.ticket);
                        read.rows.push(row);
                    }
                }
            }
            Err(e) => {
                let mut f = shared.failure.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert(e);
            }
        }
    }
}

/// Nanoseconds since the epoch (0 if the clock is before it: then nothing is settled).
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether a file in state `stat`, read from `read_ns` on, can be trusted to be unchanged
/// while its state is (see [`RACY_NS`]).
fn settled(stat: &FileStat, read_ns: i64) -> bool {
    let limit = read_ns.saturating_sub(RACY_NS);
    stat.mtime_ns <= limit && stat.ctime_ns <= limit
}

/// The state the stat cache compares, for a file whose directory is on mount `mnt`.
fn stat_of(meta: &Lstat, mnt: u64) -> FileStat {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    FileStat {
        dev: meta.dev,
        ino: meta.ino,
        size: meta.size,
        mtime_ns: ns(meta.mtime, meta.mtime_nsec),
        ctime_ns: ns(meta.ctime, meta.ctime_nsec),
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mnt,
    }
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id never given out again in this boot.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// File systems whose ctime is not the kernel's record of the last change but a stored or
/// reported value (`statfs` `f_type`): read-only images (squashfs, erofs, iso9660, cramfs,
/// romfs, udf), FUSE (CernVM-FS itself: a new revision may keep a file's inode, size and
/// times) and FAT, which has no ctime. A file there may change without its state changing,
/// so the stat cache neither uses nor records rows for it.
const UNTRUSTED_CTIME: [i64; 10] = [
    0x7371_7368, // squashfs
    0xE0F5_E1E2, // erofs
    0x9660,      // iso9660
    0x28CD_3D45, // cramfs
    0x453D_CD28, // cramfs, other byte order
    0x7275,      // romfs
    0x1501_3346, // udf
    0x6573_5546, // fuse, fuseblk
    0x4D44,      // vfat, msdos
    0x2011_BAB0, // exfat
];

/// The mount the open directory `dir` is on, as the stat cache compares it: `None` if its
/// file system's ctime cannot be trusted ([`UNTRUSTED_CTIME`]), else its unique mount id, 0
/// when the kernel does not tell (before 6.8).
fn mount_of(dir: &OwnedFd) -> Option<u64> {
    // SAFETY: an all-zero statfs is a valid value of the plain C struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open and `fs` is writable for the call's duration.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut fs) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the target
    let kind = fs.f_type as i64;
    if UNTRUSTED_CTIME.contains(&kind) {
        return None;
    }
    Some(mount_id(dir))
}

/// The mount points below `root` (`/proc/self/mountinfo`): a file bind-mounted into the tree
/// (as containers and configuration overlays do) is a mount of its own, which its directory's
/// mount says nothing about. None when the table cannot be read (then such a file is trusted
/// like its directory, as on kernels without unique mount ids).
fn mounted_below(root: &Path) -> HashSet<PathBuf> {
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return HashSet::new();
    };
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(field))))
        .filter(|p| p.starts_with(root) && p != root)
        .collect()
}

/// A mountinfo field with its `\NNN` octal escapes (space, tab, newline, backslash) undone.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let code = field.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (field[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The unique id of the mount the open `dir` is on; 0 when the kernel does not tell.
fn mount_id(dir: &OwnedFd) -> u64 {
    // SAFETY: an all-zero statx is a valid value of the plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: `dir` itself) and
    // `stx` is a writable statx for the call's duration.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            STATX_MNT_ID_UNIQUE,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
        stx.stx_mnt_id
    } else {
        0
    }
}

/// Reads the file into its ticket; returns its state (fstat) after the read.
fn read_file(job: &ReadJob, shared: &Shared<'_>) -> Result<Metadata> {
    let pipeline = shared.pipeline;
    let name = job.path.display().to_string();
    let (mut f, before) = open_walked(job).map_err(|e| Error::io(&name, e))?;
    let mut counted = Counted {
        inner: &mut f,
        n: 0,
        listed: job.size,
    };
    pipeline.add_reserved_file(job.ticket, &name, &mut counted, job.size)?;
    let read = counted.n;
    let after = f.metadata().map_err(|e| Error::io(&name, e))?;
    // A file written to while it is read would be published torn (GNU tar: "file changed
    // as we read it"); the whole publish fails instead, and a rerun takes the new content.
    if changed_while_read(job.size, read, &before, &after) {
        return Err(Error::io(
            &name,
            io::Error::other(if read == job.size && after.len() == job.size {
                "changed while being read (same size, but its mtime or ctime moved: written \
                 to, or its metadata changed)"
                    .to_string()
            } else {
                format!(
                    "changed while being read ({} bytes when listed, {read} read, {} now)",
                    job.size,
                    after.len()
                )
            }),
        ));
    }
    Ok(after)
}

/// Whether a file listed at `listed` bytes, of which `read` were read between the states
/// `before` and `after`, may have been written meanwhile. ctime too: a writer that puts the
/// mtime back (`touch -r`, `rsync --inplace`) moves it.
fn changed_while_read(listed: u64, read: u64, before: &Metadata, after: &Metadata) -> bool {
    read != listed
        || after.len() != listed
        || (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec())
        || (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec())
}

/// Counts the bytes read through it, and reads no further than the listed size, ending there
/// without asking the kernel for the end of file (one `read` per small file, not two): a file
/// that grew meanwhile has another size or mtime afterwards, which [`changed_while_read`]
/// refuses.
struct Counted<'a> {
    inner: &'a mut File,
    n: u64,
    listed: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.listed.saturating_sub(self.n)).unwrap_or(usize::MAX);
        if left == 0 {
            return Ok(0);
        }
        let end = left.min(buf.len());
        let k = self.inner.read(&mut buf[..end])?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Opens the file the walker saw, refusing whatever replaced it since: a symlink (not
/// followed), a FIFO (not waited for: opening one for reading blocks until a writer comes),
/// or another file. It is opened by its name in the directory the walker listed (held open):
/// a directory on its path swapped for a link since cannot lead outside the tree. The tree
/// being published may be live. Returns the file and its state when opened.
fn open_walked(job: &ReadJob) -> io::Result<(File, Metadata)> {
    let f = match &job.at {
        Some((dir, name)) => open_file_at(dir, name).map(File::from),
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&job.path),
    }
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => {
            io::Error::other("replaced during the walk: it is a symbolic link now")
        }
        _ => e,
    })?;
    let meta = f.metadata()?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != job.inode {
        return Err(io::Error::other("replaced by another file during the walk"));
    }
    Ok((f, meta))
}

fn failed(failure: &Mutex<Option<Error>>) -> bool {
    failure.lock().map(|f| f.is_some()).unwrap_or(true)
}

/// Walks the tree, building it with reserved tickets for the regular files it queues for the
/// readers. Stops early (with what it has) once a reader failed.
fn walk(
    path: &Path,
    shared: &Shared<'_>,
    reads: &ReadQueues,
    mut known: Option<&mut Known<'_>>,
) -> Result<PDir> {
    let pipeline = shared.pipeline;
    let mut root = PDir::default();
    // (dev, ino) → (hardlink id, ticket of the content read once).
    let mut inodes: HashMap<(u64, u64), (u64, Option<FileTicket>)> = HashMap::new();
    // With a stat cache: the mount of each directory on the way down, by depth, and the
    // files that are mount points of their own.
    let mut mounts: Vec<Option<u64>> = Vec::new();
    let mounted = match known {
        Some(_) => mounted_below(path),
        None => HashSet::new(),
    };
    let mut walker = FdWalk::new(path);
    loop {
        // Before the lstat: a file is trusted only if its state is 2 s older than this.
        let seen_ns = if known.is_some() { now_ns() } else { 0 };
        let Some(item) = walker.next() else {
            break;
        };
        let item = item.map_err(|e| Error::io(e.path.display().to_string(), e.source))?;
        let full = item.path.as_path();
        let meta = &item.stat;
        // With a stat cache, a regular file's xattrs come from its row when it matches.
        let defer_xattrs = known.is_some() && meta.is_file();
        let entry = entry_for(&item, !defer_xattrs)?;
        let rel = full.strip_prefix(path).map_err(|_| {
            Error::io(
                full.display().to_string(),
                io::Error::other("outside the walked root"),
            )
        })?;
        let comps: Vec<&[u8]> = rel.iter().map(|c| c.as_bytes()).collect();
        if comps.len() > crate::tarsource::MAX_DEPTH {
            return Err(Error::io(
                full.display().to_string(),
                io::Error::other(format!(
                    "nested deeper than {} levels",
                    crate::tarsource::MAX_DEPTH
                )),
            ));
        }
        if entry.is_dir() {
            if let Some(k) = known.as_deref_mut() {
                k.enter(&comps.join(&b'/'));
                mounts.truncate(item.depth);
                mounts.push(item.dir_fd().and_then(mount_of));
            }
        }
        if item.depth == 0 {
            if !entry.is_dir() {
                return Err(Error::io(
                    full.display().to_string(),
                    io::Error::other("not a directory"),
                ));
            }
            root.meta = Some(entry);
            continue;
        }
        let node = if entry.is_dir() {
            PNode::Dir(PDir {
                meta: Some(entry),
                ..PDir::default()
            })
        } else {
            let walked = Walked {
                item: &item,
                full,
                comps: &comps,
                meta,
                seen_ns,
                mnt: match mounted.contains(full) {
                    true => None,
                    false => mounts.get(item.depth - 1).copied().flatten(),
                },
            };
            let k = known.as_deref_mut();
            PNode::Leaf(leaf_for(&walked, entry, &mut inodes, pipeline, reads, k)?)
        };
        insert(&mut root, &comps, node, full)?;
        if failed(&shared.failure) {
            break;
        }
    }
    Ok(root)
}

/// A path the walk found.
struct Walked<'a> {
    item: &'a WalkEntry,
    full: &'a Path,
    /// Its components below the root.
    comps: &'a [&'a [u8]],
    meta: &'a Lstat,
    seen_ns: i64,
    /// The mount of its directory (stat cache only; `None`: not one to trust).
    mnt: Option<u64>,
}

/// A non-directory; files are queued once per inode, hard links share the id and the ticket.
fn leaf_for(
    w: &Walked<'_>,
    mut entry: Entry,
    inodes: &mut HashMap<(u64, u64), (u64, Option<FileTicket>)>,
    pipeline: &ObjectPipeline,
    reads: &ReadQueues,
    known: Option<&mut Known<'_>>,
) -> Result<PLeaf> {
    let meta = w.meta;
    let key = (meta.dev, meta.ino);
    let is_file = matches!(entry.kind, EntryKind::File { .. });
    if meta.nlink > 1 {
        if let Some(&(id, ticket)) = inodes.get(&key) {
            if is_file && known.is_some() {
                entry.xattrs = xattrs_of(w.item)?;
            }
            entry.hardlink = Some(id);
            return Ok(PLeaf { entry, ticket });
        }
    }
    let ticket = if is_file {
        Some(file_ticket(w, &mut entry, pipeline, reads, known)?)
    } else {
        None
    };
    if meta.nlink > 1 {
        let id = inodes.len() as u64 + 1;
        inodes.insert(key, (id, ticket));
        entry.hardlink = Some(id);
    }
    Ok(PLeaf { entry, ticket })
}

/// The ticket of a regular file: resolved at once from the stat cache when it knows the file
/// as it is and the store holds its content, else queued for a reader. With a stat cache the
/// file's xattrs are set here: the row's (an xattr change moves ctime), else read now.
fn file_ticket(
    w: &Walked<'_>,
    entry: &mut Entry,
    pipeline: &ObjectPipeline,
    reads: &ReadQueues,
    known: Option<&mut Known<'_>>,
) -> Result<FileTicket> {
    let ticket = pipeline.reserve_ticket();
    let mut record = None;
    if let Some(k) = known {
        if let Some(mnt) = w.mnt {
            let (name, parents) = w.comps.split_last().ok_or_else(|| {
                Error::io(
                    w.full.display().to_string(),
                    io::Error::other("no file name"),
                )
            })?;
            let (dir, stat) = (parents.join(&b'/'), stat_of(w.meta, mnt));
            if let Some(row) = k.matching(&dir, name, &stat) {
                if pipeline.add_known_file(ticket, stat.size, &row.data)? {
                    entry.xattrs = row.xattrs;
                    return Ok(ticket);
                }
                k.stale(&dir, name);
            }
            record = Some(Record {
                path: w.comps.join(&b'/').into(),
                stat,
                xattrs: Xattrs::new(),
                seen_ns: w.seen_ns,
            });
        }
        // On a file system whose ctime cannot be trusted the file is only read: any row
        // of it stays unmatched, so the walk drops it.
        entry.xattrs = xattrs_of(w.item)?;
        if let Some(r) = record.as_mut() {
            r.xattrs = entry.xattrs.clone();
        }
    }
    let job = ReadJob {
        ticket,
        path: w.full.to_path_buf(),
        at: w.item.parent(),
        size: w.meta.size,
        inode: (w.meta.dev, w.meta.ino),
        record,
    };
    let queue = if job.size > LARGE_FILE {
        &reads.large
    } else {
        &reads.small
    };
    queue
        .send(job)
        .map_err(|_| Error::Stopped("the file readers stopped".into()))?;
    Ok(ticket)
}

fn insert(root: &mut PDir, comps: &[&[u8]], node: PNode, full: &Path) -> Result<()> {
    let Some((last, parents)) = comps.split_last() else {
        return Ok(());
    };
    let mut dir = root;
    for c in parents {
        // walkdir yields parents first, so they exist.
        match dir.children.get_mut(*c) {
            Some(PNode::Dir(d)) => dir = d,
            _ => {
                return Err(Error::io(
                    full.display().to_string(),
                    io::Error::other("parent directory changed during the walk"),
                ))
            }
        }
    }
    dir.children.insert(last.to_vec(), node);
    Ok(())
}

/// Metadata of one path (lstat) as an entry; regular files get a placeholder content.
fn entry_for(item: &WalkEntry, with_xattrs: bool) -> Result<Entry> {
    let (full, meta) = (&item.path, &item.stat);
    let rdev = || makedev(major(meta.rdev), minor(meta.rdev));
    let kind = if meta.is_dir() {
        EntryKind::Directory
    } else if meta.is_file() {
        EntryKind::File {
            size: meta.size,
            data: FileData::Whole(EMPTY_OBJECT),
        }
    } else if meta.is_symlink() {
        let target = item
            .read_link()
            .map_err(|e| Error::io(full.display().to_string(), e))?;
        EntryKind::Symlink { target }
    } else if meta.is_char_device() {
        EntryKind::CharDevice { rdev: rdev() }
    } else if meta.is_block_device() {
        EntryKind::BlockDevice { rdev: rdev() }
    } else if meta.is_fifo() {
        EntryKind::Fifo
    } else if meta.is_socket() {
        EntryKind::Socket
    } else {
        return Err(Error::io(
            full.display().to_string(),
            io::Error::other("unknown file type"),
        ));
    };
    Ok(Entry {
        kind,
        perm: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        mtime_ns: u32::try_from(meta.mtime_nsec).ok(),
        xattrs: match with_xattrs {
            true => xattrs_of(item)?,
            false => Xattrs::new(),
        },
        hardlink: None,
    })
}

/// The entry's xattrs, read through its directory's descriptor (the root's by its path).
/// Without `/proc`, a symbolic link's or special file's are not read (see
/// [`XattrSource::Unreachable`]).
fn xattrs_of(item: &WalkEntry) -> Result<Xattrs> {
    let read = || match item.xattr_source()? {
        XattrSource::At(dir, name) => read_xattrs_at(&dir, &name),
        XattrSource::Path(p) => read_xattrs(&p),
        XattrSource::Fd(fd) => read_xattrs_fd(&fd),
        XattrSource::Unreachable => Ok(Xattrs::new()),
    };
    read().map_err(|e| Error::io(item.path.display().to_string(), e))
}

/// glibc `gnu_dev_major`.
fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// glibc `gnu_dev_minor`.
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Extended attributes of the path itself (not a symlink's target), minus SELinux labels,
/// which describe the build host rather than the content.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Xattrs> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    collect_xattrs(
        // SAFETY: cpath is NUL-terminated; buf/len describe a valid writable buffer (or 0/null).
        |buf, len| unsafe { libc::llistxattr(cpath.as_ptr(), buf as *mut libc::c_char, len) },
        // SAFETY: as above; the name is NUL-terminated.
        |name, buf, len| unsafe {
            libc::lgetxattr(cpath.as_ptr(), name.as_ptr(), buf as *mut libc::c_void, len)
        },
    )
}

/// [`read_xattrs`] of `name` in the directory `dir`.
fn read_xattrs_at(dir: &OwnedFd, name: &CStr) -> io::Result<Xattrs> {
    let dir = dir.as_raw_fd();
    collect_xattrs(
        |buf, len| xattrat::list(dir, name, buf, len),
        |attr, buf, len| xattrat::get(dir, name, attr, buf, len),
    )
}

/// [`read_xattrs`] of what the descriptor `fd` refers to.
fn read_xattrs_fd(fd: &OwnedFd) -> io::Result<Xattrs> {
    let fd = fd.as_raw_fd();
    collect_xattrs(
        // SAFETY: `fd` is open; buf/len describe a valid writable buffer (or 0/null).
        |buf, len| unsafe { libc::flistxattr(fd, buf as *mut libc::c_char, len) },
        // SAFETY: as above; the name is NUL-terminated.
        |name, buf, len| unsafe {
            libc::fgetxattr(fd, name.as_ptr(), buf as *mut libc::c_void, len)
        },
    )
}

/// The xattrs that `list` names and `get` reads, minus SELinux labels.
fn collect_xattrs(
    mut list: impl FnMut(*mut u8, usize) -> isize,
    mut get: impl FnMut(&CString, *mut u8, usize) -> isize,
) -> io::Result<Xattrs> {
    let mut out = Xattrs::new();
    let names = match xattr_call(&mut list) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux" {
            continue;
        }
        let cname = CString::new(name).map_err(|_| io::Error::other("bad xattr name"))?;
        let value = xattr_call(|buf, len| get(&cname, buf, len));
        match value {
            Ok(v) => catalog_writer::xattr::insert_bounded(&mut out, name, &v),
            // Removed between list and get: not there any more.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// The size-query-then-fetch dance of the *xattr calls, retrying if the value grew.
fn xattr_call(mut f: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = f(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        if n == 0 {
            return Ok(buf);
        }
        let m = f(buf.as_mut_ptr(), buf.len());
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::memstore::MemStore;
    use crate::pipeline::{PipelineConfig, PipelineStats};
    use catalog_writer::tree::Node;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::Arc;

    fn lstat(p: &Path) -> Lstat {
        Lstat::from(&std::fs::symlink_metadata(p).unwrap())
    }

    fn leaf<'a>(d: &'a Dir, name: &str) -> &'a Entry {
        d.children.get(name.as_bytes()).unwrap().entry()
    }

    #[test]
    fn real_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/hello"), b"hello\n").unwrap();
        std::fs::hard_link(root.join("sub/hello"), root.join("sub/hello2")).unwrap();
        std::fs::hard_link(root.join("sub/hello"), root.join("top-link")).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        symlink("sub/hello", root.join("link")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(root.join(odd), b"x").unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        let sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        let cpath = CString::new(root.join("sub/hello").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and value buffer.
        let rc = unsafe {
            libc::lsetxattr(
                cpath.as_ptr(),
                c"user.test".as_ptr(),
                b"v\0al".as_ptr() as *const libc::c_void,
                4,
                0,
            )
        };
        let xattr_set = rc == 0;
        if !xattr_set {
            let e = io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "lsetxattr: {e}");
        }
        std::fs::set_permissions(root.join("fifo"), std::fs::Permissions::from_mode(0o640))
            .unwrap();

        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default()).unwrap();
        let dir = tree_from_dir(root, &p).unwrap();
        let stats = p.finish().unwrap().stats;
        drop(sock);
        let Node::Dir(sub) = dir.children.get(&b"sub"[..]).unwrap() else {
            panic!()
        };
        assert_eq!(sub.meta.perm, 0o1777);
        let h1 = leaf(sub, "hello");
        let h2 = leaf(sub, "hello2");
        let h3 = leaf(&dir, "top-link");
        assert!(h1.hardlink.is_some());
        assert_eq!(h1.hardlink, h2.hardlink);
        assert_eq!(h1.hardlink, h3.hardlink);
        assert_eq!(h1.kind, h3.kind);
        let EntryKind::File {
            size: 6,
            data: FileData::Whole(h),
        } = &h1.kind
        else {
            panic!("{:?}", h1.kind)
        };
        assert_eq!(h.to_hex(), "5798f7f4ca7585d850eea64610a1f73d8f8de7a3");
        if xattr_set {
            assert_eq!(
                h1.xattrs.get(&b"user.test"[..]).map(|v| &v[..]),
                Some(&b"v\0al"[..])
            );
        }
        // The hardlinked file was read once.
        assert_eq!(stats.files, 3);
        assert_eq!(leaf(&dir, "empty").perm, 0o4750);
        assert_eq!(
            leaf(&dir, "empty").kind,
            EntryKind::File {
                size: 0,
                data: FileData::Whole(EMPTY_OBJECT)
            }
        );
        assert_eq!(
            leaf(&dir, "link").kind,
            EntryKind::Symlink {
                target: b"sub/hello".to_vec()
            }
        );
        assert_eq!(leaf(&dir, "fifo").kind, EntryKind::Fifo);
        assert_eq!(leaf(&dir, "fifo").perm, 0o640);
        assert_eq!(leaf(&dir, "sock").kind, EntryKind::Socket);
        assert!(dir.children.contains_key(&b"caf\xe9"[..]));
        let m = std::fs::metadata(root.join("sub/hello")).unwrap();
        assert_eq!((h1.uid, h1.gid, h1.mtime), (m.uid(), m.gid(), m.mtime()));
        assert_eq!(h1.mtime_ns, Some(m.mtime_nsec() as u32));
    }

    #[test]
    fn char_device_numbers() {
        // /dev/null is 1:3 on Linux.
        let null = FdWalk::new(Path::new("/dev"))
            .filter_map(|e| e.ok())
            .find(|e| e.path == Path::new("/dev/null"))
            .unwrap();
        let e = entry_for(&null, true).unwrap();
        assert_eq!(e.kind, EntryKind::CharDevice { rdev: 259 });
        assert_eq!((major(259), minor(259)), (1, 3));
        assert_eq!(
            makedev(major(0x1234_5678_9abc), minor(0x1234_5678_9abc)),
            0x1234_5678_9abc
        );
    }

    /// Content of test file `i`: `len` bytes, distinct per `i`, not very compressible.
    fn content(i: u64, len: usize) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 16) as u8
            })
            .collect()
    }

    #[test]
    fn many_files_are_read_in_parallel_into_their_places() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut expected = Vec::new();
        for i in 0..600u64 {
            let dir = format!("d{}", i % 7);
            std::fs::create_dir_all(root.join(&dir)).unwrap();
            // Every 97th file goes to the large-file readers.
            let len = if i % 97 == 5 {
                (LARGE_FILE as usize) + 1000 * i as usize
            } else {
                (i as usize * 37) % 5000
            };
            let name = format!("{dir}/f{i}");
            std::fs::write(root.join(&name), content(i, len)).unwrap();
            expected.push((name, content(i, len)));
        }
        std::fs::hard_link(root.join("d1/f1"), root.join("d2/also-f1")).unwrap();
        expected.push(("d2/also-f1".into(), content(1, 37)));

        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default()).unwrap();
        let dir = tree_from_dir(root, &p).unwrap();
        let stats = p.finish().unwrap().stats;
        assert_eq!(stats.files, 600, "the hard link is read once");
        for (name, bytes) in &expected {
            let (d, f) = name.split_once('/').unwrap();
            let Node::Dir(sub) = dir.children.get(d.as_bytes()).unwrap() else {
                panic!("{d} is not a directory")
            };
            let EntryKind::File { size, data } = &leaf(sub, f).kind else {
                panic!("{name} is not a file")
            };
            assert_eq!(*size, bytes.len() as u64, "{name}");
            let FileData::Whole(h) = data else {
                panic!("{name}: one object expected")
            };
            let got = if bytes.is_empty() {
                Vec::new()
            } else {
                store.get_inflated(h, catalog_writer::hash::Suffix::None)
            };
            assert!(got == *bytes, "{name}: content differs");
        }
    }

    #[test]
    fn a_failing_store_ends_the_walk_with_its_error() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..500u64 {
            std::fs::write(tmp.path().join(format!("f{i}")), content(i, 3000)).unwrap();
        }
        let store = Arc::new(MemStore::default());
        store
            .fail_puts
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
        let err = tree_from_dir(tmp.path(), &p).unwrap_err().to_string();
        assert!(err.contains("No space left on device"), "{err}");
    }

    /// The descriptor of `dir` and `name`, as the walker hands them to a reader.
    fn at(dir: &Path, name: &str) -> Option<(Arc<OwnedFd>, CString)> {
        let fd = OwnedFd::from(File::open(dir).unwrap());
        Some((Arc::new(fd), CString::new(name).unwrap()))
    }

    #[test]
    fn a_file_replaced_after_the_walk_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, other) = (tmp.path().join("file"), tmp.path().join("other"));
        std::fs::write(&file, b"walked").unwrap();
        std::fs::write(&other, b"other").unwrap();
        // From the walked directory's descriptor, and by path (as the tests' jobs without one).
        for from_dir in [true, false] {
            std::fs::write(&file, b"walked").unwrap();
            let meta = std::fs::symlink_metadata(&file).unwrap();
            let job = |path: &Path| ReadJob {
                ticket: FileTicket(0),
                path: path.to_path_buf(),
                at: from_dir
                    .then(|| at(tmp.path(), &path.file_name().unwrap().to_string_lossy()))
                    .flatten(),
                size: 6,
                inode: (meta.dev(), meta.ino()),
                record: None,
            };
            assert!(open_walked(&job(&file)).is_ok());

            let err = open_walked(&job(&other)).unwrap_err();
            assert!(err.to_string().contains("replaced"), "{err}");
            std::fs::remove_file(&file).unwrap();
            symlink(&other, &file).unwrap();
            let err = open_walked(&job(&file)).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            std::fs::remove_file(&file).unwrap();
            let cpath = CString::new(file.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
            // Would block for a writer without O_NONBLOCK.
            let err = open_walked(&job(&file)).unwrap_err();
            assert!(err.to_string().contains("replaced"), "{err}");
            std::fs::remove_file(&file).unwrap();
        }
    }

    /// A directory of the tree swapped for a symbolic link after the walk listed it: the
    /// file read below it is the one the walk saw, not the one outside the tree the link
    /// leads to, and a walk that meets the link does not follow it.
    #[test]
    fn a_directory_swapped_for_a_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/f"), b"inside").unwrap();
        std::fs::write(outside.join("f"), b"secret").unwrap();
        let meta = std::fs::metadata(root.join("d/f")).unwrap();
        let job = ReadJob {
            ticket: FileTicket(0),
            path: root.join("d/f"),
            at: at(&root.join("d"), "f"),
            size: 6,
            inode: (meta.dev(), meta.ino()),
            record: None,
        };
        std::fs::rename(root.join("d"), tmp.path().join("d.old")).unwrap();
        symlink(&outside, root.join("d")).unwrap();
        let mut read = String::new();
        open_walked(&job)
            .unwrap()
            .0
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "inside");

        let p = ObjectPipeline::new(
            Arc::new(MemStore::default()),
            None,
            PipelineConfig::default(),
        )
        .unwrap();
        let tree = tree_from_dir(&root, &p).unwrap();
        let d = leaf(&tree, "d");
        assert!(matches!(d.kind, EntryKind::Symlink { .. }), "{d:?}");
    }

    #[test]
    fn a_file_that_changes_while_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
        let job = |size| ReadJob {
            ticket: p.reserve_ticket(),
            path: path.clone(),
            at: at(dir.path(), "f"),
            size,
            inode: (meta.dev(), meta.ino()),
            record: None,
        };
        let shared = Shared {
            pipeline: &p,
            failure: Mutex::new(None),
            read: Mutex::new(Recorded::default()),
        };
        read_file(&job(10), &shared).unwrap();
        // Listed at 14 bytes, truncated to 10 before it was read.
        let err = read_file(&job(14), &shared).unwrap_err().to_string();
        assert!(
            err.contains("changed while being read (14 bytes when listed, 10 read, 10 now)"),
            "{err}"
        );
        // Listed at 6 bytes, grown to 10: the read stops at 6, the size afterwards tells.
        let err = read_file(&job(6), &shared).unwrap_err().to_string();
        assert!(
            err.contains("changed while being read (6 bytes when listed, 6 read, 10 now)"),
            "{err}"
        );
    }

    #[test]
    fn a_change_that_keeps_size_and_mtime_still_counts_as_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let before = std::fs::metadata(&path).unwrap();
        assert!(!changed_while_read(10, 10, &before, &before));
        assert!(changed_while_read(10, 9, &before, &before), "short read");
        // Rewritten in place with its mtime put back: only ctime tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"9876543210").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.len(), after.mtime(), after.mtime_nsec()),
            (before.len(), before.mtime(), before.mtime_nsec())
        );
        assert!(changed_while_read(10, 10, &before, &after));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(br"/srv/a\040b"), b"/srv/a b");
        assert_eq!(unescape_octal(br"/x\134y\011"), b"/x\\y\t");
        assert_eq!(unescape_octal(br"/plain\04"), br"/plain\04");
        let root = mounted_below(Path::new("/"));
        assert!(root.contains(Path::new("/proc")), "{root:?}");
    }

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let deep: PathBuf = std::iter::repeat_n("d", crate::tarsource::MAX_DEPTH + 1).collect();
        std::fs::create_dir_all(dir.path().join(&deep)).unwrap();
        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
        let err = tree_from_dir(dir.path(), &p).unwrap_err().to_string();
        assert!(err.contains("nested deeper than 512 levels"), "{err}");
    }

    #[test]
    fn missing_root_is_named() {
        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
        let err = tree_from_dir(Path::new("/nonexistent/cvmfs-oci-x"), &p).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/cvmfs-oci-x: "),
            "{err}"
        );
    }

    /// Rows kept in memory, as a walk reads them.
    #[derive(Default)]
    struct Rows(HashMap<Vec<u8>, Vec<(Vec<u8>, CachedFile)>>);

    impl StatCache for Rows {
        fn files_in(&self, dir: &[u8]) -> Vec<(Vec<u8>, CachedFile)> {
            self.0.get(dir).cloned().unwrap_or_default()
        }
    }

    fn walk_cached(
        root: &Path,
        store: &Arc<MemStore>,
        rows: Option<&Rows>,
    ) -> (CachedWalk, PipelineStats) {
        let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default()).unwrap();
        let walked = tree_from_dir_cached(root, &p, rows.map(|r| r as &dyn StatCache)).unwrap();
        (walked, p.finish().unwrap().stats)
    }

    fn data_of(d: &Dir, name: &str) -> FileData {
        match &leaf(d, name).kind {
            EntryKind::File { data, .. } => data.clone(),
            k => panic!("{name}: {k:?}"),
        }
    }

    #[test]
    fn a_file_the_cache_knows_is_not_read_while_its_objects_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/known"), b"known content").unwrap();
        std::fs::write(root.join("d/new"), b"new content").unwrap();
        std::fs::write(root.join("top"), b"top").unwrap();
        let store = Arc::new(MemStore::default());
        // First walk: everything read; nothing recorded, as every file is seconds old at most.
        let (first, stats) = walk_cached(root, &store, None);
        assert_eq!((stats.files, stats.files_reused), (3, 0));
        assert!(
            first.update.recorded.is_empty(),
            "racy files are not recorded"
        );
        assert!(first.update.replace_all);
        let Node::Dir(d) = first.tree.children.get(&b"d"[..]).unwrap() else {
            panic!()
        };
        let known = data_of(d, "known");
        let stat = stat_of(
            &lstat(&root.join("d/known")),
            mount_of(&File::open(root.join("d")).unwrap().into()).unwrap(),
        );
        // The row's xattrs stand for the file's: matching the state, they are not read.
        let cached_xattrs = Xattrs::from([(b"user.cached".to_vec(), b"1".to_vec())]);
        let row = |data: FileData| CachedFile {
            stat,
            data,
            xattrs: cached_xattrs.clone(),
        };
        let mut rows = Rows::default();
        rows.0
            .insert(b"d".to_vec(), vec![(b"known".to_vec(), row(known.clone()))]);
        // A row of a path that is no longer a file of the tree, in a directory that is gone.
        rows.0
            .insert(b"gone".to_vec(), vec![(b"x".to_vec(), row(known.clone()))]);
        let (second, stats) = walk_cached(root, &store, Some(&rows));
        assert_eq!((stats.files, stats.files_reused), (2, 1));
        let Node::Dir(d2) = second.tree.children.get(&b"d"[..]).unwrap() else {
            panic!()
        };
        assert_eq!(data_of(d2, "known"), known);
        assert_eq!(leaf(d2, "known").xattrs, cached_xattrs);
        assert!(leaf(d2, "new").xattrs.is_empty());
        assert!(second.update.stale.is_empty(), "{:?}", second.update.stale);
        assert!(!second.update.replace_all);
        assert!(second.update.dirs.contains(&b"d"[..]) && second.update.dirs.contains(&b""[..]));
        assert!(!second.update.dirs.contains(&b"gone"[..]));

        // Its object gone (gc): read again, and the row is stale.
        store.objects.lock().unwrap().clear();
        let (third, stats) = walk_cached(root, &store, Some(&rows));
        assert_eq!((stats.files, stats.files_reused), (3, 0));
        assert_eq!(third.update.stale, vec![(b"d".to_vec(), b"known".to_vec())]);
        let Node::Dir(d3) = third.tree.children.get(&b"d"[..]).unwrap() else {
            panic!()
        };
        assert!(leaf(d3, "known").xattrs.is_empty(), "read: its own xattrs");
        assert_eq!(
            store.get_inflated(
                match &known {
                    FileData::Whole(h) => h,
                    _ => panic!(),
                },
                catalog_writer::hash::Suffix::None,
            ),
            b"known content"
        );

        // Another state (here: another inode number recorded, or another mount, as a rebuilt
        // image remounted in its place gives): read, and the row is stale.
        assert_ne!(
            stat.mnt, 0,
            "this kernel (6.8 or later) tells unique mount ids"
        );
        for change in [|s: &mut FileStat| s.ino ^= 1, |s: &mut FileStat| s.mnt ^= 1] {
            let mut other = row(known.clone());
            change(&mut other.stat);
            rows.0
                .insert(b"d".to_vec(), vec![(b"known".to_vec(), other)]);
            let (fourth, stats) = walk_cached(root, &store, Some(&rows));
            assert_eq!((stats.files, stats.files_reused), (3, 0));
            assert_eq!(
                fourth.update.stale,
                vec![(b"d".to_vec(), b"known".to_vec())]
            );
        }
    }

    #[test]
    fn a_settled_file_is_recorded_with_its_xattrs() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"content").unwrap();
        let cpath = CString::new(f.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and value buffer.
        let rc = unsafe {
            libc::lsetxattr(
                cpath.as_ptr(),
                c"user.k".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        };
        let with_xattr = rc == 0;
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let store = Arc::new(MemStore::default());
        let (walked, _) = walk_cached(tmp.path(), &store, None);
        let [(path, row)] = &walked.update.recorded[..] else {
            panic!("{:?}", walked.update.recorded)
        };
        assert_eq!(&path[..], b"f");
        let mnt = mount_of(&File::open(tmp.path()).unwrap().into()).unwrap();
        assert_eq!(row.stat, stat_of(&lstat(&f), mnt));
        assert_eq!(row.data, data_of(&walked.tree, "f"));
        assert_eq!(row.xattrs, leaf(&walked.tree, "f").xattrs);
        assert_eq!(row.xattrs.contains_key(&b"user.k"[..]), with_xattr);
    }

    #[test]
    fn a_row_for_a_path_that_is_no_longer_a_file_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("was-a-file")).unwrap();
        let stat = stat_of(&lstat(tmp.path()), 0);
        let mut rows = Rows::default();
        let data = FileData::Whole(EMPTY_OBJECT);
        rows.0.insert(
            Vec::new(),
            vec![(
                b"was-a-file".to_vec(),
                CachedFile {
                    stat,
                    data,
                    xattrs: Xattrs::new(),
                },
            )],
        );
        let store = Arc::new(MemStore::default());
        let (walked, _) = walk_cached(tmp.path(), &store, Some(&rows));
        assert_eq!(
            walked.update.stale,
            vec![(Vec::new(), b"was-a-file".to_vec())]
        );
    }

    #[test]
    fn only_states_older_than_the_racy_window_are_settled() {
        let stat = |m: i64, c: i64| FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: m,
            ctime_ns: c,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mnt: 0,
        };
        let read = 100 * RACY_NS;
        assert!(settled(&stat(read - RACY_NS, read - RACY_NS), read));
        assert!(!settled(&stat(read - RACY_NS + 1, read - RACY_NS), read));
        assert!(
            !settled(&stat(read - RACY_NS, read - 1), read),
            "ctime counts"
        );
        assert!(
            !settled(&stat(read + RACY_NS, 0), read),
            "a future mtime is never settled"
        );
        assert!(
            !settled(&stat(0, 0), 0),
            "a clock before 1970 trusts nothing"
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("running as root: permission bits do not stop reads, skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("secret");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        let store = Arc::new(MemStore::default());
        let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
        let err = tree_from_dir(tmp.path(), &p).unwrap_err().to_string();
        assert!(err.contains("secret"), "{err}");
    }

    /// Each way of reading xattrs reads those of the walked entries, not of what replaced
    /// them: by name in the directory (Linux 6.13), through `/proc/self/fd`, and without
    /// `/proc` through descriptors of the entries themselves (a symbolic link's are then
    /// unreachable).
    #[test]
    fn xattrs_are_those_of_the_walked_entries_every_way() {
        type Way = fn(FdWalk) -> FdWalk;
        let ways: [(&str, Way); 3] = [
            ("by name", |w| w),
            ("through /proc", FdWalk::without_xattrat),
            ("through descriptors", FdWalk::without_proc),
        ];
        for (way, configure) in ways {
            if !xattrs_of_a_swapped_tree(way, configure) {
                return; // no user xattrs on this file system
            }
        }
    }

    /// Sets `user.k` on a file, a directory and a file outside the tree, walks the tree in
    /// the `configure`d way, swaps the directory for a link outside and reads the entries'
    /// xattrs. False when the file system has no user xattrs.
    fn xattrs_of_a_swapped_tree(way: &str, configure: fn(FdWalk) -> FdWalk) -> bool {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        for d in [root.join("d"), outside.clone()] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        let set = |p: &Path, v: &[u8]| {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid NUL-terminated strings and buffer.
            unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    c"user.k".as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            }
        };
        // As long as a catalog keeps: the size is asked first, then the value read whole.
        let long = vec![b'v'; catalog_writer::xattr::MAX_READ_LEN];
        if set(&root.join("d/f"), &long) != 0 {
            return false;
        }
        set(&root.join("d"), b"dir");
        set(&outside.join("f"), b"OUTSIDE");
        symlink(&outside, root.join("l")).unwrap();
        // A link's own xattrs: only trusted.* may be set on one, and only by root.
        let link = CString::new(root.join("l").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and buffer.
        let link_has_xattr = unsafe {
            libc::lsetxattr(
                link.as_ptr(),
                c"trusted.k".as_ptr(),
                b"link".as_ptr().cast(),
                4,
                0,
            )
        } == 0;
        let mut walk = configure(FdWalk::new(&root));
        let _root = walk.next().unwrap().unwrap();
        let d = walk.next().unwrap().unwrap();
        let value = |e: &WalkEntry| xattrs_of(e).unwrap().get(&b"user.k"[..]).cloned();
        assert_eq!(value(&d).as_deref(), Some(&b"dir"[..]), "{way}");
        std::fs::rename(root.join("d"), tmp.path().join("d.old")).unwrap();
        symlink(&outside, root.join("d")).unwrap();
        let f = walk.next().unwrap().unwrap();
        assert_eq!(f.path, root.join("d/f"), "{way}");
        assert_eq!(value(&f).as_deref(), Some(&long[..]), "{way}");
        if way == "by name" && xattrat::supported() {
            assert!(matches!(f.xattr_source(), Ok(XattrSource::At(..))));
        }
        let l = walk.next().unwrap().unwrap();
        assert!(l.stat.is_symlink());
        let link_value = xattrs_of(&l).unwrap().get(&b"trusted.k"[..]).cloned();
        match (link_has_xattr, way) {
            // Without /proc a link cannot be named safely: its xattrs are not read.
            (false, _) | (true, "through descriptors") => assert_eq!(link_value, None, "{way}"),
            (true, _) => assert_eq!(link_value.as_deref(), Some(&b"link"[..]), "{way}"),
        }
        true
    }
}
