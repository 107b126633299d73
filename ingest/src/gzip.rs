//! Gzip decoding for layers on zlib-rs's inflate, which decodes about 1.6 times as fast as
//! stock zlib's on this project's machine (inflating is most of the CPU spent reading a layer).
//! Decoding has no byte-exact output to match, unlike compression, which stays on stock zlib.
//!
//! Like `gunzip` and flate2's `MultiGzDecoder`: members are decoded one after the other, each
//! with its header, CRC-32 and length checked; anything after a member must be another member.

use std::io::{self, Read};
use zlib_rs::{Inflate, InflateError, InflateFlush, Status};

/// zlib's `windowBits` for a 32 KiB window with a gzip header and trailer.
const GZIP_WINDOW_BITS: u8 = 15 + 16;
const INPUT_BUFFER: usize = 128 << 10;

/// Decompresses a gzip stream (one or more members) read from `R`.
pub struct GzipDecoder<R> {
    inner: R,
    input: Vec<u8>,
    pos: usize,
    len: usize,
    input_done: bool,
    /// The member being decoded; `None` before the first and between members.
    member: Option<Box<Inflate>>,
    members: u64,
}

impl<R: Read> GzipDecoder<R> {
    pub fn new(inner: R) -> GzipDecoder<R> {
        GzipDecoder {
            inner,
            input: vec![0; INPUT_BUFFER],
            pos: 0,
            len: 0,
            input_done: false,
            member: None,
            members: 0,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.pos < self.len || self.input_done {
            return Ok(());
        }
        loop {
            match self.inner.read(&mut self.input) {
                Ok(0) => {
                    self.input_done = true;
                    break;
                }
                Ok(n) => {
                    (self.pos, self.len) = (0, n);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("gzip member {}: {what}", self.members),
        )
    }
}

impl<R: Read> Read for GzipDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.refill()?;
            let available = &self.input[self.pos..self.len];
            let Some(member) = self.member.as_mut() else {
                if available.is_empty() {
                    return Ok(0); // end of input between members: the end of the stream
                }
                self.members += 1;
                self.member = Some(Box::new(Inflate::new(true, GZIP_WINDOW_BITS)));
                continue;
            };
            let (in_before, out_before) = (member.total_in(), member.total_out());
            let status = member.decompress(available, out, InflateFlush::NoFlush);
            let consumed = usize::try_from(member.total_in() - in_before).unwrap_or(0);
            let produced = usize::try_from(member.total_out() - out_before).unwrap_or(0);
            self.pos += consumed;
            match status {
                Ok(Status::StreamEnd) => self.member = None,
                Ok(Status::Ok | Status::BufError) => {
                    if produced == 0 && self.pos == self.len && self.input_done {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("gzip member {}: truncated", self.members),
                        ));
                    }
                    if produced == 0 && consumed == 0 && self.pos < self.len {
                        return Err(self.corrupt("the decoder makes no progress"));
                    }
                }
                Err(InflateError::NeedDict { .. }) => {
                    return Err(self.corrupt("needs a preset dictionary"))
                }
                Err(e) => {
                    let detail = member.error_message().unwrap_or(e.as_str());
                    return Err(self.corrupt(detail));
                }
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Half text-like, half noise: both stored and compressed deflate blocks.
                if (i / 4096) % 2 == 0 {
                    b"abcdefgh"[(x % 8) as usize]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Reads everything through buffers of `chunk` bytes.
    fn decode(data: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut d = GzipDecoder::new(data);
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = d.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn decodes_like_flate2_in_any_read_size() {
        let data = sample(700_000);
        for level in [0, 1, 6, 9] {
            let z = gzip(&data, level);
            for chunk in [1, 7, 4096, 1 << 20] {
                if chunk == 1 && level != 6 {
                    continue; // slow; one level is enough byte by byte
                }
                assert_eq!(
                    decode(&z, chunk).unwrap(),
                    data,
                    "level {level} chunk {chunk}"
                );
            }
        }
        assert_eq!(decode(&gzip(b"", 6), 100).unwrap(), b"");
        assert_eq!(decode(b"", 100).unwrap(), b"");
    }

    #[test]
    fn members_follow_each_other() {
        let (a, b) = (sample(100_000), b"second member".to_vec());
        let z = [gzip(&a, 6), gzip(&b, 1), gzip(b"", 6)].concat();
        assert_eq!(decode(&z, 5000).unwrap(), [a, b].concat());
    }

    #[test]
    fn truncation_corruption_and_garbage_fail() {
        let data = sample(300_000);
        let z = gzip(&data, 6);
        for cut in [1, 10, z.len() / 2, z.len() - 8, z.len() - 1] {
            let err = decode(&z[..cut], 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {err}");
        }
        // A flipped byte in the data (whatever it breaks first), in the CRC, in the length.
        let mut bad = z.clone();
        bad[z.len() / 2] ^= 0x55;
        assert!(decode(&bad, 4096).is_err());
        for at in [z.len() - 6, z.len() - 2] {
            let mut bad = z.clone();
            bad[at] ^= 0x55;
            let err = decode(&bad, 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}: {err}");
        }
        let err = decode(&[z.clone(), b"trailing junk".to_vec()].concat(), 4096).unwrap_err();
        assert!(err.to_string().contains("gzip member 2"), "{err}");
    }
}
