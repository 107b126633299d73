//! Compressed objects of spooled (large, unchunked) files: written to an anonymous temp file
//! and mapped read-only for `ObjectStore::put`, so their bytes sit in the page cache instead of
//! the process heap.

use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;

/// The stored bytes of one object.
pub(crate) enum ObjectBytes {
    Mem(Vec<u8>),
    Mapped(Mapped),
}

impl ObjectBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ObjectBytes::Mem(v) => v,
            ObjectBytes::Mapped(m) => m.as_slice(),
        }
    }
}

/// A read-only private mapping of a whole file we own.
pub(crate) struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
    _file: File,
}

// SAFETY: the mapping is read-only and owned by this value; the file is an unlinked temp file
// only this value refers to, so nobody can truncate or modify it while mapped.
unsafe impl Send for Mapped {}

impl Mapped {
    pub fn map(file: File, len: usize) -> io::Result<Mapped> {
        if len == 0 {
            return Err(io::Error::other("cannot map an empty object"));
        }
        // SAFETY: a fresh mapping of `len` bytes of a file that is at least that long.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapped {
            ptr,
            len,
            _file: file,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live read-only mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no slice outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// Writes compressed bytes to a file while hashing them.
pub(crate) struct HashingFile {
    w: BufWriter<File>,
    pub hasher: Sha1,
    pub len: u64,
}

impl HashingFile {
    pub fn new(file: File) -> HashingFile {
        HashingFile {
            w: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha1::new(),
            len: 0,
        }
    }

    pub fn into_file(self) -> io::Result<File> {
        self.w.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for HashingFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.w.write(data)?;
        self.hasher.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_what_was_written() {
        let mut hf = HashingFile::new(tempfile::tempfile().unwrap());
        hf.write_all(b"compressed bytes").unwrap();
        let digest: [u8; 20] = hf.hasher.clone().finalize().into();
        let len = hf.len as usize;
        let m = Mapped::map(hf.into_file().unwrap(), len).unwrap();
        assert_eq!(m.as_slice(), b"compressed bytes");
        assert_eq!(digest, <[u8; 20]>::from(Sha1::digest(b"compressed bytes")));
        assert!(Mapped::map(tempfile::tempfile().unwrap(), 0).is_err());
    }
}
