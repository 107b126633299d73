//! The image source abstraction: resolve a reference to images (manifest + config) and open
//! their layers as verified byte streams.

use super::digest::{Checked, Digest, VerifyingReader};
use super::error::{Error, Result};
use super::manifest::{
    layer_compression, parse_document, select_platforms, Document, ImageConfig, IndexEntry,
    LayerDescriptor, Manifest, NestedIndex, PlatformSelection,
};
use super::reference::{ImageName, Platform};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// A platform-specific image manifest, before its config is read. Enough to compute where the
/// image goes in the repository (the flat directory is named after the config digest), so an
/// unchanged image costs only manifest requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// The reference as the user wrote it, for messages.
    pub reference: String,
    /// The name links and metadata get in the repository.
    pub name: ImageName,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerDescriptor>,
    /// From the index entry; `None` for a single-platform image until its config is read.
    pub platform: Option<Platform>,
    /// Whether the manifest was picked from an index (manifest list).
    pub from_index: bool,
    /// Index entries left out for this one because they would get the same link names
    /// (`linux/arm64` and `linux/arm64/v8` with `--all-platforms`): digest and platform.
    /// [`ImageManifest::same_link_warnings`] words them for the user.
    /// An entry without a platform (`None`), listed beside entries with one, is left out too.
    pub same_links: Vec<(Digest, Option<Platform>)>,
    /// The platform `--platform` asked for, when this manifest is an index entry without a
    /// platform taken as the fallback: its config must declare one that fits (as containerd
    /// checks), or another machine's image would be converted without a word.
    pub config_must_fit: Option<Platform>,
}

impl ImageManifest {
    /// One line per index entry in [`ImageManifest::same_links`]: which entry was not
    /// converted and which one took its link instead.
    pub fn same_link_warnings(&self) -> Vec<String> {
        let Some(kept) = &self.platform else {
            return Vec::new();
        };
        self.same_links
            .iter()
            .map(|(digest, platform)| match platform {
                Some(platform) => format!(
                    "{}: index entry {digest} ({platform}) is not converted: its link {}@{} \
                     goes to index entry {} ({kept}) (convert it by digest to have it)",
                    self.reference,
                    self.name,
                    kept.link_suffix(),
                    self.manifest_digest,
                ),
                None => format!(
                    "{}: index entry {digest} has no platform in the index, beside entries \
                     that have one: not converted with --all-platforms, which could not name \
                     its link (convert it by digest to have it)",
                    self.reference,
                ),
            })
            .collect()
    }
}

/// An image ready to convert: manifest, config and layer list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    pub reference: String,
    pub name: ImageName,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<LayerDescriptor>,
    pub platform: Platform,
    pub from_index: bool,
}

