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

/// What a reader of untrusted input needs to keep of an attribute's key or value: one byte
/// more than a catalog takes, so that [`retain_representable`] still drops and reports it,
/// without holding megabytes of a value no catalog will store.
pub const MAX_READ_LEN: usize = 256;

/// Most attributes a reader needs to keep per entry, for the same reason.
pub const MAX_READ_COUNT: usize = 256;

/// Adds `key` = `value` to `xattrs` as a reader of untrusted input should: both cut to
/// [`MAX_READ_LEN`], and nothing past [`MAX_READ_COUNT`] attributes.
pub fn insert_bounded(xattrs: &mut Xattrs, key: &[u8], value: &[u8]) {
    // Copies of the kept part: a truncated vector would keep its whole allocation.
    let key = &key[..key.len().min(MAX_READ_LEN)];
    if xattrs.len() < MAX_READ_COUNT || xattrs.contains_key(key) {
        xattrs.insert(
            key.to_vec(),
            value[..value.len().min(MAX_READ_LEN)].to_vec(),
        );
    }
}

/// Removes the attributes a catalog cannot hold (empty or > 255-byte keys, > 255-byte values,
/// more than 255 attributes), as cvmfs drops them, and returns why each was dropped so the
/// caller can warn.
pub fn retain_representable(xattrs: &mut Xattrs) -> Vec<String> {
    let mut dropped = Vec::new();
    xattrs.retain(|key, value| {
        let ok = !key.is_empty() && key.len() <= 255 && value.len() <= 255;
        if !ok {
            // Readers may cut what no catalog takes to just over the limit (see
            // `MAX_READ_LEN`): a length past it is said as such.
            let length = |what: &str, len: usize| match len > 255 {
                true => format!("{what} over 255 bytes"),
                false => format!("{len}-byte {what}"),
            };
            dropped.push(format!(
                "extended attribute {} ({}, {}) cannot be stored in a catalog",
                String::from_utf8_lossy(key),
                length("key", key.len()),
                length("value", value.len())
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

    /// A reader keeps at most one byte more than a catalog takes, and one attribute more:
    /// enough for `retain_representable` to drop and report them, never megabytes.
    #[test]
    fn readers_keep_just_enough_to_report_what_no_catalog_takes() {
        let mut x = Xattrs::new();
        insert_bounded(&mut x, b"user.big", &vec![b'v'; 1 << 20]);
        insert_bounded(&mut x, &[b'k'; 10_000], b"v");
        for i in 0..1000 {
            insert_bounded(&mut x, format!("user.{i:04}").as_bytes(), &[]);
        }
        assert_eq!(x.len(), MAX_READ_COUNT);
        assert_eq!(x[&b"user.big"[..]].len(), MAX_READ_LEN);
        // What is held, not only what is seen: a cut vector would keep its allocation.
        assert!(x.keys().all(|k| k.capacity() <= MAX_READ_LEN));
        assert!(x.values().all(|v| v.capacity() <= MAX_READ_LEN));
        let reasons = retain_representable(&mut x);
        assert!(reasons.contains(
            &"extended attribute user.big (8-byte key, value over 255 bytes) cannot be stored \
              in a catalog"
                .to_string()
        ));
        assert!(reasons
            .iter()
            .any(|r| r.contains("(key over 255 bytes, 1-byte value)")));
        assert_eq!(x.len(), MAX_READ_COUNT - 2);
        let mut many = Xattrs::new();
        for i in 0..1000 {
            insert_bounded(&mut many, format!("user.{i:04}").as_bytes(), &[]);
        }
        let reasons = retain_representable(&mut many);
        assert_eq!(
            reasons,
            ["extended attribute user.0255 dropped: more than 255 attributes"]
        );
    }
}
