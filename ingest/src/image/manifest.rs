//! Image manifests, indexes (manifest lists) and configs: parsing, validation and platform
//! selection. Docker v2 schema 2 and OCI media types are accepted; anything else is refused.

use super::digest::Digest;
use super::error::{Error, Result};
use super::reference::Platform;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Every manifest media type, for the registry's `Accept` header.
pub const ACCEPT: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// How a layer blob is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Compression of a layer media type; `None` for a type that is not a layer we can read.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// A content descriptor as manifests and indexes carry them.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawDescriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub platform: Option<RawPlatform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A descriptor's `platform`. Every field may be missing (or null): an entry whose platform
/// lacks `os` or `architecture` is skipped as attestations are, it does not fail the index.
#[derive(Clone, Debug, Deserialize)]
pub struct RawPlatform {
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    media_type: Option<String>,
    schema_version: Option<i64>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    /// OCI 1.1: set on artifacts (SBOMs, signatures) stored as manifests.
    #[serde(default)]
    artifact_type: Option<String>,
}

/// A layer as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// One entry of an index: a platform-specific manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// `None` for an image manifest listed without a platform: its config tells it.
    pub platform: Option<Platform>,
}

/// A parsed image manifest (config and layers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerDescriptor>,
}

/// An entry of an index that is itself an index (a nested index, which containerd follows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedIndex {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What a manifest document turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Manifest(Manifest),
    /// The platform manifests an index lists, and the indexes it nests.
    Index(Vec<IndexEntry>, Vec<NestedIndex>),
}

/// The digest and size of a descriptor; `what` names it in errors (a negative size is one).
pub(crate) fn descriptor(raw: &RawDescriptor, image: &str, what: &str) -> Result<(Digest, u64)> {
    let digest = Digest::parse(&raw.digest).ok_or_else(|| {
        Error::image(
            image,
            format!("{what} digest {:?} is not sha256:<hex>", raw.digest),
        )
    })?;
    let size = u64::try_from(raw.size)
        .map_err(|_| Error::image(image, format!("{what} {digest} has negative size")))?;
    Ok((digest, size))
}

/// Parses a manifest or index. `content_type` is the registry's `Content-Type` (or the
/// descriptor's media type) when known; the document's own `mediaType` wins over it.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>, image: &str) -> Result<Document> {
    let raw: RawDocument = serde_json::from_slice(bytes)
        .map_err(|e| Error::image(image, format!("manifest is not valid JSON: {e}")))?;
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned()))
        .filter(|m| !m.is_empty() && m != "application/json");
    if raw.schema_version == Some(1)
        || media_type
            .as_deref()
            .is_some_and(|m| DOCKER_SCHEMA1.contains(&m))
    {
        return Err(Error::image(
            image,
            "Docker schema 1 manifests are not supported",
        ));
    }
    match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => parse_index(raw, image),
        Some(m @ (OCI_MANIFEST | DOCKER_MANIFEST)) => parse_manifest(raw, m.to_owned(), image),
        Some(other) => Err(Error::image(
            image,
            format!("unknown manifest media type {other}"),
        )),
        // OCI allows leaving mediaType out; the fields tell what it is.
        None if raw.manifests.is_some() => parse_index(raw, image),
        None if raw.config.is_some() => parse_manifest(raw, OCI_MANIFEST.to_owned(), image),
        None => Err(Error::image(
            image,
            "document is neither a manifest nor an index",
        )),
    }
}

fn parse_index(raw: RawDocument, image: &str) -> Result<Document> {
    let mut entries = Vec::new();
    let mut nested = Vec::new();
    for m in raw.manifests.unwrap_or_default() {
        // Nested indexes usually carry no platform: their entries say it.
        if m.media_type == OCI_INDEX || m.media_type == DOCKER_LIST {
            let (digest, size) = descriptor(&m, image, "index entry")?;
            nested.push(NestedIndex {
                digest,
                size,
                media_type: m.media_type.clone(),
            });
            continue;
        }
        if !m.media_type.is_empty()
            && m.media_type != OCI_MANIFEST
            && m.media_type != DOCKER_MANIFEST
        {
            continue;
        }
        // An entry without a platform is kept (`crane index append`, re-indexing tools write
        // them; containerd matches them): `select_platforms` falls back to it.
        let platform = match &m.platform {
            None => None,
            Some(p) => match entry_platform(p) {
                Some(platform) => Some(platform),
                // Attestations and other artifacts have no real platform; they are not images.
                None => continue,
            },
        };
        let (digest, size) = descriptor(&m, image, "index entry")?;
        entries.push(IndexEntry {
            digest,
            size,
            media_type: m.media_type.clone(),
            platform,
        });
    }
    Ok(Document::Index(entries, nested))
}