impl ResolvedImage {
    /// Joins a manifest with its (already digest-checked) config bytes; checks that the config
    /// lists one diff_id per layer.
    pub fn new(manifest: ImageManifest, config_bytes: Vec<u8>) -> Result<ResolvedImage> {
        let config = ImageConfig::parse(&config_bytes, &manifest.reference)?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(Error::image(
                &manifest.reference,
                format!(
                    "config lists {} diff_ids for {} layers",
                    config.diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        let platform = manifest
            .platform
            .clone()
            .unwrap_or_else(|| config.platform());
        if let Some(wanted) = &manifest.config_must_fit {
            if !wanted.accepts(&platform) {
                return Err(Error::image(
                    &manifest.reference,
                    format!(
                        "index entry {} lists no platform and its config says {platform}, \
                         not {wanted}",
                        manifest.manifest_digest
                    ),
                ));
            }
        }
        Ok(ResolvedImage {
            reference: manifest.reference,
            name: manifest.name,
            manifest_digest: manifest.manifest_digest,
            manifest_bytes: manifest.manifest_bytes,
            manifest_media_type: manifest.manifest_media_type,
            config_digest: manifest.config_digest,
            config_bytes,
            config,
            layers: manifest.layers,
            platform,
            from_index: manifest.from_index,
        })
    }

    /// The layer's descriptor, or an error naming the image.
    pub fn layer(&self, index: usize) -> Result<&LayerDescriptor> {
        self.layers.get(index).ok_or_else(|| {
            Error::image(
                &self.reference,
                format!("has no layer #{index} ({} layers)", self.layers.len()),
            )
        })
    }
}

/// Where images come from: a registry, an OCI layout or a docker archive.
pub trait ImageSource: Send + Sync {
    /// The reference this source reads, for messages.
    fn describe(&self) -> String;

    /// Reads the manifest (and the index, if any) and picks the platforms to convert.
    fn resolve_manifests(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>>;

    /// Reads and digest-checks the config blob of a resolved manifest.
    fn fetch_config(&self, manifest: &ImageManifest) -> Result<Vec<u8>>;

    /// Opens the stored (compressed) layer blob. The stream checks size and sha256 against
    /// the descriptor and fails at its end on a mismatch.
    fn open_layer(&self, image: &ResolvedImage, index: usize) -> Result<Box<dyn Read + Send>>;

    /// Manifests plus configs: everything needed to convert.
    fn resolve(&self, selection: &PlatformSelection) -> Result<Vec<ResolvedImage>> {
        self.resolve_manifests(selection)?
            .into_iter()
            .map(|m| {
                let config = self.fetch_config(&m)?;
                ResolvedImage::new(m, config)
            })
            .collect()
    }
}

/// Checks config bytes against the manifest's config descriptor (digest and size).
pub(crate) fn check_config(
    bytes: Vec<u8>,
    manifest: &ImageManifest,
    image: &str,
) -> Result<Vec<u8>> {
    check_blob(
        &bytes,
        &manifest.config_digest,
        Some(manifest.config_size),
        image,
        "config",
    )?;
    Ok(bytes)
}

/// Checks a blob already held in memory (manifest or config) against its descriptor.
pub(crate) fn check_blob(
    bytes: &[u8],
    digest: &Digest,
    size: Option<u64>,
    image: &str,
    what: &str,
) -> Result<()> {
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(Error::image(
                image,
                format!(
                    "{what} {digest}: size {} differs from the declared {size}",
                    bytes.len()
                ),
            ));
        }
    }
    let got = Digest::of(bytes);
    if &got != digest {
        return Err(Error::image(
            image,
            format!("{what} {digest}: digest mismatch (got {got})"),
        ));
    }
    Ok(())
}

/// The first image error the blob stream raised. Decoders may wrap or flatten errors of the
/// stream they read; this keeps the original (digest mismatch, truncation, registry failure)
/// so it is what the caller sees.
type ErrorSlot = Arc<Mutex<Option<Error>>>;

/// The compressed blob as the decoder sees it.
struct CapturingBlob {
    blob: Box<dyn Read + Send>,
    slot: ErrorSlot,
}

impl Read for CapturingBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.blob
            .read(buf)
            .map_err(|err| match err.downcast::<Error>() {
                Ok(own) => {
                    let text = own.to_string();
                    let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(own);
                    io::Error::other(text)
                }
                Err(other) => other,
            })
    }
}

/// The decompressed side of a layer. Decoding starts on the first read: opening a layer
/// costs nothing, so callers may open every layer before reading any without tying up
/// registry connections. Decoding failures become layer errors naming the image.
struct DecodedLayer {
    state: DecodeState,
    slot: ErrorSlot,
    image: String,
    layer: String,
    /// The blob digest equals the diff_id, so its check covers the tar and the blob must be
    /// one (a compressed blob cannot hash to what its content hashes to).
    plain_only: bool,
}

enum DecodeState {
    Pending(CapturingBlob),
    Active(Box<dyn Read + Send>),
    /// Starting failed; the error was returned.
    Failed,
}

impl DecodedLayer {
    /// The blob's own error if it raised one, else `fallback` as a layer error.
    fn error(&self, fallback: String) -> io::Error {
        let captured = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        captured
            .unwrap_or_else(|| Error::layer(&self.image, &self.layer, fallback))
            .into_io()
    }

    fn start(&mut self) -> io::Result<()> {
        let DecodeState::Pending(blob) = std::mem::replace(&mut self.state, DecodeState::Failed)
        else {
            return Ok(());
        };
        let name = format!("image {} layer {}", self.image, self.layer);
        match crate::decode::open_detected_stream(&name, blob) {
            Ok((format, _)) if self.plain_only && format != crate::decode::Format::Tar => Err(self
                .error(format!(
                    "the blob is {format:?}-compressed, yet its digest is the config's diff_id \
                     (the digest of the uncompressed tar)"
                ))),
            Ok((_, decoder)) => {
                self.state = DecodeState::Active(decoder);
                Ok(())
            }
            Err(crate::error::Error::Decode { msg, .. }) => Err(self.error(msg)),
            Err(other) => Err(self.error(other.to_string())),
        }
    }
}

