//! Container images as input: references (`docker://`, `oci:`, `docker-archive:`), registry
//! access, manifests and platform selection, and layers as verified byte streams. Layers are
//! never extracted: they stream from the registry or file straight to the caller.
//!
//! ```no_run
//! use ingest::image::{open_uncompressed_layer, ImageRef, PlatformSelection, Sources, RegistryOptions};
//! let sources = Sources::new(RegistryOptions::default());
//! let source = sources.open(&ImageRef::parse("oci:/tmp/testbed/oci:python")?)?;
//! for image in source.resolve(&PlatformSelection::Host)? {
//!     for i in 0..image.layers.len() {
//!         let mut tar = tar::Archive::new(open_uncompressed_layer(source.as_ref(), &image, i)?);
//!         println!("{} layer {i}: {} entries", image.name, tar.entries()?.count());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
pub mod digest;
pub mod docker_archive;
mod error;
mod local_file;
pub mod manifest;
pub mod oci_layout;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod source;

pub use auth::{AuthStore, Credentials, Secret};
pub use digest::Digest;
pub use docker_archive::DockerArchiveSource;
pub use error::{Error, Result};
pub use manifest::{ImageConfig, LayerDescriptor, PlatformSelection};
pub use oci_layout::OciLayoutSource;
pub use reference::{ImageName, ImageRef, NameRef, Platform, RegistryRef};
pub use registry::{
    RegistryClient, RegistryOptions, RegistrySource, Retry, RetryNotices, SYSTEM_CERTS_DIRS,
};
pub use source::{open_uncompressed_layer, ImageManifest, ImageSource, ResolvedImage};

use std::sync::{Arc, Mutex};

/// Opens sources for references; the registry client is made on first use and shared.
pub struct Sources {
    options: RegistryOptions,
    client: Mutex<Option<Arc<RegistryClient>>>,
}

impl Sources {
    pub fn new(options: RegistryOptions) -> Sources {
        Sources {
            options,
            client: Mutex::new(None),
        }
    }

    /// The shared registry client (for `list_tags`, `catalog`).
    pub fn registry(&self) -> Result<Arc<RegistryClient>> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(RegistryClient::new(self.options.clone())?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The source for one reference.
    pub fn open(&self, reference: &ImageRef) -> Result<Box<dyn ImageSource>> {
        Ok(match reference {
            ImageRef::Registry(r) => Box::new(RegistrySource::new(self.registry()?, r.clone())),
            ImageRef::OciLayout { dir, tag } => Box::new(OciLayoutSource::new(dir, tag.as_deref())),
            ImageRef::DockerArchive { path, tag } => {
                Box::new(DockerArchiveSource::open(path, tag.as_deref())?)
            }
        })
    }
}

impl From<Error> for crate::error::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { context, source } => crate::error::Error::Io {
                path: context,
                source,
            },
            Error::Image { image, reason } => crate::error::Error::Image { image, msg: reason },
            Error::NotAnImage { image, reason } => crate::error::Error::Image {
                image,
                msg: format!("not a container image: {reason}"),
            },
            Error::NoPlatform { image, reason } => {
                crate::error::Error::Image { image, msg: reason }
            }
            Error::Layer {
                image,
                layer,
                reason,
            } => crate::error::Error::Image {
                // `image X layer Y: …`, as every other layer error reads.
                image: format!("{image} layer {layer}"),
                msg: reason,
            },
            Error::Registry {
                image, url, reason, ..
            } => crate::error::Error::Image {
                image,
                msg: format!("{url}: {reason}"),
            },
            other => crate::error::Error::Decode {
                archive: "image input".to_owned(),
                msg: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