/// The platform of an index entry; `None` for one that names no real platform: `os` or
/// `architecture` missing, empty or `unknown` (buildx attestations use `unknown/unknown`).
fn entry_platform(p: &RawPlatform) -> Option<Platform> {
    let known = |field: &Option<String>| field.clone().filter(|f| !f.is_empty() && f != "unknown");
    Some(Platform {
        os: known(&p.os)?,
        architecture: known(&p.architecture)?,
        variant: p.variant.clone().filter(|v| !v.is_empty()),
    })
}

fn parse_manifest(raw: RawDocument, media_type: String, image: &str) -> Result<Document> {
    let config = raw
        .config
        .ok_or_else(|| Error::image(image, "manifest has no config"))?;
    let artifact_type = raw.artifact_type.filter(|t| !t.is_empty());
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        let reason = match &artifact_type {
            Some(t) => format!(
                "artifact type {t} (config media type {})",
                config.media_type
            ),
            None => format!("config media type {}", config.media_type),
        };
        return Err(Error::not_an_image(image, reason));
    }
    let (config_digest, config_size) = descriptor(&config, image, "config")?;
    let mut layers = Vec::new();
    for l in raw.layers.unwrap_or_default() {
        let (digest, size) = descriptor(&l, image, "layer")?;
        if layer_compression(&l.media_type).is_none() {
            if let Some(kind) = non_image_layer(&l.media_type, artifact_type.as_deref()) {
                return Err(Error::not_an_image(
                    image,
                    format!("layer {digest} is {} ({kind})", l.media_type),
                ));
            }
            return Err(Error::layer(
                image,
                digest.to_string(),
                format!("unknown layer media type {:?}", l.media_type),
            ));
        }
        layers.push(LayerDescriptor {
            digest,
            size,
            media_type: l.media_type,
        });
    }
    // An artifact whose content lives in its config or annotations (OCI 1.1 allows an
    // image config there too): no filesystem, so no image.
    if let (Some(t), true) = (&artifact_type, layers.is_empty()) {
        return Err(Error::not_an_image(
            image,
            format!("artifact type {t} without filesystem layers"),
        ));
    }
    Ok(Document::Manifest(Manifest {
        media_type,
        config_digest,
        config_size,
        layers,
    }))
}

/// Media type prefixes of the documents that signing and SBOM tools store as "layers" of an
/// image-shaped manifest (cosign `.sig`/`.att`/`.sbom` tags, in-toto/DSSE attestations,
/// sigstore bundles, Notary signatures, SPDX/CycloneDX/syft SBOMs), and what they are.
const ARTIFACT_LAYER_TYPES: [(&str, &str); 11] = [
    // Before the general cosign prefix: the first match names it.
    ("application/vnd.dev.cosign.artifact.sbom", "an SBOM"),
    (
        "application/vnd.dev.cosign.",
        "a cosign signature or attachment",
    ),
    ("application/vnd.dsse.envelope", "a DSSE attestation"),
    ("application/vnd.in-toto", "an in-toto attestation"),
    ("application/vnd.dev.sigstore.", "a sigstore bundle"),
    ("application/vnd.cncf.notary.", "a Notary signature"),
    ("application/vnd.oci.empty.v1+json", "an OCI artifact"),
    ("text/spdx", "an SBOM"),
    ("application/spdx", "an SBOM"),
    ("application/vnd.cyclonedx", "an SBOM"),
    ("application/vnd.syft", "an SBOM"),
];

/// What a layer that is not a filesystem layer shows the manifest to be, when it shows it
/// is no container image at all: a manifest with an `artifactType`, a signature, attestation
/// or SBOM document, or any JSON/XML/text document. `None` for a layer type that may be an
/// image layer we cannot read (an unknown compression), which stays an error of the image.
fn non_image_layer(media_type: &str, artifact_type: Option<&str>) -> Option<String> {
    if let Some(t) = artifact_type {
        return Some(format!("an artifact of type {t}"));
    }
    if let Some((_, kind)) = ARTIFACT_LAYER_TYPES
        .iter()
        .find(|(prefix, _)| media_type.starts_with(prefix))
    {
        return Some((*kind).to_owned());
    }
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    let document = essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("/json")
        || essence.ends_with("+xml")
        || essence.ends_with("/xml");
    document.then(|| "a document, not a filesystem layer".to_owned())
}

