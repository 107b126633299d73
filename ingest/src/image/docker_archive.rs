//! `docker-archive:FILE[:REF]`: the tar `docker save` (or skopeo) writes. Layers are read in
//! place: each open seeks to the member's data inside the archive; nothing is extracted.

use super::digest::{Checked, Digest, VerifyingReader};
use super::error::{Error, Result};
use super::local_file::{open_regular, read_document};
use super::manifest::{PlatformSelection, DOCKER_MANIFEST};
use super::reference::ImageName;
use super::source::{
    check_blob, check_config, resolve_document, ImageManifest, ImageSource, ResolvedImage,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where a member's data sits in the archive.
#[derive(Clone, Copy, Debug)]
struct Location {
    offset: u64,
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads one image of a docker archive.
pub struct DockerArchiveSource {
    path: PathBuf,
    reference: String,
    name: ImageName,
    /// The config member (after symlinks) and where its data is.
    config_member: String,
    config: Location,
    /// Digest from the config member's file name, when it is one.
    config_digest: Option<Digest>,
    layers: Vec<(String, Location)>,
}

/// Normalises a member path: no `./`, `..` applied (symlink targets are relative).
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// The first few of `tags`, for a message (an archive may list thousands).
fn some_of(tags: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = tags
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tags.len() > SHOWN {
        text.push_str(&format!(" and {} more", tags.len() - SHOWN));
    }
    if text.is_empty() {
        text.push_str("none");
    }
    text
}

/// The digest a member's name spells (`<hex>.tar`, `blobs/sha256/<hex>`, `<hex>.json`).
fn digest_from_name(member: &str) -> Option<Digest> {
    let base = member.rsplit('/').next().unwrap_or(member);
    let stem = base.split('.').next().unwrap_or(base);
    Digest::from_hex(stem)
}

impl DockerArchiveSource {
    /// Indexes the archive's members and picks the image: the one whose `RepoTags` holds
    /// `tag`, else the only one.
    pub fn open(path: &Path, tag: Option<&str>) -> Result<DockerArchiveSource> {
        let reference = match tag {
            Some(t) => format!("docker-archive:{}:{t}", path.display()),
            None => format!("docker-archive:{}", path.display()),
        };
        let members = index_members(path, &reference)?;
        if !members.contains_key("manifest.json") {
            return Err(Error::image(&reference, "archive has no manifest.json"));
        }
        // A symlink, as the members it names may be.
        let (_, manifest_loc) = resolve_member(&members, "manifest.json")
            .map_err(|reason| Error::image(&reference, reason))?;
        let manifest = read_member(path, manifest_loc, &reference, "manifest.json")?;
        let images: Vec<ArchiveImage> = serde_json::from_slice(&manifest)
            .map_err(|e| Error::image(&reference, format!("manifest.json: {e}")))?;
        let all_tags: Vec<String> = images
            .iter()
            .flat_map(|i| i.repo_tags.clone().unwrap_or_default())
            .collect();
        let picked = match tag {
            Some(t) => images.into_iter().find(|i| {
                i.repo_tags
                    .as_ref()
                    .is_some_and(|tags| tags.iter().any(|x| x == t))
            }),
            None if images.len() == 1 => images.into_iter().next(),
            None => None,
        }
        .ok_or_else(|| {
            Error::image(
                &reference,
                format!(
                    "no such image in the archive (tags: {})",
                    some_of(&all_tags)
                ),
            )
        })?;
        let first_tag = tag
            .map(str::to_owned)
            .or_else(|| picked.repo_tags.as_ref().and_then(|t| t.first().cloned()));
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let candidate = first_tag.or(stem).unwrap_or_default();
        let name = ImageName::for_local(&candidate).map_err(|why| {
            Error::image(
                &reference,
                format!("{candidate:?} is not usable as an image name: {why}"),
            )
        })?;
        let find = |member: &str| -> Result<(String, Location)> {
            resolve_member(&members, member).map_err(|reason| Error::image(&reference, reason))
        };
        let (config_name, config) = find(&picked.config)?;
        let layers = picked
            .layers
            .iter()
            .map(|l| find(l))
            .collect::<Result<Vec<_>>>()?;
        Ok(DockerArchiveSource {
            path: path.to_owned(),
            reference,
            name,
            config,
            config_digest: digest_from_name(&config_name),
            config_member: config_name,
            layers,
        })
    }

    fn read_config(&self) -> Result<Vec<u8>> {
        let bytes = read_member(
            &self.path,
            self.config,
            &self.reference,
            &self.config_member,
        )?;
        if let Some(d) = &self.config_digest {
            check_blob(&bytes, d, None, &self.reference, "config")?;
        }
        Ok(bytes)
    }

    fn open_member(&self, loc: Location) -> Result<impl Read + Send> {
        let mut file = open_regular(&self.path).map_err(|e| {
            Error::io(
                format!("image {}: {}", self.reference, self.path.display()),
                e,
            )
        })?;
        file.seek(SeekFrom::Start(loc.offset)).map_err(|e| {
            Error::io(
                format!("image {}: {}", self.reference, self.path.display()),
                e,
            )
        })?;
        Ok(BufReader::with_capacity(256 * 1024, file.take(loc.size)))
    }

    /// Media type and digest of a layer member. Its name gives the digest when it spells one;
    /// an uncompressed layer's digest is its diff_id; otherwise the member is hashed once.
    fn describe_layer(
        &self,
        member: &str,
        loc: Location,
        diff_id: Option<&Digest>,
    ) -> Result<(String, Digest)> {
        let mut magic = [0u8; 4];
        let mut head = self.open_member(loc)?;
        let got = read_up_to(&mut head, &mut magic)
            .map_err(|e| Error::layer(&self.reference, member, format!("reading: {e}")))?;
        let media_type = match &magic[..got] {
            [0x1f, 0x8b, ..] => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.docker.image.rootfs.diff.tar",
        };
        let plain = media_type.ends_with(".diff.tar");
        let digest = match (digest_from_name(member), diff_id) {
            (Some(d), _) => d,
            (None, Some(d)) if plain => d.clone(),
            _ => {
                let mut sha = Sha256::new();
                std::io::copy(&mut self.open_member(loc)?, &mut sha)
                    .map_err(|e| Error::layer(&self.reference, member, format!("reading: {e}")))?;
                Digest::of_finalized(sha)
            }
        };
        Ok((media_type.to_owned(), digest))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Why a docker-archive has no tar header at its start: often a `docker save | gzip`. The
/// archive is read in place (members by offset), so a compressed one is not taken: say how to
/// make it readable.
fn compressed_hint(path: &Path) -> String {
    let mut head = [0u8; 4];
    let got = std::fs::File::open(path).and_then(|mut f| read_up_to(&mut f, &mut head));
    match got.map(|n| crate::decode::sniff(&head[..n])) {
        Ok(Some(crate::decode::Format::Gzip)) => {
            "no tar header at its start: it is gzip-compressed; decompress it first (gunzip)".into()
        }
        Ok(Some(crate::decode::Format::Zstd)) => {
            "no tar header at its start: it is zstd-compressed; decompress it first (zstd -d)"
                .into()
        }
        _ => "no tar header at its start".into(),
    }
}

/// Member name → (data location, symlink target).
type Members = BTreeMap<String, (Location, Option<String>)>;

fn index_members(path: &Path, reference: &str) -> Result<Members> {
    let io_err = |e| Error::io(format!("image {reference}: {}", path.display()), e);
    let file = open_regular(path).map_err(io_err)?;
    let mut archive = crate::targuard::guarded(file);
    let mut out = Members::new();
    let mut previous: Option<String> = None;
    for entry in archive.entries_with_seek().map_err(io_err)? {
        let entry = entry.map_err(|e| match e.kind() {
            _ if crate::targuard::is_refusal(&e) => Error::image(reference, e.to_string()),
            // The tar crate's words for a block that is no tar header quote the block as the
            // member's name: a text file given by mistake would be printed.
            std::io::ErrorKind::Other | std::io::ErrorKind::InvalidData => {
                let place = match &previous {
                    None => compressed_hint(path),
                    Some(member) => format!("no valid tar header after member {member:?}"),
                };
                Error::image(reference, format!("not a docker-archive tar ({place})"))
            }
            _ => io_err(e),
        })?;
        let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        previous = Some(name.clone());
        let link = match entry.header().entry_type() {
            tar::EntryType::Symlink => entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            _ => None,
        };
        let loc = Location {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        out.insert(name, (loc, link));
    }
    Ok(out)
}

/// Most symlinks followed in a row (as Linux's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// Follows symlinks (relative to the link's directory) to a regular member: its name and
/// data. Else says why there is none: no such member, a link to a member the archive lacks,
/// one leading out of the archive, or a loop.
fn resolve_member(
    members: &Members,
    name: &str,
) -> std::result::Result<(String, Location), String> {
    let mut chain = vec![normalise(name)];
    loop {
        let current = chain.last().map(String::as_str).unwrap_or_default();
        let Some((loc, link)) = members.get(current) else {
            return Err(if chain.len() == 1 {
                format!("archive has no member {name:?}")
            } else {
                format!(
                    "member {name:?} is a symlink to a member the archive lacks ({})",
                    chain.join(" -> ")
                )
            });
        };
        let Some(target) = link else {
            return Ok((current.to_owned(), *loc));
        };
        let dir = current.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let Some(next) = join_inside(dir, target) else {
            return Err(format!(
                "member {name:?} is a symlink leading out of the archive ({} -> {target})",
                chain.join(" -> ")
            ));
        };
        let looped = chain.contains(&next);
        chain.push(next);
        if looped {
            return Err(format!(
                "member {name:?} is a symlink loop ({})",
                chain.join(" -> ")
            ));
        }
        if chain.len() > MAX_LINKS {
            return Err(format!(
                "member {name:?}: more than {MAX_LINKS} symlinks in a row"
            ));
        }
    }
}

/// The member symlink `target` in directory `dir` names; `None` when it leaves the archive
/// (an absolute target, or more `..` than directories).
fn join_inside(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Reads `member` (manifest.json, a config) whole: it is a document, at most
/// [`MAX_DOCUMENT`](super::local_file::MAX_DOCUMENT) bytes.
fn read_member(path: &Path, loc: Location, reference: &str, member: &str) -> Result<Vec<u8>> {
    let io_err = |e| Error::io(format!("image {reference}: {}", path.display()), e);
    let mut file = open_regular(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(loc.offset)).map_err(io_err)?;
    let what = format!("member {member:?}");
    read_document(file.take(loc.size), loc.size, None, reference, &what)
}

impl ImageSource for DockerArchiveSource {
    fn describe(&self) -> String {
        self.reference.clone()
    }

    /// Docker archives carry no registry manifest; one is written the way skopeo does when
    /// copying from an archive (Docker v2 schema 2), so `.metadata` has one to show.
    fn resolve_manifests(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>> {
        let config_bytes = self.read_config()?;
        let config = super::manifest::ImageConfig::parse(&config_bytes, &self.reference)?;
        let mut layers = Vec::new();
        for (i, (member, loc)) in self.layers.iter().enumerate() {
            let (media_type, digest) = self.describe_layer(member, *loc, config.diff_ids.get(i))?;
            layers.push(serde_json::json!({
                "mediaType": media_type, "size": loc.size, "digest": digest.to_string(),
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config_bytes.len(),
                "digest": Digest::of(&config_bytes).to_string(),
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::image(&self.reference, format!("writing a manifest: {e}")))?;
        let no_index = |_: &Digest, _: u64| -> Result<(Vec<u8>, Option<String>)> {
            Err(Error::image(
                &self.reference,
                "docker archives hold no index",
            ))
        };
        resolve_document(
            &self.reference,
            &self.name,
            (bytes, None),
            selection,
            &no_index,
        )
    }

    fn fetch_config(&self, manifest: &ImageManifest) -> Result<Vec<u8>> {
        check_config(self.read_config()?, manifest, &self.reference)
    }

    fn open_layer(&self, image: &ResolvedImage, index: usize) -> Result<Box<dyn Read + Send>> {
        let desc = image.layer(index)?;
        let (_, loc) = self
            .layers
            .get(index)
            .ok_or_else(|| Error::image(&self.reference, format!("has no layer #{index}")))?;
        Ok(Box::new(VerifyingReader::new(
            self.open_member(*loc)?,
            desc.digest.clone(),
            Some(desc.size),
            &image.reference,
            &desc.digest.to_string(),
            Checked::Blob,
        )))
    }
}
