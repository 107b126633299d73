//! `/.cvmfsdirtab` (spec 2.12): rules naming directories that become nested catalogs.

use crate::entry::{EntryKind, FileData};
use crate::hash::Suffix;
use crate::namespace::{path_error, Namespace, Objects};
use crate::node::{Child, MARKER};
use crate::pathhash::join;
use crate::rows::marker_entry;
use crate::{Error, Result};

pub(crate) const DIRTAB: &[u8] = b".cvmfsdirtab";
const MAX_DIRTAB: u64 = 1 << 20;

/// Parsed rules: positive ones split into components, negative ones as whole patterns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dirtab {
    pub positive: Vec<Vec<Vec<u8>>>,
    pub negative: Vec<Vec<u8>>,
}

impl Dirtab {
    /// One rule per line; `#` comments; `!` negates. As in CernVM-FS, a dirtab with a positive
    /// rule that is not absolute, or with a rule that is also negated word for word, is
    /// invalid as a whole (`cvmfs_server publish` stops on it): the error says which line.
    pub fn parse(text: &[u8]) -> std::result::Result<Dirtab, String> {
        let mut tab = Dirtab::default();
        let mut positive_text = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            if let Some(neg) = line.strip_prefix(b"!") {
                let neg = neg.trim_ascii();
                if !neg.is_empty() {
                    tab.negative.push(neg.to_vec());
                }
            } else if line[0] != b'/' {
                return Err(format!(
                    "line {}: {}: a rule must be an absolute path (start with /)",
                    n + 1,
                    String::from_utf8_lossy(line)
                ));
            } else {
                let comps: Vec<Vec<u8>> = line
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                if !comps.is_empty() {
                    tab.positive.push(comps);
                    positive_text.push(line);
                }
            }
        }
        if let Some(both) = positive_text
            .iter()
            .find(|p| tab.negative.iter().any(|n| n == *p))
        {
            return Err(format!(
                "{} is both a rule and its negation",
                String::from_utf8_lossy(both)
            ));
        }
        Ok(tab)
    }

    /// Whether a negative rule excludes `path`. Wildcards span `/` here; relative rules match
    /// any tail of the path that starts at a component.
    pub fn excluded(&self, path: &[u8]) -> bool {
        self.negative.iter().any(|rule| {
            if rule[0] == b'/' {
                glob_match(rule, path, true)
            } else {
                path.iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'/')
                    .any(|(i, _)| glob_match(rule, &path[i + 1..], true))
            }
        })
    }
}

enum Tok {
    Lit(u8),
    One,
    Star,
}

/// `*` = any run of characters, `?` = one character, `\` escapes; with `span` false
/// neither wildcard matches `/`.
pub fn glob_match(pattern: &[u8], text: &[u8], span: bool) -> bool {
    let mut toks = Vec::with_capacity(pattern.len());
    let mut it = pattern.iter();
    while let Some(&c) = it.next() {
        toks.push(match c {
            b'\\' => Tok::Lit(it.next().copied().unwrap_or(b'\\')),
            b'*' => Tok::Star,
            b'?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    // ok[j]: the tokens so far match text[..j].
    let mut ok = vec![false; text.len() + 1];
    ok[0] = true;
    for tok in &toks {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = match tok {
                Tok::Star => ok[j] || (j > 0 && next[j - 1] && (span || text[j - 1] != b'/')),
                Tok::One => j > 0 && ok[j - 1] && (span || text[j - 1] != b'/'),
                Tok::Lit(c) => j > 0 && ok[j - 1] && text[j - 1] == *c,
            };
        }
        ok = next;
    }
    ok[text.len()]
}

/// Reads `/.cvmfsdirtab` (if any) and adds `.cvmfscatalog` markers where its rules say.
pub fn apply(ns: &mut Namespace, objects: &dyn Objects) -> Result<()> {
    let Some(Child::Leaf(entry)) = ns.root_node().children.get(DIRTAB) else {
        return Ok(());
    };
    let EntryKind::File { size, data } = &entry.kind else {
        return Ok(());
    };
    let FileData::Whole(hash) = data else {
        return Err(path_error(
            b"/.cvmfsdirtab",
            "chunked dirtab files are not supported",
        ));
    };
    if *size > MAX_DIRTAB {
        return Err(path_error(
            b"/.cvmfsdirtab",
            format!("{size} bytes is too large for a dirtab"),
        ));
    }
    let (hash, size) = (*hash, *size);
    let text = objects
        .load(&hash, Suffix::None)
        .and_then(|z| crate::zlib::decompress(&z, size))
        .map_err(|source| Error::Io {
            context: format!("reading /.cvmfsdirtab (object {hash})"),
            source,
        })?;
    let tab = Dirtab::parse(&text).map_err(|why| {
        path_error(
            b"/.cvmfsdirtab",
            format!("{why}; the dirtab is invalid (cvmfs_server refuses it too)"),
        )
    })?;
    let mut targets = Vec::new();
    for rule in &tab.positive {
        expand(ns, rule, objects, &mut targets)?;
    }
    targets.sort();
    targets.dedup();
    for path in targets {
        if tab.excluded(&path) {
            continue;
        }
        if let Some(dir) = ns.dir_at(&path, objects, true)? {
            let marker = marker_entry(&dir.meta);
            dir.children.insert(MARKER.to_vec(), Child::Leaf(marker));
        }
    }
    Ok(())
}

/// Directories matching `rule` that are not nested catalogs yet.
fn expand(
    ns: &mut Namespace,
    rule: &[Vec<u8>],
    objects: &dyn Objects,
    out: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let mut current: Vec<Vec<u8>> = vec![Vec::new()];
    for (i, pat) in rule.iter().enumerate() {
        let last = i + 1 == rule.len();
        let mut next = Vec::new();
        for dir_path in &current {
            let Some(dir) = ns.dir_at(dir_path, objects, false)? else {
                continue;
            };
            for (name, child) in &dir.children {
                if !glob_match(pat, name, false) {
                    continue;
                }
                match child {
                    Child::Dir(d) if last && !d.has_marker() => out.push(join(dir_path, name)),
                    Child::Dir(_) | Child::Stub(_) if !last => next.push(join(dir_path, name)),
                    _ => {}
                }
            }
        }
        current = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_match(b"rel*", b"release-1", false));
        assert!(!glob_match(b"*", b"a/b", false));
        assert!(glob_match(b"*", b"a/b", true));
        assert!(glob_match(b"v?", b"v1", false));
        assert!(!glob_match(b"v?", b"v12", false));
        assert!(glob_match(b"a\\*", b"a*", false));
        assert!(!glob_match(b"a\\*", b"ab", false));
    }

    #[test]
    fn parsing_and_negation() {
        let tab =
            Dirtab::parse(b"# comment\n  /software/releases/*\n! *.git\n!/software/releases/old\n")
                .unwrap();
        assert_eq!(
            tab.positive,
            vec![vec![
                b"software".to_vec(),
                b"releases".to_vec(),
                b"*".to_vec()
            ]]
        );
        assert!(tab.excluded(b"/software/releases/x.git"));
        assert!(tab.excluded(b"/software/releases/old"));
        assert!(!tab.excluded(b"/software/releases/new"));
        // What makes CernVM-FS refuse the whole dirtab.
        assert_eq!(
            Dirtab::parse(b"/a/*\nrelative/*\n").unwrap_err(),
            "line 2: relative/*: a rule must be an absolute path (start with /)"
        );
        assert_eq!(
            Dirtab::parse(b"/software/*\n! /software/*\n").unwrap_err(),
            "/software/* is both a rule and its negation"
        );
    }
}
