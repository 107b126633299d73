//! CVMFS keys, repository certificate, whitelist and manifest signing and verification.
