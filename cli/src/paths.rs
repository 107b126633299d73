//! Where things live: the home directory and repository paths given on the command line.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// `--home`, else `$CVMFS_OCI_HOME` (clap reads it), else a per-user or system location.
pub fn home_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(home) = flag {
        return home;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/cvmfs-oci");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(data).join("cvmfs-oci");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/cvmfs-oci"),
        None => PathBuf::from("/var/lib/cvmfs-oci"),
    }
}

/// Turns a `--path` argument into a repository path (`/a/b`; the root is empty).
/// Refuses relative paths, `.`/`..` components, empty components and NUL bytes, so nothing
/// can be published outside the repository.
pub fn repo_path(arg: &str) -> Result<Vec<u8>> {
    option_path("--path", arg)
}

/// [`repo_path`] for the value of `option` (named in the errors).
pub fn option_path(option: &str, arg: &str) -> Result<Vec<u8>> {
    if !arg.starts_with('/') {
        bail!("{option} {arg:?}: must be an absolute repository path such as /software/app");
    }
    if arg.contains('\0') {
        bail!("{option} {arg:?}: contains a NUL byte");
    }
    let mut out = Vec::new();
    for part in arg.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            bail!("{option} {arg:?}: '.' and '..' are not allowed (it would leave the repository)");
        }
        out.push(b'/');
        out.extend_from_slice(part.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths() {
        assert_eq!(repo_path("/").unwrap(), b"");
        assert_eq!(repo_path("/a//b/").unwrap(), b"/a/b");
        assert!(repo_path("a/b").is_err());
        assert!(repo_path("/a/../b").is_err());
        assert!(repo_path("/a/./b").is_err());
        assert!(repo_path("/a\0b").is_err());
        let err = option_path("--delete", "../etc").unwrap_err().to_string();
        assert!(err.starts_with("--delete \"../etc\""), "{err}");
    }
}
