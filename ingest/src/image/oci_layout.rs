//! `oci:DIR[:REF]`: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).

use super::digest::{Checked, Digest, VerifyingReader};
use super::error::{Error, Result};
use super::local_file::{open_regular, read_document_file};
use super::manifest::{descriptor, PlatformSelection, RawDescriptor};
use super::reference::ImageName;
use super::source::{check_blob, resolve_document, ImageManifest, ImageSource, ResolvedImage};
use serde::Deserialize;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<RawDescriptor>,
}

/// Reads images from an OCI image layout.
pub struct OciLayoutSource {
    dir: PathBuf,
    tag: Option<String>,
    reference: String,
}

impl OciLayoutSource {
    /// A layout directory and, optionally, the `ref.name` to read (else its only image).
    pub fn new(dir: &Path, tag: Option<&str>) -> OciLayoutSource {
        let reference = match tag {
            Some(t) => format!("oci:{}:{t}", dir.display()),
            None => format!("oci:{}", dir.display()),
        };
        OciLayoutSource {
            dir: dir.to_owned(),
            tag: tag.map(str::to_owned),
            reference,
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Reads blob `digest`, a `what` (manifest, config) of `size` bytes when a descriptor
    /// says so; never more than that size or the document cap.
    fn read_blob(&self, digest: &Digest, size: Option<u64>, what: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = read_document_file(&path, size, &self.reference, &format!("{what} {digest}"))?;
        check_blob(&bytes, digest, size, &self.reference, what)?;
        Ok(bytes)
    }

    /// The `index.json` entry this source stands for.
    fn pick_entry(&self) -> Result<RawDescriptor> {
        let path = self.dir.join("index.json");
        let bytes = read_document_file(&path, None, &self.reference, "index.json")?;
        let index: LayoutIndex = serde_json::from_slice(&bytes).map_err(|e| {
            Error::image(
                &self.reference,
                format!("{} is not a valid index: {e}", path.display()),
            )
        })?;
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        let found = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME) == Some(tag)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        };
        found.cloned().ok_or_else(|| {
            let wanted = match &self.tag {
                Some(t) => format!("no image named {t:?}"),
                None => "several images and no name given".to_owned(),
            };
            Error::image(
                &self.reference,
                format!("{wanted} (names in the layout: {})", names.join(", ")),
            )
        })
    }

    /// The image name. A `ref.name` that is a full reference (with `/` or `:`) names the image
    /// itself. One that is only a tag, as `skopeo copy … oci:DIR:TAG`, buildah, umoci and
    /// `buildx --output type=oci` write it, is that tag of the repository named after the
    /// layout directory, as a layout without ref names is (with tag `latest`): two layouts
    /// tagged `latest` must not take each other's link.
    fn name(&self, entry: &RawDescriptor) -> Result<ImageName> {
        let ref_name = self
            .tag
            .clone()
            .or_else(|| entry.annotations.get(REF_NAME).cloned());
        let candidate = match ref_name {
            Some(full) if full.contains(['/', ':']) => full,
            Some(tag) => return self.dir_repository_name(Some(&tag)),
            None => return self.dir_repository_name(None),
        };
        ImageName::for_local(&candidate).map_err(|why| {
            Error::image(
                &self.reference,
                format!("{candidate:?} is not usable as an image name: {why}"),
            )
        })
    }

    /// `/local/<directory name>:<tag>` (`latest` without one).
    fn dir_repository_name(&self, tag: Option<&str>) -> Result<ImageName> {
        let dir_name = layout_dir_name(&self.dir).unwrap_or_default();
        let candidate = match tag {
            Some(t) => format!("{dir_name}:{t}"),
            None => dir_name.clone(),
        };
        ImageName::for_local(&candidate).map_err(|why| {
            let what = match tag {
                Some(t) => format!(
                    "ref name {t:?} is a tag of the repository named after the layout directory, \
                     but the directory name {dir_name:?} is not usable as one"
                ),
                None => format!(
                    "the layout has no ref name and its directory name {dir_name:?} is not \
                     usable as an image name"
                ),
            };
            Error::image(&self.reference, format!("{what}: {why}"))
        })
    }
}

/// The last component of the layout directory (`oci:.` and `oci:..` name the directory
/// they resolve to).
fn layout_dir_name(dir: &Path) -> Option<String> {
    let last = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    last(dir).or_else(|| last(&std::fs::canonicalize(dir).ok()?))
}