#[cfg(test)]
mod non_image_tests {
    use super::*;

    /// An image-shaped OCI manifest: `config` and `layers` media types, and an optional
    /// `artifactType`.
    fn manifest(config: &str, layers: &[&str], artifact_type: Option<&str>) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                serde_json::json!({"mediaType": m, "digest": format!("sha256:{}", format!("{i:x}").repeat(64)),
                                   "size": 10})
            })
            .collect();
        let mut doc = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": layers,
        });
        if let Some(t) = artifact_type {
            doc["artifactType"] = t.into();
        }
        serde_json::to_vec(&doc).unwrap()
    }

    /// The reason of a `NotAnImage` error, or what the document parsed to instead.
    fn not_an_image(bytes: &[u8]) -> std::result::Result<String, String> {
        match parse_document(bytes, None, "img") {
            Err(Error::NotAnImage { image, reason }) => {
                assert_eq!(image, "img");
                Ok(reason)
            }
            other => Err(format!("{other:?}")),
        }
    }

    const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn signatures_attestations_and_sboms_are_not_images() {
        for (layer, kind) in [
            (
                "application/vnd.dev.cosign.simplesigning.v1+json",
                "a cosign signature",
            ),
            (
                "application/vnd.dsse.envelope.v1+json",
                "a DSSE attestation",
            ),
            ("application/vnd.in-toto+json", "an in-toto attestation"),
            (
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                "a sigstore bundle",
            ),
            ("text/spdx", "an SBOM"),
            ("application/vnd.cyclonedx+json", "an SBOM"),
            (
                "application/vnd.dev.cosign.artifact.sbom.v1+json",
                "an SBOM",
            ),
            ("application/x-custom+json", "a document"),
        ] {
            let reason = not_an_image(&manifest(IMAGE_CONFIG, &[layer], None)).unwrap();
            assert!(reason.contains(layer) && reason.contains(kind), "{reason}");
        }
    }

    #[test]
    fn oci_artifacts_are_not_images() {
        // ORAS / referrers fallback: the empty config and an artifactType.
        let sbom = manifest(
            "application/vnd.oci.empty.v1+json",
            &["application/spdx+json"],
            Some("application/spdx+json"),
        );
        assert_eq!(
            not_an_image(&sbom).unwrap(),
            "artifact type application/spdx+json (config media type application/vnd.oci.empty.v1+json)"
        );
        // Any other config than an image's, e.g. a Helm chart.
        let helm = manifest("application/vnd.cncf.helm.config.v1+json", &[TAR_GZ], None);
        assert_eq!(
            not_an_image(&helm).unwrap(),
            "config media type application/vnd.cncf.helm.config.v1+json"
        );
        // An image config, but an artifactType and a blob that is no filesystem layer.
        let blob = manifest(
            IMAGE_CONFIG,
            &["application/octet-stream"],
            Some("application/vnd.example.thing"),
        );
        let reason = not_an_image(&blob).unwrap();
        assert!(
            reason.contains("an artifact of type application/vnd.example.thing"),
            "{reason}"
        );
        // An image config and an artifactType, but no layer at all.
        let bare = manifest(IMAGE_CONFIG, &[], Some("application/vnd.example.thing"));
        assert_eq!(
            not_an_image(&bare).unwrap(),
            "artifact type application/vnd.example.thing without filesystem layers"
        );
        // Without an artifactType, an image of no layers stays an image (`FROM scratch`).
        assert!(not_an_image(&manifest(IMAGE_CONFIG, &[], None)).is_err());
    }

    #[test]
    fn an_artifact_type_on_a_real_image_keeps_it_an_image() {
        let bytes = manifest(
            IMAGE_CONFIG,
            &[TAR_GZ, "application/vnd.oci.image.layer.v1.tar"],
            Some("application/vnd.example.app"),
        );
        let Document::Manifest(m) = parse_document(&bytes, None, "img").unwrap() else {
            panic!("not a manifest");
        };
        assert_eq!(m.layers.len(), 2);
    }

    #[test]
    fn an_unknown_layer_compression_stays_an_image_error() {
        let bytes = manifest(
            IMAGE_CONFIG,
            &["application/vnd.oci.image.layer.v1.tar+lz4"],
            None,
        );
        let err = parse_document(&bytes, None, "img").unwrap_err();
        assert!(matches!(err, Error::Layer { .. }), "{err:?}");
        assert!(!err.is_not_an_image());
    }
}

