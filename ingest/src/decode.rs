//! Layer/archive decoding: gzip, zstd or plain tar, recognised by their magic bytes (media
//! types lie: registries serve gzip layers labelled as tar and vice versa).

use crate::error::{Error, Result};
use std::io::{self, Read};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const TAR_BLOCK: usize = 512;

/// The compression detected by [`sniff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
    Tar,
}

/// Opens a decompressed tar stream over `reader`. Only the first 512 bytes are peeked; the
/// rest is streamed. Truncated or corrupt gzip/zstd data makes a later `read` fail.
pub fn open_layer_stream<R: Read + Send + 'static>(reader: R) -> Result<Box<dyn Read + Send>> {
    open_named_stream("layer", reader)
}

/// Like [`open_layer_stream`]; `name` (a file path or layer digest) appears in errors.
pub fn open_named_stream<R: Read + Send + 'static>(
    name: &str,
    reader: R,
) -> Result<Box<dyn Read + Send>> {
    open_detected_stream(name, reader).map(|(_, stream)| stream)
}

/// Like [`open_named_stream`], and tells which format was recognised.
pub fn open_detected_stream<R: Read + Send + 'static>(
    name: &str,
    mut reader: R,
) -> Result<(Format, Box<dyn Read + Send>)> {
    let head = read_head(&mut reader, TAR_BLOCK).map_err(|e| Error::Decode {
        archive: name.into(),
        msg: format!("reading: {e}"),
    })?;
    let format = sniff(&head).ok_or_else(|| Error::Decode {
        archive: name.into(),
        msg: describe_unknown(&head),
    })?;
    let stream = io::Cursor::new(head).chain(reader);
    let decoded: Box<dyn Read + Send> = match format {
        Format::Gzip => Box::new(crate::gzip::GzipDecoder::new(stream)),
        Format::Zstd => {
            Box::new(
                zstd::stream::read::Decoder::new(stream).map_err(|e| Error::Decode {
                    archive: name.into(),
                    msg: format!("zstd: {e}"),
                })?,
            )
        }
        Format::Tar => Box::new(stream),
    };
    Ok((format, decoded))
}

/// Recognises the stream from its first bytes (up to one tar block).
pub fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(&GZIP_MAGIC) {
        Some(Format::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) || is_zstd_skippable_frame(head) {
        Some(Format::Zstd)
    } else if looks_like_tar(head) {
        Some(Format::Tar)
    } else {
        None
    }
}

