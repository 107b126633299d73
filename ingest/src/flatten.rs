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
//! bytes are ingested even if the target path itself is shadowed. Regular files shadowed in a
//! layer are spooled to an anonymous temp file while that layer is read, because a later link
//! of the same layer may still need them (never compressed unless that happens).

use crate::error::{show, Error, Result};
use crate::pipeline::{finalize, FileTicket, ObjectPipeline, PDir, PLeaf, PNode};
use crate::tarsource::{
    drain_member, drain_rest, ingest_member, read_member, split_member_path, Counting, MemberKind,
};
use catalog_writer::entry::Entry;
use catalog_writer::tree::Dir;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// One layer: its name for errors and how to open its DECOMPRESSED tar stream.
pub struct LayerInput {
    /// E.g. `image@sha256:… layer sha256:…`.
    pub name: String,
    pub open: Box<dyn FnOnce() -> Result<Box<dyn Read + Send>> + Send>,
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Bound on alias chains (link to link to link ...) inside one layer.
const MAX_ALIAS_DEPTH: usize = 64;

/// Flattens `layers` (bottom → top) into one tree; regular files go through `pipeline`.
pub fn flatten_layers(layers: Vec<LayerInput>, pipeline: &ObjectPipeline) -> Result<Dir> {
    let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    let mut fl = Flattener {
        root: FDir::new(usize::MAX),
        inodes: Vec::new(),
        pending: HashMap::new(),
        names,
        pipeline,
    };
    for (idx, layer) in layers.into_iter().enumerate().rev() {
        let stream = (layer.open)()?;
        fl.layer(idx, stream)?;
    }
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
    let root = fl.root_to_pending()?;
    finalize(root, &Entry::directory(0o755, 0, 0, 0), pipeline)
}

/// A node of the merged tree; `layer` fields say which layer decided it.
enum FNode {
    Dir(FDir),
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
    /// A link target not read yet.
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
enum LayerItem {
    Inode(usize),
    Dir,
    /// A shadowed regular file kept in the layer spool.
    Spooled {
        entry: Entry,
        offset: u64,
        len: u64,
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

/// Per-layer state.
struct LayerScan {
    idx: usize,
    items: HashMap<Vec<u8>, LayerItem>,
    spool: Option<File>,
    spool_len: u64,
    whiteouts: HashSet<Vec<u8>>,
    opaque_dirs: HashSet<Vec<u8>>,
}

type Res<T> = std::result::Result<T, String>;

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

impl Flattener<'_> {
    fn lerr(&self, layer: usize, path: &[u8], msg: String) -> Error {
        Error::Tar {
            archive: self.names[layer].clone(),
            path: show(path),
            msg,
        }
    }

    fn layer(&mut self, idx: usize, stream: Box<dyn Read + Send>) -> Result<()> {
        let mut scan = LayerScan {
            idx,
            items: HashMap::new(),
            spool: None,
            spool_len: 0,
            whiteouts: HashSet::new(),
            opaque_dirs: HashSet::new(),
        };
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|e| self.lerr(idx, b"", format!("reading layer: {e}")))?;
        for member in entries {
            let mut member =
                member.map_err(|e| self.lerr(idx, b"", format!("reading next member: {e}")))?;
            let raw = member.path_bytes().into_owned();
            self.member(&mut scan, &raw, &mut member)?;
        }
        drain_rest(archive.into_inner())
            .map_err(|e| self.lerr(idx, b"", format!("after the end of the layer: {e}")))?;
        self.check_pending_hidden(&scan)
    }

