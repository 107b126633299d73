//! Large unchunked files: compressed while they are read, straight into a scratch file the
//! store then takes over (`ObjectStore::put_file`, a rename for a local store). The plaintext
//! never touches the disk and memory stays at one zlib stream plus a write buffer.

use catalog_writer::hash::ContentHash;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use publisher::store::{PlainHash, PlainHasher};
use sha1::{Digest, Sha1};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::TempPath;

/// Write buffer between the compressor and the scratch file.
const WRITE_BUF: usize = 1 << 20;

/// The finished compressed object of one file, waiting in a scratch file.
pub(crate) struct StreamedObject {
    /// Deleted when dropped, unless the store moved it away first.
    pub path: TempPath,
    /// Object name: SHA-1 of the compressed bytes.
    pub hash: ContentHash,
    pub compressed_len: u64,
    /// Hash and size of the plaintext (the content index key).
    pub plain: PlainHash,
    pub size: u64,
}

/// Compresses (zlib level 6) into a scratch file while hashing both sides.
pub(crate) struct StreamCompressor {
    enc: ZlibEncoder<HashingFile>,
    plain: PlainHasher,
    size: u64,
    path: TempPath,
}

impl StreamCompressor {
    /// A new scratch file in `dir`.
    pub fn new(dir: &Path) -> io::Result<StreamCompressor> {
        let (file, path) = tempfile::Builder::new()
            .prefix("ingest-object.")
            .tempfile_in(dir)?
            .into_parts();
        Ok(StreamCompressor {
            enc: ZlibEncoder::new(HashingFile::new(file), Compression::new(6)),
            plain: PlainHasher::new(),
            size: 0,
            path,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.plain.update(data);
        self.size += data.len() as u64;
        self.enc.write_all(data)
    }

    /// Flushes the zlib trailer and the file.
    pub fn finish(self) -> io::Result<StreamedObject> {
        let out = self.enc.finish()?;
        let hash = ContentHash(out.hasher.clone().finalize().into());
        let compressed_len = out.len;
        out.w.into_inner().map_err(|e| e.into_error())?;
        Ok(StreamedObject {
            path: self.path,
            hash,
            compressed_len,
            plain: self.plain.finalize(),
            size: self.size,
        })
    }

    /// Where the scratch file is, for messages.
    pub fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// Writes compressed bytes to a file while hashing them.
struct HashingFile {
    w: BufWriter<std::fs::File>,
    hasher: Sha1,
    len: u64,
}

impl HashingFile {
    fn new(file: std::fs::File) -> HashingFile {
        HashingFile {
            w: BufWriter::with_capacity(WRITE_BUF, file),
            hasher: Sha1::new(),
            len: 0,
        }
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
    fn object_is_zlib_of_the_input_named_by_its_sha1() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = StreamCompressor::new(dir.path()).unwrap();
        let input = crate::pipeline::memstore::lcg_bytes(3 << 20, 4);
        for part in input.chunks(100_000) {
            c.write(part).unwrap();
        }
        let scratch = c.path();
        let obj = c.finish().unwrap();
        let bytes = std::fs::read(&scratch).unwrap();
        assert_eq!(bytes, catalog_writer::zlib::compress(&input));
        assert_eq!(obj.hash, ContentHash::of(&bytes));
        assert_eq!(obj.compressed_len, bytes.len() as u64);
        assert_eq!(obj.plain, publisher::store::plain_hash(&input));
        assert_eq!(obj.size, input.len() as u64);
        drop(obj);
        assert!(!scratch.exists(), "an object nobody stored is deleted");
    }
}
