//! The DUCC (`unpacked.cern.ch`) layout of converted images:
//!
//! * `/.flat/<first 2 hex>/<config digest hex>/`: the flattened root file system, its own
//!   nested catalog (`.cvmfscatalog`), plus `.singularity.d/` (environment, runscript,
//!   labels) so `apptainer exec` works on it. Images with the same config share it.
//! * `/<registry>/<repository>:<tag>`: a relative symlink to the flat directory; with several
//!   platforms the plain tag points at the preferred one and `<tag>@<os>-<arch>` links exist
//!   for each.
//! * `/.metadata/<registry>/<repository>:<tag>/`: `manifest.json` and `config.json`.
//!
//! ```
//! use ingest::convert::{flat_dir_path, relative_target};
//! use ingest::image::Digest;
//! let config = Digest::of(b"{}");
//! let flat = flat_dir_path(&config);
//! assert_eq!(&flat[..10], b"/.flat/44/");
//! let target = relative_target(b"/127.0.0.1:5000/testbed/app:oci-gzip", &flat);
//! assert!(target.starts_with(b"../../.flat/44/44136fa3"));
//! ```

use crate::flatten::LayerInput;
use crate::image::{open_uncompressed_layer, ImageSource};
use crate::image::{
    Digest, Error, ImageManifest, ImageName, PlatformSelection, ResolvedImage, Result,
};
use crate::pipeline::ObjectPipeline;
use catalog_writer::entry::{Entry, EntryKind, FileData, Xattrs};
use catalog_writer::hash::ContentHash;
use catalog_writer::tree::{Dir, Node};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// Directory of the flattened images.
pub const FLAT_ROOT: &str = "/.flat";
/// Directory of the manifests and configs.
pub const METADATA_ROOT: &str = "/.metadata";
/// Marker file that makes a directory a nested catalog.
pub const CATALOG_MARKER: &[u8] = b".cvmfscatalog";

/// Stores the small files the layout adds (markers, `.singularity.d`, metadata) as real
/// objects. Implemented by [`ObjectPipeline`].
pub trait SmallFileStore {
    /// Stores `bytes` and returns where they live; `name` appears in errors.
    fn store_small(&self, name: &str, bytes: &[u8]) -> Result<FileData>;
}

impl SmallFileStore for ObjectPipeline {
    fn store_small(&self, name: &str, bytes: &[u8]) -> Result<FileData> {
        let pipe_err = |e: crate::error::Error| Error::Io {
            context: format!("storing {name}"),
            source: std::io::Error::other(e.to_string()),
        };
        let ticket = self
            .add_named_file(name, &mut &bytes[..], bytes.len() as u64)
            .map_err(pipe_err)?;
        let (_, data) = self.resolve(ticket).map_err(pipe_err)?;
        Ok(data)
    }
}

/// One subtree to put into the repository (`Namespace::replace(path, node, …)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graft {
    pub path: Vec<u8>,
    pub node: Node,
}

/// A symlink and the repository path it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub path: Vec<u8>,
    /// Absolute repository path of the target (the link itself stores it relative).
    pub target: Vec<u8>,
}

/// Where one platform-specific image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub flat_dir: Vec<u8>,
    pub links: Vec<Link>,
    /// `/.metadata/...` directories, one per link.
    pub metadata_dirs: Vec<Vec<u8>>,
    /// Digest of the manifest the metadata directories hold.
    pub manifest_digest: Digest,
}

/// `/.flat/ab/abcdef…` for a config digest.
pub fn flat_dir_path(config: &Digest) -> Vec<u8> {
    format!("{FLAT_ROOT}/{}/{}", &config.hex()[..2], config.hex()).into_bytes()
}

fn name_text(name: &ImageName, platform_suffix: Option<&str>) -> String {
    let mut text = name.path_text();
    if let Some(s) = platform_suffix {
        text.push('@');
        text.push_str(s);
    }
    text
}

/// `/<registry>/<repository>:<tag>[@<os>-<arch>]`.
pub fn link_path(name: &ImageName, platform_suffix: Option<&str>) -> Vec<u8> {
    format!("/{}", name_text(name, platform_suffix)).into_bytes()
}

/// `/.metadata/<registry>/<repository>:<tag>[@<os>-<arch>]`.
pub fn metadata_path(name: &ImageName, platform_suffix: Option<&str>) -> Vec<u8> {
    format!("{METADATA_ROOT}/{}", name_text(name, platform_suffix)).into_bytes()
}

