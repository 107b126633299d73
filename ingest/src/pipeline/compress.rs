//! Stage 3, on the worker threads: the in-run dedup map and the content index are consulted
//! with the piece's plaintext hash (BLAKE3), and only new plaintext is compressed (stock zlib level 6)
//! and named (SHA-1 of the compressed bytes).

use super::store::store_one;
use super::{stopped_channel, FileTicket, Job, ObjectBytes, PieceData, Shared, Stored};
use crate::error::{Error, Result};
use catalog_writer::hash::{ContentHash, Suffix};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use flate2::{Compress, Compression, FlushCompress, Status};
use publisher::store::PlainHash;
use sha1::{Digest, Sha1};
use std::cell::RefCell;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) type DedupKey = (PlainHash, u64, Suffix);

/// In-run dedup state of one plaintext: being compressed by some worker, or done (kept small:
/// the map has one entry per distinct piece of the run).
pub(super) enum Dedup {
    /// Being compressed; the pieces with the same plaintext seen meanwhile, registered when
    /// the object is stored. Parking them (rather than having their workers wait) keeps every
    /// worker busy when two images with the same content are read at once.
    InFlight(Vec<Parked>),
    Done(ContentHash),
}

/// A piece whose plaintext another worker is compressing.
pub(super) struct Parked {
    pub(super) ticket: FileTicket,
    pub(super) idx: usize,
    pub(super) offset: u64,
}

/// Compresses jobs; stores large objects itself and hands small ones to the store threads
/// (`out`; `None`: stores everything itself).
pub(super) fn worker(sh: Arc<Shared>, jobs: Receiver<Job>, out: Option<Sender<Stored>>) {
    for job in jobs {
        if sh.failed.load(Ordering::Acquire) {
            continue; // drain: dropping the job releases its budget
        }
        let res = process(&sh, job).and_then(|stored| match (stored, &out) {
            (None, _) => Ok(()),
            // Small objects go to the store thread; when it is behind, the worker stores
            // them itself instead of waiting for a free slot.
            (Some(stored), Some(tx)) if stored.is_small() => match tx.try_send(stored) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(stored)) => store_one(&sh, stored),
                Err(TrySendError::Disconnected(_)) => Err(stopped_channel()),
            },
            (Some(stored), _) => store_one(&sh, stored),
        });
        if let Err(e) = res {
            sh.fail(e);
        }
    }
}

/// Dedup/index lookup, then compress+hash. `None`: the piece was parked behind another
/// worker compressing the same plaintext.
fn process(sh: &Shared, job: Job) -> Result<Option<Stored>> {
    let Job {
        ticket,
        idx,
        offset,
        suffix,
        data,
        permit,
    } = job;
    let (plain, size) = match &data {
        PieceData::Mem(v, plain) => (*plain, v.len() as u64),
        PieceData::Compressed(obj) => (obj.plain, obj.size),
    };
    let done = |hash, put, parked| Stored {
        ticket,
        idx,
        offset,
        size,
        suffix,
        hash,
        put,
        parked,
        _permit: permit,
    };
    let key = (plain, size, suffix);
    let data = match data {
        PieceData::Mem(v, _) => v,
        // Compressed by the caller already: only tell later copies its name.
        PieceData::Compressed(obj) => {
            let hash = obj.hash;
            let mut map = sh.dedup.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_insert(Dedup::Done(hash));
            drop(map);
            return Ok(Some(done(
                hash,
                Some((ObjectBytes::File(obj), plain)),
                Vec::new(),
            )));
        }
    };
    {
        let mut map = sh.dedup.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&key) {
            Some(Dedup::Done(hash)) => {
                let hash = *hash;
                drop(map);
                sh.counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(done(hash, None, Vec::new())));
            }
            Some(Dedup::InFlight(parked)) => {
                parked.push(Parked {
                    ticket,
                    idx,
                    offset,
                });
                sh.counters.dedup_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            None => {
                map.insert(key, Dedup::InFlight(Vec::new()));
            }
        }
    }
    // On an error the pipeline fails as a whole: parked pieces need no answer.
    let (hash, bytes) = lookup_or_compress(sh, &data, plain, size, suffix)?;
    let parked = {
        let mut map = sh.dedup.lock().unwrap_or_else(|p| p.into_inner());
        match map.insert(key, Dedup::Done(hash)) {
            Some(Dedup::InFlight(parked)) => parked,
            _ => Vec::new(),
        }
    };
    Ok(Some(done(hash, bytes.map(|b| (b, plain)), parked)))
}

