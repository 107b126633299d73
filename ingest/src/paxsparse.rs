//! GNU sparse files in PAX archives (`tar --format=pax --sparse`, and libarchive's `bsdtar`
//! for files with holes): formats 0.0, 0.1 and 1.0, read as GNU tar writes them and as Go's
//! `archive/tar` (Docker, containerd) reads them. The member's stored data holds only the
//! regions with data, in 1.0 after a map of them; everything else in the file reads as zeros.
//!
//! | format | name | size | map |
//! |---|---|---|---|
//! | 0.0 | the header's | `GNU.sparse.size` | `GNU.sparse.offset`/`numbytes` record pairs |
//! | 0.1 | `GNU.sparse.name` | `GNU.sparse.size` | `GNU.sparse.map` (`off,len,off,len…`) |
//! | 1.0 | `GNU.sparse.name` | `GNU.sparse.realsize` | decimal lines at the start of the data |

use crate::targuard::{PaxRecord, MAX_PAX_RECORDS};
use crate::tarsource::pax_number as number;
use std::io::{self, Read};

const BLOCK: usize = 512;

/// What a member's `GNU.sparse.*` records say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PaxSparse {
    /// The file's size, holes included.
    pub size: u64,
    /// Its real name, when the records give one (the header has a made-up one).
    pub name: Option<Vec<u8>>,
    /// The data regions (offset, length); `None` in format 1.0, where the data starts with
    /// them.
    map: Option<Vec<(u64, u64)>>,
}

impl PaxSparse {
    /// The sparse file that `records` describe; `None` when they have no `GNU.sparse.*`.
    pub(crate) fn from_records(records: &[PaxRecord<'_>]) -> Result<Option<PaxSparse>, String> {
        let mut f = Fields::default();
        for (key, value) in records {
            let Some(field) = key.strip_prefix(b"GNU.sparse.") else {
                continue;
            };
            f.seen = true;
            let number = || number(key, value);
            match field {
                b"major" => f.major = Some(number()?),
                b"minor" => f.minor = Some(number()?),
                b"name" => f.name = Some(value.to_vec()).filter(|v| !v.is_empty()),
                b"realsize" => f.realsize = Some(number()?),
                b"size" => f.size = Some(number()?),
                b"numblocks" => {}
                b"map" => f.map = Some(parse_list(value)?),
                // 0.0: each offset is followed by its region's length.
                b"offset" | b"numbytes" => {
                    let is_offset = field == b"offset";
                    if is_offset != f.pairs.len().is_multiple_of(2) {
                        return Err("GNU.sparse.offset and numbytes records out of turn".into());
                    }
                    f.pairs.push(number()?);
                }
                _ => {
                    return Err(format!(
                        "unknown PAX record {}",
                        String::from_utf8_lossy(key)
                    ))
                }
            }
        }
        f.into_sparse()
    }

    /// A reader of the whole file over `data`, the member's stored bytes (in format 1.0 its
    /// map is read from them here).
    pub(crate) fn reader<R: Read>(&self, mut data: R) -> io::Result<SparseReader<R>> {
        let map = match &self.map {
            Some(map) => map.clone(),
            None => read_map(&mut data)?,
        };
        check_map(&map, self.size).map_err(invalid)?;
        let mut regions: Vec<(u64, u64)> = map.into_iter().filter(|r| r.1 > 0).collect();
        regions.reverse();
        Ok(SparseReader {
            data,
            regions,
            pos: 0,
            size: self.size,
        })
    }
}

#[derive(Default)]
struct Fields {
    seen: bool,
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    realsize: Option<u64>,
    size: Option<u64>,
    map: Option<Vec<(u64, u64)>>,
    /// 0.0: offset, numbytes, offset, numbytes… in record order.
    pairs: Vec<u64>,
}

impl Fields {
    fn into_sparse(self) -> Result<Option<PaxSparse>, String> {
        if !self.seen {
            return Ok(None);
        }
        let size = |s: Option<u64>, key: &str| s.ok_or(format!("no GNU.sparse.{key} record"));
        // Go's archive/tar takes `size` before `realsize`, whatever the format.
        let stated = self.size.or(self.realsize);
        let (size, map) = match (self.major, self.minor) {
            (Some(1), Some(0)) => (size(stated, "realsize")?, None),
            (None, None) | (Some(0), Some(0 | 1)) => {
                let map = match self.map {
                    Some(map) => map,
                    None if !self.pairs.is_empty() && self.pairs.len().is_multiple_of(2) => {
                        self.pairs.chunks(2).map(|p| (p[0], p[1])).collect()
                    }
                    None => return Err("GNU.sparse records without a complete map".into()),
                };
                (size(stated, "size")?, Some(map))
            }
            (major, minor) => {
                let v = |n: Option<u64>| n.map_or("?".into(), |n| n.to_string());
                return Err(format!(
                    "GNU sparse format {}.{} is not supported (0.0, 0.1 and 1.0 are)",
                    v(major),
                    v(minor)
                ));
            }
        };
        if let Some(map) = &map {
            check_map(map, size)?;
        }
        Ok(Some(PaxSparse {
            size,
            name: self.name,
            map,
        }))
    }
}

/// The expanded file: data regions from the member, zeros between them.
pub(crate) struct SparseReader<R> {
    data: R,
    /// Regions still to come, the next one last.
    regions: Vec<(u64, u64)>,
    pos: u64,
    size: u64,
}

impl<R: Read> Read for SparseReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.size {
            return self.check_all_data_read().map(|()| 0);
        }
        let room = |to: u64| usize::try_from(to).map_or(buf.len(), |to| to.min(buf.len()));
        match self.regions.last().copied() {
            Some((offset, len)) if self.pos >= offset => {
                let want = room(offset + len - self.pos);
                let n = self.data.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(invalid("the sparse file's data ends before its map does"));
                }
                self.pos += n as u64;
                if self.pos == offset + len {
                    self.regions.pop();
                }
                Ok(n)
            }
            next => {
                let hole_end = next.map_or(self.size, |(offset, _)| offset);
                let n = room(hole_end - self.pos);
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
        }
    }
}