impl Read for DecodedLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let DecodeState::Pending(_) = self.state {
            self.start()?;
        }
        let DecodeState::Active(decoder) = &mut self.state else {
            return Err(io::Error::other(format!(
                "image {} layer {}: stream failed earlier",
                self.image, self.layer
            )));
        };
        match decoder.read(buf) {
            Ok(n) => Ok(n),
            Err(err) => Err(self.error(format!("corrupt compressed data: {err}"))),
        }
    }
}

/// Opens layer `index` of `image` as an uncompressed tar stream (compression recognised by
/// `decode::open_layer_stream` from the magic bytes). The blob digest is checked on the
/// compressed bytes, the diff_id on the uncompressed ones; either mismatch fails the read
/// that reaches the end of the stream, with an error naming image and layer. Callers must
/// therefore read to the end (a tar reader stops at the end-of-archive blocks: drain the rest
/// with `io::copy(&mut stream, &mut io::sink())`).
pub fn open_uncompressed_layer(
    source: &dyn ImageSource,
    image: &ResolvedImage,
    index: usize,
) -> Result<Box<dyn Read + Send>> {
    let desc = image.layer(index)?;
    let layer = desc.digest.to_string();
    if layer_compression(&desc.media_type).is_none() {
        return Err(Error::layer(
            &image.reference,
            &layer,
            format!("unknown layer media type {:?}", desc.media_type),
        ));
    }
    let diff_id = image.config.diff_ids.get(index).cloned().ok_or_else(|| {
        Error::layer(
            &image.reference,
            &layer,
            "the config has no diff_id for this layer",
        )
    })?;
    let slot = ErrorSlot::default();
    // An uncompressed blob: the blob digest check already hashes exactly the tar.
    let plain_only = desc.digest == diff_id;
    let decoded = DecodedLayer {
        state: DecodeState::Pending(CapturingBlob {
            blob: source.open_layer(image, index)?,
            slot: slot.clone(),
        }),
        slot,
        image: image.reference.clone(),
        layer: layer.clone(),
        plain_only,
    };
    if plain_only {
        return Ok(Box::new(decoded));
    }
    Ok(Box::new(VerifyingReader::new(
        decoded,
        diff_id,
        None,
        &image.reference,
        &layer,
        Checked::DiffId,
    )))
}

/// A fetched document: bytes and, when known, the content type.
pub(crate) type Fetched = (Vec<u8>, Option<String>);
/// Fetches the manifest (or nested index) of a digest and size an index names.
pub(crate) type FetchManifest<'a> = dyn Fn(&Digest, u64) -> Result<Fetched> + 'a;

/// Most index levels followed below the top one: containerd follows nested indexes, real
/// images nest one level at most; the bound keeps a hostile or cyclic chain finite.
pub const MAX_NESTED_INDEXES: usize = 4;

/// Turns a top-level manifest document into the manifests to convert: itself, or the
/// selected entries of an index, fetched with `fetch` (which returns the bytes and, when
/// known, their content type; digests are checked here). Nested indexes are followed (up to
/// [`MAX_NESTED_INDEXES`] levels) and their entries offered with the top index's own.
pub(crate) fn resolve_document(
    reference: &str,
    name: &ImageName,
    top: Fetched,
    selection: &PlatformSelection,
    fetch: &FetchManifest<'_>,
) -> Result<Vec<ImageManifest>> {
    let (bytes, content_type) = top;
    let (mut entries, mut nested) =
        match parse_document(&bytes, content_type.as_deref(), reference)? {
            Document::Manifest(m) => {
                return Ok(vec![image_manifest(reference, name, bytes, m, None)])
            }
            Document::Index(entries, nested) => (entries, nested),
        };
    let mut fetched = std::collections::HashSet::new();
    for depth in 1.. {
        if nested.is_empty() {
            break;
        }
        if depth > MAX_NESTED_INDEXES {
            return Err(Error::image(
                reference,
                format!(
                    "index entry {} is an index nested more than {MAX_NESTED_INDEXES} levels deep (not supported)",
                    nested[0].digest
                ),
            ));
        }
        let mut deeper = Vec::new();
        for n in nested {
            // Each nested index once: one listing another many times over several levels
            // would otherwise be fetched, and its entries kept, K^levels times.
            if !fetched.insert(n.digest.clone()) {
                continue;
            }
            let (e, d) = fetch_nested(reference, &n, fetch)?;
            entries.extend(e);
            deeper.extend(d);
        }
        nested = deeper;
    }
    let mut out = Vec::new();
    for selected in select_platforms(&entries, selection, reference)? {
        let entry = selected.entry;
        let (bytes, content_type) = fetch(&entry.digest, entry.size)?;
        check_blob(
            &bytes,
            &entry.digest,
            Some(entry.size),
            reference,
            "manifest",
        )?;
        let ct = content_type.or_else(|| Some(entry.media_type.clone()).filter(|m| !m.is_empty()));
        match parse_document(&bytes, ct.as_deref(), reference)? {
            Document::Manifest(m) => {
                let fit = match (&entry.platform, selection) {
                    (None, PlatformSelection::One(wanted)) => Some(wanted.clone()),
                    _ => None,
                };
                let mut image = image_manifest(reference, name, bytes, m, entry.platform);
                image.from_index = true;
                image.config_must_fit = fit;
                image.same_links = selected
                    .same_links
                    .into_iter()
                    .map(|e| (e.digest, e.platform))
                    .collect();
                out.push(image);
            }
            Document::Index(..) => {
                return Err(Error::image(
                    reference,
                    format!("index entry {} is itself an index", entry.digest),
                ))
            }
        }
    }
    Ok(out)
}

