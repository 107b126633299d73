//! `LayerMemo`: what each OCI layer contained, keyed by its diff_id (`sha256:…` of the
//! uncompressed layer tar), in `<home>/<fqrn>/state/layers.db`. With a memo for every layer of
//! an image, the flattener replays the layers from the memo and downloads no blob at all.
//!
//! A memo lists the layer's members in tar order, paths as normalised by the flattener
//! (`usr/bin/ls`, no leading slash, the layer root is `b""`), with everything needed to replay
//! them: metadata, symlink targets, devices, whiteouts, opaque markers, hard links, and the
//! objects holding regular files' bytes. A regular file the flattener skipped (shadowed by a
//! higher layer) has unknown data (`None`); such a memo is *incomplete* until the data is
//! filled in by a later conversion that needed it ([`LayerMemo::fill_missing`], or a
//! [`LayerMemo::put`] that merges).
//!
//! Objects may be removed from the store after a memo was written (garbage collection, manual
//! cleanup): check a memo with [`verify_objects`] (or use [`LayerMemo::get_verified`]) before
//! trusting it. Local state only, never published, so WAL mode is fine.
//!
//! Rows hold one zstd-compressed JSON document per layer, its frame carrying a checksum of the
//! document: a torn write or a flipped bit that still inflates to valid JSON is refused, never
//! replayed. A document of another format version reads as a miss, so a format change costs one
//! download per layer, never a wrong replay.
//!
//! ```
//! use catalog_writer::entry::FileData;
//! use catalog_writer::hash::EMPTY_OBJECT;
//! use publisher::{LayerMemo, MemoEntry, MemoKind, MemoLayer, MemoMeta};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let memo = LayerMemo::open(&tmp.path().join("layers.db"))?;
//! let meta = MemoMeta { perm: 0o644, uid: 0, gid: 0, mtime: 0, mtime_ns: None, xattrs: Default::default() };
//! // The flattener skipped `etc/motd` (a higher layer replaces it): its data is unknown.
//! let layer = MemoLayer::new(vec![
//!     MemoEntry { path: b"etc/motd".to_vec(), kind: MemoKind::File { meta, size: 0, data: None } },
//!     MemoEntry { path: b"etc/old".to_vec(), kind: MemoKind::Whiteout },
//! ]);
//! let diff_id = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
//! memo.put(diff_id, &layer)?;
//! assert!(!memo.get(diff_id)?.unwrap().is_complete());
//! // A later conversion needed the file and learnt its object.
//! memo.fill_missing(diff_id, b"etc/motd", FileData::Whole(EMPTY_OBJECT))?;
//! assert!(memo.get(diff_id)?.unwrap().is_complete());
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::store::ObjectStore;
use catalog_writer::entry::{Chunk, Entry, EntryKind, FileData, Xattrs};
use catalog_writer::hash::{ContentHash, Suffix};
use rayon::prelude::*;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Version of the JSON document in `layers.entries`. 2: the zstd frame has a content checksum
/// (version 1 rows had none and read as misses).
const FORMAT: u32 = 2;
/// zstd level: rows are written once per layer and read often; level 3 is fast both ways.
const ZSTD_LEVEL: i32 = 3;
/// Upper bound for an inflated row, so a corrupt row cannot exhaust memory.
const MAX_DOC_BYTES: u64 = 1 << 30;

/// Metadata of one member, everything of an [`Entry`] except its kind and hardlink id (hard
/// links are members of their own, [`MemoKind::Hardlink`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoMeta {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_ns: Option<u32>,
    pub xattrs: Xattrs,
}

impl MemoMeta {
    /// The metadata of `entry`.
    pub fn of(entry: &Entry) -> MemoMeta {
        MemoMeta {
            perm: entry.perm,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            mtime_ns: entry.mtime_ns,
            xattrs: entry.xattrs.clone(),
        }
    }

    /// An entry of `kind` with this metadata and no hardlink id.
    pub fn to_entry(&self, kind: EntryKind) -> Entry {
        Entry {
            kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_ns: self.mtime_ns,
            xattrs: self.xattrs.clone(),
            hardlink: None,
        }
    }
}

/// What one layer member is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoKind {
    Directory(MemoMeta),
    /// A regular file of `size` bytes; `data` is `None` when the flattener skipped its bytes.
    File {
        meta: MemoMeta,
        size: u64,
        data: Option<FileData>,
    },
    Symlink {
        meta: MemoMeta,
        target: Vec<u8>,
    },
    /// `rdev` in glibc `makedev` encoding.
    CharDevice {
        meta: MemoMeta,
        rdev: u64,
    },
    BlockDevice {
        meta: MemoMeta,
        rdev: u64,
    },
    Fifo(MemoMeta),
    Socket(MemoMeta),
    /// `.wh.NAME`: the entry's path is the path removed from lower layers (`dir/NAME`).
    Whiteout,
    /// `.wh..wh..opq`: the entry's path is the directory whose lower-layer children are hidden.
    Opaque,
    /// Tar hard link to `target`, a normalised path of this layer (earlier member) or of a
    /// lower layer.
    Hardlink {
        target: Vec<u8>,
    },
}

