//! The same-run floors, computed in this process and independent of the cvmfs-oci pipeline.
//!
//! Image floor = (inflate + untar + SHA-1 of each file, the distinct layers read in parallel on
//! all cores) + (zlib level 6 of each distinct content of the flattened image(s) once, in
//! parallel on all cores). The two phases are timed one after the other; flattening itself is
//! timed but not counted. Distinct contents are held in memory between the phases: this is a
//! reference measurement, so its own peak RSS (about the distinct plaintext) does not matter.
//!
//! A tree's floor (case 4) also stores what it compressed, each piece as a file of its own
//! ([`store_all`]): a repository writer cannot publish 100 000 objects without creating
//! 100 000 files, and on this project's machine that, not compression, is most of the work.
//!
//! Large contents are compressed in pieces of `piece` bytes (independent zlib streams, like
//! CVMFS chunks) so that one 200 MB file cannot serialise the floor onto one core; the CPU work
//! is the same as compressing the file whole. `piece == 0` compresses every content whole.

use crate::child::self_cpu_s;
use crate::flatten::{normalize, whiteout, ContentId, Flat, LayerOps, Op};
use crate::oci::{Compression, Image, Layer};
use crate::Error;
use flate2::write::ZlibEncoder;
use rayon::prelude::*;
use serde::Serialize;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Distinct contents by SHA-1 of the plaintext; shared by the threads reading layers.
#[derive(Default)]
pub struct ContentStore {
    inner: Mutex<StoreInner>,
}

#[derive(Default)]
struct StoreInner {
    ids: HashMap<[u8; 20], ContentId>,
    data: Vec<Vec<u8>>,
}

impl ContentStore {
    /// Hashes `data` and keeps it unless the same content is already stored.
    pub fn intern(&self, data: Vec<u8>) -> ContentId {
        let hash: [u8; 20] = Sha1::digest(&data).into();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = inner.ids.get(&hash) {
            return *id;
        }
        let id = inner.data.len() as ContentId;
        inner.ids.insert(hash, id);
        inner.data.push(data);
        id
    }

    fn into_data(self) -> Vec<Vec<u8>> {
        self.inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .data
    }
}

/// What a floor computation measured.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    /// Inflate + untar + SHA-1, wall time (distinct layers in parallel).
    pub read_s: f64,
    /// Flattening (not part of the floor).
    pub flatten_s: f64,
    /// zlib-6 of each distinct content once, wall time on all cores.
    pub compress_s: f64,
    /// Storing each compressed piece as a file (see [`store_all`]), wall time; only for a tree.
    pub store_s: Option<f64>,
    /// read_s + compress_s (+ store_s).
    pub floor_s: f64,
    /// CPU seconds (user + system, all threads) of the read, compress (and store) phases.
    pub cpu_s: f64,
    pub threads: usize,
    /// Distinct layers (by diff_id) or files read.
    pub units_read: u64,
    /// What a unit is: "layers" or "files".
    pub unit: &'static str,
    /// Uncompressed bytes of what was read once (distinct layer tars, or file bytes).
    pub bytes_read: u64,
    /// Uncompressed layer bytes summed over every image (or file bytes for a tree).
    pub input_bytes: u64,
    /// Regular files summed over the flattened images (or files of the tree).
    pub files: u64,
    pub distinct_contents: u64,
    pub distinct_bytes: u64,
    /// Sum of the zlib-6 output: what storing the distinct contents once would take.
    pub compressed_bytes: u64,
    pub pieces: u64,
}

/// Counts the bytes that pass through a reader (the uncompressed tar size).
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

fn decoder(layer: &Layer) -> io::Result<Box<dyn Read>> {
    let file = std::fs::File::open(&layer.blob)?;
    let buf = BufReader::with_capacity(1 << 20, file);
    Ok(match layer.compression {
        // The tool's own gzip decoder: a floor inflating slower than the tool would flatter it.
        Compression::Gzip => Box::new(ingest::gzip::GzipDecoder::new(buf)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buf)?),
        Compression::None => Box::new(buf),
    })
}

