//! OCI layer flattening without extraction: layers are read top-down (last layer first), so
//! anything a higher layer decided (replaced, whited out, hidden by an opaque directory or by
//! a non-directory at an ancestor) is skipped before its bytes reach the compressor.
//!
//! Semantics (OCI image spec, "Applying changesets"): `.wh.NAME` removes NAME of lower layers;
//! `.wh..wh..opq` hides all lower-layer children of its directory; a whiteout never hides
//! entries of its own layer; later entries win; a directory's metadata comes from the highest
//! layer that has an entry for it; directories merge; a non-directory replaces a lower
//! directory together with its subtree.
//!
//! Hard links (tar type 1) point at a path of the same layer (earlier in the tar) or of a lower
//! layer. Links to lower layers are kept pending until that layer is read; their target's
//! bytes are ingested even if the target path itself is shadowed. Without a memo, regular
//! files shadowed in a layer are drained, never stored: when a later visible link of the same
//! layer turns out to need one, the layer is opened a second time and only those files are
//! ingested (rare: nothing is written to disk and memory does not grow with the layer).
//!
//! With a [`MemoContext`], each layer read from its stream is recorded in the
//! [`publisher::LayerMemo`] under its diff_id (members in tar order, the objects of its
//! files), and a layer whose memo holds everything this image needs from it is replayed from
//! the memo through the same decisions, without opening its stream. Shadowed files of a layer
//! being recorded are ingested too: the memo is then complete, so another image that shares
//! the layer but not the layers above it (sibling images on one base) replays it instead of
//! downloading and reading the blob again. Upper layers usually shadow few files of a base.

use crate::error::{show, Error, Result};
use crate::paxsparse::PaxSparse;
use crate::pipeline::{finalize, FileTicket, ObjectPipeline, PDir, PLeaf, PNode};
use crate::targuard::{next_member_error, MemberExt};
use crate::tarsource::{
    check_crate_reading, drain_member, drain_rest, header_name, ingest_member, member_path,
    read_member, split_link_target, split_member_path, MemberKind,
};
use catalog_writer::entry::{Entry, EntryKind};
use catalog_writer::namespace::{NAME_MAX, SYMLINK_MAX};
use catalog_writer::tree::Dir;
use publisher::{LayerMemo, MemoEntry, MemoKind, MemoLayer, MemoMeta, ObjectStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// Opens a layer's DECOMPRESSED tar stream; may be called more than once.
pub type OpenLayer = Box<dyn Fn() -> Result<Box<dyn Read + Send>> + Send + Sync>;

/// One layer: its name for errors, its memo key and how to open its stream.
pub struct LayerInput {
    /// E.g. `image@sha256:… layer sha256:…`.
    pub name: String,
    /// The config's `rootfs.diff_ids` entry (`sha256:…`), the layer's key in the memo;
    /// `None`: the layer is never memoised.
    pub diff_id: Option<String>,
    /// Called once per pass over the layer: normally once, twice when a shadowed file turns
    /// out to be needed by a hard link, never when the memo has the layer.
    pub open: OpenLayer,
}

/// Where layer memos are read and written; `store` holds the objects they reference (a memo
/// referencing a missing object is dropped). Meant to live for one transaction.
pub struct MemoContext<'a> {
    pub memo: &'a LayerMemo,
    pub store: &'a dyn ObjectStore,
    /// Memos read and found complete in `store` already: objects do not vanish inside a
    /// transaction, so a batch replaying one base layer for many images decodes it and
    /// checks its thousands of objects once. Bounded by [`MEMO_CACHE_ENTRIES`].
    cache: Mutex<MemoCache>,
}

/// Most memo entries kept decoded by a [`MemoContext`] (about 150 bytes each).
const MEMO_CACHE_ENTRIES: usize = 200_000;

#[derive(Default)]
struct MemoCache {
    layers: HashMap<String, Arc<MemoLayer>>,
    entries: usize,
}

