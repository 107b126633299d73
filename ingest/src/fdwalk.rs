//! A walk of a directory tree by descriptors, for trees that may change while they are walked.
//!
//! Every directory is opened from its parent's descriptor (`openat` with `O_NOFOLLOW`) and
//! every entry is examined relative to it (`fstatat`, `readlinkat`, xattrs through
//! `/proc/self/fd`). A path-based walk resolves the whole path again for each step, so a
//! directory swapped for a symbolic link between two steps would list, stat and read what
//! the link points to, outside the tree. Here a swapped directory is either the one already
//! open or refused. Entries come depth first, parents before their children, names sorted
//! bytewise (as `walkdir` with `sort_by_file_name`).

use std::ffi::{CStr, CString, OsStr};
use std::fs::Metadata;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Directory descriptors held at most: a deeper ancestor's is closed and reopened (from the
/// root, one component at a time, then checked to be the same directory) when the walk
/// returns to it. The walk allows 512 levels, more than a default limit of open files leaves.
const HELD_DIRS: usize = 32;

/// The `lstat` of an entry: what the walk and the stat cache look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lstat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Lstat {
    /// `name` in the directory `dir`, not following a symbolic link.
    fn at(dir: RawFd, name: &CStr) -> io::Result<Self> {
        // SAFETY: an all-zero stat is a valid value of the plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated and `st` is writable for the call's duration.
        let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self::from(&st))
    }

    /// What the descriptor `fd` refers to.
    fn of(fd: &OwnedFd) -> io::Result<Self> {
        // SAFETY: as in `at`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is writable for the call's duration.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self::from(&st))
    }

    fn format(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.format() == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.format() == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.format() == libc::S_IFLNK
    }

    pub fn is_char_device(&self) -> bool {
        self.format() == libc::S_IFCHR
    }

    pub fn is_block_device(&self) -> bool {
        self.format() == libc::S_IFBLK
    }

    pub fn is_fifo(&self) -> bool {
        self.format() == libc::S_IFIFO
    }

    pub fn is_socket(&self) -> bool {
        self.format() == libc::S_IFSOCK
    }

    fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

impl From<&libc::stat> for Lstat {
    #[allow(clippy::unnecessary_cast)] // field widths differ between targets
    fn from(st: &libc::stat) -> Self {
        Self {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            rdev: st.st_rdev as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as i64,
        }
    }
}