/// The target to store in a symlink at `link` so that it reaches `target` (both absolute
/// repository paths): `../` up to the common ancestor, then down.
pub fn relative_target(link: &[u8], target: &[u8]) -> Vec<u8> {
    let parts = |p: &[u8]| -> Vec<Vec<u8>> {
        p.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let mut from = parts(link);
    from.pop(); // the link's own name
    let to = parts(target);
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out: Vec<Vec<u8>> = vec![b"..".to_vec(); from.len() - common];
    out.extend(to[common..].iter().cloned());
    if out.is_empty() {
        return b".".to_vec();
    }
    out.join(&b'/')
}

/// The repository path a relative symlink at `link` reaches (the inverse of
/// [`relative_target`]); `None` for an absolute target (it names a client path) or one that
/// climbs above the root.
pub fn absolute_target(link: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    if target.starts_with(b"/") {
        return None;
    }
    let mut parts: Vec<&[u8]> = link
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    parts.pop(); // the link's own name
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    Some(out)
}

/// The flattened image (`/.flat/XX/DIGEST`) a symlink at `link` keeps alive: the one its
/// target reaches, itself or anything inside it, whether the target is relative (as this
/// tool writes them) or absolute through a client's mount point (`/cvmfs/FQRN/.flat/…`, as
/// older DUCC versions wrote them). `None` if it reaches none.
pub fn flat_image_of(link: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    // Resolved leniently: `..` above the root is dropped (a client's `/cvmfs/FQRN/../..`
    // climbs out of the repository and may come back into it by name), so every way a link
    // can reach an image counts.
    let mut comps: Vec<&[u8]> = Vec::new();
    if !target.starts_with(b"/") {
        comps.extend(link.split(|&b| b == b'/').filter(|c| !c.is_empty()));
        comps.pop(); // the link's own name
    }
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    let flat = FLAT_ROOT.trim_start_matches('/').as_bytes();
    comps.windows(3).find_map(|w| match w {
        [root, prefix, image]
            if *root == flat && prefix.len() == 2 && image.starts_with(prefix) =>
        {
            Some([FLAT_ROOT.as_bytes(), b"/", prefix, b"/", image].concat())
        }
        _ => None,
    })
}

/// Longest file name a client can look up (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;

/// Why `text` (`<registry>/<repository>:<tag>[@<suffix>]`) cannot name a link below `/` and
/// a directory below [`METADATA_ROOT`]: every component must be a file name a client can
/// look up, and none may start with `.`, so that no name lands in [`FLAT_ROOT`], in
/// [`METADATA_ROOT`] (on another image's metadata), on `.`/`..`, or on a `.cvmfs*` name
/// (`.cvmfscatalog` as a directory leaves a catalog `check` refuses).
fn check_name_text(text: &str) -> std::result::Result<(), String> {
    for c in text.split('/') {
        if c.is_empty() {
            return Err("it has an empty path component".to_owned());
        }
        if c.starts_with('.') {
            return Err(format!("its component {c:?} starts with '.'"));
        }
        if c.len() > NAME_MAX {
            return Err(format!(
                "a component of {} bytes (at most {NAME_MAX})",
                c.len()
            ));
        }
        if c.chars().any(char::is_control) {
            return Err(format!("its component {c:?} has a control character"));
        }
    }
    Ok(())
}

/// The link names (`None`: the plain tag, else a platform suffix) of each of `manifests`:
/// a single image gets the plain tag; several get one `@<os>-<arch>` name each, and the
/// plain tag goes to the preferred platform (else the first). Every name is checked here,
/// while the batch is planned, so that an image with a name the layout cannot hold fails
/// before anything of it is flattened or stored, and so are duplicate names (which would
/// leave one image unlinked).
fn link_names(
    manifests: &[ImageManifest],
    selection: &PlatformSelection,
) -> Result<Vec<Vec<Option<String>>>> {
    let default = default_image(manifests, selection);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(manifests.len());
    for (i, m) in manifests.iter().enumerate() {
        let mut names: Vec<Option<String>> = Vec::new();
        if default == Some(i) {
            names.push(None);
        }
        if manifests.len() > 1 || default.is_none() {
            // An image without a platform has no suffix: the plain tag is its only name.
            let suffix = platform_suffix(m)?;
            if !names.contains(&suffix) {
                names.push(suffix);
            }
        }
        for suffix in &names {
            let text = name_text(&m.name, suffix.as_deref());
            check_name_text(&text).map_err(|why| {
                Error::image(
                    &m.reference,
                    format!("{text:?} cannot name an image in the repository: {why}"),
                )
            })?;
            if let Some(other) = seen.insert(text.clone(), i) {
                return Err(duplicate_name(manifests, other, i, &text));
            }
        }
        out.push(names);
    }
    Ok(out)
}

/// Which of `manifests` gets the plain tag: the one whose platform fits the preferred one
/// best ([`Platform::rank`](crate::image::Platform::rank), the order the platform of a
/// single-platform convert is picked in), the one with the preferred platform's own link
/// suffix among equals (so that `TAG` and `TAG@<host suffix>` are the same image, also when
/// `amd64` and `amd64/v1` are both listed), else the first one that did not come from an index
/// entry with a platform. `None`: every image is an index entry for another platform, and
/// `TAG` would hand the host's jobs another architecture's binaries (a build that drops the
/// host's platform would move `TAG` to arm64 without a word): they get only their
/// `TAG@<os>-<arch>` names ([`missing_plain_tag`] says why).
fn default_image(manifests: &[ImageManifest], selection: &PlatformSelection) -> Option<usize> {
    let preferred = selection.preferred();
    let own_suffix = preferred.link_suffix();
    manifests
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let p = m.platform.as_ref()?;
            Some((preferred.rank(p)?, p.link_suffix() != own_suffix, i))
        })
        .min()
        .map(|(_, _, i)| i)
        .or_else(|| {
            manifests
                .iter()
                .position(|m| !m.from_index || m.platform.is_none())
        })
}

/// The warning for a reference whose `manifests` (index entries for other platforms only)
/// get no plain `TAG` link: it names the platform missing and the links made instead.
pub fn missing_plain_tag(
    manifests: &[ImageManifest],
    selection: &PlatformSelection,
) -> Option<String> {
    let first = manifests.first()?;
    if default_image(manifests, selection).is_some() {
        return None;
    }
    let made: Vec<String> = manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .map(|p| show_path(&link_path(&first.name, Some(&p.link_suffix()))))
        .collect();
    Some(format!(
        "{}: the index has no entry for platform {}: no link {} is made (one made earlier \
         stays), only {}",
        first.reference,
        selection.preferred(),
        show_path(&link_path(&first.name, None)),
        made.join(", ")
    ))
}