/// Which platforms of a multi-platform image to convert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformSelection {
    /// This machine's platform ([`Platform::host`]).
    Host,
    /// One given platform.
    One(Platform),
    /// Every platform the index lists.
    All,
}

impl PlatformSelection {
    /// The platform that gets the plain tag link when several are converted.
    pub fn preferred(&self) -> Platform {
        match self {
            PlatformSelection::One(p) => p.clone(),
            PlatformSelection::Host | PlatformSelection::All => Platform::host(),
        }
    }
}

/// An index entry picked for conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedEntry {
    pub entry: IndexEntry,
    /// Entries left out for this one because their links would have the same names
    /// (`--all-platforms`, see [`select_platforms`]); the caller should say so.
    pub same_links: Vec<IndexEntry>,
}

impl SelectedEntry {
    fn alone(entry: IndexEntry) -> SelectedEntry {
        SelectedEntry {
            entry,
            same_links: Vec::new(),
        }
    }
}

/// Picks the index entries to convert; an empty result is an error naming what was offered.
///
/// * One platform (`Host`, `One`): the entry whose platform fits best by [`Platform::rank`]
///   (containerd's order: the exact or default variant before any other), the first in index
///   order among equals. When no entry with a platform fits, the first entry without one (its
///   config then gives the platform, as for a plain manifest).
/// * `All`: every entry with a platform, but one per link suffix ([`Platform::link_suffix`]):
///   `linux/arm64` and `linux/arm64/v8`, or two `linux/amd64` differing only in `os.version`,
///   would both be linked as `TAG@linux-arm64` (`TAG@linux-amd64`) and overwrite each other.
///   The best by [`Platform::rank`] is kept, the first in index order among equals; the others
///   are returned in [`SelectedEntry::same_links`]. Without any entry with a platform, every
///   entry without one.
pub fn select_platforms(
    entries: &[IndexEntry],
    selection: &PlatformSelection,
    image: &str,
) -> Result<Vec<SelectedEntry>> {
    let unplatformed = || {
        entries
            .iter()
            .filter(|e| e.platform.is_none())
            .cloned()
            .map(SelectedEntry::alone)
    };
    let picked: Vec<SelectedEntry> = match selection {
        PlatformSelection::All => {
            let mut picked = one_per_link_suffix(entries);
            match picked.first_mut() {
                None => unplatformed().collect(),
                Some(first) => {
                    // Beside entries with a platform, one without has no link name of its
                    // own: left out, and said (with the first entry's warnings).
                    first.same_links.extend(unplatformed().map(|s| s.entry));
                    picked
                }
            }
        }
        other => {
            let want = other.preferred();
            let best = entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| Some((want.rank(e.platform.as_ref()?)?, i)))
                .min()
                .map(|(_, i)| SelectedEntry::alone(entries[i].clone()));
            best.into_iter().chain(unplatformed()).take(1).collect()
        }
    };
    if picked.is_empty() {
        let offered: Vec<String> = entries
            .iter()
            .filter_map(|e| Some(e.platform.as_ref()?.to_string()))
            .collect();
        let wanted = selection.preferred();
        if offered.is_empty() {
            // Only attestations, artifacts or unknown media types: say so, not "offers: none".
            let why = "the index lists no image manifest";
            return Err(Error::image(
                image,
                format!("no manifest for platform {wanted} ({why})"),
            ));
        }
        return Err(Error::NoPlatform {
            image: image.to_owned(),
            reason: format!(
                "no manifest for platform {wanted} (the index offers: {})",
                offered.join(", ")
            ),
        });
    }
    Ok(picked)
}