impl From<&Metadata> for Lstat {
    fn from(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// A failed step of the walk, with the path it was at.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn walk_error(path: &Path, source: io::Error) -> WalkError {
    WalkError {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of the tree.
pub(crate) struct WalkEntry {
    /// The root's path joined with the names below it (for messages and the stat cache).
    pub path: PathBuf,
    /// 0 for the root.
    pub depth: usize,
    pub stat: Lstat,
    /// The directory holding the entry and its name there (`None` for the root).
    parent: Option<(Arc<OwnedFd>, CString)>,
    /// The entry's own descriptor, for a directory.
    dir: Option<Arc<OwnedFd>>,
    /// Whether `/proc/self/fd` can name the parent (else xattrs are read by path).
    proc_fd: bool,
    /// Whether the kernel reads xattrs by a name in a directory ([`xattrat`]).
    xattrat: bool,
}

impl WalkEntry {
    /// A directory's own descriptor.
    pub fn dir_fd(&self) -> Option<&OwnedFd> {
        self.dir.as_deref()
    }

    /// The directory holding the entry and its name there (`None` for the root): a file is
    /// opened from these, not by its path.
    pub fn parent(&self) -> Option<(Arc<OwnedFd>, CString)> {
        self.parent.clone()
    }

    /// The target of a symbolic link.
    pub fn read_link(&self) -> io::Result<Vec<u8>> {
        let Some((dir, name)) = &self.parent else {
            return std::fs::read_link(&self.path).map(|t| t.into_os_string().into_vec());
        };
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: `name` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Where the entry's xattrs can be read without following anything swapped on the way
    /// from the root: its name in its directory for the `*xattrat` calls (Linux 6.13), else
    /// a path below `/proc/self/fd/N` of its directory (for the `l*xattr` calls; valid while
    /// `self` lives), else (no `/proc`) a descriptor of the entry itself for the `f*xattr`
    /// calls, which only directories and regular files can give.
    pub fn xattr_source(&self) -> io::Result<XattrSource> {
        let Some((dir, name)) = &self.parent else {
            return Ok(XattrSource::Path(self.path.clone()));
        };
        if self.xattrat {
            return Ok(XattrSource::At(dir.clone(), name.clone()));
        }
        if self.proc_fd {
            let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            p.push(OsStr::from_bytes(name.as_bytes()));
            return Ok(XattrSource::Path(p));
        }
        if let Some(own) = &self.dir {
            return Ok(XattrSource::Fd(own.clone()));
        }
        if !self.stat.is_file() {
            return Ok(XattrSource::Unreachable);
        }
        let fd = open_file_at(dir, name).map_err(|e| replaced_or(e, "a symbolic link now"))?;
        if Lstat::of(&fd)?.id() != self.stat.id() {
            return Err(io::Error::other("replaced by another file during the walk"));
        }
        Ok(XattrSource::Fd(Arc::new(fd)))
    }
}

/// See [`WalkEntry::xattr_source`].
pub(crate) enum XattrSource {
    /// The entry by its name in its directory, for [`xattrat`].
    At(Arc<OwnedFd>, CString),
    Path(PathBuf),
    Fd(Arc<OwnedFd>),
    /// A symbolic link or special file while `/proc` is not mounted: no safe way to name it.
    Unreachable,
}

/// A directory the walk is inside of.
struct Frame {
    /// `None` once released (see [`HELD_DIRS`]).
    fd: Option<Arc<OwnedFd>>,
    /// Its names below the root, to reopen it, and its identity, to check the reopened one.
    rel: Vec<CString>,
    id: (u64, u64),
    path: PathBuf,
    depth: usize,
    /// Its entries not yet visited.
    names: std::vec::IntoIter<CString>,
}

/// The walk: an iterator of entries, the root first.
pub(crate) struct FdWalk {
    root_path: PathBuf,
    root: Option<Arc<OwnedFd>>,
    stack: Vec<Frame>,
    started: bool,
    proc_fd: bool,
    xattrat: bool,
}

impl FdWalk {
    /// A walk of the tree at `root` (followed if it is a link, as given by the user).
    pub fn new(root: &Path) -> Self {
        Self {
            root_path: root.to_path_buf(),
            root: None,
            stack: Vec::new(),
            started: false,
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            xattrat: xattrat::supported(),
        }
    }

    /// As where `/proc` is not mounted and the kernel is older than 6.13.
    #[cfg(test)]
    pub fn without_proc(mut self) -> Self {
        self.proc_fd = false;
        self.xattrat = false;
        self
    }

    /// As on a kernel older than 6.13: xattrs through `/proc/self/fd`.
    #[cfg(test)]
    pub fn without_xattrat(mut self) -> Self {
        self.xattrat = false;
        self
    }

    fn open_root(&mut self) -> Result<WalkEntry, WalkError> {
        let path = self.root_path.clone();
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| walk_error(&path, io::Error::from_raw_os_error(libc::EINVAL)))?;
        let fd = open_dir(libc::AT_FDCWD, &cpath, false).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => walk_error(&path, io::Error::other("not a directory")),
            _ => walk_error(&path, e),
        })?;
        let stat = Lstat::of(&fd).map_err(|e| walk_error(&path, e))?;
        let names = list(&fd).map_err(|e| walk_error(&path, e))?;
        let fd = Arc::new(fd);
        self.root = Some(fd.clone());
        self.stack.push(Frame {
            fd: Some(fd.clone()),
            rel: Vec::new(),
            id: stat.id(),
            path: path.clone(),
            depth: 0,
            names: names.into_iter(),
        });
        Ok(WalkEntry {
            path,
            depth: 0,
            stat,
            parent: None,
            dir: Some(fd),
            proc_fd: self.proc_fd,
            xattrat: self.xattrat,
        })
    }

    /// The entry `name` of the innermost directory; a directory is opened and listed, and
    /// becomes the innermost.
    fn visit(&mut self, name: CString) -> Result<WalkEntry, WalkError> {
        let parent = self.innermost_fd()?;
        let Some(top) = self.stack.last() else {
            return Err(walk_error(&self.root_path, io::Error::other("walk ended")));
        };
        let path = top.path.join(OsStr::from_bytes(name.as_bytes()));
        let depth = top.depth + 1;
        let stat = Lstat::at(parent.as_raw_fd(), &name).map_err(|e| walk_error(&path, e))?;
        let mut dir = None;
        if stat.is_dir() {
            let fd = open_dir(parent.as_raw_fd(), &name, true)
                .map_err(|e| walk_error(&path, replaced_or(e, "a symbolic link now")))?;
            if Lstat::of(&fd).map_err(|e| walk_error(&path, e))?.id() != stat.id() {
                let e = io::Error::other("replaced by another directory during the walk");
                return Err(walk_error(&path, e));
            }
            let names = list(&fd).map_err(|e| walk_error(&path, e))?;
            let fd = Arc::new(fd);
            let mut rel = self.stack.last().map(|t| t.rel.clone()).unwrap_or_default();
            rel.push(name.clone());
            self.stack.push(Frame {
                fd: Some(fd.clone()),
                rel,
                id: stat.id(),
                path: path.clone(),
                depth,
                names: names.into_iter(),
            });
            self.release_far_ancestor();
            dir = Some(fd);
        }
        Ok(WalkEntry {
            path,
            depth,
            stat,
            parent: Some((parent, name)),
            dir,
            proc_fd: self.proc_fd,
            xattrat: self.xattrat,
        })
    }

    /// Closes the descriptor of the ancestor [`HELD_DIRS`] levels up (never the root's).
    fn release_far_ancestor(&mut self) {
        let n = self.stack.len();
        if n > HELD_DIRS + 1 {
            if let Some(frame) = self.stack.get_mut(n - HELD_DIRS - 1) {
                frame.fd = None;
            }
        }
    }

    /// The innermost directory's descriptor, reopened from the root if it was released.
    fn innermost_fd(&mut self) -> Result<Arc<OwnedFd>, WalkError> {
        let root = self.root.clone();
        let Some(top) = self.stack.last_mut() else {
            return Err(walk_error(&self.root_path, io::Error::other("walk ended")));
        };
        if let Some(fd) = &top.fd {
            return Ok(fd.clone());
        }
        let Some(mut cur) = root else {
            return Err(walk_error(&top.path, io::Error::other("root not open")));
        };
        for name in &top.rel {
            let fd = open_dir(cur.as_raw_fd(), name, true)
                .map_err(|e| walk_error(&top.path, replaced_or(e, "a symbolic link now")))?;
            cur = Arc::new(fd);
        }
        if Lstat::of(&cur).map_err(|e| walk_error(&top.path, e))?.id() != top.id {
            let e = io::Error::other("replaced by another directory during the walk");
            return Err(walk_error(&top.path, e));
        }
        top.fd = Some(cur.clone());
        Ok(cur)
    }
}

impl Iterator for FdWalk {
    type Item = Result<WalkEntry, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            return Some(self.open_root());
        }
        loop {
            let top = self.stack.last_mut()?;
            match top.names.next() {
                Some(name) => return Some(self.visit(name)),
                None => {
                    self.stack.pop();
                }
            }
        }
    }
}