/// The entries and nested indexes of the nested index `n`.
fn fetch_nested(
    reference: &str,
    n: &NestedIndex,
    fetch: &FetchManifest<'_>,
) -> Result<(Vec<IndexEntry>, Vec<NestedIndex>)> {
    let (bytes, content_type) = fetch(&n.digest, n.size)?;
    check_blob(&bytes, &n.digest, Some(n.size), reference, "nested index")?;
    let ct = content_type.or_else(|| Some(n.media_type.clone()));
    match parse_document(&bytes, ct.as_deref(), reference)? {
        Document::Index(entries, nested) => Ok((entries, nested)),
        Document::Manifest(_) => Err(Error::image(
            reference,
            format!(
                "index entry {} says it is an index but is a manifest",
                n.digest
            ),
        )),
    }
}

fn image_manifest(
    reference: &str,
    name: &ImageName,
    bytes: Vec<u8>,
    m: Manifest,
    platform: Option<Platform>,
) -> ImageManifest {
    ImageManifest {
        reference: reference.to_owned(),
        name: name.clone(),
        manifest_digest: Digest::of(&bytes),
        manifest_bytes: bytes,
        manifest_media_type: m.media_type,
        config_digest: m.config_digest,
        config_size: m.config_size,
        layers: m.layers,
        from_index: false,
        platform,
        same_links: Vec::new(),
        config_must_fit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{OCI_INDEX, OCI_MANIFEST};
    use std::collections::BTreeMap;

    /// Image manifests (config blob included) and an index over them, kept in memory.
    struct Store {
        docs: BTreeMap<Digest, Vec<u8>>,
        configs: BTreeMap<Digest, Vec<u8>>,
    }

    impl Store {
        /// Adds an image whose config says `arch`; returns its manifest descriptor JSON
        /// with `platform` (a JSON object, or none).
        fn image(&mut self, arch: &str, platform: Option<&str>) -> String {
            let config = format!(
                r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            )
            .into_bytes();
            let config_digest = Digest::of(&config);
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":
                  "application/vnd.oci.image.config.v1+json","digest":"{config_digest}",
                  "size":{}}},"layers":[]}}"#,
                config.len()
            )
            .into_bytes();
            let digest = Digest::of(&manifest);
            let size = manifest.len();
            self.configs.insert(config_digest, config);
            self.docs.insert(digest.clone(), manifest);
            let platform = platform.map_or(String::new(), |p| format!(r#","platform":{p}"#));
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{size}{platform}}}"#
            )
        }

        /// The manifests an index of `entries` resolves to.
        fn manifests(
            &self,
            entries: &[String],
            selection: &PlatformSelection,
        ) -> Result<Vec<ImageManifest>> {
            let index = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                entries.join(",")
            );
            let name = super::super::RegistryRef::parse("127.0.0.1:5000/r:t")
                .unwrap()
                .name();
            let fetch = |d: &Digest, _: u64| -> Result<Fetched> {
                Ok((self.docs.get(d).cloned().unwrap_or_default(), None))
            };
            resolve_document(
                "docker://127.0.0.1:5000/r:t",
                &name,
                (index.into_bytes(), None),
                selection,
                &fetch,
            )
        }

        /// [`Store::manifests`] with their configs.
        fn resolve(
            &self,
            entries: &[String],
            selection: &PlatformSelection,
        ) -> Result<Vec<ResolvedImage>> {
            self.manifests(entries, selection)?
                .into_iter()
                .map(|m| {
                    let config = self.configs[&m.config_digest].clone();
                    ResolvedImage::new(m, config)
                })
                .collect()
        }
    }

    fn store() -> Store {
        Store {
            docs: BTreeMap::new(),
            configs: BTreeMap::new(),
        }
    }

    /// Entries without a platform are used when nothing with one fits; their config then
    /// gives the platform, as for a plain manifest.
    #[test]
    fn index_entries_without_platform_are_the_fallback() {
        let mut s = store();
        let bare_arm = s.image("arm64", None);
        let bare_amd = s.image("amd64", None);
        let got = s
            .resolve(std::slice::from_ref(&bare_arm), &PlatformSelection::Host)
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].platform.to_string(), "linux/arm64");
        assert!(got[0].from_index);
        // A platform asked for by name must be the one the config declares (as containerd
        // checks): not another machine's image without a word.
        let one = PlatformSelection::One(Platform::parse("linux/s390x").unwrap());
        let err = s
            .resolve(std::slice::from_ref(&bare_arm), &one)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lists no platform and its config says linux/arm64, not linux/s390x"),
            "{err}"
        );
        let arm = PlatformSelection::One(Platform::parse("linux/arm64").unwrap());
        assert_eq!(
            s.resolve(std::slice::from_ref(&bare_arm), &arm)
                .unwrap()
                .len(),
            1
        );
        // With --all-platforms, one without a platform beside one with it is left out, and
        // said, rather than lost without a word.
        let arm64 = s.image("arm64", Some(r#"{"os":"linux","architecture":"arm64"}"#));
        let all = s
            .resolve(&[arm64, bare_amd.clone()], &PlatformSelection::All)
            .unwrap();
        assert_eq!(all.len(), 1);
        let all = s
            .resolve(
                &[bare_arm.clone(), bare_amd.clone()],
                &PlatformSelection::All,
            )
            .unwrap();
        let platforms: Vec<String> = all.iter().map(|i| i.platform.to_string()).collect();
        assert_eq!(platforms, ["linux/arm64", "linux/amd64"]);
        // An entry with a fitting platform wins; with an incomplete one it is skipped.
        let s390 = s.image("s390x", Some(r#"{"os":"linux","architecture":"s390x"}"#));
        let attestation = s.image("unknown", Some(r#"{"os":"unknown"}"#));
        let want = PlatformSelection::One(Platform::parse("linux/s390x").unwrap());
        let got = s
            .resolve(&[bare_amd, attestation.clone(), s390], &want)
            .unwrap();
        assert_eq!(got[0].platform.to_string(), "linux/s390x");
        let err = s.resolve(&[attestation], &want).unwrap_err().to_string();
        assert!(err.contains("the index lists no image manifest"), "{err}");
    }

    /// `All` leaves out an entry without a platform beside entries with one, and says so.
    #[test]
    fn an_entry_without_platform_beside_others_is_reported() {
        let mut s = store();
        let arm64 = s.image("arm64", Some(r#"{"os":"linux","architecture":"arm64"}"#));
        let bare = s.image("amd64", None);
        let got = s
            .manifests(&[arm64, bare], &PlatformSelection::All)
            .unwrap();
        assert_eq!(got.len(), 1);
        let warnings = got[0].same_link_warnings();
        let dropped = &got[0].same_links[0].0;
        assert_eq!(
            warnings,
            [format!(
                "docker://127.0.0.1:5000/r:t: index entry {dropped} has no platform in the \
                 index, beside entries that have one: not converted with --all-platforms, \
                 which could not name its link (convert it by digest to have it)"
            )]
        );
    }

    /// `All` leaves out an entry whose link name another takes, and says so.
    #[test]
    fn same_link_entries_are_reported() {
        let mut s = store();
        let arm64 = s.image("arm64", Some(r#"{"os":"linux","architecture":"arm64"}"#));
        let v8 = s.image(
            "arm64",
            Some(r#"{"os":"linux","architecture":"arm64","variant":"v8","os.version":"x"}"#),
        );
        let got = s.manifests(&[arm64, v8], &PlatformSelection::All).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].same_links.len(), 1);
        let warnings = got[0].same_link_warnings();
        assert_eq!(warnings.len(), 1);
        let dropped = &got[0].same_links[0].0;
        assert_eq!(
            warnings[0],
            format!(
                "docker://127.0.0.1:5000/r:t: index entry {dropped} (linux/arm64/v8) is not \
                 converted: its link 127.0.0.1:5000/r:t@linux-arm64 goes to index entry {} \
                 (linux/arm64) (convert it by digest to have it)",
                got[0].manifest_digest
            )
        );
    }
}