/// A zstd stream may begin with a skippable frame (magic `0x184D2A5?`, RFC 8878 §3.1.2),
/// which zstd decoders pass over; a tar header cannot start so (its name would begin with
/// `P*M` and a control byte).
fn is_zstd_skippable_frame(head: &[u8]) -> bool {
    matches!(head, [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50)
}

/// A tar starts with a header whose checksum is right ("ustar" magic is not required: v7
/// archives lack it), or with a zero block (an empty archive); an empty stream is an empty tar.
fn looks_like_tar(head: &[u8]) -> bool {
    if head.is_empty() {
        return true;
    }
    if head.len() < TAR_BLOCK {
        return false;
    }
    let block = &head[..TAR_BLOCK];
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let text = text.trim_start();
    u32::from_str_radix(text, 8).is_ok_and(|v| v == sum)
}

fn describe_unknown(head: &[u8]) -> String {
    let what = if head.starts_with(b"BZh") {
        "bzip2 compression is not supported"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz compression is not supported"
    } else {
        "not a tar archive (no gzip/zstd magic and no valid tar header)"
    };
    let n = head.len().min(8);
    format!("{what}; starts with {}", hex::encode(&head[..n]))
}

/// Reads up to `n` bytes (fewer only at end of stream).
fn read_head(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let data = vec![7u8; 100_000];
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &data[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_all(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut r = open_layer_stream(io::Cursor::new(bytes)).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn sniffs_by_magic() {
        let t = tar_bytes();
        assert_eq!(sniff(&t[..512]), Some(Format::Tar));
        assert_eq!(sniff(&gzip(&t)), Some(Format::Gzip));
        assert_eq!(
            sniff(&zstd::encode_all(&t[..], 3).unwrap()),
            Some(Format::Zstd)
        );
        // A leading skippable frame (as RFC 8878 allows), then the stream: zstd, and decoded.
        let mut skippable = vec![0x5a, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend(zstd::encode_all(&t[..], 3).unwrap());
        assert_eq!(sniff(&skippable), Some(Format::Zstd));
        assert_eq!(zstd::decode_all(&skippable[..]).unwrap(), t);
        assert_eq!(sniff(&[0u8; 512]), Some(Format::Tar));
        assert_eq!(sniff(b""), Some(Format::Tar));
        assert_eq!(sniff(&[b'x'; 512]), None);
    }

    #[test]
    fn decodes_all_three() {
        let t = tar_bytes();
        assert_eq!(decode_all(t.clone()).unwrap(), t);
        assert_eq!(decode_all(gzip(&t)).unwrap(), t);
        assert_eq!(decode_all(zstd::encode_all(&t[..], 3).unwrap()).unwrap(), t);
    }

    #[test]
    fn truncated_streams_fail() {
        let t = tar_bytes();
        let g = gzip(&t);
        for cut in [g.len() / 2, g.len() - 4, g.len() - 1] {
            assert!(decode_all(g[..cut].to_vec()).is_err(), "gzip cut at {cut}");
        }
        let z = zstd::encode_all(&t[..], 3).unwrap();
        for cut in [z.len() / 2, z.len() - 1] {
            assert!(decode_all(z[..cut].to_vec()).is_err(), "zstd cut at {cut}");
        }
        let mut bad = g.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(decode_all(bad).is_err());
    }

    #[test]
    fn unknown_formats_are_named() {
        let err = open_named_stream("img@sha256:ab", io::Cursor::new(b"BZh91AY".to_vec()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("img@sha256:ab: bzip2"), "{err}");
    }
}

/// Reads `inner` on its own thread, up to `depth` blocks of `block` bytes ahead, so that
/// inflating a layer overlaps with parsing, hashing and chunking it on the caller's thread.
/// Memory: at most `(depth + 2) × block` bytes. Errors reach the caller at the same position
/// in the stream; dropping the reader stops the thread at its next block.
pub fn read_ahead(inner: Box<dyn Read + Send>, block: usize, depth: usize) -> ReadAhead {
    read_ahead_then(inner, block, depth, || {})
}

/// Like [`read_ahead`]; `at_end` runs on the reading thread once `inner` has ended cleanly, when
/// the reader still has up to `depth` blocks to go: time to start opening what comes next.
pub fn read_ahead_then(
    inner: Box<dyn Read + Send>,
    block: usize,
    depth: usize,
    at_end: impl FnOnce() + Send + 'static,
) -> ReadAhead {
    let (tx, rx) = crossbeam_channel::bounded::<io::Result<Vec<u8>>>(depth.max(1));
    let block = block.max(4096);
    std::thread::spawn(move || {
        let mut inner = inner;
        loop {
            let mut buf = vec![0u8; block];
            let (n, err) = read_block(&mut inner, &mut buf);
            if n > 0 {
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() {
                    break;
                }
            }
            match err {
                Some(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
                None if n == 0 => {
                    drop(inner);
                    at_end();
                    break;
                }
                None => {}
            }
        }
    });
    ReadAhead {
        rx,
        current: Vec::new(),
        pos: 0,
    }
}

/// Fills `buf` as far as the stream allows (a short block only at the end); returns the bytes
/// read and the error that stopped it, if any (bytes before an error are kept).
fn read_block(r: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// The reading end of [`read_ahead`].
pub struct ReadAhead {
    rx: crossbeam_channel::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            match self.rx.recv() {
                Ok(block) => {
                    self.current = block?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0), // the thread finished: end of stream
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::*;

    struct FailAt(Vec<u8>, usize);
    impl Read for FailAt {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::other("boom"));
            }
            let n = buf.len().min(self.0.len() - self.1).min(1000);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn same_bytes_then_eof() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut r = read_ahead(Box::new(io::Cursor::new(data.clone())), 4096, 3);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn at_end_runs_once_the_input_ended_cleanly() {
        let (tx, rx) = crossbeam_channel::bounded::<&str>(2);
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let done = tx.clone();
        let mut r = read_ahead_then(
            Box::new(io::Cursor::new(data.clone())),
            4096,
            2,
            move || {
                let _ = done.send("ended");
            },
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(rx.recv().unwrap(), "ended");
        // A failing input never counts as ended.
        let failing = FailAt(vec![7; 5000], 0);
        let mut r = read_ahead_then(Box::new(failing), 4096, 2, move || {
            let _ = tx.send("ended too");
        });
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(rx.recv().is_err(), "at_end ran after an error");
    }

    #[test]
    fn errors_arrive_after_the_good_bytes() {
        let data = vec![5u8; 10_000];
        let mut r = read_ahead(Box::new(FailAt(data.clone(), 0)), 4096, 2);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(out, data);
    }
}