    fn member<R: Read>(
        &mut self,
        scan: &mut LayerScan,
        raw: &[u8],
        m: &mut tar::Entry<R>,
    ) -> Result<()> {
        let l = scan.idx;
        let layer_name = self.names[l].clone();
        let err = |msg: String| Error::Tar {
            archive: layer_name.clone(),
            path: show(raw),
            msg,
        };
        let comps = split_member_path(raw).map_err(err)?;
        if let Some((last, parents)) = comps.split_last() {
            if last.starts_with(WH_PREFIX) {
                drain_member(m).map_err(err)?;
                return self.whiteout_marker(scan, parents, last).map_err(err);
            }
        }
        let path = join(&comps);
        let member = read_member(m, true).map_err(err)?;
        match member.kind {
            MemberKind::Skip => drain_member(m).map_err(err),
            MemberKind::Dir => {
                drain_member(m).map_err(err)?;
                if let Some(p) = self.pending.get(&path).filter(|p| p.layer > l) {
                    let link = show(&p.link);
                    return Err(err(format!(
                        "is a directory, but a hardlink ({link}) of a higher layer points to it"
                    )));
                }
                scan.items.insert(path, LayerItem::Dir);
                if self.visible(&comps, l, true).map_err(err)? {
                    self.put_dir(&comps, l, member.entry).map_err(err)?;
                }
                Ok(())
            }
            MemberKind::File => {
                let visible = self.visible(&comps, l, false).map_err(err)?;
                let pend = self.take_pending(&path, l);
                if !visible && pend.is_none() {
                    let (offset, len) = self.spool(scan, m).map_err(err)?;
                    scan.items.insert(
                        path,
                        LayerItem::Spooled {
                            entry: member.entry,
                            offset,
                            len,
                        },
                    );
                    return Ok(());
                }
                let name = format!("{}: {}", self.names[l], show(raw));
                let ticket = ingest_member(m, self.pipeline, &name)?;
                let inode = self.fill(pend, member.entry, Some(ticket));
                self.place_leaf(scan, &comps, path, inode, visible)
                    .map_err(err)
            }
            MemberKind::Other => {
                drain_member(m).map_err(err)?;
                let visible = self.visible(&comps, l, false).map_err(err)?;
                let pend = self.take_pending(&path, l);
                let inode = self.fill(pend, member.entry, None);
                self.place_leaf(scan, &comps, path, inode, visible)
                    .map_err(err)
            }
            MemberKind::Hardlink(target) => {
                drain_member(m).map_err(err)?;
                let tcomps =
                    split_member_path(&target).map_err(|e| err(format!("hardlink target: {e}")))?;
                let inode = self.link_target(scan, &join(&tcomps), raw, 0)?;
                let visible = self.visible(&comps, l, false).map_err(err)?;
                // A higher layer's link to this path now resolves to the same inode.
                if let Some(p) = self.take_pending(&path, l) {
                    self.inodes[p] = Inode::Forward(inode);
                }
                self.place_leaf(scan, &comps, path, inode, visible)
                    .map_err(err)
            }
        }
    }