impl<'a> MemoContext<'a> {
    pub fn new(memo: &'a LayerMemo, store: &'a dyn ObjectStore) -> MemoContext<'a> {
        MemoContext {
            memo,
            store,
            cache: Mutex::new(MemoCache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, MemoCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The memo of `diff_id` if all its objects are in the store.
    fn get_verified(&self, diff_id: &str) -> Option<Arc<MemoLayer>> {
        if let Some(layer) = self.cache().layers.get(diff_id) {
            return Some(layer.clone());
        }
        let layer = Arc::new(self.memo.get_verified(diff_id, self.store).ok().flatten()?);
        let mut cache = self.cache();
        if cache.entries + layer.entries.len() <= MEMO_CACHE_ENTRIES {
            cache.entries += layer.entries.len();
            if let Some(old) = cache.layers.insert(diff_id.to_string(), layer.clone()) {
                cache.entries -= old.entries.len();
            }
        }
        Some(layer)
    }

    /// Whether the memo has the layer `diff_id` with all its objects present (an image may
    /// still need files the memo lacks: those shadowed where the layer was read).
    pub fn knows(&self, diff_id: &str) -> bool {
        self.get_verified(diff_id).is_some()
    }

    /// Stores a layer's memo (and drops the cached older version).
    fn put(&self, diff_id: &str, layer: MemoLayer) -> publisher::Result<()> {
        let mut cache = self.cache();
        if let Some(old) = cache.layers.remove(diff_id) {
            cache.entries -= old.entries.len();
        }
        drop(cache);
        self.memo.put_owned(diff_id, layer)
    }
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Bound on alias chains (link to link to link ...) inside one layer.
const MAX_ALIAS_DEPTH: usize = 64;
/// Names cvmfs takes for nested catalog markers, whatever they are.
const MARKERS: [&[u8]; 2] = [crate::convert::CATALOG_MARKER, b".cvmfsautocatalog"];

/// Checks a directory (or implied parent) name of the merged tree against what a client can
/// serve. The namespace checks every entry again when the tree is grafted, but by then the
/// layer and the member are no longer known; here the error can name both.
fn check_dir_name(name: &[u8]) -> Res<()> {
    if name.len() > NAME_MAX {
        return Err(format!(
            "a directory name of {} bytes (at most {NAME_MAX})",
            name.len()
        ));
    }
    if MARKERS.contains(&name) {
        return Err(format!(
            "directory {}: a nested catalog marker must be a regular file",
            show(name)
        ));
    }
    Ok(())
}

/// Checks a non-directory entry of the merged tree (see [`check_dir_name`]).
fn check_leaf(name: &[u8], entry: &Entry) -> Res<()> {
    if name.len() > NAME_MAX {
        return Err(format!(
            "a name of {} bytes (at most {NAME_MAX})",
            name.len()
        ));
    }
    match &entry.kind {
        EntryKind::File { .. } => {}
        _ if MARKERS.contains(&name) => {
            return Err("a nested catalog marker must be a regular file".to_owned())
        }
        EntryKind::Symlink { target } if target.len() > SYMLINK_MAX => {
            return Err(format!(
                "symlink target of {} bytes (at most {SYMLINK_MAX})",
                target.len()
            ))
        }
        _ => {}
    }
    Ok(())
}

/// Flattens `layers` (bottom → top) into one tree; regular files go through `pipeline`.
pub fn flatten_layers(layers: Vec<LayerInput>, pipeline: &ObjectPipeline) -> Result<Dir> {
    flatten_layers_with(layers, pipeline, None)
}

/// Like [`flatten_layers`], replaying layers from `memo` where it has what this image needs
/// and recording the layers read from their streams.
pub fn flatten_layers_with(
    layers: Vec<LayerInput>,
    pipeline: &ObjectPipeline,
    memo: Option<&MemoContext<'_>>,
) -> Result<Dir> {
    let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    let memo_names = names.clone();
    let mut fl = Flattener {
        root: FDir::new(usize::MAX),
        inodes: Vec::new(),
        pending: HashMap::new(),
        names,
        pipeline,
    };
    let (res, saved) = match memo {
        None => (fl.all_layers(&layers, None, None), Ok(())),
        Some(m) => std::thread::scope(|s| {
            // A layer's memo is written as soon as its files are stored, by this thread: a
            // run killed while a later layer downloads keeps it (the rerun skips the layer),
            // and the flattening never waits for the compressors at a layer boundary.
            let (tx, rx) = crossbeam_channel::unbounded::<Unsaved>();
            let names = &memo_names;
            let saver = std::thread::Builder::new()
                .name("layer-memo".into())
                .spawn_scoped(s, move || -> Result<()> {
                    // Layers read completely keep their memo even when a lower one fails.
                    rx.into_iter()
                        .try_for_each(|u| save_memo(pipeline, names, m, u))
                });
            let saver = match saver {
                Ok(saver) => saver,
                Err(e) => {
                    let e = Error::Stopped(format!("cannot start the layer memo thread: {e}"));
                    return (Err(e), Ok(()));
                }
            };
            let res = fl.all_layers(&layers, Some(m), Some(&tx));
            drop(tx);
            let saved = saver
                .join()
                .unwrap_or_else(|_| Err(Error::Stopped("the layer memo thread panicked".into())));
            (res, saved)
        }),
    };
    res?;
    saved?;
    if let Some((target, p)) = fl.pending.iter().next() {
        return Err(Error::Tar {
            archive: fl.names[p.layer].clone(),
            path: show(&p.link),
            msg: format!(
                "hardlink target {} not found in this or a lower layer",
                show(target)
            ),
        });
    }
    let root = fl.into_pending()?;
    finalize(root, &Entry::directory(0o755, 0, 0, 0), pipeline)
}

/// A node of the merged tree; `layer` fields say which layer decided it. Directories are
/// boxed: most nodes are leaves, and the map holding them sizes every slot for the largest
/// variant (an unboxed `FDir` made each leaf cost ~200 bytes instead of 24).
enum FNode {
    Dir(Box<FDir>),
    Leaf {
        inode: usize,
        layer: usize,
    },
    /// Removed for lower layers by a whiteout of `layer`.
    Whiteout {
        layer: usize,
    },
}

struct FDir {
    meta: Option<Entry>,
    meta_layer: usize,
    /// Highest layer with anything at this path.
    created: usize,
    /// Layers below this one contribute no children (opaque marker or whiteout + recreate).
    opaque: Option<usize>,
    /// Layers below this one contribute no metadata (whiteout + recreate).
    sealed: Option<usize>,
    children: BTreeMap<Vec<u8>, FNode>,
}

impl FDir {
    fn new(created: usize) -> FDir {
        FDir {
            meta: None,
            meta_layer: 0,
            created,
            opaque: None,
            sealed: None,
            children: BTreeMap::new(),
        }
    }
    fn hides_children_of(&self, layer: usize) -> bool {
        self.opaque.is_some_and(|o| o > layer)
    }
}

enum Inode {
    Ready {
        entry: Entry,
        ticket: Option<FileTicket>,
    },
    /// A link target not read yet (lower layer, or the second pass over this one).
    Pending,
    /// Merged into another inode (a pending link whose target was itself a link).
    Forward(usize),
}

/// A link to a path of a lower layer.
struct Pending {
    inode: usize,
    /// Layer of the (first) link, and its path, for errors.
    layer: usize,
    link: Vec<u8>,
}

/// What a path of the layer being read refers to, for hard links later in the same layer.
#[derive(Clone)]
enum LayerItem {
    Inode(usize),
    Dir,
    /// A shadowed regular file (or an unneeded link to one): member `member` of the layer.
    Shadowed {
        member: usize,
        /// Its record in the memo being written.
        rec: Option<usize>,
        /// Entry with known data (replayed from a memo, or ingested for the memo being
        /// written, with its ticket); `None`: its bytes were skipped. Boxed because shadowed
        /// files are few, and every path of the layer has an item.
        known: Option<Box<(Entry, Option<FileTicket>)>>,
    },
}

struct Flattener<'p> {
    root: FDir,
    inodes: Vec<Inode>,
    /// By target path.
    pending: HashMap<Vec<u8>, Pending>,
    names: Vec<String>,
    pipeline: &'p ObjectPipeline,
}

/// The memo of a layer being read: its members, and the tickets whose resolutions are the
/// data of its regular files, kept apart so that the members become the memo as they are
/// (not copied into a second vector the size of the layer).
#[derive(Default)]
struct MemoRecs {
    entries: Vec<MemoEntry>,
    /// (member index, ticket of its data).
    tickets: Vec<(usize, FileTicket)>,
}

/// A layer read from its stream whose memo is not written yet.
struct Unsaved {
    diff_id: String,
    layer: usize,
    recs: MemoRecs,
}

/// Per-layer state.
struct LayerScan {
    idx: usize,
    /// Ordinal of the current member (tar order, or memo order when replaying).
    member: usize,
    /// Replaying a memo: there is no stream for a second pass.
    replay: bool,
    items: HashMap<Vec<u8>, LayerItem>,
    whiteouts: HashSet<Vec<u8>>,
    opaque_dirs: HashSet<Vec<u8>>,
    /// Shadowed files a link needs, by member ordinal: (inode to fill, memo record).
    needed: HashMap<usize, (usize, Option<usize>)>,
    /// Shadowed files given an inode already (several links may name one), by member.
    materialized: HashMap<usize, usize>,
    /// Higher layers' links that a member of this layer filled, by path: a later member at
    /// the same path takes them over ([`Flattener::reopen_link_target`]).
    filled: HashMap<Vec<u8>, Pending>,
    /// Directories of this layer at paths a higher layer's hard link names.
    dirs_under_links: HashSet<Vec<u8>>,
    /// The memo being written; `None` when not recording.
    recs: Option<MemoRecs>,
}

impl LayerScan {
    fn new(idx: usize, record: bool, replay: bool) -> LayerScan {
        LayerScan {
            idx,
            member: 0,
            replay,
            items: HashMap::new(),
            whiteouts: HashSet::new(),
            opaque_dirs: HashSet::new(),
            needed: HashMap::new(),
            materialized: HashMap::new(),
            filled: HashMap::new(),
            dirs_under_links: HashSet::new(),
            recs: record.then(MemoRecs::default),
        }
    }

    /// Appends a memo member; returns its index when recording.
    fn record(&mut self, path: &[u8], kind: MemoKind) -> Option<usize> {
        let recs = self.recs.as_mut()?;
        recs.entries.push(MemoEntry {
            path: path.to_vec(),
            kind,
        });
        Some(recs.entries.len() - 1)
    }

    fn set_ticket(&mut self, rec: Option<usize>, ticket: FileTicket) {
        if let (Some(i), Some(recs)) = (rec, self.recs.as_mut()) {
            recs.tickets.push((i, ticket));
        }
    }
}

/// Where a regular file's bytes come from.
enum Content<'a, 'b, R: Read> {
    /// The member's data in the tar stream, and how it expands if it is a PAX sparse file.
    Tar(&'a mut tar::Entry<'b, R>, Option<PaxSparse>),
    /// Replayed from a memo: the entry carries the data.
    Known,
    /// Replayed from a memo that skipped the file's bytes.
    Unknown,
}

type Res<T> = std::result::Result<T, String>;

/// Removes from `dir` what layer `l` put there (lower layers are not read yet): a later
/// member of `l` replaced `dir` with a non-directory, which a higher layer made again.
fn drop_layer(dir: &mut FDir, l: usize) {
    if dir.meta_layer == l {
        dir.meta = None;
    }
    dir.children.retain(|_, node| match node {
        FNode::Leaf { layer, .. } | FNode::Whiteout { layer } => *layer != l,
        FNode::Dir(sub) if sub.created == l => false,
        FNode::Dir(sub) => {
            drop_layer(sub, l);
            true
        }
    });
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Components of a memo path (`b""` is the layer root), checked like tar member names.
fn memo_comps(path: &[u8]) -> Res<Vec<&[u8]>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    split_member_path(path)
}

impl Flattener<'_> {
    fn lerr(&self, layer: usize, path: &[u8], msg: String) -> Error {
        Error::Tar {
            archive: self.names[layer].clone(),
            path: show(path),
            msg,
        }
    }

    /// Every layer top-down; `unsaved` holds the memos of layers read from their streams whose
    /// files were not all stored yet.
    fn all_layers(
        &mut self,
        layers: &[LayerInput],
        memo: Option<&MemoContext<'_>>,
        saver: Option<&crossbeam_channel::Sender<Unsaved>>,
    ) -> Result<()> {
        for (idx, layer) in layers.iter().enumerate().rev() {
            let key = memo.zip(layer.diff_id.as_deref());
            if let Some(known) = key.and_then(|(m, d)| self.usable_memo(idx, m, d)) {
                self.replay(idx, &known)?;
                continue;
            }
            let recs = self.read_layer(idx, layer, key.is_some())?;
            if let (Some((_, diff_id)), Some(recs), Some(saver)) = (key, recs, saver) {
                let done = Unsaved {
                    diff_id: diff_id.to_string(),
                    layer: idx,
                    recs,
                };
                // Closed only if the memo thread failed: its error is reported.
                let _ = saver.send(done);
            }
        }
        Ok(())
    }

    /// The layer's memo if it exists, its objects are all present, and it knows the data of
    /// every file this image needs from the layer. An unreadable memo counts as absent
    /// (reading the stream rewrites it).
    fn usable_memo(
        &self,
        idx: usize,
        m: &MemoContext<'_>,
        diff_id: &str,
    ) -> Option<Arc<MemoLayer>> {
        let layer = m.get_verified(diff_id)?;
        self.memo_covers(idx, &layer).then_some(layer)
    }

    /// Dry run of a replay: whether a file whose data the memo lacks would be needed, i.e.
    /// be visible, be the target of a higher layer's link, or be linked by such a member.
    /// Visibility inside a layer depends only on higher layers, so nothing is changed here.
    fn memo_covers(&self, l: usize, layer: &MemoLayer) -> bool {
        // Last member at each path: `Some(i)` = a regular file (directly or through links).
        let mut last: HashMap<Vec<u8>, Option<usize>> = HashMap::new();
        let unknown = |i: usize| {
            matches!(
                layer.entries.get(i).map(|e| &e.kind),
                Some(MemoKind::File { data: None, .. })
            )
        };
        for (i, e) in layer.entries.iter().enumerate() {
            let Ok(comps) = memo_comps(&e.path) else {
                return false;
            };
            let path = join(&comps);
            let wanted = || {
                self.visible(&comps, l, false).unwrap_or(true)
                    || self.pending.get(&path).is_some_and(|p| p.layer > l)
            };
            let file = match &e.kind {
                MemoKind::Whiteout | MemoKind::Opaque => continue,
                MemoKind::File { .. } => Some(i),
                MemoKind::Hardlink { target } => {
                    let Ok(t) = memo_comps(target) else {
                        return false;
                    };
                    last.get(&join(&t)).copied().flatten()
                }
                _ => None,
            };
            if file.is_some_and(unknown) && wanted() {
                return false;
            }
            last.insert(path, file);
        }
        true
    }

    /// Reads a layer from its stream (twice if a link needs a shadowed file); returns its
    /// memo records when `record`.
    fn read_layer(
        &mut self,
        idx: usize,
        layer: &LayerInput,
        record: bool,
    ) -> Result<Option<MemoRecs>> {
        let mut scan = LayerScan::new(idx, record, false);
        self.first_pass(&mut scan, (layer.open)()?)?;
        self.check_pending_hidden(&scan)?;
        if !scan.needed.is_empty() {
            self.second_pass(&mut scan, (layer.open)()?)?;
        }
        Ok(scan.recs)
    }

    fn first_pass(&mut self, scan: &mut LayerScan, stream: Box<dyn Read + Send>) -> Result<()> {
        let idx = scan.idx;
        let (mut archive, slot) = crate::targuard::guarded_with(stream);
        let entries = archive
            .entries()
            .map_err(|e| self.lerr(idx, b"", format!("reading layer: {e}")))?;
        for (ordinal, member) in entries.enumerate() {
            let mut member = member.map_err(|e| {
                let (name, msg) = next_member_error(&slot, "layer", &e);
                self.lerr(idx, &name, msg)
            })?;
            let ext = slot.take();
            let raw =
                member_path(&member, &ext).map_err(|e| self.lerr(idx, &header_name(&member), e))?;
            scan.member = ordinal;
            self.member(scan, &raw, &mut member, &ext)?;
        }
        drain_rest(archive.into_inner())
            .map_err(|e| self.lerr(idx, b"", format!("after the end of the layer: {e}")))
    }

    /// Ingests the shadowed files that links of the layer turned out to need.
    fn second_pass(&mut self, scan: &mut LayerScan, stream: Box<dyn Read + Send>) -> Result<()> {
        let idx = scan.idx;
        let (mut archive, slot) = crate::targuard::guarded_with(stream);
        let entries = archive
            .entries()
            .map_err(|e| self.lerr(idx, b"", format!("reading layer again: {e}")))?;
        for (ordinal, member) in entries.enumerate() {
            if scan.needed.is_empty() {
                break;
            }
            let mut member = member.map_err(|e| {
                let (name, msg) = next_member_error(&slot, "layer", &e);
                self.lerr(idx, &name, format!("{msg} (second read)"))
            })?;
            let ext = slot.take();
            let Some((inode, rec)) = scan.needed.remove(&ordinal) else {
                continue;
            };
            let raw =
                member_path(&member, &ext).map_err(|e| self.lerr(idx, &header_name(&member), e))?;
            let m = read_member(&mut member, true, &ext).map_err(|e| self.lerr(idx, &raw, e))?;
            if !matches!(m.kind, MemberKind::File) {
                let msg = "no longer a regular file on the second read of the layer";
                return Err(self.lerr(idx, &raw, msg.into()));
            }
            let name = format!("{}: {}", self.names[idx], show(&raw));
            let ticket = ingest_member(&mut member, m.sparse.as_ref(), self.pipeline, &name)?;
            scan.set_ticket(rec, ticket);
            self.inodes[inode] = Inode::Ready {
                entry: m.entry,
                ticket: Some(ticket),
            };
        }
        // To the end, so the stream's digest check runs.
        drain_rest(archive.into_inner())
            .map_err(|e| self.lerr(idx, b"", format!("after the end of the layer: {e}")))?;
        match scan.needed.keys().min() {
            Some(ordinal) => Err(self.lerr(
                idx,
                b"",
                format!("member #{ordinal} is missing on the second read of the layer"),
            )),
            None => Ok(()),
        }
    }

    /// Replays a layer's memo through the same decisions as its tar members.
    fn replay(&mut self, idx: usize, layer: &MemoLayer) -> Result<()> {
        let mut scan = LayerScan::new(idx, false, true);
        for (ordinal, e) in layer.entries.iter().enumerate() {
            scan.member = ordinal;
            self.replay_entry(&mut scan, e)?;
        }
        self.check_pending_hidden(&scan)
    }

    fn replay_entry(&mut self, scan: &mut LayerScan, e: &MemoEntry) -> Result<()> {
        let layer_name = self.names[scan.idx].clone();
        let err = |msg: String| Error::Tar {
            archive: layer_name.clone(),
            path: show(&e.path),
            msg: format!("layer memo: {msg}"),
        };
        let comps = memo_comps(&e.path).map_err(err)?;
        let path = join(&comps);
        match &e.kind {
            MemoKind::Whiteout => {
                let Some((name, parents)) = comps.split_last() else {
                    return Err(err("whiteout of the layer root".into()));
                };
                self.on_whiteout(scan, parents, name).map_err(err)
            }
            MemoKind::Opaque => self.on_opaque(scan, &comps).map_err(err),
            MemoKind::Directory(meta) => {
                let entry = meta.to_entry(EntryKind::Directory);
                self.on_dir(scan, &comps, path, entry).map_err(err)
            }
            MemoKind::File { meta, size, data } => {
                let (entry, content) = match data {
                    Some(d) => {
                        let kind = EntryKind::File {
                            size: *size,
                            data: d.clone(),
                        };
                        (meta.to_entry(kind), Content::<io::Empty>::Known)
                    }
                    None => {
                        let kind = EntryKind::File {
                            size: *size,
                            data: catalog_writer::entry::FileData::Whole(
                                catalog_writer::hash::EMPTY_OBJECT,
                            ),
                        };
                        (meta.to_entry(kind), Content::Unknown)
                    }
                };
                self.on_file(scan, &comps, path, &e.path, entry, content)
            }
            MemoKind::Hardlink { target } => {
                let tcomps =
                    memo_comps(target).map_err(|m| err(format!("hardlink target: {m}")))?;
                self.on_hardlink(scan, &comps, path, &e.path, &tcomps)
            }
            other => match other.to_entry() {
                Some(entry) => self.on_other(scan, &comps, path, entry).map_err(err),
                None => Err(err("unexpected member kind".into())),
            },
        }
    }

    fn member<R: Read>(
        &mut self,
        scan: &mut LayerScan,
        raw: &[u8],
        m: &mut tar::Entry<'_, R>,
        ext: &MemberExt,
    ) -> Result<()> {
        let layer_name = self.names[scan.idx].clone();
        let err = |msg: String| Error::Tar {
            archive: layer_name.clone(),
            path: show(raw),
            msg,
        };
        let comps = split_member_path(raw).map_err(err)?;
        if let Some((last, parents)) = comps.split_last() {
            if last.starts_with(WH_PREFIX) {
                check_crate_reading(m, ext).map_err(err)?;
                drain_member(m).map_err(err)?;
                return self.whiteout_marker(scan, parents, last).map_err(err);
            }
        }
        let path = join(&comps);
        let member = read_member(m, true, ext).map_err(err)?;
        match member.kind {
            MemberKind::Skip => drain_member(m).map_err(err),
            MemberKind::Dir => {
                drain_member(m).map_err(err)?;
                self.on_dir(scan, &comps, path, member.entry).map_err(err)
            }
            MemberKind::File => {
                let content = Content::Tar(m, member.sparse);
                self.on_file(scan, &comps, path, raw, member.entry, content)
            }
            MemberKind::Other => {
                drain_member(m).map_err(err)?;
                self.on_other(scan, &comps, path, member.entry).map_err(err)
            }
            MemberKind::Hardlink(target) => {
                drain_member(m).map_err(err)?;
                let tcomps = split_link_target(&target).map_err(err)?;
                self.on_hardlink(scan, &comps, path, raw, &tcomps)
            }
        }
    }

    fn on_dir(
        &mut self,
        scan: &mut LayerScan,
        comps: &[&[u8]],
        path: Vec<u8>,
        entry: Entry,
    ) -> Res<()> {
        let l = scan.idx;
        self.reopen_link_target(scan, &path);
        if self.pending.get(&path).is_some_and(|p| p.layer > l) {
            // An error unless a later member of the layer at this path takes the link
            // (`check_pending_hidden`, at the end of the layer).
            scan.dirs_under_links.insert(path.clone());
        }
        scan.record(&path, MemoKind::Directory(MemoMeta::of(&entry)));
        scan.items.insert(path, LayerItem::Dir);
        if self.visible(comps, l, true)? {
            self.put_dir(comps, l, entry)?;
        }
        Ok(())
    }

    /// A regular file: ingested when visible or a higher layer's link target, else skipped.
    fn on_file<R: Read>(
        &mut self,
        scan: &mut LayerScan,
        comps: &[&[u8]],
        path: Vec<u8>,
        raw: &[u8],
        entry: Entry,
        content: Content<'_, '_, R>,
    ) -> Result<()> {
        let l = scan.idx;
        let err = |fl: &Self, msg: String| fl.lerr(l, raw, msg);
        let size = match &entry.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        };
        let rec = scan.record(
            &path,
            MemoKind::File {
                meta: MemoMeta::of(&entry),
                size,
                data: None,
            },
        );
        self.reopen_link_target(scan, &path);
        let visible = self.leaf_visible(comps, l).map_err(|e| err(self, e))?;
        let pend = self.take_pending(scan, &path);
        if !visible && pend.is_none() {
            let known = match content {
                // Recorded for the memo: ingested all the same, so that the memo is complete
                // and every other image sharing the layer (visible where this one shadows it)
                // replays it instead of downloading and reading the blob again. Shadowed
                // files are few; without a memo nothing reuses them, so they are skipped.
                Content::Tar(m, sparse) if rec.is_some() => {
                    let name = format!("{}: {}", self.names[l], show(raw));
                    let ticket = ingest_member(m, sparse.as_ref(), self.pipeline, &name)?;
                    scan.set_ticket(rec, ticket);
                    Some(Box::new((entry, Some(ticket))))
                }
                Content::Tar(m, _) => {
                    drain_member(m).map_err(|e| err(self, e))?;
                    None
                }
                Content::Known => Some(Box::new((entry, None))),
                Content::Unknown => None,
            };
            let item = LayerItem::Shadowed {
                member: scan.member,
                rec,
                known,
            };
            scan.items.insert(path, item);
            return Ok(());
        }
        let ticket = match content {
            Content::Tar(m, sparse) => {
                let name = format!("{}: {}", self.names[l], show(raw));
                let ticket = ingest_member(m, sparse.as_ref(), self.pipeline, &name)?;
                scan.set_ticket(rec, ticket);
                Some(ticket)
            }
            Content::Known => None,
            Content::Unknown => {
                return Err(err(self, "the layer memo lacks this file's data".into()));
            }
        };
        let inode = self.fill(pend, entry, ticket);
        self.place_leaf(scan, comps, path, inode, visible)
            .map_err(|e| err(self, e))
    }