impl MemoKind {
    /// The memo form of `entry`; regular files keep their (known) data.
    pub fn from_entry(entry: &Entry) -> MemoKind {
        let meta = MemoMeta::of(entry);
        match &entry.kind {
            EntryKind::Directory => MemoKind::Directory(meta),
            EntryKind::File { size, data } => MemoKind::File {
                meta,
                size: *size,
                data: Some(data.clone()),
            },
            EntryKind::Symlink { target } => MemoKind::Symlink {
                meta,
                target: target.clone(),
            },
            EntryKind::CharDevice { rdev } => MemoKind::CharDevice { meta, rdev: *rdev },
            EntryKind::BlockDevice { rdev } => MemoKind::BlockDevice { meta, rdev: *rdev },
            EntryKind::Fifo => MemoKind::Fifo(meta),
            EntryKind::Socket => MemoKind::Socket(meta),
        }
    }

    /// The entry this member stands for; `None` for whiteouts, opaque markers, hard links and
    /// regular files whose data is unknown.
    pub fn to_entry(&self) -> Option<Entry> {
        Some(match self {
            MemoKind::Directory(m) => m.to_entry(EntryKind::Directory),
            MemoKind::File {
                meta,
                size,
                data: Some(data),
            } => meta.to_entry(EntryKind::File {
                size: *size,
                data: data.clone(),
            }),
            MemoKind::Symlink { meta, target } => meta.to_entry(EntryKind::Symlink {
                target: target.clone(),
            }),
            MemoKind::CharDevice { meta, rdev } => {
                meta.to_entry(EntryKind::CharDevice { rdev: *rdev })
            }
            MemoKind::BlockDevice { meta, rdev } => {
                meta.to_entry(EntryKind::BlockDevice { rdev: *rdev })
            }
            MemoKind::Fifo(m) => m.to_entry(EntryKind::Fifo),
            MemoKind::Socket(m) => m.to_entry(EntryKind::Socket),
            MemoKind::File { data: None, .. }
            | MemoKind::Whiteout
            | MemoKind::Opaque
            | MemoKind::Hardlink { .. } => return None,
        })
    }

    fn is_unknown_file(&self) -> bool {
        matches!(self, MemoKind::File { data: None, .. })
    }
}

/// One member of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoEntry {
    /// Path inside the layer as normalised by the flattener, e.g. `b"usr/bin/ls"`.
    pub path: Vec<u8>,
    pub kind: MemoKind,
}

/// A layer's members in tar order (later members win, as in the tar).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoLayer {
    pub entries: Vec<MemoEntry>,
}

impl MemoLayer {
    pub fn new(entries: Vec<MemoEntry>) -> MemoLayer {
        MemoLayer { entries }
    }

    /// Whether every regular file's data is known.
    pub fn is_complete(&self) -> bool {
        self.unknown_files() == 0
    }

    /// Number of regular files whose data is unknown.
    pub fn unknown_files(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind.is_unknown_file())
            .count()
    }

    /// Every object the known file data references (`Whole` → no suffix, chunks → `P`).
    pub fn objects(&self) -> BTreeSet<(ContentHash, Suffix)> {
        let mut out = BTreeSet::new();
        for e in &self.entries {
            match &e.kind {
                MemoKind::File {
                    data: Some(FileData::Whole(h)),
                    ..
                } => {
                    out.insert((*h, Suffix::None));
                }
                MemoKind::File {
                    data: Some(FileData::Chunked(chunks)),
                    ..
                } => out.extend(chunks.iter().map(|c| (c.hash, Suffix::Partial))),
                _ => {}
            }
        }
        out
    }

    /// Takes known data from `older` for files unknown here, when both describe the same
    /// members (same paths, kinds and sizes, in order); returns how many were taken.
    fn merge_known_from(&mut self, older: &MemoLayer) -> usize {
        if !same_members(self, older) {
            return 0;
        }
        let mut taken = 0;
        for (new, old) in self.entries.iter_mut().zip(&older.entries) {
            if let (
                MemoKind::File { data: slot, .. },
                MemoKind::File {
                    data: Some(known), ..
                },
            ) = (&mut new.kind, &old.kind)
            {
                if slot.is_none() {
                    *slot = Some(known.clone());
                    taken += 1;
                }
            }
        }
        taken
    }

    /// Sets the data of the last regular file at `path` if unknown; `Ok(false)` when there is
    /// no such file or its data is already known.
    fn fill(&mut self, path: &[u8], data: &FileData, diff_id: &str) -> Result<bool> {
        let last = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.path == path && matches!(e.kind, MemoKind::File { .. }));
        let Some(MemoEntry {
            kind: MemoKind::File {
                size, data: slot, ..
            },
            ..
        }) = last
        else {
            return Ok(false);
        };
        if slot.is_some() {
            return Ok(false);
        }
        check_file_data(*size, data).map_err(|why| {
            Error::Invalid(format!(
                "layer {diff_id}: {}: {why}",
                String::from_utf8_lossy(path)
            ))
        })?;
        *slot = Some(data.clone());
        Ok(true)
    }
}

