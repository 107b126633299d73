//! Content digests (`sha256:<hex>`) and a reader that checks one while the bytes stream by.

use super::error::Error;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read};

/// A SHA-256 content digest; the only algorithm images use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        Digest::from_hex(hex)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest {
            hex: hex.to_owned(),
        })
    }

    /// Digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest a finished hasher computed.
    pub fn of_finalized(hasher: Sha256) -> Digest {
        Digest {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 hex digits without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

/// Which digest a [`VerifyingReader`] checks; only changes the error wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The stored (usually compressed) blob, against the manifest's layer digest.
    Blob,
    /// The uncompressed tar, against the config's `rootfs.diff_ids`.
    DiffId,
}

/// Passes bytes through and, at end of stream, checks their count and SHA-256. A mismatch is
/// reported as an `io::Error` carrying an [`Error::Layer`] that names image and layer.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    expected_size: Option<u64>,
    seen: u64,
    image: String,
    layer: String,
    checked: Checked,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Checks `inner` against `expected` (and `expected_size` when known).
    pub fn new(
        inner: R,
        expected: Digest,
        expected_size: Option<u64>,
        image: &str,
        layer: &str,
        checked: Checked,
    ) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            expected_size,
            seen: 0,
            image: image.to_owned(),
            layer: layer.to_owned(),
            checked,
            verified: false,
        }
    }

    fn fail(&self, reason: String) -> io::Error {
        Error::layer(&self.image, &self.layer, reason).into_io()
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(size) = self.expected_size {
            if self.seen < size {
                return Err(self.fail(format!(
                    "truncated blob: got {} of {} bytes",
                    self.seen, size
                )));
            }
        }
        let got = Digest::of_finalized(self.hasher.clone());
        if got != self.expected {
            let what = match self.checked {
                Checked::Blob => "digest mismatch",
                Checked::DiffId => "uncompressed digest does not match the config's diff_id",
            };
            return Err(self.fail(format!("{what} (expected {}, got {got})", self.expected)));
        }
        self.verified = true;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.seen += n as u64;
        if let Some(size) = self.expected_size {
            if self.seen > size {
                return Err(self.fail(format!("blob is longer than its declared {size} bytes")));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn parse_and_display() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert!(Digest::parse("sha512:ab").is_none());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
    }

    #[test]
    fn accepts_matching_stream() {
        let data = b"layer bytes".to_vec();
        let mut r = VerifyingReader::new(
            &data[..],
            Digest::of(&data),
            Some(data.len() as u64),
            "img",
            "l",
            Checked::Blob,
        );
        assert_eq!(read_all(&mut r).unwrap(), data);
    }

    #[test]
    fn digest_mismatch_names_image_and_layer() {
        let expected = Digest::of(b"other");
        let mut r = VerifyingReader::new(
            &b"layer bytes"[..],
            expected.clone(),
            None,
            "docker://h/r:t",
            &expected.to_string(),
            Checked::Blob,
        );
        let err = Error::from_io("x", read_all(&mut r).unwrap_err()).to_string();
        assert!(err.starts_with(&format!(
            "image docker://h/r:t layer {expected}: digest mismatch"
        )));
    }

    #[test]
    fn truncated_and_overlong_streams() {
        let data = b"0123456789";
        let d = Digest::of(data);
        let mut short =
            VerifyingReader::new(&data[..5], d.clone(), Some(10), "i", "l", Checked::Blob);
        let err = read_all(&mut short).unwrap_err().to_string();
        assert!(err.contains("truncated blob: got 5 of 10 bytes"), "{err}");
        let mut long = VerifyingReader::new(&data[..], d, Some(4), "i", "l", Checked::Blob);
        let err = read_all(&mut long).unwrap_err().to_string();
        assert!(err.contains("longer than its declared 4 bytes"), "{err}");
    }
}