    /// Removes and returns the pending inode waiting for `path`, if a higher layer created it.
    fn take_pending(&mut self, path: &[u8], layer: usize) -> Option<usize> {
        match self.pending.get(path) {
            Some(p) if p.layer > layer => self.pending.remove(path).map(|p| p.inode),
            _ => None,
        }
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
            Some(LayerItem::Spooled { entry, offset, len }) => {
                let name = format!("{}: {} (spooled)", self.names[l], show(target));
                let ticket = self.unspool(scan, offset, len, &name)?;
                let inode = self.fill(None, entry, Some(ticket));
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

    fn spool<R: Read>(&self, scan: &mut LayerScan, m: &mut tar::Entry<R>) -> Res<(u64, u64)> {
        let size = m.size();
        if scan.spool.is_none() {
            scan.spool = Some(
                tempfile::tempfile().map_err(|e| format!("creating the layer spool file: {e}"))?,
            );
        }
        let Some(f) = scan.spool.as_mut() else {
            return Err("no spool file".into());
        };
        let offset = scan.spool_len;
        let mut counting = Counting { inner: m, n: 0 };
        io::copy(&mut counting, f).map_err(|e| format!("spooling: {e}"))?;
        if counting.n != size {
            return Err(format!("truncated: {} of {size} bytes", counting.n));
        }
        scan.spool_len += size;
        Ok((offset, size))
    }

    fn unspool(
        &self,
        scan: &mut LayerScan,
        offset: u64,
        len: u64,
        name: &str,
    ) -> Result<FileTicket> {
        let f = scan
            .spool
            .as_mut()
            .ok_or_else(|| Error::io(name, io::Error::other("spool file missing")))?;
        f.flush().map_err(|e| Error::io(name, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(name, e))?;
        let ticket = self
            .pipeline
            .add_named_file(name, &mut (&*f).take(len), len)?;
        f.seek(SeekFrom::End(0)).map_err(|e| Error::io(name, e))?;
        Ok(ticket)
    }

    /// `.wh.NAME` (whiteout) and `.wh..wh..opq` (opaque directory) markers.
    fn whiteout_marker(&mut self, scan: &mut LayerScan, parents: &[&[u8]], last: &[u8]) -> Res<()> {
        let l = scan.idx;
        if last == WH_OPAQUE {
            scan.opaque_dirs.insert(join(parents));
            if !self.visible(parents, l, true)? {
                return Ok(());
            }
            let dir = self.dir_mut(parents, l)?;
            dir.opaque = dir.opaque.max(Some(l));
            return Ok(());
        }
        if last.starts_with(WH_META_PREFIX) {
            return Ok(()); // other reserved markers (e.g. AUFS .wh..wh.plnk) carry no meaning here
        }
        let name = &last[WH_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(format!("invalid whiteout name {}", show(last)));
        }
        let mut comps = parents.to_vec();
        comps.push(name);
        scan.whiteouts.insert(join(&comps));
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
            let node = dir
                .children
                .entry(c.to_vec())
                .or_insert_with(|| FNode::Dir(FDir::new(l)));
            if let FNode::Whiteout { layer } = *node {
                // Removed below, recreated by this layer: lower content stays hidden.
                let mut d = FDir::new(l);
                d.opaque = Some(layer);
                d.sealed = Some(layer);
                *node = FNode::Dir(d);
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
        let parent = self.parent_mut(parents, l)?;
        let node = parent
            .children
            .entry(last.to_vec())
            .or_insert_with(|| FNode::Dir(FDir::new(l)));
        match node {
            FNode::Dir(_) => {}
            FNode::Whiteout { layer } => {
                let mut d = FDir::new(l);
                d.opaque = Some(*layer);
                d.sealed = Some(*layer);
                *node = FNode::Dir(d);
            }
            FNode::Leaf { .. } => *node = FNode::Dir(FDir::new(l)),
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

    /// Links of higher layers whose target this layer hides can never resolve.
    fn check_pending_hidden(&self, scan: &LayerScan) -> Result<()> {
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
                            Some(LayerItem::Inode(_) | LayerItem::Spooled { .. })
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

    /// Converts the merged tree, giving inodes referenced more than once a hardlink id.
    fn root_to_pending(&self) -> Result<PDir> {
        let mut refs: HashMap<usize, u32> = HashMap::new();
        self.count_refs(&self.root, &mut refs)?;
        self.convert(&self.root, &refs, &mut Vec::new())
    }

    fn count_refs(&self, d: &FDir, refs: &mut HashMap<usize, u32>) -> Result<()> {
        for node in d.children.values() {
            match node {
                FNode::Dir(sub) => self.count_refs(sub, refs)?,
                FNode::Leaf { inode, layer } => {
                    let (i, _, _) = self
                        .resolve_inode(*inode)
                        .map_err(|e| self.lerr(*layer, b"", e))?;
                    *refs.entry(i).or_default() += 1;
                }
                FNode::Whiteout { .. } => {}
            }
        }
        Ok(())
    }

    fn convert(&self, d: &FDir, refs: &HashMap<usize, u32>, path: &mut Vec<u8>) -> Result<PDir> {
        let mut out = PDir {
            meta: d.meta.clone(),
            children: BTreeMap::new(),
        };
        for (name, node) in &d.children {
            let node = match node {
                FNode::Whiteout { .. } => continue,
                FNode::Dir(sub) => {
                    let len = path.len();
                    path.push(b'/');
                    path.extend_from_slice(name);
                    let c = self.convert(sub, refs, path)?;
                    path.truncate(len);
                    PNode::Dir(c)
                }
                FNode::Leaf { inode, layer } => {
                    let (i, entry, ticket) = self
                        .resolve_inode(*inode)
                        .map_err(|e| self.lerr(*layer, path, e))?;
                    let mut entry = entry.clone();
                    entry.hardlink =
                        (refs.get(&i).copied().unwrap_or(0) > 1).then_some(i as u64 + 1);
                    PNode::Leaf(PLeaf { entry, ticket })
                }
            };
            out.children.insert(name.clone(), node);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
