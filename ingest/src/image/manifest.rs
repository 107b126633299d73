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

#[derive(Clone, Debug, Deserialize)]
pub struct RawPlatform {
    pub os: String,
    pub architecture: String,
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
    pub platform: Platform,
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
        // Attestations and other artifacts have no real platform; they are not images.
        let Some(p) = &m.platform else { continue };
        if p.os == "unknown" || p.architecture == "unknown" {
            continue;
        }
        if !m.media_type.is_empty()
            && m.media_type != OCI_MANIFEST
            && m.media_type != DOCKER_MANIFEST
        {
            continue;
        }
        let (digest, size) = descriptor(&m, image, "index entry")?;
        entries.push(IndexEntry {
            digest,
            size,
            media_type: m.media_type.clone(),
            platform: Platform {
                os: p.os.clone(),
                architecture: p.architecture.clone(),
                variant: p.variant.clone().filter(|v| !v.is_empty()),
            },
        });
    }
    Ok(Document::Index(entries, nested))
}

fn parse_manifest(raw: RawDocument, media_type: String, image: &str) -> Result<Document> {
    let config = raw
        .config
        .ok_or_else(|| Error::image(image, "manifest has no config"))?;
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(Error::image(
            image,
            format!(
                "not a container image: config media type {}",
                config.media_type
            ),
        ));
    }
    let (config_digest, config_size) = descriptor(&config, image, "config")?;
    let mut layers = Vec::new();
    for l in raw.layers.unwrap_or_default() {
        let (digest, size) = descriptor(&l, image, "layer")?;
        if layer_compression(&l.media_type).is_none() {
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
    Ok(Document::Manifest(Manifest {
        media_type,
        config_digest,
        config_size,
        layers,
    }))
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

/// Picks the index entries to convert; an empty result is an error naming what was offered.
pub fn select_platforms(
    entries: &[IndexEntry],
    selection: &PlatformSelection,
    image: &str,
) -> Result<Vec<IndexEntry>> {
    let picked: Vec<IndexEntry> = match selection {
        PlatformSelection::All => entries.to_vec(),
        other => {
            let want = other.preferred();
            entries
                .iter()
                .find(|e| want.accepts(&e.platform))
                .cloned()
                .into_iter()
                .collect()
        }
    };
    if picked.is_empty() {
        let offered: Vec<String> = entries.iter().map(|e| e.platform.to_string()).collect();
        let why = if offered.is_empty() {
            // Only attestations, artifacts or unknown media types: say so, not "offers: none".
            "the index lists no image manifest with a platform".to_owned()
        } else {
            format!("the index offers: {}", offered.join(", "))
        };
        return Err(Error::image(
            image,
            format!("no manifest for platform {} ({why})", selection.preferred()),
        ));
    }
    Ok(picked)
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
            assert_eq!(one[0].digest.hex(), hex('b'));
            assert_eq!(one[0].size, 11);
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