impl ImageSource for OciLayoutSource {
    fn describe(&self) -> String {
        self.reference.clone()
    }

    fn resolve_manifests(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>> {
        let entry = self.pick_entry()?;
        let (digest, size) = descriptor(&entry, &self.reference, "index.json manifest")?;
        let top = self.read_blob(&digest, Some(size), "manifest")?;
        let media_type = Some(entry.media_type.clone()).filter(|m| !m.is_empty());
        let name = self.name(&entry)?;
        let fetch = |digest: &Digest, size: u64| -> Result<(Vec<u8>, Option<String>)> {
            Ok((self.read_blob(digest, Some(size), "manifest")?, None))
        };
        resolve_document(&self.reference, &name, (top, media_type), selection, &fetch)
    }

    fn fetch_config(&self, manifest: &ImageManifest) -> Result<Vec<u8>> {
        self.read_blob(
            &manifest.config_digest,
            Some(manifest.config_size),
            "config",
        )
    }

    fn open_layer(&self, image: &ResolvedImage, index: usize) -> Result<Box<dyn Read + Send>> {
        let desc = image.layer(index)?;
        let path = self.blob_path(&desc.digest);
        let file = open_regular(&path).map_err(|e| {
            Error::layer(
                &image.reference,
                desc.digest.to_string(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Box::new(VerifyingReader::new(
            BufReader::with_capacity(256 * 1024, file),
            desc.digest.clone(),
            Some(desc.size),
            &image.reference,
            &desc.digest.to_string(),
            Checked::Blob,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixtures::layers::LayerBuilder;
    use fixtures::oci::{Compression, ImageBuilder};

    /// A one-layer image written into the layout `dir` under `ref_name`.
    fn write(dir: &Path, ref_name: &str) {
        let mut layer = LayerBuilder::new();
        layer.file("f", ref_name.as_bytes());
        ImageBuilder::new()
            .layer(layer.finish(), Compression::Gzip)
            .write_layout(dir, ref_name)
            .unwrap();
    }

    /// The names `oci:DIR[:REF]` resolves to.
    fn names(dir: &Path, tag: Option<&str>) -> Result<Vec<String>> {
        let source = OciLayoutSource::new(dir, tag);
        let manifests = source.resolve_manifests(&PlatformSelection::Host)?;
        Ok(manifests.iter().map(|m| m.name.to_string()).collect())
    }

    #[test]
    fn a_tag_only_ref_name_is_a_tag_of_the_directory_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let (busybox, jq) = (tmp.path().join("busybox"), tmp.path().join("jq"));
        // What `skopeo copy … oci:DIR:latest` writes, in two layouts.
        write(&busybox, "latest");
        write(&busybox, "1.0");
        write(&jq, "latest");
        let name = |dir: &Path, tag: Option<&str>| names(dir, tag).unwrap();
        assert_eq!(name(&busybox, Some("latest")), ["local/busybox:latest"]);
        assert_eq!(name(&busybox, Some("1.0")), ["local/busybox:1.0"]);
        assert_eq!(name(&jq, Some("latest")), ["local/jq:latest"]);
        // The only image, named by its tag-only ref name without it being given.
        assert_eq!(name(&jq, None), ["local/jq:latest"]);
    }

    #[test]
    fn a_full_ref_name_names_the_image_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        write(&dir, "team/app:2.0");
        write(&dir, "127.0.0.1:5000/t/multi:1");
        let name = |tag: &str| names(&dir, Some(tag)).unwrap();
        assert_eq!(name("team/app:2.0"), ["local/team/app:2.0"]);
        assert_eq!(
            name("127.0.0.1:5000/t/multi:1"),
            ["127.0.0.1:5000/t/multi:1"]
        );
    }

    #[test]
    fn without_a_ref_name_the_directory_names_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        write(&dir, "latest");
        let index_path = dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        assert_eq!(names(&dir, None).unwrap(), ["local/app:latest"]);
        // `oci:.` inside the layout: the directory it resolves to.
        assert_eq!(layout_dir_name(&dir.join(".")).as_deref(), Some("app"));
    }

    #[test]
    fn a_directory_name_unusable_as_a_repository_is_refused_for_a_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("MyApp");
        write(&dir, "latest");
        let err = names(&dir, Some("latest")).unwrap_err().to_string();
        assert!(
            err.contains("ref name \"latest\" is a tag")
                && err.contains("directory name \"MyApp\" is not usable"),
            "{err}"
        );
    }
}