/// Pieces smaller than this bypass the content index: compressing them costs less than a
/// database lookup and record (measured: ~9 µs per index operation, 100 000 small files).
pub(super) const INDEX_MIN_SIZE: u64 = 2048;

/// Returns the object hash and, unless the content index proved the object exists, its bytes.
fn lookup_or_compress(
    sh: &Shared,
    data: &[u8],
    plain: PlainHash,
    size: u64,
    suffix: Suffix,
) -> Result<(ContentHash, Option<ObjectBytes>)> {
    if let Some(index) = sh.index.as_ref().filter(|_| size >= INDEX_MIN_SIZE) {
        if let Some((obj, _)) = index.lookup(&plain, size, suffix) {
            let present = sh
                .store
                .contains(&obj, suffix)
                .map_err(|e| sh.store_error(&obj, suffix, e))?;
            if present {
                sh.counters.index_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((obj, None));
            }
        }
    }
    let (hash, bytes) = compress_mem(data).map_err(|e| Error::Compress {
        what: format!("a {size}-byte piece"),
        source: e,
    })?;
    sh.counters.compressions.fetch_add(1, Ordering::Relaxed);
    sh.counters
        .bytes_compressed
        .fetch_add(bytes.len(), Ordering::Relaxed);
    Ok((hash, Some(bytes)))
}

thread_local! {
    /// Each worker's zlib stream, reset between objects: a fresh `deflateInit` per object
    /// makes five ~64 KiB allocations that are freed again at once. Where glibc hands such
    /// pages back each time they fault in anew (100 000 small pieces on one thread: 5.9–6.7 s
    /// fresh, 0.56–0.93 s reset); in the pipeline's workers the difference was within the
    /// machine's noise, but nothing depends on the allocator's mood. `deflateReset` restores
    /// the exact initial state, so the bytes do not change (tested below).
    static DEFLATER: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// zlib level 6 (stock zlib, zlib header, as `cvmfs_server`) and SHA-1 of the output.
fn compress_mem(data: &[u8]) -> io::Result<(ContentHash, ObjectBytes)> {
    DEFLATER.with_borrow_mut(|slot| {
        let z = slot.get_or_insert_with(|| Compress::new(Compression::new(6), true));
        z.reset();
        let out = deflate_all(z, data)?;
        let hash = ContentHash(Sha1::digest(&out).into());
        Ok((hash, ObjectBytes::Mem(out)))
    })
}

/// Runs `z` (freshly reset) over all of `data` to the end of the stream.
fn deflate_all(z: &mut Compress, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(first_capacity(data.len()));
    loop {
        // `total_in` counts from the reset: what is left of `data`.
        let done = usize::try_from(z.total_in()).map_err(io::Error::other)?;
        let rest = data.get(done..).unwrap_or_default();
        match z.compress_vec(rest, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Ok(out),
            // Out of room (a `BufError` too, as every call gets fresh room).
            Ok(Status::Ok | Status::BufError) => out.reserve(out.len() / 2 + 4096),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// Output room for a piece of `len` bytes: zlib's bound for small pieces (one pass, no
/// reallocation), half of it for large ones (file contents compress 2-3x; the vector grows
/// if not).
fn first_capacity(len: usize) -> usize {
    if len <= 256 << 10 {
        len + (len >> 12) + (len >> 14) + 64
    } else {
        len / 2 + 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    fn fresh_zlib6(data: &[u8]) -> Vec<u8> {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::new(6));
        enc.write_all(data).expect("in memory");
        enc.finish().expect("in memory")
    }

    /// Pseudo-random bytes (xorshift): incompressible, so the output outgrows its first room.
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_reused_stream_gives_the_bytes_of_a_fresh_one() {
        let text: Vec<u8> = (0..400_000u32)
            .flat_map(|i| format!("line {} of {}\n", i % 977, i % 13).into_bytes())
            .collect();
        let inputs = [
            Vec::new(),
            b"a".to_vec(),
            noise(100, 1),
            text[..300_000].to_vec(),
            noise(256 << 10, 2),
            noise(3 << 20, 3),
            text.clone(),
            b"small again after large ones".to_vec(),
        ];
        // Twice over, so every input also follows a larger and a differently sized one.
        for data in inputs.iter().chain(inputs.iter().rev()) {
            let (hash, bytes) = compress_mem(data).expect("compresses");
            let ObjectBytes::Mem(bytes) = bytes else {
                panic!("in-memory object expected")
            };
            let expected = fresh_zlib6(data);
            assert!(bytes == expected, "{} bytes in: output differs", data.len());
            assert_eq!(hash.0, <[u8; 20]>::from(Sha1::digest(&expected)));
        }
    }
}