    /// Symlinks, devices, FIFOs.
    fn on_other(
        &mut self,
        scan: &mut LayerScan,
        comps: &[&[u8]],
        path: Vec<u8>,
        entry: Entry,
    ) -> Res<()> {
        let l = scan.idx;
        scan.record(&path, MemoKind::from_entry(&entry));
        self.reopen_link_target(scan, &path);
        let visible = self.leaf_visible(comps, l)?;
        let pend = self.take_pending(scan, &path);
        let inode = self.fill(pend, entry, None);
        self.place_leaf(scan, comps, path, inode, visible)
    }

    fn on_hardlink(
        &mut self,
        scan: &mut LayerScan,
        comps: &[&[u8]],
        path: Vec<u8>,
        raw: &[u8],
        tcomps: &[&[u8]],
    ) -> Result<()> {
        let l = scan.idx;
        let target = join(tcomps);
        scan.record(
            &path,
            MemoKind::Hardlink {
                target: target.clone(),
            },
        );
        self.reopen_link_target(scan, &path);
        let visible = self
            .leaf_visible(comps, l)
            .map_err(|e| self.lerr(l, raw, e))?;
        let wanted = visible || self.pending.get(&path).is_some_and(|p| p.layer > l);
        if !wanted {
            if let Some(item @ LayerItem::Shadowed { .. }) = scan.items.get(&target) {
                // Nobody needs the bytes (yet): just one more name for the shadowed file.
                let alias = item.clone();
                scan.items.insert(path, alias);
                return Ok(());
            }
        }
        let inode = self.link_target(scan, &target, raw, 0)?;
        // A higher layer's link to this path now resolves to the same inode.
        if let Some(p) = self.take_pending(scan, &path) {
            self.inodes[p] = Inode::Forward(inode);
        }
        self.place_leaf(scan, comps, path, inode, visible)
            .map_err(|e| self.lerr(l, raw, e))
    }

