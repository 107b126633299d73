//! Errors of image access; every message names the image (and layer or file) involved.

use std::io;

/// What went wrong while reading an image or a recipe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference text itself is malformed.
    #[error("invalid image reference {input:?}: {reason}")]
    Reference { input: String, reason: String },
    /// A platform (`--platform`) is malformed.
    #[error("invalid platform {input:?}: {reason}")]
    Platform { input: String, reason: String },
    /// The image (manifest, index, config) is unusable.
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    /// The manifest is not a container image: a signature, attestation, SBOM or other OCI
    /// artifact (told by its config and layer media types and its `artifactType`). Kept apart
    /// from [`Error::Image`] so that a batch that lists tags can skip such tags.
    #[error("image {image}: not a container image: {reason}")]
    NotAnImage { image: String, reason: String },
    /// An index lists images, but none for the platform asked for (an `arm64`-only image on an
    /// `amd64` host). Kept apart from [`Error::Image`] so that a batch that lists tags can
    /// skip such tags.
    #[error("image {image}: {reason}")]
    NoPlatform { image: String, reason: String },
    /// One layer of the image is unusable (digest, size, media type, compression).
    #[error("image {image} layer {layer}: {reason}")]
    Layer {
        image: String,
        layer: String,
        reason: String,
    },
    /// A registry request failed (after retries where they apply).
    #[error("image {image}: {url}: {reason}")]
    Registry {
        image: String,
        url: String,
        /// HTTP status when the registry answered at all.
        status: Option<u16>,
        reason: String,
    },
    /// Reading a local file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Registry credentials could not be read.
    #[error("registry credentials {origin}: {reason}")]
    Credentials { origin: String, reason: String },
    /// A DUCC recipe (wishlist) is malformed.
    #[error("recipe {path}: {reason}")]
    Recipe { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn image(image: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Image {
            image: image.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_an_image(image: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::NotAnImage {
            image: image.into(),
            reason: reason.into(),
        }
    }

    /// Whether this is [`Error::NotAnImage`]: the manifest is a signature or an artifact.
    pub fn is_not_an_image(&self) -> bool {
        matches!(self, Error::NotAnImage { .. })
    }

    pub(crate) fn layer(
        image: impl Into<String>,
        layer: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Layer {
            image: image.into(),
            layer: layer.into(),
            reason: reason.into(),
        }
    }

    /// Recovers an image error carried through `std::io::Read` (layer streams report digest
    /// and registry failures as `io::Error`s wrapping this type), else wraps the I/O error.
    pub fn from_io(context: impl Into<String>, err: io::Error) -> Error {
        match err.downcast::<Error>() {
            Ok(own) => own,
            Err(other) => Error::io(context, other),
        }
    }

    /// This error with `scrub` applied to the texts in it that may quote a server's answer
    /// (reasons and URLs).
    pub(crate) fn scrubbed(self, scrub: impl Fn(&str) -> String) -> Error {
        match self {
            Error::Reference { input, reason } => Error::Reference {
                input,
                reason: scrub(&reason),
            },
            platform @ Error::Platform { .. } => platform,
            Error::Image { image, reason } => Error::Image {
                image,
                reason: scrub(&reason),
            },
            Error::NotAnImage { image, reason } => Error::NotAnImage {
                image,
                reason: scrub(&reason),
            },
            Error::NoPlatform { image, reason } => Error::NoPlatform {
                image,
                reason: scrub(&reason),
            },
            Error::Layer {
                image,
                layer,
                reason,
            } => Error::Layer {
                image,
                layer,
                reason: scrub(&reason),
            },
            Error::Registry {
                image,
                url,
                status,
                reason,
            } => Error::Registry {
                image,
                url: scrub(&url),
                status,
                reason: scrub(&reason),
            },
            Error::Credentials { origin, reason } => Error::Credentials {
                origin,
                reason: scrub(&reason),
            },
            Error::Recipe { path, reason } => Error::Recipe {
                path,
                reason: scrub(&reason),
            },
            // Local file errors hold no server text.
            io @ Error::Io { .. } => io,
        }
    }

    /// This error as an `io::Error`, for `Read` implementations.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}