/// Same member list apart from file data.
fn same_members(a: &MemoLayer, b: &MemoLayer) -> bool {
    a.entries.len() == b.entries.len()
        && a.entries.iter().zip(&b.entries).all(|(x, y)| {
            x.path == y.path
                && match (&x.kind, &y.kind) {
                    (
                        MemoKind::File {
                            meta: m1, size: s1, ..
                        },
                        MemoKind::File {
                            meta: m2, size: s2, ..
                        },
                    ) => m1 == m2 && s1 == s2,
                    (k1, k2) => k1 == k2,
                }
        })
}

/// Chunks must cover `size` bytes contiguously from offset 0.
fn check_file_data(size: u64, data: &FileData) -> std::result::Result<(), String> {
    let FileData::Chunked(chunks) = data else {
        return Ok(());
    };
    let mut next = 0u64;
    for c in chunks {
        if c.offset != next {
            return Err(format!(
                "chunk at offset {} where {next} was expected",
                c.offset
            ));
        }
        next = next.saturating_add(c.size);
    }
    if next != size {
        return Err(format!("chunks cover {next} bytes of a {size}-byte file"));
    }
    Ok(())
}

/// Whether every object `layer` references is still in `store` (an error counts as missing).
/// Use before trusting a memo: objects removed since it was written would make it lie.
pub fn verify_objects(layer: &MemoLayer, store: &dyn ObjectStore) -> bool {
    let objects: Vec<_> = layer.objects().into_iter().collect();
    // Remote stores answer `contains` with a round trip each: ask in parallel.
    objects
        .par_iter()
        .all(|(h, s)| store.contains(h, *s).unwrap_or(false))
}

/// One row of the memo, without its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoSummary {
    pub diff_id: String,
    /// Unix seconds of the first `put`.
    pub created: i64,
    pub complete: bool,
    /// Size of the compressed row.
    pub stored_bytes: u64,
}

/// The layer memo database (thread-safe; several processes may share the file).
pub struct LayerMemo {
    path: PathBuf,
    set_aside: Option<PathBuf>,
    conn: Mutex<Connection>,
}

