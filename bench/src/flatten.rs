//! Simple OCI flattening for the floor: a layer is a list of operations read from its tar, and
//! applying the layers in order gives the map path → node of the final image.
//!
//! The rules are the plain OCI image-spec ones (whiteouts `.wh.NAME`, opaque `.wh..wh..opq`,
//! later layers win, a non-directory replaces a directory with its subtree, a path under a lower
//! non-directory turns that into a directory). Metadata is ignored: the floor only needs to know
//! which file contents survive.

use std::collections::BTreeMap;

/// Index of a distinct content in a [`crate::floor::ContentStore`].
pub type ContentId = u32;

/// One tar entry of a layer, reduced to what flattening needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `.wh.NAME`: remove NAME (and its subtree) of the lower layers.
    Whiteout(Vec<u8>),
    /// `DIR/.wh..wh..opq`: remove the lower-layer children of DIR.
    Opaque(Vec<u8>),
    Dir(Vec<u8>),
    File(Vec<u8>, ContentId),
    /// A hard link: (path, target); it shares the target's content.
    Link(Vec<u8>, Vec<u8>),
    /// Symlink, device, FIFO: no content to store.
    Other(Vec<u8>),
}

/// What a path is in the flattened image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(ContentId),
    Other,
}

/// The operations of one layer, in tar order.
#[derive(Debug, Default, Clone)]
pub struct LayerOps {
    pub ops: Vec<Op>,
}

/// Normalises a tar path: no leading `./` or `/`, no trailing `/`; the root is empty.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        return Vec::new();
    }
    p.to_vec()
}

/// Splits `path` into (parent, basename).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Classifies a regular-looking path as a whiteout, if it is one. `None` for ordinary paths.
/// Other `.wh..wh.` names (aufs metadata such as `.wh..wh.plnk`) become `Some(None)`: skip them.
pub fn whiteout(path: &[u8]) -> Option<Option<Op>> {
    let (parent, name) = split(path);
    if name == b".wh..wh..opq" {
        return Some(Some(Op::Opaque(parent.to_vec())));
    }
    if name.starts_with(b".wh..wh.") {
        return Some(None);
    }
    name.strip_prefix(b".wh.")
        .map(|hidden| Some(Op::Whiteout(join(parent, hidden))))
}

/// The flattened image: path → node, in byte order so that a subtree is a contiguous range.
#[derive(Debug, Default)]
pub struct Flat {
    map: BTreeMap<Vec<u8>, Node>,
}

impl Flat {
    pub fn new() -> Flat {
        Flat::default()
    }

    /// Applies one layer on top of the current state.
    pub fn apply(&mut self, layer: &LayerOps) {
        // Whiteouts act on the lower layers only, so they all go before this layer's additions
        // (a tar may list the opaque marker after the directory's new children).
        for op in &layer.ops {
            match op {
                Op::Whiteout(p) => {
                    self.remove_subtree(p);
                    self.map.remove(p);
                }
                Op::Opaque(p) => self.remove_subtree(p),
                _ => {}
            }
        }
        for op in &layer.ops {
            match op {
                Op::Dir(p) => self.insert(p, Node::Dir),
                Op::File(p, id) => self.insert(p, Node::File(*id)),
                Op::Other(p) => self.insert(p, Node::Other),
                Op::Link(p, target) => {
                    let node = match self.map.get(target) {
                        Some(Node::File(id)) => Node::File(*id),
                        _ => Node::Other,
                    };
                    self.insert(p, node);
                }
                Op::Whiteout(_) | Op::Opaque(_) => {}
            }
        }
    }

    fn insert(&mut self, path: &[u8], node: Node) {
        if path.is_empty() {
            return; // the root itself: always a directory
        }
        self.make_parents(path);
        let was_dir = matches!(self.map.get(path), Some(Node::Dir));
        if was_dir && node != Node::Dir {
            self.remove_subtree(path);
        }
        self.map.insert(path.to_vec(), node);
    }

    /// Every ancestor must be a directory; a lower non-directory in the way becomes one.
    fn make_parents(&mut self, path: &[u8]) {
        for (i, &b) in path.iter().enumerate() {
            if b != b'/' {
                continue;
            }
            let ancestor = &path[..i];
            if ancestor.is_empty() {
                continue;
            }
            match self.map.get(ancestor) {
                Some(Node::Dir) => {}
                _ => {
                    self.map.insert(ancestor.to_vec(), Node::Dir);
                }
            }
        }
    }

