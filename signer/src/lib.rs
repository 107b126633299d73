//! CVMFS keys, repository certificate, whitelist and manifest signing and verification.
//!
//! A CernVM-FS repository is trusted through two signed files (spec §3, §4):
//! * `.cvmfswhitelist`, signed by the **master key** with raw PKCS#1 v1.5 padding over the
//!   ASCII hash text, lists the fingerprints of accepted repository certificates;
//! * `.cvmfspublished` (the manifest), signed by the **repository key** with RSA-SHA1 over the
//!   ASCII hash text, points at the root catalog and the certificate object.
//!
//! Hash texts are lowercase hex `String`s; this crate depends on no other workspace crate.
//!
//! ```
//! use signer::{Manifest, RepoKeys, Whitelist};
//!
//! # fn main() -> signer::Result<()> {
//! let fqrn = "demo.example.org";
//! let keys = RepoKeys::generate(fqrn)?;
//! let now = 1_700_000_000;
//!
//! let whitelist = Whitelist::new(fqrn, keys.fingerprint()?, now, 30);
//! let master = keys.master.as_ref().expect("generated keys have a master key");
//! let signed = whitelist.sign(master)?;
//! let checked = Whitelist::verify(&signed, &[keys.master_public.clone()], fqrn, now)?;
//! assert!(checked.lists_fingerprint(&keys.fingerprint()?));
//!
//! let manifest = Manifest {
//!     root_catalog: "0123456789abcdef0123456789abcdef01234567".into(),
//!     root_size: 57344,
//!     ttl: 240,
//!     revision: 1,
//!     gc: false,
//!     alt: false,
//!     fqrn: fqrn.into(),
//!     certificate: "89abcdef0123456789abcdef0123456789abcdef".into(),
//!     history: None,
//!     timestamp: now,
//!     meta_info: None,
//!     reflog: None,
//! };
//! let published = manifest.sign(&keys.repo_key)?;
//! assert_eq!(Manifest::verify(&published, &keys.certificate)?, manifest);
//! # Ok(())
//! # }
//! ```

mod digest;
mod envelope;
mod error;
mod keys;
mod manifest;
mod time;
mod whitelist;

pub use error::{Error, Result};
pub use keys::{
    certificate_fingerprint, load_public_key, parse_certificate_pem, PublicKey, RepoKeys,
};
pub use manifest::{Manifest, SignedManifest, ROOT_PATH_HASH};
pub use time::utc_stamp;
pub use whitelist::{SignedWhitelist, Whitelist};

/// Keys generated once per test binary: RSA generation is the slow part of these tests.
#[cfg(test)]
pub(crate) mod test_keys {
    use std::sync::OnceLock;

    use crate::RepoKeys;

    pub(crate) fn keys() -> &'static RepoKeys {
        static KEYS: OnceLock<RepoKeys> = OnceLock::new();
        KEYS.get_or_init(|| RepoKeys::generate("test.example.org").unwrap())
    }

    pub(crate) fn other_keys() -> &'static RepoKeys {
        static KEYS: OnceLock<RepoKeys> = OnceLock::new();
        KEYS.get_or_init(|| RepoKeys::generate("other.example.org").unwrap())
    }
}
