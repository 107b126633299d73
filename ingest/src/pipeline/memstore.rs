//! In-memory `ObjectStore` and `ContentIndex` for tests.

use catalog_writer::hash::{ContentHash, Suffix};
use publisher::store::{ContentIndex, ObjectStore, PlainHash};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default, Debug)]
pub(crate) struct MemStore {
    pub objects: Mutex<HashMap<(ContentHash, Suffix), Vec<u8>>>,
    pub puts: AtomicU64,
    /// `contains` calls so far.
    pub lookups: AtomicU64,
    /// When set, every `put` fails like a full disk.
    pub fail_puts: AtomicBool,
    /// While set, the first `put` waits until [`MemStore::release_put`] (a stalled disk).
    pub hold_first_put: Mutex<bool>,
    put_released: std::sync::Condvar,
}

impl MemStore {
    pub fn get_inflated(&self, hash: &ContentHash, suffix: Suffix) -> Vec<u8> {
        let objs = self.objects.lock().unwrap();
        let z = objs.get(&(*hash, suffix)).expect("object present");
        assert_eq!(ContentHash::of(z), *hash, "object bytes match their name");
        catalog_writer::zlib::decompress(z, 1 << 30).unwrap()
    }
    pub fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }
    pub fn release_put(&self) {
        *self.hold_first_put.lock().unwrap() = false;
        self.put_released.notify_all();
    }
}

impl ObjectStore for MemStore {
    fn contains(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<bool> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.objects.lock().unwrap().contains_key(&(*hash, suffix)))
    }
    /// Without a lookup, like a local store's no-replace link.
    fn put_if_absent(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<bool> {
        let had = self.objects.lock().unwrap().contains_key(&(*hash, suffix));
        self.put(hash, suffix, bytes)?;
        Ok(!had)
    }
    fn put(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(io::Error::other("No space left on device"));
        }
        if self.puts.fetch_add(1, Ordering::SeqCst) == 0 {
            let held = self.hold_first_put.lock().unwrap();
            drop(self.put_released.wait_while(held, |h| *h).unwrap());
        }
        self.objects
            .lock()
            .unwrap()
            .entry((*hash, suffix))
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }
    fn get(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(&(*hash, suffix))
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn put_root_file(&self, _name: &str, _bytes: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn get_root_file(&self, _name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn describe(&self) -> String {
        "memory store".into()
    }
}

type IndexKey = (PlainHash, u64, Suffix);

#[derive(Default)]
pub(crate) struct MemIndex {
    pub map: Mutex<HashMap<IndexKey, (ContentHash, u64)>>,
    /// While set, a lookup of a piece of this size waits until [`MemIndex::release`].
    pub hold: Mutex<Option<u64>>,
    released: std::sync::Condvar,
}

impl MemIndex {
    pub fn release(&self) {
        *self.hold.lock().unwrap() = None;
        self.released.notify_all();
    }
}

impl ContentIndex for MemIndex {
    fn lookup(&self, plain: &PlainHash, size: u64, suffix: Suffix) -> Option<(ContentHash, u64)> {
        let mut held = self.hold.lock().unwrap();
        while *held == Some(size) {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        self.map
            .lock()
            .unwrap()
            .get(&(*plain, size, suffix))
            .copied()
    }
    fn record(
        &self,
        plain: &PlainHash,
        size: u64,
        suffix: Suffix,
        object: ContentHash,
        compressed_size: u64,
    ) {
        self.map
            .lock()
            .unwrap()
            .insert((*plain, size, suffix), (object, compressed_size));
    }
}

/// Deterministic pseudo-random bytes (the LCG of the chunker test vector).
pub(crate) fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// Builds tar archives in tests, including members no well-behaved tool would write.
pub(crate) struct TarB {
    b: tar::Builder<Vec<u8>>,
}

impl TarB {
    pub fn new() -> TarB {
        TarB {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// A member with raw name/link bytes written straight into the header (≤ 100 bytes).
    pub fn raw(
        &mut self,
        name: &[u8],
        ty: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&[u8]>,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), tar::EntryType::Regular, 0o644, data, None)
    }
    pub fn file_mode(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), tar::EntryType::Regular, mode, data, None)
    }
    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name.as_bytes(), tar::EntryType::Directory, mode, b"", None)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let t = Some(target.as_bytes());
        self.raw(name.as_bytes(), tar::EntryType::Symlink, 0o777, b"", t)
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let t = Some(target.as_bytes());
        self.raw(name.as_bytes(), tar::EntryType::Link, 0o644, b"", t)
    }
    pub fn device(&mut self, name: &str, ty: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }
    /// A PAX extended header ('x') applying to the next member.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = Self::pax_records(records);
        self.raw(b"PaxHeader", tar::EntryType::XHeader, 0o644, &data, None)
    }
    /// A PAX global header (type `g`), as `git archive` starts its archives with.
    pub fn pax_global(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = Self::pax_records(records);
        self.raw(
            b"pax_global_header",
            tar::EntryType::XGlobalHeader,
            0o666,
            &data,
            None,
        )
    }
    fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        data
    }
    /// A member written by the tar crate itself (GNU long names for paths > 100 bytes).
    pub fn long_file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, name, data).unwrap();
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}