impl LayerMemo {
    /// Opens or creates the memo database at `path`.
    /// A damaged database is moved aside and started afresh ([`Self::set_aside`]).
    pub fn open(path: &Path) -> Result<LayerMemo> {
        let db = crate::cache_db::open(path, |conn| {
            // Two conversions of images sharing layers may write at the same time.
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 CREATE TABLE IF NOT EXISTS layers ( \
                   diff_id TEXT PRIMARY KEY, entries BLOB NOT NULL, \
                   created INTEGER NOT NULL, complete INTEGER NOT NULL);",
            )
        })?;
        Ok(LayerMemo {
            path: path.to_path_buf(),
            set_aside: db.set_aside,
            conn: Mutex::new(db.conn),
        })
    }

    /// Where a damaged database found at [`open`](Self::open) was moved (the memo started
    /// empty: known layers are downloaded and read again).
    pub fn set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // The connection holds no Rust-side invariants a panic could break.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql_err(&self, diff_id: &str, e: rusqlite::Error) -> Error {
        Error::sql(format!("{} (layer {diff_id})", self.path.display()), e)
    }

    /// The memo of layer `diff_id`, if any. Not checked against the store: see
    /// [`LayerMemo::get_verified`].
    pub fn get(&self, diff_id: &str) -> Result<Option<MemoLayer>> {
        let conn = self.lock();
        self.read_row(&conn, diff_id)
    }

    /// Like [`LayerMemo::get`], but a memo referencing an object missing from `store` is
    /// forgotten and reported as absent.
    pub fn get_verified(
        &self,
        diff_id: &str,
        store: &dyn ObjectStore,
    ) -> Result<Option<MemoLayer>> {
        let Some(layer) = self.get(diff_id)? else {
            return Ok(None);
        };
        if verify_objects(&layer, store) {
            return Ok(Some(layer));
        }
        self.forget(diff_id)?;
        Ok(None)
    }

    /// Stores the memo of layer `diff_id`. When a memo of the same members exists, file data
    /// known there but unknown in `layer` is kept (a memo only ever gains data).
    pub fn put(&self, diff_id: &str, layer: &MemoLayer) -> Result<()> {
        self.put_owned(diff_id, layer.clone())
    }

    /// [`LayerMemo::put`] of a memo the caller is done with: a layer of many members is not
    /// held twice while it is written.
    pub fn put_owned(&self, diff_id: &str, layer: MemoLayer) -> Result<()> {
        check_diff_id(diff_id)?;
        for e in &layer.entries {
            if let MemoKind::File {
                size,
                data: Some(d),
                ..
            } = &e.kind
            {
                check_file_data(*size, d).map_err(|why| {
                    Error::Invalid(format!(
                        "layer {diff_id}: {}: {why}",
                        String::from_utf8_lossy(&e.path)
                    ))
                })?;
            }
        }
        self.update(diff_id, |old| {
            let mut new = layer;
            if let Some(old) = old {
                new.merge_known_from(&old);
            }
            Ok(Some(new))
        })
        .map(|_| ())
    }

    /// Records the data of the regular file at `path` (its last member there) if it was
    /// unknown. Returns whether the memo changed.
    pub fn fill_missing(&self, diff_id: &str, path: &[u8], data: FileData) -> Result<bool> {
        Ok(self.fill_missing_many(diff_id, &[(path.to_vec(), data)])? == 1)
    }

    /// [`LayerMemo::fill_missing`] for many files in one write; returns how many were filled.
    /// Nothing is filled when there is no memo for `diff_id`.
    pub fn fill_missing_many(&self, diff_id: &str, fills: &[(Vec<u8>, FileData)]) -> Result<usize> {
        let mut filled = 0;
        self.update(diff_id, |old| {
            let Some(mut layer) = old else {
                return Ok(None);
            };
            for (path, data) in fills {
                if layer.fill(path, data, diff_id)? {
                    filled += 1;
                }
            }
            Ok((filled > 0).then_some(layer))
        })?;
        Ok(filled)
    }

    /// Removes the memo of layer `diff_id`; returns whether there was one.
    pub fn forget(&self, diff_id: &str) -> Result<bool> {
        let conn = self.lock();
        conn.execute("DELETE FROM layers WHERE diff_id = ?1", [diff_id])
            .map(|n| n > 0)
            .map_err(|e| self.sql_err(diff_id, e))
    }

    /// Removes the memos that reference one of `gone` (objects garbage collection deleted);
    /// returns how many. A memo that cannot be decoded is left for its next reader to replace.
    pub fn forget_referencing(&self, gone: &HashSet<ContentHash>) -> Result<usize> {
        let mut forgotten = 0;
        for summary in self.list()? {
            let Ok(Some(layer)) = self.get(&summary.diff_id) else {
                continue;
            };
            if layer.objects().iter().any(|(h, _)| gone.contains(h))
                && self.forget(&summary.diff_id)?
            {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Removes the memos referencing an object `store` no longer holds (another home's
    /// garbage collection, or a hand, removed it); objects in `known` are taken as present
    /// without asking. Returns how many went.
    pub fn forget_missing(
        &self,
        store: &dyn ObjectStore,
        known: &HashSet<ContentHash>,
    ) -> Result<usize> {
        let mut forgotten = 0;
        for summary in self.list()? {
            let Ok(Some(layer)) = self.get(&summary.diff_id) else {
                continue;
            };
            let missing = layer
                .objects()
                .iter()
                .any(|(h, s)| !known.contains(h) && !store.contains(h, *s).unwrap_or(true));
            if missing && self.forget(&summary.diff_id)? {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Every memo row, by diff_id.
    pub fn list(&self) -> Result<Vec<MemoSummary>> {
        let conn = self.lock();
        let what = self.path.display().to_string();
        let sql = |e| Error::sql(what.as_str(), e);
        let mut stmt = conn
            .prepare(
                "SELECT diff_id, created, complete, length(entries) FROM layers ORDER BY diff_id",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(MemoSummary {
                    diff_id: r.get(0)?,
                    created: r.get(1)?,
                    complete: r.get::<_, i64>(2)? != 0,
                    stored_bytes: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)
    }

    fn read_row(&self, conn: &Connection, diff_id: &str) -> Result<Option<MemoLayer>> {
        let blob: Option<Vec<u8>> = conn
            .query_row(
                "SELECT entries FROM layers WHERE diff_id = ?1",
                [diff_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql_err(diff_id, e))?;
        match blob {
            Some(b) => decode(&b).map_err(|why| {
                Error::corrupt(
                    format!("{} layer {diff_id}", self.path.display()),
                    format!("{why} (remove it with `forget`)"),
                )
            }),
            None => Ok(None),
        }
    }

    /// Read-modify-write of one row in an immediate transaction, so concurrent writers (other
    /// processes) cannot lose each other's data. `f` returns the new memo, `None` = unchanged.
    fn update(
        &self,
        diff_id: &str,
        f: impl FnOnce(Option<MemoLayer>) -> Result<Option<MemoLayer>>,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err(diff_id, e))?;
        // An unreadable old row is simply replaced.
        let old = self.read_row(&tx, diff_id).unwrap_or(None);
        let Some(new) = f(old)? else {
            return Ok(false);
        };
        let blob = encode(&new)
            .map_err(|why| Error::Invalid(format!("layer {diff_id}: cannot encode memo: {why}")))?;
        tx.execute(
            "INSERT INTO layers (diff_id, entries, created, complete) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (diff_id) DO UPDATE SET entries = excluded.entries, \
             complete = excluded.complete",
            params![diff_id, blob, crate::repo::now_unix(), new.is_complete()],
        )
        .map_err(|e| self.sql_err(diff_id, e))?;
        tx.commit().map_err(|e| self.sql_err(diff_id, e))?;
        Ok(true)
    }
}

/// `algorithm:hex`, e.g. `sha256:9f86…`.
fn check_diff_id(diff_id: &str) -> Result<()> {
    let ok = diff_id.split_once(':').is_some_and(|(algo, hex)| {
        !algo.is_empty()
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid layer diff_id {diff_id:?}: expected e.g. sha256:<lowercase hex>"
        )))
    }
}

// ---- serialised form -------------------------------------------------------------------

/// A byte string: JSON text when it is UTF-8 (nearly always), else an array of bytes.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Raw(Vec<u8>),
}

impl Bytes {
    #[cfg(test)]
    fn of(b: &[u8]) -> Bytes {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Raw(b.to_vec()),
        }
    }
    fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Text(s) => s.into_bytes(),
            Bytes::Raw(v) => v,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Doc {
    v: u32,
    entries: Vec<SEntry>,
}

#[derive(Serialize, Deserialize)]
struct SEntry {
    path: Bytes,
    kind: SKind,
}

#[derive(Serialize, Deserialize)]
struct SMeta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<(Bytes, Bytes)>,
}

#[derive(Serialize, Deserialize)]
enum SData {
    /// Object hash (hex).
    Whole(String),
    /// (offset, size, `P` object hash).
    Chunked(Vec<(u64, u64, String)>),
}

#[derive(Serialize, Deserialize)]
enum SKind {
    Dir(SMeta),
    File {
        meta: SMeta,
        size: u64,
        data: Option<SData>,
    },
    Symlink {
        meta: SMeta,
        target: Bytes,
    },
    Char {
        meta: SMeta,
        rdev: u64,
    },
    Block {
        meta: SMeta,
        rdev: u64,
    },
    Fifo(SMeta),
    Socket(SMeta),
    Whiteout,
    Opaque,
    Hardlink {
        target: Bytes,
    },
}

/// The owned form, to check [`encode`] against (tests).
#[cfg(test)]
fn smeta(m: &MemoMeta) -> SMeta {
    SMeta {
        perm: m.perm,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        ns: m.mtime_ns,
        xattrs: m
            .xattrs
            .iter()
            .map(|(k, v)| (Bytes::of(k), Bytes::of(v)))
            .collect(),
    }
}

fn meta_of(m: SMeta) -> MemoMeta {
    MemoMeta {
        perm: m.perm,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        mtime_ns: m.ns,
        xattrs: m
            .xattrs
            .into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect(),
    }
}

/// The owned form, to check [`encode`] against (tests).
#[cfg(test)]
fn sdata(d: &FileData) -> SData {
    match d {
        FileData::Whole(h) => SData::Whole(h.to_hex()),
        FileData::Chunked(cs) => SData::Chunked(
            cs.iter()
                .map(|c| (c.offset, c.size, c.hash.to_hex()))
                .collect(),
        ),
    }
}

fn hash_of(text: &str) -> std::result::Result<ContentHash, String> {
    ContentHash::from_hex(text).ok_or_else(|| format!("invalid object hash {text:?}"))
}

fn data_of(d: SData) -> std::result::Result<FileData, String> {
    Ok(match d {
        SData::Whole(h) => FileData::Whole(hash_of(&h)?),
        SData::Chunked(cs) => FileData::Chunked(
            cs.into_iter()
                .map(|(offset, size, h)| {
                    Ok(Chunk {
                        offset,
                        size,
                        hash: hash_of(&h)?,
                    })
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
    })
}

/// The owned form, to check [`encode`] against (tests).
#[cfg(test)]
fn skind(k: &MemoKind) -> SKind {
    match k {
        MemoKind::Directory(m) => SKind::Dir(smeta(m)),
        MemoKind::File { meta, size, data } => SKind::File {
            meta: smeta(meta),
            size: *size,
            data: data.as_ref().map(sdata),
        },
        MemoKind::Symlink { meta, target } => SKind::Symlink {
            meta: smeta(meta),
            target: Bytes::of(target),
        },
        MemoKind::CharDevice { meta, rdev } => SKind::Char {
            meta: smeta(meta),
            rdev: *rdev,
        },
        MemoKind::BlockDevice { meta, rdev } => SKind::Block {
            meta: smeta(meta),
            rdev: *rdev,
        },
        MemoKind::Fifo(m) => SKind::Fifo(smeta(m)),
        MemoKind::Socket(m) => SKind::Socket(smeta(m)),
        MemoKind::Whiteout => SKind::Whiteout,
        MemoKind::Opaque => SKind::Opaque,
        MemoKind::Hardlink { target } => SKind::Hardlink {
            target: Bytes::of(target),
        },
    }
}

fn kind_of(k: SKind) -> std::result::Result<MemoKind, String> {
    Ok(match k {
        SKind::Dir(m) => MemoKind::Directory(meta_of(m)),
        SKind::File { meta, size, data } => MemoKind::File {
            meta: meta_of(meta),
            size,
            data: data.map(data_of).transpose()?,
        },
        SKind::Symlink { meta, target } => MemoKind::Symlink {
            meta: meta_of(meta),
            target: target.into_vec(),
        },
        SKind::Char { meta, rdev } => MemoKind::CharDevice {
            meta: meta_of(meta),
            rdev,
        },
        SKind::Block { meta, rdev } => MemoKind::BlockDevice {
            meta: meta_of(meta),
            rdev,
        },
        SKind::Fifo(m) => MemoKind::Fifo(meta_of(m)),
        SKind::Socket(m) => MemoKind::Socket(meta_of(m)),
        SKind::Whiteout => MemoKind::Whiteout,
        SKind::Opaque => MemoKind::Opaque,
        SKind::Hardlink { target } => MemoKind::Hardlink {
            target: target.into_vec(),
        },
    })
}

/// The document of `layer`, serialised from borrowed views of its members: building the
/// owned [`Doc`] first held every path and object hash of the layer a second time (as
/// strings) while the JSON text was written.
fn encode(layer: &MemoLayer) -> std::result::Result<Vec<u8>, String> {
    let doc = DocRef {
        v: FORMAT,
        entries: EntriesRef(&layer.entries),
    };
    // Streamed into the compressor: the JSON text of a layer of a million members would be a
    // few hundred MB.
    let mut zstd = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
        .map_err(|e| format!("zstd: {e}"))?;
    zstd.include_checksum(true)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut text = std::io::BufWriter::with_capacity(1 << 16, zstd);
    serde_json::to_writer(&mut text, &doc).map_err(|e| e.to_string())?;
    text.into_inner()
        .map_err(|e| format!("zstd: {}", e.error()))?
        .finish()
        .map_err(|e| format!("zstd: {e}"))
}

/// [`Bytes`] borrowed; serialises the same.
#[derive(Serialize)]
#[serde(untagged)]
enum BytesRef<'a> {
    Text(&'a str),
    Raw(&'a [u8]),
}

impl BytesRef<'_> {
    fn of(b: &[u8]) -> BytesRef<'_> {
        match std::str::from_utf8(b) {
            Ok(s) => BytesRef::Text(s),
            Err(_) => BytesRef::Raw(b),
        }
    }
}

/// [`Doc`] borrowed; serialises the same.
#[derive(Serialize)]
struct DocRef<'a> {
    v: u32,
    entries: EntriesRef<'a>,
}

struct EntriesRef<'a>(&'a [MemoEntry]);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| SEntryRef {
            path: BytesRef::of(&e.path),
            kind: skind_ref(&e.kind),
        }))
    }
}