impl<R: Read> SparseReader<R> {
    /// Stored data the map does not place would be lost without a word.
    fn check_all_data_read(&mut self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        match self.data.read(&mut byte)? {
            0 => Ok(()),
            _ => Err(invalid("the sparse file has more data than its map places")),
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// `off,len,off,len…` (format 0.1).
fn parse_list(value: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let numbers = value
        .split(|&b| b == b',')
        .map(|n| number(b"GNU.sparse.map", n))
        .collect::<Result<Vec<u64>, String>>()?;
    if !numbers.len().is_multiple_of(2) {
        return Err("GNU.sparse.map has an odd number of fields".into());
    }
    Ok(numbers.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// Regions in order, not overlapping, within the file.
fn check_map(map: &[(u64, u64)], size: u64) -> Result<(), String> {
    let mut end = 0u64;
    for &(offset, len) in map {
        let region_end = offset.checked_add(len).filter(|&e| e <= size);
        match region_end {
            Some(e) if offset >= end => end = e,
            _ => {
                return Err(format!(
                    "sparse map region {offset}+{len} out of order or beyond the file's {size} \
                     bytes"
                ))
            }
        }
    }
    Ok(())
}

/// Format 1.0's map: decimal numbers on lines (the count, then offset and length of each
/// region) in whole 512-byte blocks at the start of the data.
fn read_map(data: &mut impl Read) -> io::Result<Vec<(u64, u64)>> {
    let mut text = Vec::new();
    let mut lines = 0usize;
    let mut needed: Option<usize> = None;
    loop {
        if text.len() as u64 >= MAX_PAX_RECORDS {
            return Err(invalid(format!(
                "sparse map longer than {MAX_PAX_RECORDS} bytes"
            )));
        }
        let start = text.len();
        text.resize(start + BLOCK, 0);
        data.read_exact(&mut text[start..])
            .map_err(|e| invalid(format!("reading the sparse map: {e}")))?;
        lines += text[start..].iter().filter(|&&b| b == b'\n').count();
        if needed.is_none() && lines > 0 {
            let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
            let count = number(b"sparse map count", first).map_err(invalid)?;
            // Each region takes at least 4 bytes of map ("0\n0\n").
            if count > MAX_PAX_RECORDS / 4 {
                return Err(invalid(format!("sparse map of {count} regions")));
            }
            needed = Some(1 + 2 * count as usize);
        }
        if needed.is_some_and(|n| lines >= n) {
            break;
        }
    }
    let n = needed.unwrap_or(1);
    let fields = text
        .split(|&b| b == b'\n')
        .skip(1)
        .take(n - 1)
        .map(|f| number(b"sparse map", f))
        .collect::<Result<Vec<u64>, String>>()
        .map_err(invalid)?;
    Ok(fields.chunks(2).map(|p| (p[0], p[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&str, &str)]) -> Result<Option<PaxSparse>, String> {
        let r: Vec<PaxRecord<'_>> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        PaxSparse::from_records(&r)
    }

    fn expand(sparse: &PaxSparse, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        sparse.reader(data)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn the_three_formats_give_the_same_file() {
        let mut want = vec![0u8; 20];
        want[3..6].copy_from_slice(b"abc");
        want[15..17].copy_from_slice(b"de");
        let v00 = records(&[
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "3"),
            ("GNU.sparse.numbytes", "3"),
            ("GNU.sparse.offset", "15"),
            ("GNU.sparse.numbytes", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v00.name, None);
        assert_eq!(expand(&v00, b"abcde").unwrap(), want);
        let v01 = records(&[
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.name", "d/real"),
            ("GNU.sparse.map", "3,3,15,2,20,0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v01.name.as_deref(), Some(&b"d/real"[..]));
        assert_eq!(expand(&v01, b"abcde").unwrap(), want);
        let v10 = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "d/real"),
            ("GNU.sparse.realsize", "20"),
        ])
        .unwrap()
        .unwrap();
        let mut data = b"2\n3\n3\n15\n2\n".to_vec();
        data.resize(BLOCK, 0);
        data.extend_from_slice(b"abcde");
        assert_eq!(expand(&v10, &data).unwrap(), want);
        assert_eq!(records(&[("path", "x"), ("mtime", "1")]).unwrap(), None);
    }

    #[test]
    fn a_map_over_many_blocks_is_read_whole() {
        let regions = 200u64;
        let mut text = format!("{regions}\n");
        for i in 0..regions {
            text.push_str(&format!("{}\n1\n", i * 1000));
        }
        let mut data = text.into_bytes();
        data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        assert!(data.len() > BLOCK);
        data.extend((0..regions).map(|i| i as u8));
        let sparse = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", &(regions * 1000).to_string()),
        ])
        .unwrap()
        .unwrap();
        let out = expand(&sparse, &data).unwrap();
        assert_eq!(out.len() as u64, regions * 1000);
        assert_eq!(out[5 * 1000], 5);
        assert_eq!(out.iter().filter(|&&b| b != 0).count() as u64, regions - 1);
    }

    #[test]
    fn maps_and_data_that_do_not_add_up_are_refused() {
        let bad = [
            vec![("GNU.sparse.size", "10"), ("GNU.sparse.map", "5,6")],
            vec![("GNU.sparse.size", "10"), ("GNU.sparse.map", "4,2,1,1")],
            vec![("GNU.sparse.size", "10"), ("GNU.sparse.map", "1,2,3")],
            vec![("GNU.sparse.size", "10"), ("GNU.sparse.numbytes", "1")],
            vec![
                ("GNU.sparse.size", "10"),
                ("GNU.sparse.offset", "1"),
                ("GNU.sparse.offset", "2"),
            ],
            vec![("GNU.sparse.size", "10"), ("GNU.sparse.offset", "1")],
            vec![("GNU.sparse.size", "10")],
            vec![("GNU.sparse.map", "0,1")],
            vec![("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")],
            vec![("GNU.sparse.size", "1x"), ("GNU.sparse.map", "0,1")],
            vec![
                ("GNU.sparse.size", "18446744073709551615"),
                ("GNU.sparse.map", "18446744073709551615,1"),
            ],
        ];
        for b in bad {
            assert!(records(&b).is_err(), "{b:?}");
        }
        let sparse = records(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "2,3")])
            .unwrap()
            .unwrap();
        let short = expand(&sparse, b"ab").unwrap_err().to_string();
        assert!(short.contains("ends before its map"), "{short}");
        let long = expand(&sparse, b"abcd").unwrap_err().to_string();
        assert!(long.contains("more data than its map"), "{long}");
        let v10 = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.realsize", "10"),
        ])
        .unwrap()
        .unwrap();
        for map in [&b"1\n9\n5\n"[..], b"99999999999\n", b"2\n0\n1\n", b"x\n"] {
            let mut data = map.to_vec();
            data.resize(BLOCK, 0);
            assert!(
                expand(&v10, &data).is_err(),
                "{:?}",
                String::from_utf8_lossy(map)
            );
        }
    }
}