    /// Removes and returns the pending inode waiting for `path`, if a higher layer created it.
    fn take_pending(&mut self, scan: &mut LayerScan, path: &[u8]) -> Option<usize> {
        match self.pending.get(path) {
            Some(p) if p.layer > scan.idx => {
                let p = self.pending.remove(path)?;
                let inode = p.inode;
                scan.filled.insert(path.to_vec(), p);
                Some(inode)
            }
            _ => None,
        }
    }

    /// A second member of this layer at `path`, whose first filled a higher layer's link: the
    /// link must get what the layer leaves at the path (the last member, as Docker applies a
    /// layer), while this layer's own links to the first member, made before, keep it. The
    /// first member moves to a new inode and the link waits again for this member.
    fn reopen_link_target(&mut self, scan: &mut LayerScan, path: &[u8]) {
        let Some(pending) = scan.filled.remove(path) else {
            return;
        };
        let first = pending.inode;
        let moved = std::mem::replace(&mut self.inodes[first], Inode::Pending);
        self.inodes.push(moved);
        let kept = self.inodes.len() - 1;
        let names: Vec<Vec<u8>> = scan
            .items
            .iter()
            .filter(|(name, item)| {
                name.as_slice() != path && matches!(item, LayerItem::Inode(i) if *i == first)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            scan.items.insert(name.clone(), LayerItem::Inode(kept));
            if let Some(FNode::Leaf { inode, layer }) = self.node_mut(&name) {
                if *inode == first && *layer == scan.idx {
                    *inode = kept;
                }
            }
        }
        // Higher links to this layer's links to the first member (filled in this layer, so
        // forwarded to it) stay with it too.
        for other in scan.filled.values() {
            if matches!(self.inodes[other.inode], Inode::Forward(i) if i == first) {
                self.inodes[other.inode] = Inode::Forward(kept);
            }
        }
        self.pending.insert(path.to_vec(), pending);
    }

    /// The node at `path` (components joined by `/`), if the tree has one.
    fn node_mut(&mut self, path: &[u8]) -> Option<&mut FNode> {
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, parents) = comps.split_last()?;
        let mut dir = &mut self.root;
        for c in parents {
            match dir.children.get_mut(*c) {
                Some(FNode::Dir(d)) => dir = d,
                _ => return None,
            }
        }
        dir.children.get_mut(*last)
    }

