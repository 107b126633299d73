//! Content hashes (SHA-1) and the object names they give in `data/`.

use sha1::{Digest, Sha1};
use std::fmt;

/// Role of an object in the store; appended to the object file name, never to the hash text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suffix {
    /// Whole regular-file contents (no suffix character).
    None,
    /// File catalog.
    Catalog,
    /// One chunk of a chunked file.
    Partial,
    /// History (tag) database.
    History,
    /// Repository certificate.
    Certificate,
    /// Repository meta-info JSON.
    MetaInfo,
}

impl Suffix {
    /// The character appended to the object file name.
    pub fn as_str(self) -> &'static str {
        match self {
            Suffix::None => "",
            Suffix::Catalog => "C",
            Suffix::Partial => "P",
            Suffix::History => "H",
            Suffix::Certificate => "X",
            Suffix::MetaInfo => "M",
        }
    }

    /// Parses the suffix character of an object file name (`""`, `"C"`, ...).
    pub fn from_str_opt(s: &str) -> Option<Suffix> {
        Some(match s {
            "" => Suffix::None,
            "C" => Suffix::Catalog,
            "P" => Suffix::Partial,
            "H" => Suffix::History,
            "X" => Suffix::Certificate,
            "M" => Suffix::MetaInfo,
            _ => return None,
        })
    }
}

/// A SHA-1 content hash: the hash of the exact bytes stored in an object file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 20]);

impl ContentHash {
    /// Hashes `bytes` (the stored, usually compressed, object bytes).
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha1::digest(bytes).into())
    }

    /// Lowercase hex text, as used in manifests, catalogs and history.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 40 lowercase hex digits; anything else (uppercase, tags, suffixes) is refused.
    pub fn from_hex(text: &str) -> Option<ContentHash> {
        if text.len() != 40
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; 20];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(ContentHash(out))
    }

    /// Raw digest bytes as stored in catalog `hash` BLOB columns.
    pub fn from_slice(bytes: &[u8]) -> Option<ContentHash> {
        <[u8; 20]>::try_from(bytes).ok().map(ContentHash)
    }

    /// Path of the object relative to the storage directory: `data/ab/cdef…[suffix]`.
    pub fn object_path(&self, suffix: Suffix) -> String {
        let hex = self.to_hex();
        format!("data/{}/{}{}", &hex[..2], &hex[2..], suffix.as_str())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// Hash of the zlib-compressed empty string: the object of every empty file and `.cvmfscatalog`.
pub const EMPTY_OBJECT: ContentHash = ContentHash([
    0xe8, 0xec, 0x3d, 0x88, 0xb6, 0x2e, 0xbf, 0x52, 0x6e, 0x4e, 0x5a, 0x4f, 0xf6, 0x16, 0x2a, 0x3a,
    0xa4, 0x8a, 0x6b, 0x78,
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_vector() {
        let z = crate::zlib::compress(b"");
        assert_eq!(hex::encode(&z), "789c030000000001");
        assert_eq!(ContentHash::of(&z), EMPTY_OBJECT);
        assert_eq!(
            EMPTY_OBJECT.object_path(Suffix::None),
            "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
        );
    }

    #[test]
    fn hello_vector() {
        let z = crate::zlib::compress(b"hello\n");
        assert_eq!(hex::encode(&z), "789ccb48cdc9c9e70200084b021f");
        assert_eq!(
            ContentHash::of(&z).to_hex(),
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
        );
    }

    #[test]
    fn hex_parsing_is_strict() {
        assert!(ContentHash::from_hex("E8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78").is_none());
        assert!(ContentHash::from_hex("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78C").is_none());
        assert_eq!(
            ContentHash::from_hex("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"),
            Some(EMPTY_OBJECT)
        );
    }
}