    /// Removes everything strictly below `dir` (everything when `dir` is the root).
    fn remove_subtree(&mut self, dir: &[u8]) {
        if dir.is_empty() {
            self.map.clear();
            return;
        }
        let prefix = join(dir, b"");
        let doomed: Vec<Vec<u8>> = self
            .map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.map.remove(&k);
        }
    }

    /// Path → node of the flattened image.
    pub fn nodes(&self) -> &BTreeMap<Vec<u8>, Node> {
        &self.map
    }

    /// Content ids of the regular files (hard links counted once per path).
    pub fn file_contents(&self) -> impl Iterator<Item = ContentId> + '_ {
        self.map.values().filter_map(|n| match n {
            Node::File(id) => Some(*id),
            _ => None,
        })
    }

    pub fn regular_files(&self) -> usize {
        self.file_contents().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn layer(ops: Vec<Op>) -> LayerOps {
        LayerOps { ops }
    }

    /// Raw tar names through the same classification the floor reader uses.
    fn entry(name: &str, kind: Op) -> Op {
        let path = normalize(name.as_bytes());
        match whiteout(&path) {
            Some(Some(w)) => w,
            Some(None) => Op::Other(path),
            None => kind,
        }
    }

    #[test]
    fn normalize_strips_prefixes_and_trailing_slashes() {
        assert_eq!(normalize(b"./etc/"), p("etc"));
        assert_eq!(normalize(b"/usr/bin"), p("usr/bin"));
        assert_eq!(normalize(b"./"), p(""));
        assert_eq!(normalize(b"."), p(""));
    }

    #[test]
    fn whiteouts_opaque_type_changes_and_links() {
        let mut flat = Flat::new();
        flat.apply(&layer(vec![
            entry("./etc/", Op::Dir(p("etc"))),
            entry("./etc/host.conf", Op::File(p("etc/host.conf"), 1)),
            entry("./etc/skel/.bashrc", Op::File(p("etc/skel/.bashrc"), 2)),
            entry("./etc/issue.net", Op::File(p("etc/issue.net"), 3)),
            entry(
                "./usr/share/doc/bash/README",
                Op::File(p("usr/share/doc/bash/README"), 4),
            ),
            entry(
                "./usr/share/doc/dash/copyright",
                Op::File(p("usr/share/doc/dash/copyright"), 5),
            ),
            entry("./etc/os-release", Op::Other(p("etc/os-release"))),
        ]));
        assert_eq!(flat.regular_files(), 5);
        flat.apply(&layer(vec![
            // new child listed before the opaque marker must survive it
            Op::File(p("etc/skel/.new"), 6),
            entry("etc/skel/.wh..wh..opq", Op::Other(p("unused"))),
            entry("etc/.wh.host.conf", Op::Other(p("unused"))),
            entry("etc/.wh.no-such-file", Op::Other(p("unused"))),
            entry("usr/share/doc/.wh.bash", Op::Other(p("unused"))),
            // file → directory, directory → symlink, symlink → file
            Op::File(p("etc/issue.net/inner"), 7),
            Op::Other(p("usr/share/doc/dash")),
            Op::File(p("etc/os-release"), 8),
            // hard link to a file of this layer and one to a missing target
            Op::Link(p("srv/copy"), p("etc/os-release")),
            Op::Link(p("srv/broken"), p("nowhere")),
            // the same path twice: the later wins
            Op::File(p("srv/dup"), 9),
            Op::File(p("srv/dup"), 10),
        ]));
        let n = flat.nodes();
        assert_eq!(n.get(&p("etc/host.conf")), None);
        assert_eq!(n.get(&p("etc/no-such-file")), None);
        assert_eq!(n.get(&p("etc/skel/.bashrc")), None);
        assert_eq!(n.get(&p("etc/skel/.new")), Some(&Node::File(6)));
        assert_eq!(n.get(&p("usr/share/doc/bash")), None);
        assert_eq!(n.get(&p("usr/share/doc/bash/README")), None);
        assert_eq!(n.get(&p("etc/issue.net")), Some(&Node::Dir));
        assert_eq!(n.get(&p("etc/issue.net/inner")), Some(&Node::File(7)));
        assert_eq!(n.get(&p("usr/share/doc/dash")), Some(&Node::Other));
        assert_eq!(n.get(&p("usr/share/doc/dash/copyright")), None);
        assert_eq!(n.get(&p("srv/copy")), Some(&Node::File(8)));
        assert_eq!(n.get(&p("srv/broken")), Some(&Node::Other));
        assert_eq!(n.get(&p("srv/dup")), Some(&Node::File(10)));
        let mut ids: Vec<ContentId> = flat.file_contents().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![6, 7, 8, 8, 10]);
    }

    #[test]
    fn opaque_root_and_aufs_metadata() {
        assert_eq!(whiteout(b".wh..wh.plnk"), Some(None));
        let mut flat = Flat::new();
        flat.apply(&layer(vec![Op::File(p("a"), 1), Op::File(p("d/b"), 2)]));
        flat.apply(&layer(vec![Op::Opaque(Vec::new()), Op::File(p("c"), 3)]));
        assert_eq!(flat.file_contents().collect::<Vec<_>>(), vec![3]);
    }
}