    /// Fills a pending inode or makes a new one.
    fn fill(&mut self, pend: Option<usize>, entry: Entry, ticket: Option<FileTicket>) -> usize {
        let ready = Inode::Ready { entry, ticket };
        match pend {
            Some(i) => {
                self.inodes[i] = ready;
                i
            }
            None => {
                self.inodes.push(ready);
                self.inodes.len() - 1
            }
        }
    }

    fn place_leaf(
        &mut self,
        scan: &mut LayerScan,
        comps: &[&[u8]],
        path: Vec<u8>,
        inode: usize,
        visible: bool,
    ) -> Res<()> {
        scan.items.insert(path, LayerItem::Inode(inode));
        if !visible {
            return Ok(());
        }
        let Some((last, parents)) = comps.split_last() else {
            return Err("the root must be a directory".into());
        };
        // A link to a lower layer's file is checked when the grafted tree is (backstop).
        if let Ok((_, entry, _)) = self.resolve_inode(inode) {
            check_leaf(last, entry)?;
        }
        let l = scan.idx;
        let dir = self.parent_mut(parents, l)?;
        dir.children
            .insert(last.to_vec(), FNode::Leaf { inode, layer: l });
        Ok(())
    }

    /// The inode a hard link of layer `scan.idx` refers to.
    fn link_target(
        &mut self,
        scan: &mut LayerScan,
        target: &[u8],
        link: &[u8],
        depth: usize,
    ) -> Result<usize> {
        let l = scan.idx;
        if depth > MAX_ALIAS_DEPTH {
            return Err(self.lerr(l, link, "hardlink chain too long".into()));
        }
        match scan.items.remove(target) {
            Some(LayerItem::Inode(i)) => {
                scan.items.insert(target.to_vec(), LayerItem::Inode(i));
                Ok(i)
            }
            Some(LayerItem::Dir) => {
                scan.items.insert(target.to_vec(), LayerItem::Dir);
                Err(self.lerr(l, link, format!("hardlink to directory {}", show(target))))
            }
            Some(LayerItem::Shadowed { member, rec, known }) => {
                let inode = match scan.materialized.get(&member) {
                    Some(&i) => i,
                    None => {
                        let i = match known {
                            Some(known) => {
                                let (entry, ticket) = *known;
                                self.fill(None, entry, ticket)
                            }
                            None if scan.replay => {
                                let msg = format!(
                                    "layer memo lacks the data of hardlink target {}",
                                    show(target)
                                );
                                return Err(self.lerr(l, link, msg));
                            }
                            // Its bytes were skipped: fetch them in a second pass.
                            None => {
                                self.inodes.push(Inode::Pending);
                                let i = self.inodes.len() - 1;
                                scan.needed.insert(member, (i, rec));
                                i
                            }
                        };
                        scan.materialized.insert(member, i);
                        i
                    }
                };
                scan.items.insert(target.to_vec(), LayerItem::Inode(inode));
                Ok(inode)
            }
            None => {
                if let Some(p) = self.pending.get(target) {
                    return Ok(p.inode);
                }
                self.inodes.push(Inode::Pending);
                let inode = self.inodes.len() - 1;
                let p = Pending {
                    inode,
                    layer: l,
                    link: link.to_vec(),
                };
                self.pending.insert(target.to_vec(), p);
                Ok(inode)
            }
        }
    }

