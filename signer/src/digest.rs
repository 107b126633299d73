//! Hash texts as cvmfs writes them: lowercase hex plus an algorithm tag for non-SHA-1 hashes.
//!
//! cvmfs infers the algorithm of a hash text from its length (40 = SHA-1, 47 = RIPEMD-160,
//! 49 = SHAKE-128), so a verifier must accept all three to read any repository.

use openssl::hash::{Hasher, MessageDigest};

use crate::error::{ossl, Result};

/// A content hash algorithm of cvmfs (MD5 is only used for paths and does not appear here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashAlgo {
    Sha1,
    Rmd160,
    Shake128,
}

const DIGEST_HEX_LEN: usize = 40;

impl HashAlgo {
    fn tag(self) -> &'static str {
        match self {
            HashAlgo::Sha1 => "",
            HashAlgo::Rmd160 => "-rmd160",
            HashAlgo::Shake128 => "-shake128",
        }
    }

    /// The algorithm of a well-formed hash text (strict lowercase hex), or None.
    pub(crate) fn of_hash_text(text: &str) -> Option<HashAlgo> {
        let digits = text.get(..DIGEST_HEX_LEN)?;
        if !is_lower_hex(digits) {
            return None;
        }
        [HashAlgo::Sha1, HashAlgo::Rmd160, HashAlgo::Shake128]
            .into_iter()
            .find(|algo| &text[DIGEST_HEX_LEN..] == algo.tag())
    }

    /// The hash text of `data`, e.g. `da39a3ee…` or `7f9c…-shake128`.
    pub(crate) fn hash_text(self, data: &[u8]) -> Result<String> {
        let mut digest = [0u8; 20];
        let name = match self {
            HashAlgo::Sha1 => "SHA-1",
            HashAlgo::Rmd160 => "RIPEMD-160",
            HashAlgo::Shake128 => "SHAKE-128",
        };
        let md = match self {
            HashAlgo::Sha1 => MessageDigest::sha1(),
            HashAlgo::Rmd160 => MessageDigest::ripemd160(),
            HashAlgo::Shake128 => MessageDigest::shake_128(),
        };
        let mut hasher = Hasher::new(md).map_err(ossl(name))?;
        hasher.update(data).map_err(ossl(name))?;
        if self == HashAlgo::Shake128 {
            // SHAKE is an XOF: cvmfs squeezes exactly 160 bits.
            hasher.finish_xof(&mut digest).map_err(ossl(name))?;
        } else {
            let out = hasher.finish().map_err(ossl(name))?;
            digest.copy_from_slice(&out);
        }
        Ok(format!("{}{}", hex::encode(digest), self.tag()))
    }
}

/// True if `s` is non-empty and only holds `0-9a-f` (cvmfs misparses uppercase digits).
pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// SHA-1 hash text of `data` (plain 40 hex digits).
pub(crate) fn sha1_text(data: &[u8]) -> String {
    hex::encode(openssl::sha::sha1(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors_for_all_algorithms() {
        assert_eq!(
            HashAlgo::Sha1.hash_text(b"abc").unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            HashAlgo::Rmd160.hash_text(b"abc").unwrap(),
            "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc-rmd160"
        );
        assert_eq!(
            HashAlgo::Shake128.hash_text(b"abc").unwrap(),
            "5881092dd818bf5cf8a3ddb793fbcba74097d5c5-shake128"
        );
        assert_eq!(
            HashAlgo::Shake128.hash_text(b"").unwrap(),
            "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"
        );
        assert_eq!(
            sha1_text(b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn algorithm_is_inferred_from_the_text() {
        let sha1 = "a9993e364706816aba3e25717850c26c9cd0d89d";
        assert_eq!(HashAlgo::of_hash_text(sha1), Some(HashAlgo::Sha1));
        let rmd = format!("{sha1}-rmd160");
        assert_eq!(HashAlgo::of_hash_text(&rmd), Some(HashAlgo::Rmd160));
        let shake = format!("{sha1}-shake128");
        assert_eq!(HashAlgo::of_hash_text(&shake), Some(HashAlgo::Shake128));
    }

    #[test]
    fn malformed_hash_texts_are_rejected() {
        for bad in [
            "",
            "A9993E364706816ABA3E25717850C26C9CD0D89D",
            "a9993e364706816aba3e25717850c26c9cd0d89",
            "a9993e364706816aba3e25717850c26c9cd0d89dd",
            "a9993e364706816aba3e25717850c26c9cd0d89dC",
            "a9993e364706816aba3e25717850c26c9cd0d89d-md5",
            "g9993e364706816aba3e25717850c26c9cd0d89d",
            "a9993e364706816aba3e25717850c26c9cd0d89d\u{e9}",
        ] {
            assert_eq!(HashAlgo::of_hash_text(bad), None, "{bad:?}");
        }
    }
}