fn show_path(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The error for two images of one reference that would get the same link `text`.
fn duplicate_name(manifests: &[ImageManifest], first: usize, second: usize, text: &str) -> Error {
    let describe = |m: &ImageManifest| match &m.platform {
        Some(p) => format!("{} ({p})", m.manifest_digest),
        None => format!("{} (no platform in the index)", m.manifest_digest),
    };
    let m = &manifests[second];
    Error::image(
        &m.reference,
        format!(
            "index entries {} and {} would both be linked as {text:?}; convert them one at a \
             time by digest",
            describe(&manifests[first]),
            describe(m)
        ),
    )
}

/// The `@<os>-<arch>` suffix of an index entry's links, once its platform names are plain.
fn platform_suffix(m: &ImageManifest) -> Result<Option<String>> {
    let Some(p) = &m.platform else {
        return Ok(None);
    };
    p.check_names().map_err(|why| {
        Error::image(
            &m.reference,
            format!("index entry {}: {why}", m.manifest_digest),
        )
    })?;
    Ok(Some(p.link_suffix()))
}

/// Placements of the images one reference resolved to (see [`link_names`]); an error names
/// the image and the name the layout cannot hold.
pub fn placements(
    manifests: &[ImageManifest],
    selection: &PlatformSelection,
) -> Result<Vec<Placement>> {
    let names = link_names(manifests, selection)?;
    Ok(manifests
        .iter()
        .zip(names)
        .map(|(m, names)| {
            let flat_dir = flat_dir_path(&m.config_digest);
            Placement {
                links: names
                    .iter()
                    .map(|s| Link {
                        path: link_path(&m.name, s.as_deref()),
                        target: flat_dir.clone(),
                    })
                    .collect(),
                metadata_dirs: names
                    .iter()
                    .map(|s| metadata_path(&m.name, s.as_deref()))
                    .collect(),
                flat_dir,
                manifest_digest: m.manifest_digest.clone(),
            }
        })
        .collect())
}

/// How much of an image is already in the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Flat directory, links and metadata are all there and current: nothing to publish.
    Complete,
    /// The flat directory exists (same config under another name, or a moved tag): only
    /// links and metadata need writing, no layer needs reading.
    FlatPresent,
    /// The image has to be converted.
    Missing,
}

/// Object hash the layout's `manifest.json` gets for `bytes`: stock zlib is deterministic,
/// so a stored metadata file can be compared without reading it.
fn expected_object(bytes: &[u8]) -> ContentHash {
    ContentHash::of(&catalog_writer::zlib::compress(bytes))
}

/// Checks a placement against the repository through `lookup` (path → entry, e.g.
/// `Namespace::entry`).
pub fn conversion_status<E>(
    placement: &Placement,
    manifest_bytes: &[u8],
    mut lookup: impl FnMut(&[u8]) -> std::result::Result<Option<Entry>, E>,
) -> std::result::Result<Status, E> {
    let flat = lookup(&placement.flat_dir)?;
    if !flat.is_some_and(|e| e.is_dir()) {
        return Ok(Status::Missing);
    }
    for link in &placement.links {
        let want = relative_target(&link.path, &link.target);
        match lookup(&link.path)? {
            Some(Entry {
                kind: EntryKind::Symlink { target },
                ..
            }) if target == want => {}
            _ => return Ok(Status::FlatPresent),
        }
    }
    let want = expected_object(manifest_bytes);
    for dir in &placement.metadata_dirs {
        let path = [dir.as_slice(), b"/manifest.json"].concat();
        match lookup(&path)? {
            Some(Entry {
                kind:
                    EntryKind::File {
                        data: FileData::Whole(h),
                        ..
                    },
                ..
            }) if h == want => {}
            _ => return Ok(Status::FlatPresent),
        }
    }
    Ok(Status::Complete)
}

/// Metadata of directories the layout creates (and of missing parents): 0755 root:root.
pub fn parent_meta(mtime: i64) -> Entry {
    Entry::directory(0o755, 0, 0, mtime)
}

fn file(
    store: &dyn SmallFileStore,
    name: &str,
    bytes: &[u8],
    perm: u32,
    mtime: i64,
) -> Result<Node> {
    let data = store.store_small(name, bytes)?;
    Ok(Node::Leaf(Entry {
        kind: EntryKind::File {
            size: bytes.len() as u64,
            data,
        },
        perm,
        uid: 0,
        gid: 0,
        mtime,
        mtime_ns: None,
        xattrs: Xattrs::new(),
        hardlink: None,
    }))
}

fn symlink(target: Vec<u8>, mtime: i64) -> Node {
    Node::Leaf(Entry {
        kind: EntryKind::Symlink { target },
        perm: 0o777,
        uid: 0,
        gid: 0,
        mtime,
        mtime_ns: None,
        xattrs: Xattrs::new(),
        hardlink: None,
    })
}

/// Single-quotes a word for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `.singularity.d/env/10-docker2singularity.sh`: the config's `Env`. As in Apptainer, PATH
/// is set outright and other variables only when the host did not set them.
pub fn env_script(image: &ResolvedImage) -> String {
    let mut out = format!(
        "#!/bin/sh\n# Environment of {} (image config Env).\n",
        image.reference
    );
    for item in &image.config.env {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        if !valid_env_name(name) {
            out.push_str(&format!(
                "# skipped: {:?} is not a shell variable name\n",
                name
            ));
            continue;
        }
        if name == "PATH" {
            out.push_str(&format!("export PATH={}\n", sh_quote(value)));
        } else {
            out.push_str(&format!(
                "[ -n \"${{{name}:-}}\" ] || {name}={}\nexport {name}\n",
                sh_quote(value)
            ));
        }
    }
    out
}