    /// `.wh.NAME` (whiteout) and `.wh..wh..opq` (opaque directory) markers.
    fn whiteout_marker(&mut self, scan: &mut LayerScan, parents: &[&[u8]], last: &[u8]) -> Res<()> {
        if last == WH_OPAQUE {
            return self.on_opaque(scan, parents);
        }
        if last.starts_with(WH_META_PREFIX) {
            return Ok(()); // other reserved markers (e.g. AUFS .wh..wh.plnk) carry no meaning here
        }
        let name = &last[WH_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(format!("invalid whiteout name {}", show(last)));
        }
        self.on_whiteout(scan, parents, name)
    }

    /// The lower-layer children of directory `dir` are hidden.
    fn on_opaque(&mut self, scan: &mut LayerScan, dir: &[&[u8]]) -> Res<()> {
        let l = scan.idx;
        let path = join(dir);
        scan.record(&path, MemoKind::Opaque);
        scan.opaque_dirs.insert(path);
        if !self.visible(dir, l, true)? {
            return Ok(());
        }
        let d = self.dir_mut(dir, l)?;
        d.opaque = d.opaque.max(Some(l));
        Ok(())
    }

    /// `parents/name` of lower layers is removed.
    fn on_whiteout(&mut self, scan: &mut LayerScan, parents: &[&[u8]], name: &[u8]) -> Res<()> {
        let l = scan.idx;
        let mut comps = parents.to_vec();
        comps.push(name);
        let path = join(&comps);
        scan.record(&path, MemoKind::Whiteout);
        scan.whiteouts.insert(path);
        if !self.visible(&comps, l, false)? && !self.visible(&comps, l, true)? {
            return Ok(());
        }
        let dir = self.parent_mut(parents, l)?;
        match dir.children.get_mut(name) {
            None => {
                dir.children
                    .insert(name.to_vec(), FNode::Whiteout { layer: l });
            }
            // Same-layer content stays; lower layers are hidden below it.
            Some(FNode::Dir(d)) => {
                d.opaque = d.opaque.max(Some(l));
                d.sealed = d.sealed.max(Some(l));
            }
            Some(FNode::Leaf { .. } | FNode::Whiteout { .. }) => {}
        }
        Ok(())
    }