/// `ELOOP` from an `O_NOFOLLOW` open means the name is a symbolic link now.
fn replaced_or(e: io::Error, what: &str) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            io::Error::other(format!("replaced during the walk: it is {what}"))
        }
        _ => e,
    }
}

/// Opens the directory `name` of `dir` for listing; `nofollow`: refuse a symbolic link.
fn open_dir(dir: RawFd, name: &CStr, nofollow: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    open_at(dir, name, flags)
}

/// Opens `name` of the directory `dir` for reading: never a symbolic link (`ELOOP`), and
/// without waiting for a writer if it turned into a FIFO. The caller checks what it got.
pub(crate) fn open_file_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    open_at(dir.as_raw_fd(), name, flags)
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in the directory `dir` (without `.` and `..`), sorted bytewise.
fn list(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes the descriptor over (closedir closes it): give it a duplicate.
    // SAFETY: duplicating an open descriptor.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is an open directory descriptor nothing else owns.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let names = read_names(stream);
    // SAFETY: `stream` came from fdopendir and is closed once.
    unsafe { libc::closedir(stream) };
    let mut names = names?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn read_names(stream: *mut libc::DIR) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    loop {
        // readdir returns NULL both at the end and on an error; errno tells them apart.
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is an open directory stream.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) => Ok(names),
                _ => Err(e),
            };
        }
        // SAFETY: `d_name` of the entry readdir returned is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
}