/// Reads one layer into operations; file contents go to `store`. Returns the ops and the
/// uncompressed tar size.
pub fn read_layer(layer: &Layer, store: &ContentStore) -> Result<(LayerOps, u64), Error> {
    let err = |source: io::Error| Error::Layer {
        digest: layer.digest.clone(),
        path: layer.blob.clone(),
        source,
    };
    let counting = Counting {
        inner: decoder(layer).map_err(err)?,
        n: 0,
    };
    let mut archive = tar::Archive::new(counting);
    let mut ops = Vec::new();
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = normalize(&entry.path_bytes());
        if let Some(w) = whiteout(&path) {
            ops.extend(w);
            continue;
        }
        let kind = entry.header().entry_type();
        let op = if kind.is_dir() {
            Op::Dir(path)
        } else if kind.is_file() {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(err)?;
            Op::File(path, store.intern(data))
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| normalize(&t))
                .unwrap_or_default();
            Op::Link(path, target)
        } else if kind.is_pax_global_extensions() {
            continue;
        } else {
            Op::Other(path)
        };
        ops.push(op);
    }
    // The tar reader stops at the end-of-archive blocks; count the padding after them too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(err)?;
    Ok((LayerOps { ops }, rest.n))
}

/// The floor of converting `images` together: every distinct layer (by diff_id) read once,
/// every distinct content of the flattened images compressed once.
pub fn images_floor(images: &[Image], piece: usize) -> Result<FloorReport, Error> {
    let mut distinct: Vec<&Layer> = Vec::new();
    let mut seen = HashSet::new();
    for layer in images.iter().flat_map(|i| &i.layers) {
        if seen.insert(layer.diff_id.as_str()) {
            distinct.push(layer);
        }
    }
    let store = ContentStore::default();
    let cpu0 = self_cpu_s();
    let t_read = Instant::now();
    let read: Vec<(LayerOps, u64)> = distinct
        .par_iter()
        .map(|l| read_layer(l, &store))
        .collect::<Result<_, _>>()?;
    let read_s = t_read.elapsed().as_secs_f64();
    let read_cpu = self_cpu_s() - cpu0;
    let by_diff_id: HashMap<&str, &(LayerOps, u64)> = distinct
        .iter()
        .map(|l| l.diff_id.as_str())
        .zip(read.iter())
        .collect();

    let t_flat = Instant::now();
    let (mut files, mut input_bytes) = (0u64, 0u64);
    let mut survivors: HashSet<ContentId> = HashSet::new();
    for image in images {
        let mut flat = Flat::new();
        for layer in &image.layers {
            let (ops, size) = by_diff_id
                .get(layer.diff_id.as_str())
                .ok_or_else(|| Error::Layout(format!("{}: layer not read", layer.diff_id)))?;
            flat.apply(ops);
            input_bytes += size;
        }
        files += flat.regular_files() as u64;
        survivors.extend(flat.file_contents());
    }
    let flatten_s = t_flat.elapsed().as_secs_f64();
    drop(by_diff_id);
    let bytes_read = read.iter().map(|(_, n)| n).sum::<u64>();
    drop(read);

    let data = store.into_data();
    let contents: Vec<&[u8]> = survivors.iter().map(|&id| &data[id as usize][..]).collect();
    let c = compress_all(&contents, piece, false);
    Ok(FloorReport {
        read_s,
        flatten_s,
        compress_s: c.seconds,
        store_s: None,
        floor_s: read_s + c.seconds,
        cpu_s: read_cpu + c.cpu_s,
        threads: rayon::current_num_threads(),
        units_read: distinct.len() as u64,
        unit: "layers",
        bytes_read,
        input_bytes,
        files,
        distinct_contents: contents.len() as u64,
        distinct_bytes: contents.iter().map(|c| c.len() as u64).sum(),
        compressed_bytes: c.bytes,
        pieces: c.pieces,
    })
}

/// The floor of publishing a directory tree: walk + read + SHA-1 of every regular file (in
/// parallel), then zlib-6 of each distinct content once, then storing each compressed piece
/// as a file below `objects` ([`store_all`]).
pub fn tree_floor(root: &Path, piece: usize, objects: &Path) -> Result<FloorReport, Error> {
    let store = ContentStore::default();
    let cpu0 = self_cpu_s();
    let t_read = Instant::now();
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(|e| Error::Layout(format!("{}: {e}", root.display())))?;
        if entry.file_type().is_file() {
            paths.push(entry.into_path());
        }
    }
    let bytes_read: u64 = paths
        .par_iter()
        .map(|p| {
            let data = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            let n = data.len() as u64;
            store.intern(data);
            Ok(n)
        })
        .sum::<Result<u64, Error>>()?;
    let read_s = t_read.elapsed().as_secs_f64();
    let read_cpu = self_cpu_s() - cpu0;
    let data = store.into_data();
    let contents: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
    let c = compress_all(&contents, piece, true);
    let stored = store_all(objects, &c.kept)?;
    Ok(FloorReport {
        read_s,
        flatten_s: 0.0,
        compress_s: c.seconds,
        store_s: Some(stored.seconds),
        floor_s: read_s + c.seconds + stored.seconds,
        cpu_s: read_cpu + c.cpu_s + stored.cpu_s,
        threads: rayon::current_num_threads(),
        units_read: paths.len() as u64,
        unit: "files",
        bytes_read,
        input_bytes: bytes_read,
        files: paths.len() as u64,
        distinct_contents: contents.len() as u64,
        distinct_bytes: contents.iter().map(|c| c.len() as u64).sum(),
        compressed_bytes: c.bytes,
        pieces: c.pieces,
    })
}