#[derive(Serialize)]
struct SEntryRef<'a> {
    path: BytesRef<'a>,
    kind: SKindRef<'a>,
}

/// [`SMeta`] borrowed; serialises the same.
#[derive(Serialize)]
struct SMetaRef<'a> {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ns: Option<u32>,
    #[serde(skip_serializing_if = "XattrsRef::is_empty")]
    xattrs: XattrsRef<'a>,
}

struct XattrsRef<'a>(&'a Xattrs);

impl XattrsRef<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for XattrsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|(k, v)| (BytesRef::of(k), BytesRef::of(v))),
        )
    }
}

/// An object hash as the hex string [`SData`] holds.
struct HexRef<'a>(&'a ContentHash);

impl Serialize for HexRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut hex = [0u8; 40];
        hex::encode_to_slice(self.0 .0, &mut hex).map_err(serde::ser::Error::custom)?;
        let text = std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }
}

/// [`SData`] borrowed; serialises the same.
#[derive(Serialize)]
enum SDataRef<'a> {
    Whole(HexRef<'a>),
    Chunked(ChunksRef<'a>),
}

struct ChunksRef<'a>(&'a [Chunk]);

impl Serialize for ChunksRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| (c.offset, c.size, HexRef(&c.hash))))
    }
}

/// [`SKind`] borrowed; serialises the same.
#[derive(Serialize)]
enum SKindRef<'a> {
    Dir(SMetaRef<'a>),
    File {
        meta: SMetaRef<'a>,
        size: u64,
        data: Option<SDataRef<'a>>,
    },
    Symlink {
        meta: SMetaRef<'a>,
        target: BytesRef<'a>,
    },
    Char {
        meta: SMetaRef<'a>,
        rdev: u64,
    },
    Block {
        meta: SMetaRef<'a>,
        rdev: u64,
    },
    Fifo(SMetaRef<'a>),
    Socket(SMetaRef<'a>),
    Whiteout,
    Opaque,
    Hardlink {
        target: BytesRef<'a>,
    },
}

fn smeta_ref(m: &MemoMeta) -> SMetaRef<'_> {
    SMetaRef {
        perm: m.perm,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        ns: m.mtime_ns,
        xattrs: XattrsRef(&m.xattrs),
    }
}

fn sdata_ref(d: &FileData) -> SDataRef<'_> {
    match d {
        FileData::Whole(h) => SDataRef::Whole(HexRef(h)),
        FileData::Chunked(cs) => SDataRef::Chunked(ChunksRef(cs)),
    }
}