/// `.singularity.d/runscript`: Entrypoint then Cmd, with run arguments replacing Cmd as
/// `docker run` does; a shell when the image names no command.
pub fn runscript(image: &ResolvedImage) -> String {
    let words = |v: &[String]| v.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ");
    let mut out = format!("#!/bin/sh\n# Entrypoint and Cmd of {}.\n", image.reference);
    if !image.config.cmd.is_empty() {
        out.push_str(&format!(
            "if [ $# -eq 0 ]; then\n    set -- {}\nfi\n",
            words(&image.config.cmd)
        ));
    }
    if image.config.entrypoint.is_empty() {
        out.push_str("if [ $# -eq 0 ]; then\n    set -- /bin/sh\nfi\nexec \"$@\"\n");
    } else {
        out.push_str(&format!(
            "exec {} \"$@\"\n",
            words(&image.config.entrypoint)
        ));
    }
    out
}

fn dir_node(children: BTreeMap<Vec<u8>, Node>, mtime: i64) -> Dir {
    Dir {
        meta: parent_meta(mtime),
        children,
    }
}

/// The flat directory of an image: its flattened root file system plus the nested-catalog
/// marker and `.singularity.d` (existing entries of the image there are kept unless they
/// clash with the generated files).
pub fn flat_graft(
    image: &ResolvedImage,
    mut rootfs: Dir,
    mtime: i64,
    store: &dyn SmallFileStore,
) -> Result<Graft> {
    let at = |name: &str| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&flat_dir_path(&image.config_digest)),
            name
        )
    };
    rootfs.children.insert(
        CATALOG_MARKER.to_vec(),
        file(store, &at("/.cvmfscatalog"), b"", 0o644, mtime)?,
    );
    let labels = serde_json::to_vec_pretty(&image.config.labels).map_err(|e| Error::Image {
        image: image.reference.clone(),
        reason: format!("labels: {e}"),
    })?;
    let mut sing = match rootfs.children.remove(b".singularity.d".as_slice()) {
        Some(Node::Dir(d)) => d,
        _ => dir_node(BTreeMap::new(), mtime),
    };
    let mut env = match sing.children.remove(b"env".as_slice()) {
        Some(Node::Dir(d)) => d,
        _ => dir_node(BTreeMap::new(), mtime),
    };
    env.children.insert(
        b"10-docker2singularity.sh".to_vec(),
        file(
            store,
            &at("/.singularity.d/env/10-docker2singularity.sh"),
            env_script(image).as_bytes(),
            0o755,
            mtime,
        )?,
    );
    sing.children.insert(b"env".to_vec(), Node::Dir(env));
    sing.children.insert(
        b"runscript".to_vec(),
        file(
            store,
            &at("/.singularity.d/runscript"),
            runscript(image).as_bytes(),
            0o755,
            mtime,
        )?,
    );
    sing.children.insert(
        b"labels.json".to_vec(),
        file(
            store,
            &at("/.singularity.d/labels.json"),
            &labels,
            0o644,
            mtime,
        )?,
    );
    // Bind point Apptainer uses for `--nv` libraries.
    sing.children
        .entry(b"libs".to_vec())
        .or_insert_with(|| Node::Dir(dir_node(BTreeMap::new(), mtime)));
    rootfs
        .children
        .insert(b".singularity.d".to_vec(), Node::Dir(sing));
    Ok(Graft {
        path: flat_dir_path(&image.config_digest),
        node: Node::Dir(rootfs),
    })
}

/// The tag links and metadata directories of a placement.
pub fn name_grafts(
    image: &ResolvedImage,
    placement: &Placement,
    mtime: i64,
    store: &dyn SmallFileStore,
) -> Result<Vec<Graft>> {
    let mut out = Vec::new();
    for link in &placement.links {
        out.push(Graft {
            path: link.path.clone(),
            node: symlink(relative_target(&link.path, &link.target), mtime),
        });
    }
    for dir in &placement.metadata_dirs {
        let shown = String::from_utf8_lossy(dir).into_owned();
        let mut children = BTreeMap::new();
        children.insert(
            b"manifest.json".to_vec(),
            file(
                store,
                &format!("{shown}/manifest.json"),
                &image.manifest_bytes,
                0o644,
                mtime,
            )?,
        );
        children.insert(
            b"config.json".to_vec(),
            file(
                store,
                &format!("{shown}/config.json"),
                &image.config_bytes,
                0o644,
                mtime,
            )?,
        );
        out.push(Graft {
            path: dir.clone(),
            node: Node::Dir(dir_node(children, mtime)),
        });
    }
    Ok(out)
}

/// The layers of `image` as inputs for [`crate::flatten::flatten_layers`]: each opens (when
/// the flattener asks for it, possibly twice) the verified, decompressed stream of one layer,
/// and carries the layer's diff_id as its memo key.
pub fn layer_inputs(source: Arc<dyn ImageSource>, image: &ResolvedImage) -> Vec<LayerInput> {
    let image = Arc::new(image.clone());
    (0..image.layers.len())
        .map(|index| {
            let (source, image) = (source.clone(), image.clone());
            let name = format!(
                "image {} layer {}",
                image.reference, image.layers[index].digest
            );
            let diff_id = image.config.diff_ids.get(index).map(|d| d.to_string());
            let open = move || -> crate::Result<Box<dyn Read + Send>> {
                Ok(open_uncompressed_layer(source.as_ref(), &image, index)?)
            };
            LayerInput {
                name,
                diff_id,
                open: Box::new(open),
            }
        })
        .collect()
}

