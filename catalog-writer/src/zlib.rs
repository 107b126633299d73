//! Object compression with stock zlib (libz-sys) at level 6, so object bytes equal cvmfs_server's.

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::{Read, Write};

/// Compresses `data` into one zlib stream (RFC 1950) at level 6.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::new(6));
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish into Vec")
}

/// Inflates one zlib stream; `limit` bounds the output so hostile objects cannot exhaust memory.
pub fn decompress(data: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec = ZlibDecoder::new(data).take(limit.saturating_add(1));
    dec.read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("inflated object exceeds {limit} bytes"),
        ));
    }
    Ok(out)
}