fn skind_ref(k: &MemoKind) -> SKindRef<'_> {
    match k {
        MemoKind::Directory(m) => SKindRef::Dir(smeta_ref(m)),
        MemoKind::File { meta, size, data } => SKindRef::File {
            meta: smeta_ref(meta),
            size: *size,
            data: data.as_ref().map(sdata_ref),
        },
        MemoKind::Symlink { meta, target } => SKindRef::Symlink {
            meta: smeta_ref(meta),
            target: BytesRef::of(target),
        },
        MemoKind::CharDevice { meta, rdev } => SKindRef::Char {
            meta: smeta_ref(meta),
            rdev: *rdev,
        },
        MemoKind::BlockDevice { meta, rdev } => SKindRef::Block {
            meta: smeta_ref(meta),
            rdev: *rdev,
        },
        MemoKind::Fifo(m) => SKindRef::Fifo(smeta_ref(m)),
        MemoKind::Socket(m) => SKindRef::Socket(smeta_ref(m)),
        MemoKind::Whiteout => SKindRef::Whiteout,
        MemoKind::Opaque => SKindRef::Opaque,
        MemoKind::Hardlink { target } => SKindRef::Hardlink {
            target: BytesRef::of(target),
        },
    }
}

/// `Ok(None)` for a document of another format version.
fn decode(blob: &[u8]) -> std::result::Result<Option<MemoLayer>, String> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    // Parsed as it inflates, never held as text (see `encode`).
    let parse = |what: &mut dyn FnMut(&mut dyn std::io::Read) -> serde_json::Result<()>| {
        use std::io::Read;
        let zstd = zstd::stream::read::Decoder::new(blob).map_err(|e| format!("zstd: {e}"))?;
        let mut limited = zstd.take(MAX_DOC_BYTES + 1);
        let parsed = what(&mut std::io::BufReader::with_capacity(
            1 << 16,
            &mut limited,
        ));
        if limited.limit() == 0 {
            return Err(format!("inflates to more than {MAX_DOC_BYTES} bytes"));
        }
        parsed.map_err(|e| match e.io_error_kind() {
            Some(_) => format!("zstd: {e}"),
            None => format!("json: {e}"),
        })
    };
    let mut doc: Option<Doc> = None;
    if let Err(why) = parse(&mut |r| serde_json::from_reader(r).map(|d| doc = Some(d))) {
        // Another version's entries need not parse as this one's.
        let mut version = None;
        parse(&mut |r| serde_json::from_reader(r).map(|v: Version| version = Some(v.v)))?;
        return match version {
            Some(v) if v != FORMAT => Ok(None),
            _ => Err(why),
        };
    }
    let Some(doc) = doc.filter(|d| d.v == FORMAT) else {
        return Ok(None);
    };
    // The checksum is verified as the frame ends (serde_json reads to the end of the input);
    // a frame without one would have been accepted unchecked.
    if !has_checksum(blob) {
        return Err("zstd: the frame has no content checksum".into());
    }
    let entries = doc
        .entries
        .into_iter()
        .map(|e| {
            Ok(MemoEntry {
                path: e.path.into_vec(),
                kind: kind_of(e.kind)?,
            })
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok(Some(MemoLayer { entries }))
}

/// Whether the zstd frame at the start of `blob` declares a content checksum
/// (`Content_Checksum_flag`, bit 2 of the frame header descriptor after the 4-byte magic).
fn has_checksum(blob: &[u8]) -> bool {
    blob.get(4)
        .is_some_and(|descriptor| descriptor & 0b100 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(xattrs: &[(&[u8], &[u8])], ns: Option<u32>) -> MemoMeta {
        MemoMeta {
            perm: 0o640,
            uid: 7,
            gid: 8,
            mtime: -3,
            mtime_ns: ns,
            xattrs: xattrs
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        }
    }

    /// The document as the owned [`Doc`] serialises it (what memos were written with).
    fn owned_json(layer: &MemoLayer) -> Vec<u8> {
        let doc = Doc {
            v: FORMAT,
            entries: layer
                .entries
                .iter()
                .map(|e| SEntry {
                    path: Bytes::of(&e.path),
                    kind: skind(&e.kind),
                })
                .collect(),
        };
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn borrowed_encoding_writes_the_owned_document() {
        let h = |b: u8| ContentHash([b; 20]);
        let kinds = vec![
            MemoKind::Directory(meta(
                &[(b"user.a", b"1"), (b"user.\xff", b"\x00\xfe")],
                None,
            )),
            MemoKind::File {
                meta: meta(&[], Some(5)),
                size: 3,
                data: Some(FileData::Whole(h(0xab))),
            },
            MemoKind::File {
                meta: meta(&[], None),
                size: 10,
                data: Some(FileData::Chunked(vec![
                    Chunk {
                        offset: 0,
                        size: 4,
                        hash: h(1),
                    },
                    Chunk {
                        offset: 4,
                        size: 6,
                        hash: h(2),
                    },
                ])),
            },
            MemoKind::File {
                meta: meta(&[], None),
                size: 1,
                data: None,
            },
            MemoKind::Symlink {
                meta: meta(&[], None),
                target: b"../t\"\\\n".to_vec(),
            },
            MemoKind::CharDevice {
                meta: meta(&[], None),
                rdev: 259,
            },
            MemoKind::BlockDevice {
                meta: meta(&[], None),
                rdev: 2049,
            },
            MemoKind::Fifo(meta(&[], None)),
            MemoKind::Socket(meta(&[], None)),
            MemoKind::Whiteout,
            MemoKind::Opaque,
            MemoKind::Hardlink {
                target: b"bin/\x80x".to_vec(),
            },
        ];
        let layer = MemoLayer::new(
            kinds
                .into_iter()
                .enumerate()
                .map(|(i, kind)| MemoEntry {
                    path: if i == 3 {
                        b"not/utf8/\xc3".to_vec()
                    } else {
                        format!("p/{i}").into_bytes()
                    },
                    kind,
                })
                .collect(),
        );
        let blob = encode(&layer).unwrap();
        let json = zstd::stream::decode_all(blob.as_slice()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&json),
            String::from_utf8_lossy(&owned_json(&layer))
        );
        assert_eq!(decode(&blob).unwrap(), Some(layer));
    }

    #[test]
    fn another_versions_document_is_no_memo_and_a_broken_one_an_error() {
        let z = |json: &str| zstd::bulk::compress(json.as_bytes(), 3).unwrap();
        let later = z(r#"{"v":999,"entries":[{"shape":"unknown to this version"}]}"#);
        assert_eq!(decode(&later).unwrap(), None);
        let broken = z(&format!(r#"{{"v":{FORMAT},"entries":[{{"shape":1}}]}}"#));
        assert!(decode(&broken).unwrap_err().starts_with("json: "));
        let truncated = &encode(&MemoLayer::new(Vec::new())).unwrap()[..8];
        assert!(decode(truncated).is_err());
    }

    #[test]
    fn a_document_that_inflates_but_fails_its_checksum_is_refused() {
        let file = |name: &[u8], hash: u8| MemoEntry {
            path: name.to_vec(),
            kind: MemoKind::File {
                meta: meta(&[], None),
                size: 1,
                data: Some(FileData::Whole(ContentHash([hash; 20]))),
            },
        };
        let right = MemoLayer::new(vec![file(b"bin/a", 1), file(b"bin/b", 2)]);
        let blob = encode(&right).unwrap();
        assert!(has_checksum(&blob));
        assert_eq!(decode(&blob).unwrap(), Some(right.clone()));
        // The same frame with another document's checksum: the objects of two files swapped,
        // as a writer bug or a torn row might leave them.
        let wrong = encode(&MemoLayer::new(vec![file(b"bin/a", 2), file(b"bin/b", 1)])).unwrap();
        let mut spliced = wrong[..wrong.len() - 4].to_vec();
        spliced.extend_from_slice(&blob[blob.len() - 4..]);
        let err = decode(&spliced).unwrap_err();
        assert!(err.starts_with("zstd: "), "{err}");
        // A current document in a frame without a checksum is not trusted either ...
        let json = zstd::stream::decode_all(blob.as_slice()).unwrap();
        let unchecked = zstd::bulk::compress(&json, 3).unwrap();
        assert!(!has_checksum(&unchecked));
        let err = decode(&unchecked).unwrap_err();
        assert!(err.contains("no content checksum"), "{err}");
        // ... while version 1's rows (all without one) read as misses.
        let old = String::from_utf8(json).unwrap().replacen(
            &format!(r#"{{"v":{FORMAT},"#),
            r#"{"v":1,"#,
            1,
        );
        assert!(old.starts_with(r#"{"v":1,"#), "{old}");
        assert_eq!(
            decode(&zstd::bulk::compress(old.as_bytes(), 3).unwrap()).unwrap(),
            None
        );
    }
}