/// The entries with a platform, one per link suffix, in index order (see [`select_platforms`]).
fn one_per_link_suffix(entries: &[IndexEntry]) -> Vec<SelectedEntry> {
    let mut picked: Vec<SelectedEntry> = Vec::new();
    let mut by_suffix: BTreeMap<String, usize> = BTreeMap::new();
    for entry in entries {
        let Some(platform) = &entry.platform else {
            continue;
        };
        let suffix = platform.link_suffix();
        let Some(&at) = by_suffix.get(&suffix) else {
            by_suffix.insert(suffix, picked.len());
            picked.push(SelectedEntry::alone(entry.clone()));
            continue;
        };
        // Entries of one suffix share os and architecture: rank them as that platform.
        let plain = Platform {
            variant: None,
            ..platform.clone()
        };
        let rank = |e: &IndexEntry| e.platform.as_ref().and_then(|p| plain.rank(p));
        let kept = &mut picked[at];
        if rank(entry) < rank(&kept.entry) {
            let old = std::mem::replace(&mut kept.entry, entry.clone());
            kept.same_links.push(old);
        } else {
            kept.same_links.push(entry.clone());
        }
    }
    picked
}

/// What the converter uses from an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub working_dir: String,
    pub diff_ids: Vec<Digest>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRuntime {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
    config: Option<RawRuntime>,
    rootfs: RawRootfs,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8], image: &str) -> Result<ImageConfig> {
        let raw: RawConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::image(image, format!("config is not a valid image config: {e}")))?;
        if raw.rootfs.kind != "layers" {
            return Err(Error::image(
                image,
                format!("config rootfs type {:?} is not \"layers\"", raw.rootfs.kind),
            ));
        }
        let diff_ids = raw
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                Digest::parse(d).ok_or_else(|| {
                    Error::image(image, format!("config diff_id {d:?} is not sha256:<hex>"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rt = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            env: rt.env.unwrap_or_default(),
            entrypoint: rt.entrypoint.unwrap_or_default(),
            cmd: rt.cmd.unwrap_or_default(),
            labels: rt.labels.unwrap_or_default(),
            working_dir: rt.working_dir.unwrap_or_default(),
            diff_ids,
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant.filter(|v| !v.is_empty()),
        })
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn index_json(media: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{a}","size":10,
                "platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{b}","size":11,
                "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{c}","size":12,
                "platform":{{"os":"unknown","architecture":"unknown"}},
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#,
            a = hex('a'),
            b = hex('b'),
            c = hex('c')
        )
    }

    #[test]
    fn index_selection() {
        for media in [OCI_INDEX, DOCKER_LIST] {
            let Document::Index(entries, _) =
                parse_document(index_json(media).as_bytes(), None, "i").unwrap()
            else {
                panic!("not an index");
            };
            assert_eq!(entries.len(), 2, "attestation skipped");
            let arm = Platform::parse("linux/arm64").unwrap();
            let one = select_platforms(&entries, &PlatformSelection::One(arm), "i").unwrap();
            assert_eq!(one.len(), 1);
            assert_eq!(one[0].entry.digest.hex(), hex('b'));
            assert_eq!(one[0].entry.size, 11);
            let all = select_platforms(&entries, &PlatformSelection::All, "i").unwrap();
            assert_eq!(all.len(), 2);
            let s390 = PlatformSelection::One(Platform::parse("linux/s390x").unwrap());
            let err = select_platforms(&entries, &s390, "img")
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "image img: no manifest for platform linux/s390x (the index offers: linux/amd64, linux/arm64/v8)"
            );
        }
    }

    /// An index of `(platform JSON or None, digest letter)` entries.
    fn index_of(entries: &[(Option<&str>, char)]) -> Vec<IndexEntry> {
        let list: Vec<String> = entries
            .iter()
            .map(|(platform, c)| {
                let platform = platform.map_or(String::new(), |p| format!(r#","platform":{p}"#));
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1{platform}}}"#,
                    hex(*c)
                )
            })
            .collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            list.join(",")
        );
        match parse_document(json.as_bytes(), None, "i").unwrap() {
            Document::Index(entries, _) => entries,
            other => panic!("not an index: {other:?}"),
        }
    }

    fn plat(arch: &str, variant: Option<&str>) -> String {
        match variant {
            Some(v) => format!(r#"{{"os":"linux","architecture":"{arch}","variant":"{v}"}}"#),
            None => format!(r#"{{"os":"linux","architecture":"{arch}"}}"#),
        }
    }

    /// The digest letters `select_platforms` picks.
    fn picked(entries: &[IndexEntry], selection: &PlatformSelection) -> Vec<char> {
        select_platforms(entries, selection, "i")
            .unwrap()
            .iter()
            .map(|s| s.entry.digest.hex().chars().next().unwrap())
            .collect()
    }

    fn one(platform: &str) -> PlatformSelection {
        PlatformSelection::One(Platform::parse(platform).unwrap())
    }

    /// Without a variant the exact/default variant wins over any other, whatever the index
    /// order; else the most compatible level (containerd's order), never the first listed.
    #[test]
    fn platform_without_variant_prefers_the_default() {
        let (v3, plain, v6, v7, v2) = (
            plat("amd64", Some("v3")),
            plat("amd64", None),
            plat("arm", Some("v6")),
            plat("arm", Some("v7")),
            plat("amd64", Some("v2")),
        );
        let entries = index_of(&[
            (Some(&v3), 'a'),
            (Some(&plain), 'b'),
            (Some(&v6), 'c'),
            (Some(&v7), 'd'),
        ]);
        assert_eq!(picked(&entries, &one("linux/amd64")), ['b']);
        assert_eq!(picked(&entries, &one("linux/arm")), ['d']);
        assert_eq!(picked(&entries, &one("linux/arm/v6")), ['c']);
        assert_eq!(picked(&entries, &one("linux/amd64/v3")), ['a']);
        if Platform::host().to_string() == "linux/amd64" {
            assert_eq!(picked(&entries, &PlatformSelection::Host), ['b']);
        }
        let levels = index_of(&[(Some(&v3), 'a'), (Some(&v2), 'b'), (Some(&v6), 'c')]);
        assert_eq!(picked(&levels, &one("linux/amd64")), ['b']);
        assert_eq!(picked(&levels, &one("linux/arm")), ['c']);
        let err = select_platforms(&levels, &one("linux/amd64/v1"), "img").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image img: no manifest for platform linux/amd64/v1 (the index offers: \
             linux/amd64/v3, linux/amd64/v2, linux/arm/v6)"
        );
        // An explicit variant takes only itself; arm64/v8 is arm64.
        let arm64 = index_of(&[
            (Some(&plat("arm64", Some("v9"))), 'a'),
            (Some(&plat("arm64", None)), 'b'),
        ]);
        assert_eq!(picked(&arm64, &one("linux/arm64/v8")), ['b']);
        assert_eq!(picked(&arm64, &one("linux/arm64")), ['b']);
        assert_eq!(picked(&arm64, &one("linux/arm64/v9")), ['a']);
    }

    /// An entry whose platform lacks os or architecture is skipped like an attestation, not
    /// taken for invalid JSON; entries without a platform are the fallback when no entry with
    /// one fits (the first for one platform, all for `All`).
    #[test]
    fn incomplete_and_missing_platforms() {
        let amd = plat("amd64", None);
        let entries = index_of(&[
            (Some(&amd), 'a'),
            (Some(r#"{"os":"unknown"}"#), 'b'),
            (Some(r#"{"architecture":"arm64"}"#), 'c'),
            (Some(r#"{"os":"linux","architecture":null}"#), 'd'),
            (Some(r#"{"os":"linux","architecture":""}"#), 'e'),
        ]);
        assert_eq!(entries.len(), 1);
        assert_eq!(picked(&entries, &one("linux/amd64")), ['a']);

        let bare = index_of(&[(None, 'a'), (None, 'b')]);
        assert_eq!(bare.len(), 2);
        assert!(bare.iter().all(|e| e.platform.is_none()));
        assert_eq!(picked(&bare, &one("linux/s390x")), ['a']);
        assert_eq!(picked(&bare, &PlatformSelection::Host), ['a']);
        assert_eq!(picked(&bare, &PlatformSelection::All), ['a', 'b']);
        // A fitting entry with a platform wins over one without; one that does not fit
        // leaves the choice to the entry without.
        let mixed = index_of(&[(None, 'a'), (Some(&amd), 'b')]);
        assert_eq!(picked(&mixed, &one("linux/amd64")), ['b']);
        assert_eq!(picked(&mixed, &one("linux/arm64")), ['a']);
        assert_eq!(picked(&mixed, &PlatformSelection::All), ['b']);
        // Nothing at all: the error says so and lists what is offered.
        let none = index_of(&[(Some(r#"{"os":"unknown","architecture":"unknown"}"#), 'a')]);
        let err = select_platforms(&none, &one("linux/amd64"), "img").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image img: no manifest for platform linux/amd64 (the index lists no image manifest)"
        );
    }

    /// `All` converts one entry per link suffix: the others are returned, not converted.
    #[test]
    fn all_platforms_keep_one_entry_per_link_suffix() {
        let amd = plat("amd64", None);
        let amd_os = r#"{"os":"linux","architecture":"amd64","os.version":"2"}"#;
        let (arm64, arm64_v8) = (plat("arm64", None), plat("arm64", Some("v8")));
        let entries = index_of(&[
            (Some(&amd), 'a'),
            (Some(amd_os), 'b'),
            (Some(&arm64_v8), 'c'),
            (Some(&arm64), 'd'),
            (Some(&plat("amd64", Some("v1"))), 'e'),
        ]);
        let all = select_platforms(&entries, &PlatformSelection::All, "i").unwrap();
        let kept: Vec<(char, Vec<char>)> = all
            .iter()
            .map(|s| {
                let letter = |e: &IndexEntry| e.digest.hex().chars().next().unwrap();
                (letter(&s.entry), s.same_links.iter().map(letter).collect())
            })
            .collect();
        assert_eq!(
            kept,
            [('a', vec!['b']), ('c', vec!['d']), ('e', vec![])],
            "first in index order among equals; amd64/v1 has its own suffix"
        );
    }

    #[test]
    fn index_without_media_type_is_detected() {
        let json = index_json(OCI_INDEX).replace(&format!(r#""mediaType":"{OCI_INDEX}","#), "");
        assert!(matches!(
            parse_document(json.as_bytes(), None, "i").unwrap(),
            Document::Index(..)
        ));
    }

    fn manifest_json(media: &str, layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}",
              "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{c}","size":7}},
              "layers":[{{"mediaType":"{layer_type}","digest":"sha256:{l}","size":99}}]}}"#,
            c = hex('c'),
            l = hex('d')
        )
    }

    #[test]
    fn manifests_of_both_kinds() {
        for (media, layer) in [
            (OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+zstd"),
            (
                DOCKER_MANIFEST,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ),
        ] {
            let doc = parse_document(manifest_json(media, layer).as_bytes(), None, "i").unwrap();
            let Document::Manifest(m) = doc else {
                panic!("not a manifest")
            };
            assert_eq!(m.media_type, media);
            assert_eq!(m.config_digest.hex(), hex('c'));
            assert_eq!(m.config_size, 7);
            assert_eq!(m.layers[0].size, 99);
            assert!(layer_compression(&m.layers[0].media_type).is_some());
        }
        // The registry's Content-Type is used when the document has no mediaType.
        let json = manifest_json(DOCKER_MANIFEST, "application/vnd.oci.image.layer.v1.tar")
            .replace(&format!(r#""mediaType":"{DOCKER_MANIFEST}","#), "");
        let Document::Manifest(m) =
            parse_document(json.as_bytes(), Some(DOCKER_MANIFEST), "i").unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(m.media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn unknown_types_are_refused() {
        let json = manifest_json(OCI_MANIFEST, "application/vnd.example.layer+lz4");
        let err = parse_document(json.as_bytes(), None, "img")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("image img layer sha256:{}: unknown layer media type \"application/vnd.example.layer+lz4\"", hex('d'))
        );
        let err = parse_document(br#"{"mediaType":"text/plain"}"#, None, "img").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image img: unknown manifest media type text/plain"
        );
        let err = parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, None, "img").unwrap_err();
        assert!(err.to_string().contains("schema 1"));
        let helm = manifest_json(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar").replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.cncf.helm.config.v1+json",
        );
        let err = parse_document(helm.as_bytes(), None, "img").unwrap_err();
        assert!(err.to_string().contains("not a container image"), "{err}");
    }

    #[test]
    fn config_fields() {
        let json = format!(
            r#"{{"architecture":"arm64","variant":"v8","os":"linux",
              "config":{{"Env":["PATH=/usr/bin","A=b c"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
                         "Labels":{{"org.example":"x"}},"WorkingDir":"/srv"}},
              "rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            hex('e')
        );
        let c = ImageConfig::parse(json.as_bytes(), "i").unwrap();
        assert_eq!(c.env, ["PATH=/usr/bin", "A=b c"]);
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(c.labels["org.example"], "x");
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.diff_ids[0].hex(), hex('e'));
        assert_eq!(c.platform().to_string(), "linux/arm64/v8");
        let minimal =
            ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#, "i").unwrap();
        assert!(minimal.env.is_empty() && minimal.cmd.is_empty());
        let err = ImageConfig::parse(
            br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#,
            "img",
        )
        .unwrap_err();
        assert!(err.to_string().contains("diff_id \"md5:x\""));
    }
}