/// `listxattrat(2)` and `getxattrat(2)` (Linux 6.13): an entry's xattrs by its name in an
/// open directory. The other safe way, a path below `/proc/self/fd/N`, costs a lookup in
/// `/proc` per entry (measured here: listing the xattrs of 100 000 files took 0.45 s that way,
/// 0.18 s by name).
pub(crate) mod xattrat {
    use std::ffi::CStr;
    use std::os::fd::RawFd;
    use std::sync::OnceLock;

    /// The calls' numbers: since Linux 5.1 new system calls have one number on every
    /// architecture but alpha and mips; libc 0.2.191 does not name these yet.
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    const NUMBERS: Option<(libc::c_long, libc::c_long)> = Some((465, 464));
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    const NUMBERS: Option<(libc::c_long, libc::c_long)> = None;

    /// `struct xattr_args` of `getxattrat`.
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }

    /// Whether this kernel has the calls (and a seccomp filter lets them through): an
    /// unknown flag is refused with EINVAL by the call itself, with ENOSYS or EPERM before it.
    pub fn supported() -> bool {
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            let Some((list, _)) = NUMBERS else {
                return false;
            };
            // SAFETY: the path is NUL-terminated; a null buffer of size 0 asks for a size.
            let rc = unsafe {
                libc::syscall(
                    list,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    0x4000_0000u32,
                    0usize,
                    0usize,
                )
            };
            rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        })
    }

    /// `llistxattr` of `name` in `dir`: the size of the list into `buf` of `len` bytes
    /// (`len` 0: the size needed), or -1 with errno set.
    pub fn list(dir: RawFd, name: &CStr, buf: *mut u8, len: usize) -> isize {
        let Some((number, _)) = NUMBERS else {
            return unsupported();
        };
        let nofollow = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
        // SAFETY: `name` is NUL-terminated; `buf`/`len` describe a writable buffer (or 0/null).
        let rc = unsafe { libc::syscall(number, dir, name.as_ptr(), nofollow, buf, len) };
        rc as isize
    }

    /// `lgetxattr` of the attribute `attr` of `name` in `dir`, as [`list`].
    pub fn get(dir: RawFd, name: &CStr, attr: &CStr, buf: *mut u8, len: usize) -> isize {
        let Some((_, number)) = NUMBERS else {
            return unsupported();
        };
        let Ok(size) = u32::try_from(len) else {
            return unsupported();
        };
        let args = XattrArgs {
            value: buf as u64,
            size,
            flags: 0,
        };
        let nofollow = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
        let args_len = std::mem::size_of::<XattrArgs>();
        // SAFETY: `name` and `attr` are NUL-terminated; `args` lives for the call and names
        // a writable buffer of `size` bytes (or none).
        let rc = unsafe {
            libc::syscall(
                number,
                dir,
                name.as_ptr(),
                nofollow,
                attr.as_ptr(),
                &args as *const XattrArgs,
                args_len,
            )
        };
        rc as isize
    }

    fn unsupported() -> isize {
        // SAFETY: errno is this thread's; setting it is what a failed call does.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn walk(root: &Path) -> Vec<(String, usize, bool)> {
        FdWalk::new(root)
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path.strip_prefix(root).unwrap().display().to_string();
                (rel, e.depth, e.stat.is_dir())
            })
            .collect()
    }

    #[test]
    fn order_is_depth_first_with_sorted_names_like_walkdir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["b/y", "a", "b/x/z", "c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["a/1", "b/x/z/2", "b/0", "B", "c/.h"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        symlink("/etc", root.join("b/link")).unwrap();
        let ours: Vec<_> = walk(root);
        let theirs: Vec<_> = walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                (rel, e.depth(), e.file_type().is_dir())
            })
            .collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours.len(), 13);
    }

    #[test]
    fn deep_trees_reopen_released_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for i in 0..(HELD_DIRS * 3) {
            deep.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        // A file at every level, visited after the deeper directory: the walk must come back.
        let mut p = tmp.path().to_path_buf();
        for i in 0..(HELD_DIRS * 3) {
            p.push(format!("d{i}"));
            std::fs::write(p.parent().unwrap().join(format!("zz{i}")), b"x").unwrap();
        }
        let entries = walk(tmp.path());
        assert_eq!(entries.len(), 1 + 2 * HELD_DIRS * 3);
        assert!(entries.iter().any(|(p, d, _)| p == "zz0" && *d == 1));
    }

    #[test]
    fn a_released_ancestor_replaced_meanwhile_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().join("a");
        for i in 0..(HELD_DIRS + 2) {
            deep.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(tmp.path().join("a/zz"), b"x").unwrap();
        let mut w = FdWalk::new(tmp.path());
        // Down to the deepest directory: `a` has been released by then.
        for _ in 0..(HELD_DIRS + 4) {
            w.next().unwrap().unwrap();
        }
        std::fs::rename(tmp.path().join("a"), tmp.path().join("old")).unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        let err = w.find_map(|e| e.err()).expect("an error");
        assert!(
            err.source.to_string().contains("replaced"),
            "{}",
            err.source
        );
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/inside"), b"x").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let mut w = FdWalk::new(&root);
        let d = {
            w.next().unwrap().unwrap(); // the root
            w.next().unwrap().unwrap() // d, opened and listed
        };
        assert_eq!(d.path, root.join("d"));
        std::fs::rename(root.join("d"), tmp.path().join("moved")).unwrap();
        symlink(&outside, root.join("d")).unwrap();
        let rest: Vec<PathBuf> = w.map(|e| e.unwrap().path).collect();
        assert_eq!(rest, [root.join("d/inside")]);
        // Its xattr path names the entry in the directory that was listed.
        let inside = FdWalk::new(tmp.path().join("moved").as_path())
            .without_xattrat()
            .nth(1)
            .unwrap()
            .unwrap();
        let Ok(XattrSource::Path(p)) = inside.xattr_source() else {
            panic!("a /proc path expected");
        };
        assert!(p.starts_with("/proc/self/fd"));
        assert!(std::fs::symlink_metadata(&p).is_ok());
    }

    #[test]
    fn a_directory_replaced_by_a_link_before_it_is_opened_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let fd = open_dir(
            libc::AT_FDCWD,
            &CString::new(tmp.path().as_os_str().as_bytes()).unwrap(),
            false,
        )
        .unwrap();
        std::fs::remove_dir(tmp.path().join("d")).unwrap();
        symlink("/", tmp.path().join("d")).unwrap();
        let e = open_dir(fd.as_raw_fd(), c"d", true).unwrap_err();
        assert!(replaced_or(e, "a symbolic link now")
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn links_are_read_relative_to_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("../target with spaces", tmp.path().join("l")).unwrap();
        let e = FdWalk::new(tmp.path()).nth(1).unwrap().unwrap();
        assert!(e.stat.is_symlink());
        assert_eq!(e.read_link().unwrap(), b"../target with spaces");
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = FdWalk::new(&f).next().unwrap().err().unwrap();
        assert_eq!(e.path, f);
        assert_eq!(e.source.to_string(), "not a directory");
    }
}
