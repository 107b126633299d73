//! Documents (index, manifests, configs) of local images, read with bounded memory: a file
//! that is longer than its descriptor says, or never ends, must not cost more than the cap a
//! registry document has.

use super::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Largest index, manifest or config read into memory, wherever it comes from.
pub(crate) const MAX_DOCUMENT: u64 = 16 << 20;

/// Opens `path` for reading if it is a regular file (a FIFO or a device is refused).
pub(crate) use publisher::local::open_regular;

/// Reads document `what` (e.g. `config sha256:…`) of `image` from `from`, which holds
/// `actual` bytes (a file's length, a tar member's size) where its descriptor, if any,
/// `declared` a size. A document whose size differs from the declared one or exceeds
/// [`MAX_DOCUMENT`] is refused unread, and at most one byte more than expected is read, so
/// one that grows while read costs no more either.
pub(crate) fn read_document(
    from: impl Read,
    actual: u64,
    declared: Option<u64>,
    image: &str,
    what: &str,
) -> Result<Vec<u8>> {
    if let Some(declared) = declared.filter(|d| *d != actual) {
        return Err(Error::image(
            image,
            format!("{what} is {actual} bytes, declared {declared}"),
        ));
    }
    if actual > MAX_DOCUMENT {
        return Err(Error::image(
            image,
            format!(
                "{what} is {actual} bytes, more than the {MAX_DOCUMENT}-byte limit for documents"
            ),
        ));
    }
    let mut bytes = Vec::new();
    from.take(actual + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("image {image}: {what}"), e))?;
    let read = bytes.len() as u64;
    if read != actual {
        let got = if read > actual {
            format!("more than {actual}")
        } else {
            read.to_string()
        };
        return Err(Error::image(
            image,
            format!("{what} is {actual} bytes, but {got} could be read (truncated or changed while read)"),
        ));
    }
    Ok(bytes)
}

/// Reads document `what` of `image` from the regular file at `path`; see [`read_document`].
pub(crate) fn read_document_file(
    path: &Path,
    declared: Option<u64>,
    image: &str,
    what: &str,
) -> Result<Vec<u8>> {
    let context = || format!("image {image}: {what} {}", path.display());
    let file = open_regular(path).map_err(|e| Error::io(context(), e))?;
    let actual = file.metadata().map_err(|e| Error::io(context(), e))?.len();
    read_document(file, actual, declared, image, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io;

    /// Bytes without end, as `/dev/zero` or a FIFO fed forever.
    struct Endless;

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'{');
            Ok(buf.len())
        }
    }

    #[test]
    fn a_document_growing_while_read_costs_one_byte_more_than_expected() {
        let err = read_document(Endless, 10, Some(10), "oci:/l", "config sha256:ab")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image oci:/l: config sha256:ab is 10 bytes, but more than 10 could be read \
             (truncated or changed while read)"
        );
        let short = read_document(&b"abc"[..], 10, None, "i", "member \"m\"").unwrap_err();
        assert!(short.to_string().contains("but 3 could be read"), "{short}");
    }

    #[test]
    fn a_sparse_file_longer_than_declared_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        File::create(&path).unwrap().set_len(64 << 20).unwrap();
        let err = read_document_file(&path, Some(193), "oci:/l", "config sha256:ab")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image oci:/l: config sha256:ab is 67108864 bytes, declared 193"
        );
        let err = read_document_file(&path, None, "oci:/l", "index.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the 16777216-byte limit"), "{err}");
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        for path in [fifo.as_path(), Path::new("/dev/zero")] {
            let err = read_document_file(path, None, "oci:/l", "index.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
    }
}
