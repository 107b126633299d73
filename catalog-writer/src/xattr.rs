//! The extended-attribute blob of the catalog `xattr` column (spec 2.9).

use crate::entry::Xattrs;
use crate::pathhash::display;
use crate::{Error, Result};

const VERSION: u8 = 1;

fn refuse(path: &[u8], reason: String) -> Error {
    Error::Path {
        path: display(path),
        reason,
    }
}

/// Encodes `xattrs` (sorted by key, as the map iterates); `None` when there are none, because
/// the column must be NULL rather than an empty blob.
pub fn encode(xattrs: &Xattrs, path: &[u8]) -> Result<Option<Vec<u8>>> {
    if xattrs.is_empty() {
        return Ok(None);
    }
    let count = u8::try_from(xattrs.len()).map_err(|_| {
        refuse(
            path,
            format!("{} extended attributes (at most 255)", xattrs.len()),
        )
    })?;
    let mut blob = vec![VERSION, count];
    for (key, value) in xattrs {
        let klen = u8::try_from(key.len())
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                refuse(
                    path,
                    format!("extended attribute key of {} bytes (1..255)", key.len()),
                )
            })?;
        let vlen = u8::try_from(value.len()).map_err(|_| {
            refuse(
                path,
                format!(
                    "extended attribute {} has a {}-byte value (at most 255)",
                    String::from_utf8_lossy(key),
                    value.len()
                ),
            )
        })?;
        blob.push(klen);
        blob.push(vlen);
        blob.extend_from_slice(key);
        blob.extend_from_slice(value);
    }
    Ok(Some(blob))
}

/// Decodes a blob; any order of keys is accepted, trailing or missing bytes are refused.
pub fn decode(blob: &[u8], path: &[u8]) -> Result<Xattrs> {
    let bad = |why: &str| refuse(path, format!("malformed xattr blob: {why}"));
    let (&version, rest) = blob.split_first().ok_or_else(|| bad("empty"))?;
    if version != VERSION {
        return Err(bad(&format!("version {version}")));
    }
    let (&count, mut rest) = rest.split_first().ok_or_else(|| bad("no count"))?;
    let mut out = Xattrs::new();
    for _ in 0..count {
        if rest.len() < 2 {
            return Err(bad("truncated header"));
        }
        let (klen, vlen) = (rest[0] as usize, rest[1] as usize);
        rest = &rest[2..];
        if rest.len() < klen + vlen {
            return Err(bad("truncated attribute"));
        }
        out.insert(rest[..klen].to_vec(), rest[klen..klen + vlen].to_vec());
        rest = &rest[klen + vlen..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

/// Removes the attributes a catalog cannot hold (empty or > 255-byte keys, > 255-byte values,
/// more than 255 attributes), as cvmfs drops them, and returns why each was dropped so the
/// caller can warn.
pub fn retain_representable(xattrs: &mut Xattrs) -> Vec<String> {
    let mut dropped = Vec::new();
    xattrs.retain(|key, value| {
        let ok = !key.is_empty() && key.len() <= 255 && value.len() <= 255;
        if !ok {
            dropped.push(format!(
                "extended attribute {} ({}-byte key, {}-byte value) cannot be stored in a catalog",
                String::from_utf8_lossy(key),
                key.len(),
                value.len()
            ));
        }
        ok
    });
    while xattrs.len() > 255 {
        if let Some((key, _)) = xattrs.pop_last() {
            dropped.push(format!(
                "extended attribute {} dropped: more than 255 attributes",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vector() {
        let mut x = Xattrs::new();
        x.insert(b"user.foo".to_vec(), b"bar".to_vec());
        x.insert(b"security.capability".to_vec(), vec![1, 0]);
        let blob = encode(&x, b"/f").unwrap().unwrap();
        assert_eq!(
            hex::encode(&blob),
            "0102130273656375726974792e6361706162696c69747901000803757365722e666f6f626172"
        );
        assert_eq!(decode(&blob, b"/f").unwrap(), x);
        assert_eq!(encode(&Xattrs::new(), b"/f").unwrap(), None);
    }

    #[test]
    fn limits_name_the_path() {
        let mut x = Xattrs::new();
        x.insert(vec![b'k'; 256], b"v".to_vec());
        let err = encode(&x, b"/some/file").unwrap_err().to_string();
        assert!(err.contains("/some/file"), "{err}");
        let mut x = Xattrs::new();
        x.insert(b"user.k".to_vec(), vec![0; 256]);
        assert!(encode(&x, b"/f").is_err());
        let many: Xattrs = (0..256u32)
            .map(|i| (format!("user.{i}").into_bytes(), vec![]))
            .collect();
        assert!(encode(&many, b"/f").is_err());
        assert!(decode(&[1, 1, 3, 0, b'a'], b"/f").is_err());
    }
}