struct Compressed {
    seconds: f64,
    cpu_s: f64,
    bytes: u64,
    pieces: u64,
    /// The compressed pieces, when asked to keep them.
    kept: Vec<Vec<u8>>,
}

/// zlib-6 (stock zlib through flate2) of every content, in parallel; returns the output size,
/// and the output itself if `keep`.
fn compress_all(contents: &[&[u8]], piece: usize, keep: bool) -> Compressed {
    let started = Instant::now();
    let cpu0 = self_cpu_s();
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(contents.len());
    for c in contents {
        if piece == 0 || c.len() <= piece {
            pieces.push(c);
        } else {
            pieces.extend(c.chunks(piece));
        }
    }
    // Largest first so that the long pieces do not end up alone at the tail.
    pieces.sort_unstable_by_key(|p| std::cmp::Reverse(p.len()));
    let (sizes, kept): (Vec<u64>, Vec<Option<Vec<u8>>>) = pieces
        .par_iter()
        .with_max_len(1)
        .map(|p| {
            let z = zlib6(p);
            (z.len() as u64, keep.then_some(z))
        })
        .unzip();
    Compressed {
        seconds: started.elapsed().as_secs_f64(),
        cpu_s: self_cpu_s() - cpu0,
        bytes: sizes.iter().sum(),
        pieces: pieces.len() as u64,
        kept: kept.into_iter().flatten().collect(),
    }
}

/// `data` compressed with zlib level 6.
pub fn zlib6(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(6),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

struct Stored {
    seconds: f64,
    cpu_s: f64,
}

/// Stores each piece as a file named by its SHA-1 in one of 256 directories below `dir`, as
/// any repository writer must and in the plainest way that is safe: written to a scratch file
/// in the same directory and renamed to its name, on all cores; then one `syncfs`, as before a
/// manifest. `dir` must be new: the bench moves it aside afterwards, never deletes it before
/// a timed run (see `cases::settle_after_deletions`).
fn store_all(dir: &Path, pieces: &[Vec<u8>]) -> Result<Stored, Error> {
    let started = Instant::now();
    let cpu0 = self_cpu_s();
    for i in 0..=255u8 {
        let sub = dir.join(format!("{i:02x}"));
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
    }
    pieces
        .par_iter()
        .enumerate()
        .try_for_each(|(i, piece)| store_one(dir, i, piece))?;
    let root = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: a descriptor this function owns for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
        return Err(Error::io(dir, io::Error::last_os_error()));
    }
    Ok(Stored {
        seconds: started.elapsed().as_secs_f64(),
        cpu_s: self_cpu_s() - cpu0,
    })
}

fn store_one(dir: &Path, i: usize, piece: &[u8]) -> Result<(), Error> {
    let name = hex::encode(Sha1::digest(piece));
    let sub = dir.join(&name[..2]);
    let scratch = sub.join(format!(".scratch-{i}"));
    let mut f = std::fs::File::create_new(&scratch).map_err(|e| Error::io(&scratch, e))?;
    f.write_all(piece).map_err(|e| Error::io(&scratch, e))?;
    drop(f);
    let dest = sub.join(&name[2..]);
    std::fs::rename(&scratch, &dest).map_err(|e| Error::io(&dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_pieces_are_named_by_their_sha1_and_no_scratch_file_remains() {
        let dir = std::env::temp_dir().join(format!("floor-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pieces = vec![zlib6(b"one"), zlib6(b"two"), zlib6(&[7u8; 100_000])];
        store_all(&dir, &pieces).unwrap();
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(2) {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".scratch"), "{name} left behind");
            let sub = entry.path().parent().unwrap().file_name().unwrap();
            let hash = format!("{}{name}", sub.to_string_lossy());
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(hex::encode(Sha1::digest(&bytes)), hash);
            found.push(bytes);
        }
        found.sort();
        let mut expected = pieces.clone();
        expected.sort();
        assert_eq!(found, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