/// Everything to graft for one image, given what [`conversion_status`] found: nothing when
/// complete, names only when the flat directory exists, else the flattened image too (its
/// layers stream from `source` through `pipeline`).
pub fn convert_image(
    source: Arc<dyn ImageSource>,
    image: &ResolvedImage,
    placement: &Placement,
    status: Status,
    pipeline: &ObjectPipeline,
    mtime: i64,
) -> crate::Result<Vec<Graft>> {
    let mut grafts = Vec::new();
    match status {
        Status::Complete => return Ok(grafts),
        Status::FlatPresent => {}
        Status::Missing => {
            let rootfs = crate::flatten::flatten_layers(layer_inputs(source, image), pipeline)?;
            grafts.push(flat_graft(image, rootfs, mtime, pipeline)?);
        }
    }
    grafts.extend(name_grafts(image, placement, mtime, pipeline)?);
    Ok(grafts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageConfig, Platform, RegistryRef};
    use catalog_writer::hash::EMPTY_OBJECT;
    use std::sync::Mutex;

    /// Objects kept in memory, named as the store would name them.
    #[derive(Default)]
    struct MemFiles(Mutex<BTreeMap<ContentHash, Vec<u8>>>);

    impl SmallFileStore for MemFiles {
        fn store_small(&self, _name: &str, bytes: &[u8]) -> Result<FileData> {
            let hash = expected_object(bytes);
            self.0.lock().unwrap().insert(hash, bytes.to_vec());
            Ok(FileData::Whole(hash))
        }
    }

    impl MemFiles {
        fn text(&self, node: &Node) -> String {
            let EntryKind::File {
                data: FileData::Whole(h),
                ..
            } = &node.entry().kind
            else {
                panic!("not a file: {node:?}")
            };
            String::from_utf8(self.0.lock().unwrap()[h].clone()).unwrap()
        }
    }

    fn manifest(tag: &str, config: &[u8], platform: Option<&str>) -> ImageManifest {
        let repo = RegistryRef::parse(&format!("127.0.0.1:5000/testbed/app:{tag}")).unwrap();
        ImageManifest {
            reference: format!("docker://{repo}"),
            name: repo.name(),
            manifest_digest: Digest::of(tag.as_bytes()),
            manifest_bytes: format!("manifest of {tag}").into_bytes(),
            manifest_media_type: crate::image::manifest::OCI_MANIFEST.to_owned(),
            config_digest: Digest::of(config),
            config_size: config.len() as u64,
            layers: Vec::new(),
            platform: platform.map(|p| Platform::parse(p).unwrap()),
            from_index: platform.is_some(),
            same_links: Vec::new(),
            config_must_fit: None,
        }
    }

    fn resolved(m: ImageManifest, config: ImageConfig) -> ResolvedImage {
        ResolvedImage {
            reference: m.reference,
            name: m.name,
            manifest_digest: m.manifest_digest,
            manifest_bytes: m.manifest_bytes,
            manifest_media_type: m.manifest_media_type,
            config_digest: m.config_digest,
            config_bytes: b"{}".to_vec(),
            config,
            layers: m.layers,
            platform: m.platform.unwrap_or_else(Platform::host),
            from_index: m.from_index,
        }
    }

    #[test]
    fn paths_and_relative_links() {
        let config = Digest::of(b"config");
        let flat = flat_dir_path(&config);
        assert_eq!(
            flat,
            format!("/.flat/{}/{}", &config.hex()[..2], config.hex()).into_bytes()
        );
        let m = manifest("oci-gzip", b"config", None);
        assert_eq!(
            link_path(&m.name, None),
            b"/127.0.0.1:5000/testbed/app:oci-gzip"
        );
        assert_eq!(
            link_path(&m.name, Some("linux-arm64")),
            b"/127.0.0.1:5000/testbed/app:oci-gzip@linux-arm64"
        );
        assert_eq!(
            metadata_path(&m.name, None),
            b"/.metadata/127.0.0.1:5000/testbed/app:oci-gzip"
        );
        let target = relative_target(b"/127.0.0.1:5000/testbed/app:oci-gzip", &flat);
        assert_eq!(target, [b"../../".as_slice(), &flat[1..]].concat());
        let hub = RegistryRef::parse("ubuntu").unwrap().name();
        let link = link_path(&hub, None);
        assert_eq!(link, b"/registry.hub.docker.com/library/ubuntu:latest");
        assert!(relative_target(&link, &flat).starts_with(b"../../.flat/"));
        assert_eq!(relative_target(b"/a/b/l", b"/a/c"), b"../c");
        assert_eq!(relative_target(b"/l", b"/.flat/x"), b".flat/x");
        for (l, t) in [
            (&link[..], &flat[..]),
            (b"/a/b/l", b"/a/c"),
            (b"/l", b"/.flat/x"),
        ] {
            assert_eq!(
                absolute_target(l, &relative_target(l, t)).as_deref(),
                Some(t)
            );
        }
        assert_eq!(absolute_target(b"/a/l", b"../../x"), None);
        // What keeps a flattened image: a link to it, into it, or to it through a client's
        // mount point; not a link elsewhere.
        let image = b"/.flat/ab/abcdef".to_vec();
        for (link, target) in [
            (b"/r/x:1".as_slice(), b"../.flat/ab/abcdef".as_slice()),
            (b"/apps/x", b"../.flat/ab/abcdef/etc/conf"),
            (b"/r/x:2", b"/cvmfs/sw.example.org/.flat/ab/abcdef"),
            (b"/r/x:3", b"/cvmfs/sw.example.org/.flat/ab/abcdef/usr/bin"),
        ] {
            assert_eq!(flat_image_of(link, target), Some(image.clone()), "{link:?}");
        }
        // `..` resolved, also above the root (back in through the repository's name).
        assert_eq!(
            flat_image_of(b"/r/x", b"/cvmfs/sw.example.org/.flat/ab/abzzz/../abcdef"),
            Some(image.clone())
        );
        assert_eq!(
            flat_image_of(b"/r/x", b"../../../sw.example.org/.flat/ab/abcdef"),
            Some(image.clone())
        );
        assert_eq!(flat_image_of(b"/r/x", b"../.flat/ab"), None);
        assert_eq!(flat_image_of(b"/r/x", b"../.flat/ab/cdef"), None);
        assert_eq!(flat_image_of(b"/r/x", b"../elsewhere/.flat"), None);
        assert_eq!(absolute_target(b"/a/l", b"/cvmfs/x"), None);
    }

    #[test]
    fn single_and_multi_platform_placements() {
        let one = placements(&[manifest("t", b"c", None)], &PlatformSelection::Host).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].links.len(), 1);
        assert_eq!(one[0].links[0].path, b"/127.0.0.1:5000/testbed/app:t");
        assert_eq!(
            one[0].metadata_dirs,
            [b"/.metadata/127.0.0.1:5000/testbed/app:t".to_vec()]
        );
        let multi = [
            manifest("t", b"amd", Some("linux/amd64")),
            manifest("t", b"arm", Some("linux/arm64/v8")),
        ];
        let arm = PlatformSelection::One(Platform::parse("linux/arm64").unwrap());
        let placed = placements(&multi, &PlatformSelection::All).unwrap();
        let host_is_arm = Platform::host().architecture == "arm64";
        let plain = |p: &Placement| {
            p.links
                .iter()
                .any(|l| l.path == b"/127.0.0.1:5000/testbed/app:t")
        };
        assert_eq!(plain(&placed[0]), !host_is_arm);
        assert_eq!(plain(&placed[1]), host_is_arm);
        let placed = placements(&multi, &arm).unwrap();
        assert!(!plain(&placed[0]) && plain(&placed[1]));
        let names: Vec<String> = placed
            .iter()
            .flat_map(|p| {
                p.links
                    .iter()
                    .map(|l| String::from_utf8(l.path.clone()).unwrap())
            })
            .collect();
        assert_eq!(
            names,
            [
                "/127.0.0.1:5000/testbed/app:t@linux-amd64",
                "/127.0.0.1:5000/testbed/app:t",
                "/127.0.0.1:5000/testbed/app:t@linux-arm64"
            ]
        );
        assert_eq!(placed[1].flat_dir, flat_dir_path(&Digest::of(b"arm")));
        assert_eq!(placed[1].metadata_dirs.len(), 2);
    }

    /// The plain tag goes to the image the host would get on its own (the default variant
    /// before other levels, whatever the index order), and it is the image of the host's
    /// `TAG@<suffix>` link too.
    #[test]
    fn plain_tag_is_the_host_suffix_image() {
        let link_of = |placed: &[Placement], path: &str| -> Vec<usize> {
            (0..placed.len())
                .filter(|&i| placed[i].links.iter().any(|l| l.path == path.as_bytes()))
                .collect()
        };
        let amd = PlatformSelection::One(Platform::parse("linux/amd64").unwrap());
        for order in [
            [
                "linux/amd64/v3",
                "linux/amd64/v1",
                "linux/amd64",
                "linux/amd64/v2",
            ],
            [
                "linux/amd64",
                "linux/amd64/v3",
                "linux/amd64/v1",
                "linux/amd64/v2",
            ],
        ] {
            let multi: Vec<ImageManifest> = order
                .iter()
                .map(|p| manifest("t", p.as_bytes(), Some(p)))
                .collect();
            let placed = placements(&multi, &amd).unwrap();
            let plain = link_of(&placed, "/127.0.0.1:5000/testbed/app:t");
            assert_eq!(
                plain,
                link_of(&placed, "/127.0.0.1:5000/testbed/app:t@linux-amd64"),
                "{order:?}"
            );
            assert_eq!(
                multi[plain[0]].platform.as_ref().unwrap().to_string(),
                "linux/amd64"
            );
        }
        let arm = PlatformSelection::One(Platform::parse("linux/arm").unwrap());
        let multi = [
            manifest("t", b"6", Some("linux/arm/v6")),
            manifest("t", b"7", Some("linux/arm/v7")),
        ];
        let placed = placements(&multi, &arm).unwrap();
        assert_eq!(link_of(&placed, "/127.0.0.1:5000/testbed/app:t"), [1]);
    }

    /// Index entries all for other platforms than the one wanted get no plain tag (it would
    /// hand that platform's jobs another architecture's binaries), only their `TAG@` links,
    /// also a lone entry, and a warning names what is missing; an image that came from no
    /// index keeps its plain tag whatever its platform.
    #[test]
    fn no_plain_tag_for_an_index_without_the_wanted_platform() {
        let s390x = PlatformSelection::One(Platform::parse("linux/s390x").unwrap());
        let paths = |placed: &[Placement]| -> Vec<String> {
            placed
                .iter()
                .flat_map(|p| &p.links)
                .map(|l| String::from_utf8(l.path.clone()).unwrap())
                .collect()
        };
        let multi = [
            manifest("t", b"arm", Some("linux/arm64/v8")),
            manifest("t", b"arm7", Some("linux/arm/v7")),
        ];
        assert_eq!(
            paths(&placements(&multi, &s390x).unwrap()),
            [
                "/127.0.0.1:5000/testbed/app:t@linux-arm64",
                "/127.0.0.1:5000/testbed/app:t@linux-arm-v7"
            ]
        );
        let warning = missing_plain_tag(&multi, &s390x).unwrap();
        assert!(
            warning.contains("linux/s390x")
                && warning.contains("no link /127.0.0.1:5000/testbed/app:t is made")
                && warning.contains("app:t@linux-arm-v7"),
            "{warning}"
        );
        assert_eq!(
            paths(&placements(&multi[..1], &s390x).unwrap()),
            ["/127.0.0.1:5000/testbed/app:t@linux-arm64"]
        );
        let mut single = manifest("t", b"arm", Some("linux/arm64"));
        single.from_index = false;
        let single = [single];
        assert_eq!(
            paths(&placements(&single, &s390x).unwrap()),
            ["/127.0.0.1:5000/testbed/app:t"]
        );
        assert_eq!(missing_plain_tag(&single, &s390x), None);
        let amd = PlatformSelection::One(Platform::parse("linux/amd64").unwrap());
        let with_amd = [multi[0].clone(), manifest("t", b"amd", Some("linux/amd64"))];
        assert_eq!(missing_plain_tag(&with_amd, &amd), None);
    }

    /// Two images that would get the same link name are refused while placing (one of them
    /// would be left unlinked); images without a platform get the plain tag only.
    #[test]
    fn placements_refuse_duplicate_link_names() {
        let multi = [
            manifest("a", b"a", Some("linux/arm64")),
            manifest("b", b"b", Some("linux/arm64/v8")),
        ];
        let mut multi = multi.map(|mut m| {
            m.name = multi_name();
            m
        });
        let err = placements(&multi, &PlatformSelection::All)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("would both be linked as \"127.0.0.1:5000/testbed/app:t@linux-arm64\""),
            "{err}"
        );
        for m in &mut multi {
            m.platform = None;
        }
        let err = placements(&multi, &PlatformSelection::All)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(no platform in the index) would both be linked as \"127.0.0.1:5000/testbed/app:t\""),
            "{err}"
        );
        let one = placements(&multi[..1], &PlatformSelection::All).unwrap();
        assert_eq!(one[0].links.len(), 1);
    }

    fn multi_name() -> ImageName {
        manifest("t", b"", None).name
    }

    /// Names the layout cannot hold are refused while placing, naming the image and the
    /// name: nothing of such an image may be flattened or stored.
    #[test]
    fn placements_refuse_names_the_layout_cannot_hold() {
        let named = |registry: &str, repository: &str, tag: &str| {
            let mut m = manifest("t", b"c", None);
            m.reference = "oci:/layouts/hostile".to_owned();
            m.name = ImageName {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                reference: crate::image::NameRef::Tag(tag.to_owned()),
            };
            m
        };
        let long_repo = "a".repeat(200);
        let long_tag = "t".repeat(100);
        for (m, why) in [
            (
                named(".metadata", "example.com/victim", "1"),
                "starts with '.'",
            ),
            (named(".flat", "evil", "latest"), "starts with '.'"),
            (named(".cvmfscatalog", "x", "1"), "starts with '.'"),
            (named("..", "evil", "latest"), "starts with '.'"),
            (
                named("local", "a/.cvmfsautocatalog/b", "1"),
                "starts with '.'",
            ),
            (named("local", "a//b", "1"), "empty path component"),
            (named("h.org", "x", "a\0b"), "control character"),
            (
                named("h.org", &long_repo, &long_tag),
                "301 bytes (at most 255)",
            ),
        ] {
            let err = placements(&[m], &PlatformSelection::Host)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("image oci:/layouts/hostile: \""), "{err}");
            assert!(err.contains(why), "{why}: {err}");
        }
        // A valid reference whose last component is too long for a file name.
        let r = RegistryRef::parse(&format!("example.org/{long_repo}:{long_tag}")).unwrap();
        let mut m = manifest("t", b"c", None);
        m.name = r.name();
        assert!(placements(&[m], &PlatformSelection::Host).is_err());
    }

    /// With several platforms the platform names become part of the link names.
    #[test]
    fn placements_refuse_platform_names_that_are_not_plain() {
        let platform = |arch: &str, variant: Option<&str>| Platform {
            os: "linux".to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        };
        for (bad, shown) in [
            (platform("arm64/.cvmfscatalog", None), "arm64/.cvmfscatalog"),
            (platform("../../../x", None), "../../../x"),
            (
                platform("arm", Some("v7/.cvmfscatalog")),
                "v7/.cvmfscatalog",
            ),
        ] {
            let mut odd = manifest("t", b"odd", Some("linux/arm/v7"));
            odd.platform = Some(bad);
            let multi = [manifest("t", b"amd", Some("linux/amd64")), odd];
            let err = placements(&multi, &PlatformSelection::All)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("image docker://127.0.0.1:5000/"), "{err}");
            assert!(
                err.contains(&format!("{shown:?} is not a plain name")),
                "{err}"
            );
            // Converting one platform only, the platform names no link.
            let host = PlatformSelection::One(Platform::parse("linux/amd64").unwrap());
            assert!(placements(&multi[..1], &host).is_ok());
        }
    }

    #[test]
    fn flat_directory_contents() {
        let config = ImageConfig {
            env: vec![
                "PATH=/opt/bin:/usr/bin".into(),
                "GREETING=it's \"$HOME\"".into(),
                "bad-name=x".into(),
            ],
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            labels: [("org.example".to_owned(), "x".to_owned())].into(),
            ..ImageConfig::default()
        };
        let img = resolved(manifest("t", b"c", None), config);
        let files = MemFiles::default();
        let mut rootfs = Dir::new(parent_meta(5));
        rootfs
            .children
            .insert(b"etc".to_vec(), Node::Dir(Dir::new(parent_meta(5))));
        let mut sing = Dir::new(parent_meta(5));
        sing.children
            .insert(b"keep".to_vec(), symlink(b"x".to_vec(), 1));
        rootfs
            .children
            .insert(b".singularity.d".to_vec(), Node::Dir(sing));
        let graft = flat_graft(&img, rootfs, 100, &files).unwrap();
        assert_eq!(graft.path, flat_dir_path(&img.config_digest));
        let Node::Dir(flat) = graft.node else {
            panic!("not a dir")
        };
        assert!(flat.children.contains_key(b"etc".as_slice()));
        let marker = &flat.children[CATALOG_MARKER];
        assert_eq!(
            marker.entry().kind,
            EntryKind::File {
                size: 0,
                data: FileData::Whole(EMPTY_OBJECT)
            }
        );
        let Node::Dir(sing) = &flat.children[b".singularity.d".as_slice()] else {
            panic!()
        };
        assert!(
            sing.children.contains_key(b"keep".as_slice()),
            "image's own entries kept"
        );
        assert!(sing.children.contains_key(b"libs".as_slice()));
        let Node::Dir(env) = &sing.children[b"env".as_slice()] else {
            panic!()
        };
        let env_text = files.text(&env.children[b"10-docker2singularity.sh".as_slice()]);
        assert!(
            env_text.contains("export PATH='/opt/bin:/usr/bin'\n"),
            "{env_text}"
        );
        assert!(
            env_text.contains(
                "[ -n \"${GREETING:-}\" ] || GREETING='it'\\''s \"$HOME\"'\nexport GREETING\n"
            ),
            "{env_text}"
        );
        assert!(env_text.contains("# skipped: \"bad-name\""), "{env_text}");
        let run = files.text(&sing.children[b"runscript".as_slice()]);
        assert!(
            run.contains("set -- 'echo hi'\n") && run.contains("exec '/bin/sh' '-c' \"$@\"\n"),
            "{run}"
        );
        assert_eq!(sing.children[b"runscript".as_slice()].entry().perm, 0o755);
        let labels: BTreeMap<String, String> =
            serde_json::from_str(&files.text(&sing.children[b"labels.json".as_slice()])).unwrap();
        assert_eq!(labels["org.example"], "x");
    }

    #[test]
    fn runscript_without_entrypoint() {
        let img = resolved(manifest("t", b"c", None), ImageConfig::default());
        let run = runscript(&img);
        assert!(
            run.ends_with("if [ $# -eq 0 ]; then\n    set -- /bin/sh\nfi\nexec \"$@\"\n"),
            "{run}"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&run)
            .arg("runscript")
            .arg("echo")
            .arg("it works")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it works\n");
    }

    #[test]
    fn name_grafts_and_status() {
        let m = manifest("t", b"c", None);
        let placement = placements(std::slice::from_ref(&m), &PlatformSelection::Host)
            .unwrap()
            .remove(0);
        let img = resolved(m.clone(), ImageConfig::default());
        let files = MemFiles::default();
        let grafts = name_grafts(&img, &placement, 7, &files).unwrap();
        assert_eq!(grafts.len(), 2);
        let EntryKind::Symlink { target } = &grafts[0].node.entry().kind else {
            panic!()
        };
        assert_eq!(
            target,
            &relative_target(&grafts[0].path, &placement.flat_dir)
        );
        let Node::Dir(meta) = &grafts[1].node else {
            panic!()
        };
        assert_eq!(
            files.text(&meta.children[b"manifest.json".as_slice()]),
            "manifest of t"
        );
        assert_eq!(files.text(&meta.children[b"config.json".as_slice()]), "{}");

        // A repository as a path → entry map.
        let mut repo: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let status = |repo: &BTreeMap<Vec<u8>, Entry>, bytes: &[u8]| {
            conversion_status(&placement, bytes, |p| Ok::<_, ()>(repo.get(p).cloned())).unwrap()
        };
        assert_eq!(status(&repo, &m.manifest_bytes), Status::Missing);
        repo.insert(placement.flat_dir.clone(), parent_meta(1));
        assert_eq!(status(&repo, &m.manifest_bytes), Status::FlatPresent);
        repo.insert(grafts[0].path.clone(), grafts[0].node.entry().clone());
        assert_eq!(
            status(&repo, &m.manifest_bytes),
            Status::FlatPresent,
            "metadata missing"
        );
        let manifest_path = [grafts[1].path.as_slice(), b"/manifest.json"].concat();
        repo.insert(
            manifest_path,
            meta.children[b"manifest.json".as_slice()].entry().clone(),
        );
        assert_eq!(status(&repo, &m.manifest_bytes), Status::Complete);
        assert_eq!(status(&repo, b"a re-pushed manifest"), Status::FlatPresent);
        repo.insert(
            grafts[0].path.clone(),
            symlink(b"../elsewhere".to_vec(), 1).entry().clone(),
        );
        assert_eq!(
            status(&repo, &m.manifest_bytes),
            Status::FlatPresent,
            "tag moved"
        );
    }
}