    /// Whether a non-directory of layer `l` at `comps` shows in the result. One hidden by a
    /// higher layer's directory there still replaced, in layer `l`, whatever lower layers had
    /// at the path: that directory takes nothing from below `l` (as after a whiteout), or
    /// files removed by the replacement would come back.
    fn leaf_visible(&mut self, comps: &[&[u8]], l: usize) -> Res<bool> {
        if self.visible(comps, l, false)? {
            return Ok(true);
        }
        if let Some(FNode::Dir(d)) = self.node_mut(&join(comps)) {
            if d.created > l {
                d.opaque = d.opaque.max(Some(l));
                d.sealed = d.sealed.max(Some(l));
                // Earlier members of this layer below it went with it.
                drop_layer(d, l);
            }
        }
        Ok(false)
    }

    /// Whether an entry of layer `l` at `comps` shows in the result (nothing higher decided it).
    fn visible(&self, comps: &[&[u8]], l: usize, is_dir: bool) -> Res<bool> {
        let mut dir = &self.root;
        for (i, c) in comps.iter().enumerate() {
            if dir.hides_children_of(l) {
                return Ok(false);
            }
            let last = i + 1 == comps.len();
            match dir.children.get(*c) {
                None => return Ok(true),
                Some(FNode::Whiteout { layer }) => return Ok(*layer <= l),
                Some(FNode::Leaf { layer, .. }) => {
                    if *layer > l {
                        return Ok(false);
                    }
                    if !last {
                        return Err(format!(
                            "parent {} is not a directory",
                            show(&join(&comps[..=i]))
                        ));
                    }
                    return Ok(true);
                }
                Some(FNode::Dir(d)) => {
                    if last {
                        return Ok(is_dir || d.created <= l);
                    }
                    dir = d;
                }
            }
        }
        Ok(true)
    }

    /// Descends to the directory `parents`, creating implied directories for layer `l`.
    fn parent_mut(&mut self, parents: &[&[u8]], l: usize) -> Res<&mut FDir> {
        let mut dir = &mut self.root;
        for (i, c) in parents.iter().enumerate() {
            check_dir_name(c)?;
            let node = dir
                .children
                .entry(c.to_vec())
                .or_insert_with(|| FNode::Dir(Box::new(FDir::new(l))));
            if let FNode::Whiteout { layer } = *node {
                // Removed below, recreated by this layer: lower content stays hidden.
                let mut d = FDir::new(l);
                d.opaque = Some(layer);
                d.sealed = Some(layer);
                *node = FNode::Dir(Box::new(d));
            }
            match node {
                FNode::Dir(d) => dir = d,
                _ => {
                    return Err(format!(
                        "parent {} is not a directory",
                        show(&join(&parents[..=i]))
                    ))
                }
            }
        }
        Ok(dir)
    }

    /// The directory at `comps` (created if needed, replacing a same-layer non-directory).
    fn dir_mut(&mut self, comps: &[&[u8]], l: usize) -> Res<&mut FDir> {
        let Some((last, parents)) = comps.split_last() else {
            return Ok(&mut self.root);
        };
        check_dir_name(last)?;
        let parent = self.parent_mut(parents, l)?;
        let node = parent
            .children
            .entry(last.to_vec())
            .or_insert_with(|| FNode::Dir(Box::new(FDir::new(l))));
        match node {
            FNode::Dir(_) => {}
            FNode::Whiteout { layer } => {
                let mut d = FDir::new(l);
                d.opaque = Some(*layer);
                d.sealed = Some(*layer);
                *node = FNode::Dir(Box::new(d));
            }
            // An earlier member of this layer (a directory's is never hidden by a higher
            // leaf): it removed what lower layers had at the path.
            FNode::Leaf { .. } => {
                let mut d = FDir::new(l);
                d.opaque = Some(l);
                d.sealed = Some(l);
                *node = FNode::Dir(Box::new(d));
            }
        }
        match node {
            FNode::Dir(d) => Ok(d),
            _ => Err("internal: directory expected".into()),
        }
    }

