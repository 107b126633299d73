//! Path hashes (spec 2.3): MD5 of the raw path bytes, split into two little-endian `i64`s.

use md5::{Digest, Md5};

/// `(md5path_1, md5path_2)` or `(parent_1, parent_2)` of a catalog row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathHash(pub i64, pub i64);

impl PathHash {
    /// The parent of the root entry in the root catalog: an all-zero digest.
    pub const ZERO: PathHash = PathHash(0, 0);

    /// Hash of a repository path (`b""` = root, `b"/usr/bin"`; no trailing slash).
    pub fn of(path: &[u8]) -> PathHash {
        let d: [u8; 16] = Md5::digest(path).into();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&d[..8]);
        hi.copy_from_slice(&d[8..]);
        PathHash(i64::from_le_bytes(lo), i64::from_le_bytes(hi))
    }
}

/// The parent of a repository path (`/a/b` → `/a`, `/a` → ``); `None` for the root.
pub fn parent_path(path: &[u8]) -> Option<&[u8]> {
    if path.is_empty() {
        return None;
    }
    let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    Some(&path[..cut])
}

/// The last component of a path (`/a/b` → `b`; root → ``).
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `parent` + `/` + `name`.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Human-readable form of a repository path for messages (`/` for the root).
/// Directory levels of a repository path (`/a/b` → 2; the root `""` → 0).
pub fn depth_of(path: &[u8]) -> usize {
    path.iter().filter(|&&b| b == b'/').count()
}

/// A path's first 200 bytes, to name it in a message: a hostile one can be very long.
pub fn head(path: &[u8]) -> &[u8] {
    &path[..path.len().min(200)]
}

/// [`head`] for display, marked if cut.
pub fn display_head(path: &[u8]) -> String {
    match head(path).len() < path.len() {
        true => format!("{}…", String::from_utf8_lossy(head(path))),
        false => display(path),
    }
}

pub fn display(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors() {
        let table: &[(&[u8], i64, i64)] = &[
            (b"", 338333539836370388, 9098107892288553193),
            (b"/", 5068354950813017702, -2754218947814130786),
            (b"/usr", 4261349461019561853, 8805651796865472228),
            (b"/usr/bin", -6332405977853062539, -3354531661490446888),
            (b"/usr/bin/ls", 2790045458389290473, -7922073663355498726),
            (b"/a", -2906336618250618618, -744252105585281751),
            (b"/a/b", -79414819578584146, 8517581007188477988),
            (b"/a/b/.cvmfscatalog", 2438909467458220359, 1914288168329344167),
            (
                b"/lib/lhcb/ALIGNMENT/ALIGNMENT_v9r2/Phys/CommonParticles/tests/qmtest/commonparticles.qms/.svn/tmp/prop-base",
                4069996547627848455,
                -3471940481646685085,
            ),
        ];
        for (path, a, b) in table {
            assert_eq!(PathHash::of(path), PathHash(*a, *b), "{}", display(path));
        }
    }

    #[test]
    fn parents_and_names() {
        assert_eq!(parent_path(b""), None);
        assert_eq!(parent_path(b"/usr"), Some(&b""[..]));
        assert_eq!(parent_path(b"/a/b"), Some(&b"/a"[..]));
        assert_eq!(file_name(b"/a/b"), b"b");
        assert_eq!(file_name(b""), b"");
        assert_eq!(join(b"", b"x"), b"/x");
    }
}
