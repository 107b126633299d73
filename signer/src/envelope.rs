//! The signed-file layout shared by manifest and whitelist:
//! `body` `--\n` `hash text` `\n` `signature bytes to end of file`.

use crate::digest::HashAlgo;
use crate::error::{Error, Result};

const SEPARATOR: &[u8] = b"\n--\n";

/// The three parts of a signed file, borrowed from its bytes.
pub(crate) struct Envelope<'a> {
    /// Everything up to and including the `\n` before `--`.
    pub body: &'a [u8],
    pub hash_text: &'a str,
    pub signature: &'a [u8],
}

/// Splits a signed file at the first `\n--\n` the way cvmfs does.
pub(crate) fn split<'a>(item: &'static str, bytes: &'a [u8]) -> Result<Envelope<'a>> {
    let malformed = |reason: &str| Error::Malformed {
        item,
        reason: reason.to_string(),
    };
    let cut = bytes
        .windows(SEPARATOR.len())
        .position(|w| w == SEPARATOR)
        .ok_or_else(|| malformed("no '--' line after the body"))?;
    let (body, tail) = (&bytes[..=cut], &bytes[cut + SEPARATOR.len()..]);
    let line_end = tail
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| malformed("the hash line after '--' is not terminated by a newline"))?;
    let hash_text = std::str::from_utf8(&tail[..line_end])
        .ok()
        .filter(|text| HashAlgo::of_hash_text(text).is_some())
        .ok_or_else(|| malformed("the line after '--' is not a lowercase hash text"))?;
    let signature = &tail[line_end + 1..];
    if signature.is_empty() {
        return Err(malformed("no signature after the hash line"));
    }
    Ok(Envelope {
        body,
        hash_text,
        signature,
    })
}

impl Envelope<'_> {
    /// Recomputes the body hash with the algorithm the hash line implies and compares.
    pub(crate) fn check_hash(&self, item: &'static str) -> Result<()> {
        let algo = HashAlgo::of_hash_text(self.hash_text).ok_or_else(|| Error::Malformed {
            item,
            reason: "the line after '--' is not a lowercase hash text".to_string(),
        })?;
        let computed = algo.hash_text(self.body)?;
        if computed != self.hash_text {
            return Err(Error::HashMismatch {
                item,
                computed,
                stated: self.hash_text.to_string(),
            });
        }
        Ok(())
    }
}

/// Joins the parts; nothing follows the signature (a trailing newline would break it).
pub(crate) fn assemble(body: &[u8], hash_text: &str, signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + hash_text.len() + signature.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(b"--\n");
    out.extend_from_slice(hash_text.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";

    #[test]
    fn split_inverts_assemble() {
        let file = assemble(b"Ax\nBy\n", HASH, b"\x00\n--\nsig");
        let env = split("test", &file).unwrap();
        assert_eq!(env.body, b"Ax\nBy\n");
        assert_eq!(env.hash_text, HASH);
        assert_eq!(env.signature, b"\x00\n--\nsig");
    }

    #[test]
    fn split_rejects_broken_layouts() {
        let cases: [&[u8]; 5] = [
            b"Ax\nBy\n",
            b"Ax\n--\na9993e364706816aba3e25717850c26c9cd0d89d",
            b"Ax\n--\na9993e364706816aba3e25717850c26c9cd0d89d\n",
            b"Ax\n--\nA9993E364706816ABA3E25717850C26C9CD0D89D\nsig",
            b"Ax\n-- \na9993e364706816aba3e25717850c26c9cd0d89d\nsig",
        ];
        for case in cases {
            let err = split("test", case).err().expect("must fail");
            assert!(
                matches!(err, Error::Malformed { item: "test", .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn check_hash_detects_changes() {
        let file = assemble(b"abc", HASH, b"s");
        // The body must end in a newline for split to find "\n--\n"; use a body that does.
        assert!(split("t", &file).is_err());
        let body = b"abc\n";
        let good = crate::digest::sha1_text(body);
        let file = assemble(body, &good, b"s");
        split("t", &file).unwrap().check_hash("t").unwrap();
        let file = assemble(b"abd\n", &good, b"s");
        let err = split("t", &file).unwrap().check_hash("t").unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    }
}