    fn put_dir(&mut self, comps: &[&[u8]], l: usize, entry: Entry) -> Res<()> {
        let d = self.dir_mut(comps, l)?;
        let lower_sealed = d.sealed.is_some_and(|s| s > l);
        if !lower_sealed && (d.meta.is_none() || d.meta_layer == l) {
            d.meta = Some(entry);
            d.meta_layer = l;
        }
        Ok(())
    }

    /// Links of higher layers whose target this layer hides, or leaves a directory, can
    /// never resolve.
    fn check_pending_hidden(&self, scan: &LayerScan) -> Result<()> {
        for dir in &scan.dirs_under_links {
            if let Some(p) = self.pending.get(dir).filter(|p| p.layer > scan.idx) {
                let link = show(&p.link);
                return Err(self.lerr(
                    scan.idx,
                    dir,
                    format!(
                        "is a directory, but a hardlink ({link}) of a higher layer points to it"
                    ),
                ));
            }
        }
        for (target, p) in &self.pending {
            if p.layer <= scan.idx {
                continue;
            }
            let comps: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
            let hidden = (0..comps.len()).any(|i| {
                let prefix = join(&comps[..i]);
                let anc = join(&comps[..=i]);
                scan.opaque_dirs.contains(&prefix)
                    || scan.whiteouts.contains(&anc)
                    || (i + 1 < comps.len()
                        && matches!(
                            scan.items.get(&anc),
                            Some(LayerItem::Inode(_) | LayerItem::Shadowed { .. })
                        ))
            });
            if hidden {
                return Err(self.lerr(
                    p.layer,
                    &p.link,
                    format!(
                        "hardlink target {} is removed by lower layer {}",
                        show(target),
                        self.names[scan.idx]
                    ),
                ));
            }
        }
        Ok(())
    }

    fn resolve_inode(&self, mut i: usize) -> Res<(usize, &Entry, Option<FileTicket>)> {
        for _ in 0..=self.inodes.len() {
            match &self.inodes[i] {
                Inode::Ready { entry, ticket } => return Ok((i, entry, *ticket)),
                Inode::Forward(j) => i = *j,
                Inode::Pending => return Err("unresolved hardlink".into()),
            }
        }
        Err("hardlink cycle".into())
    }

    /// Converts the merged tree, giving inodes referenced more than once a hardlink id. The
    /// merged tree and the inodes are consumed as the pending tree grows: the image's
    /// metadata is held once, not twice.
    fn into_pending(mut self) -> Result<PDir> {
        let mut refs = vec![0u32; self.inodes.len()];
        self.count_refs(&self.root, &mut refs)?;
        let root = std::mem::replace(&mut self.root, FDir::new(usize::MAX));
        self.convert(root, &refs, &mut Vec::new())
    }

    /// How many leaves of the merged tree resolve to each inode.
    fn count_refs(&self, d: &FDir, refs: &mut [u32]) -> Result<()> {
        for node in d.children.values() {
            match node {
                FNode::Dir(sub) => self.count_refs(sub, refs)?,
                FNode::Leaf { inode, layer } => {
                    let (i, _, _) = self
                        .resolve_inode(*inode)
                        .map_err(|e| self.lerr(*layer, b"", e))?;
                    if let Some(n) = refs.get_mut(i) {
                        *n = n.saturating_add(1);
                    }
                }
                FNode::Whiteout { .. } => {}
            }
        }
        Ok(())
    }

    fn convert(&mut self, d: FDir, refs: &[u32], path: &mut Vec<u8>) -> Result<PDir> {
        // Collected into a vector first: a map built from sorted pairs has full nodes, one
        // built by inserting them one by one is left about half empty.
        let mut children = Vec::with_capacity(d.children.len());
        for (name, node) in d.children {
            let node = match node {
                FNode::Whiteout { .. } => continue,
                FNode::Dir(sub) => {
                    let len = path.len();
                    path.push(b'/');
                    path.extend_from_slice(&name);
                    let c = self.convert(*sub, refs, path)?;
                    path.truncate(len);
                    PNode::Dir(c)
                }
                FNode::Leaf { inode, layer } => self.pending_leaf(inode, layer, refs, path)?,
            };
            children.push((name, node));
        }
        Ok(PDir {
            meta: d.meta,
            children: crate::pipeline::sorted_map(children),
        })
    }

    /// The leaf of inode `inode`, its entry moved out when this is its only leaf. Kept out of
    /// the recursive [`Self::convert`], whose frame every directory level pays for.
    fn pending_leaf(
        &mut self,
        inode: usize,
        layer: usize,
        refs: &[u32],
        path: &[u8],
    ) -> Result<PNode> {
        let (i, entry, ticket) = self
            .resolve_inode(inode)
            .map_err(|e| self.lerr(layer, path, e))?;
        let shared = refs.get(i).copied().unwrap_or(0) > 1;
        let mut entry = if shared {
            entry.clone()
        } else {
            match std::mem::replace(&mut self.inodes[i], Inode::Pending) {
                Inode::Ready { entry, .. } => entry,
                _ => return Err(self.lerr(layer, path, "internal: inode moved".into())),
            }
        };
        entry.hardlink = shared.then_some(i as u64 + 1);
        Ok(PNode::Leaf(PLeaf { entry, ticket }))
    }
}

#[cfg(test)]
mod tests;

/// Resolves the tickets of a layer read from its stream (waiting for its files to be
/// stored) and stores its memo (merged with what an older memo of the same layer knew).
fn save_memo(
    pipeline: &ObjectPipeline,
    names: &[String],
    m: &MemoContext<'_>,
    layer: Unsaved,
) -> Result<()> {
    let MemoRecs {
        mut entries,
        tickets,
    } = layer.recs;
    for (i, t) in tickets {
        if let Some(MemoKind::File { data, .. }) = entries.get_mut(i).map(|e| &mut e.kind) {
            *data = Some(pipeline.resolve(t)?.1);
        }
    }
    m.put(&layer.diff_id, MemoLayer::new(entries))
        .map_err(|source| Error::Memo {
            layer: names.get(layer.layer).cloned().unwrap_or_default(),
            source,
        })
}
