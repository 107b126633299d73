//! DUCC wishlists ("recipes"): which registry images a repository should hold.
//!
//! ```yaml
//! version: 1
//! cvmfs_repo: unpacked.example.org
//! output_format: '$(scheme)://$(registry)/$(repository):$(tag)'   # accepted, not used
//! input:
//!   - 'https://registry.hub.docker.com/library/debian:12'
//!   - 'http://127.0.0.1:5000/testbed/app:oci-*'
//! ```

use super::error::{Error, Result};
use super::reference::RegistryRef;
use serde::Deserialize;
use std::path::Path;

/// A parsed wishlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub cvmfs_repo: String,
    pub inputs: Vec<RecipeInput>,
}

/// One `input:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipeInput {
    /// The line as written.
    pub text: String,
    /// The image; for a wildcard line its tag is the pattern.
    pub image: RegistryRef,
    /// The line used `http://`: the registry is reached over plain HTTP.
    pub insecure: bool,
    /// The tag contains `*` and is matched against the registry's tag list.
    pub wildcard: bool,
}

/// A wishlist is a few lines per image; even a registry's worth stays far below this.
const MAX_RECIPE_BYTES: u64 = 4 << 20;
/// Deeper flow collections (`[[[…`) are refused before YAML parsing: the parser's time grows
/// with the square of the depth, and a wishlist needs two levels at most.
const MAX_FLOW_DEPTH: usize = 64;

#[derive(Deserialize)]
struct RawRecipe {
    version: i64,
    cvmfs_repo: String,
    #[serde(default)]
    #[allow(dead_code)]
    output_format: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    input: Vec<String>,
}

impl Recipe {
    /// Parses wishlist YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Recipe> {
        let bad = |reason: String| Error::Recipe {
            path: origin.to_owned(),
            reason,
        };
        if flow_depth(text) > MAX_FLOW_DEPTH {
            return Err(bad(format!(
                "flow collections ([ or {{) nested more than {MAX_FLOW_DEPTH} deep"
            )));
        }
        // A file given by mistake (a token, a password file) reads as one YAML string: it is
        // named for what it is, never quoted.
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| bad(without_long_quotes(&e.to_string())))?;
        if !value.is_mapping() {
            return Err(bad(
                "not a DUCC wishlist (a YAML mapping of version, cvmfs_repo, input, ...)".into(),
            ));
        }
        let raw: RawRecipe =
            serde_yaml::from_value(value).map_err(|e| bad(without_long_quotes(&e.to_string())))?;
        if raw.version != 1 {
            return Err(bad(format!(
                "version {} is not supported (only 1)",
                raw.version
            )));
        }
        let inputs = raw
            .input
            .iter()
            .map(|line| {
                parse_input(line).map_err(|reason| {
                    let shown = super::reference::redact_userinfo(line);
                    bad(format!("input {shown:?}: {reason}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Recipe {
            cvmfs_repo: raw.cvmfs_repo,
            inputs,
        })
    }

    /// Registries the wishlist reaches over plain HTTP (`http://` lines).
    pub fn insecure_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .inputs
            .iter()
            .filter(|i| i.insecure)
            .map(|i| i.image.host.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Every image the wishlist stands for, in order and without duplicates; wildcard lines
    /// ask `list_tags` (e.g. `RegistryClient::list_tags`) for their repository's tags.
    pub fn expand(
        &self,
        mut list_tags: impl FnMut(&RegistryRef) -> Result<Vec<String>>,
    ) -> Result<Vec<RegistryRef>> {
        let mut out: Vec<RegistryRef> = Vec::new();
        for input in &self.inputs {
            let tags = if input.wildcard {
                list_tags(&input.image)?
            } else {
                Vec::new()
            };
            for image in input.expand(&tags) {
                if !out.contains(&image) {
                    out.push(image);
                }
            }
        }
        Ok(out)
    }

    /// Reads and parses a wishlist file.
    pub fn load(path: &Path) -> Result<Recipe> {
        use std::io::Read;
        let what = || format!("reading recipe {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| Error::io(what(), e))?;
        let mut text = String::new();
        file.take(MAX_RECIPE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(what(), e))?;
        if text.len() as u64 > MAX_RECIPE_BYTES {
            return Err(Error::Recipe {
                path: path.display().to_string(),
                reason: format!(
                    "larger than {} MiB (not a wishlist)",
                    MAX_RECIPE_BYTES >> 20
                ),
            });
        }
        Recipe::parse(&text, &path.display().to_string())
    }
}

/// The deepest nesting of YAML flow collections in `text`, skipping comments and quoted
/// scalars. Brackets inside plain scalars count too, which can only overstate the depth.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b'\n';
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        match (quote, b) {
            _ if comment => comment = b != b'\n',
            (Some(b'"'), b'\\') => {
                bytes.next();
            }
            (Some(q), _) if b == q => {
                // '' inside a single-quoted scalar is an escaped quote.
                if q == b'\'' && bytes.peek() == Some(&b'\'') {
                    bytes.next();
                } else {
                    quote = None;
                }
            }
            (Some(_), _) => {}
            (None, b'#') if prev.is_ascii_whitespace() => comment = true,
            (None, b'\'' | b'"') if b" \t\n[{,:-".contains(&prev) => quote = Some(b),
            (None, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    deepest
}

/// A parser's message with what it quotes from the file cut short: a value of the wrong
/// type may be a secret, or megabytes.
fn without_long_quotes(message: &str) -> String {
    const KEEP: usize = 32;
    let mut out = String::with_capacity(message.len().min(1024));
    for (i, part) in message.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        match (i % 2 == 1, part.chars().count() > KEEP) {
            (true, true) => {
                out.extend(part.chars().take(KEEP));
                out.push_str(&format!("…({} bytes)", part.len()));
            }
            _ => out.push_str(part),
        }
    }
    out
}

/// `https://REG/REPO:TAG`, `http://…`, `docker://…` or a bare `REG/REPO:TAG`.
fn parse_input(line: &str) -> std::result::Result<RecipeInput, String> {
    // Checked first: the parsers' reasons would quote pieces of the password.
    if super::reference::redact_userinfo(line) != line {
        return Err(super::reference::USERINFO_REFUSED.to_owned());
    }
    let line = line.trim();
    let (rest, insecure) = if let Some(r) = line.strip_prefix("https://") {
        (r, false)
    } else if let Some(r) = line.strip_prefix("http://") {
        (r, true)
    } else {
        (line.strip_prefix("docker://").unwrap_or(line), false)
    };
    // The wildcard is not a valid tag character: parse with a placeholder, then put it back.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') && tag.contains('*') => (name, Some(tag)),
        _ => (rest, None),
    };
    let image = match tag {
        Some(pattern) => {
            let probe = format!("{name}:{}", pattern.replace('*', "x"));
            let mut r = RegistryRef::parse(&probe)?;
            r.tag = Some(pattern.to_owned());
            r
        }
        None => RegistryRef::parse(rest)?,
    };
    Ok(RecipeInput {
        text: line.to_owned(),
        image,
        insecure,
        wildcard: tag.is_some(),
    })
}

/// Whether `tag` matches `pattern`, where `*` stands for any run of characters (also empty)
/// and every other character for itself.
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == tag;
    }
    if tag.len() < first.len() + last.len() || !tag.starts_with(first) || !tag.ends_with(last) {
        return false;
    }
    // Middle pieces in order, greedily leftmost, between the fixed prefix and suffix.
    let mut rest = &tag[first.len()..tag.len() - last.len()];
    for piece in &parts[1..parts.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl RecipeInput {
    /// The images this line stands for: itself, or one per matching tag of `tags` (the
    /// registry's list, sorted for a stable order).
    pub fn expand(&self, tags: &[String]) -> Vec<RegistryRef> {
        if !self.wildcard {
            return vec![self.image.clone()];
        }
        let pattern = self.image.tag.as_deref().unwrap_or("*");
        let mut matching: Vec<&String> = tags.iter().filter(|t| tag_matches(pattern, t)).collect();
        matching.sort();
        matching.dedup();
        matching
            .into_iter()
            .map(|t| self.image.with_tag(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WISHLIST: &str = r#"
version: 1
user: cvmfsunpacker
cvmfs_repo: 'unpacked.example.org'
output_format: '$(scheme)://$(registry)/$(repository):$(tag)'
input:
    - 'https://registry.hub.docker.com/library/debian:12'
    - 'http://127.0.0.1:5000/testbed/app:oci-*'
    - 'docker://quay.io/org/tool'
"#;

    #[test]
    fn parses_ducc_wishlist() {
        let r = Recipe::parse(WISHLIST, "w.yaml").unwrap();
        assert_eq!(r.cvmfs_repo, "unpacked.example.org");
        assert_eq!(r.inputs.len(), 3);
        let hub = &r.inputs[0];
        assert_eq!(hub.image.host, "registry-1.docker.io");
        assert_eq!(
            hub.image.name().to_string(),
            "registry.hub.docker.com/library/debian:12"
        );
        assert!(!hub.insecure && !hub.wildcard);
        let app = &r.inputs[1];
        assert!(app.insecure && app.wildcard);
        assert_eq!(app.image.host, "127.0.0.1:5000");
        assert_eq!(app.image.tag.as_deref(), Some("oci-*"));
        assert_eq!(r.inputs[2].image.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn wildcard_expansion() {
        let r = Recipe::parse(WISHLIST, "w.yaml").unwrap();
        let tags: Vec<String> = ["oci-zstd", "docker-gzip", "oci-gzip", "oci-", "oci-gzip"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got: Vec<String> = r.inputs[1]
            .expand(&tags)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.1:5000/testbed/app:oci-",
                "127.0.0.1:5000/testbed/app:oci-gzip",
                "127.0.0.1:5000/testbed/app:oci-zstd"
            ]
        );
        assert_eq!(
            r.inputs[0].expand(&tags).len(),
            1,
            "plain lines ignore the tag list"
        );
    }

    #[test]
    fn whole_recipe_expansion() {
        let r = Recipe::parse(WISHLIST, "w.yaml").unwrap();
        assert_eq!(r.insecure_hosts(), ["127.0.0.1:5000"]);
        let mut asked = Vec::new();
        let all = r
            .expand(|repo| {
                asked.push(repo.repository.clone());
                Ok(vec!["oci-gzip".to_owned(), "docker-gzip".to_owned()])
            })
            .unwrap();
        assert_eq!(asked, ["testbed/app"], "only wildcard lines list tags");
        let names: Vec<String> = all.iter().map(|i| i.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "registry.hub.docker.com/library/debian:12",
                "127.0.0.1:5000/testbed/app:oci-gzip",
                "quay.io/org/tool:latest"
            ]
        );
    }

    #[test]
    fn glob_semantics() {
        assert!(tag_matches("*", ""));
        assert!(tag_matches("1.*", "1.0"));
        assert!(!tag_matches("1.*", "21.0"));
        assert!(tag_matches("*-slim", "3.11-slim"));
        assert!(tag_matches("a*b*c", "abc") && tag_matches("a*b*c", "aXbYbZc"));
        assert!(!tag_matches("a*b*c", "acb"));
        assert!(
            !tag_matches("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
        assert!(
            tag_matches("v?", "v?") && !tag_matches("v?", "v1"),
            "only * is special"
        );
    }

    #[test]
    fn bad_recipes() {
        let err = Recipe::parse("version: 2\ncvmfs_repo: x\ninput: []\n", "r.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "recipe r.yaml: version 2 is not supported (only 1)"
        );
        let err = Recipe::parse("version: 1\ninput: []\n", "r.yaml").unwrap_err();
        assert!(err.to_string().contains("cvmfs_repo"), "{err}");
        let err = Recipe::parse(
            "version: 1\ncvmfs_repo: x\ninput: ['https://h.io/Bad:1']\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("recipe r.yaml: input \"https://h.io/Bad:1\": invalid repository"),
            "{err}"
        );
        let err = Recipe::parse(
            "version: 1\ncvmfs_repo: x\ninput: ['http://qauser:SECRETPW123@h.io/r:1']\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("recipe r.yaml: input \"http://qauser:***@h.io/r:1\": credentials do")
                && !err.contains("SECRETPW123"),
            "{err}"
        );
        // A file that is no wishlist at all (a token) is not quoted; a value of the wrong type
        // is quoted only in part.
        let err = Recipe::parse("ghp_SECRETTOKEN0123456789\n", "tok").unwrap_err();
        assert_eq!(
            err.to_string(),
            "recipe tok: not a DUCC wishlist (a YAML mapping of version, cvmfs_repo, input, ...)"
        );
        let long = "x".repeat(10_000);
        let err = Recipe::parse(
            &format!("version: 1\ncvmfs_repo: x\ninput: \"{long}\"\n"),
            "r",
        )
        .unwrap_err()
        .to_string();
        assert!(err.len() < 300 && err.contains("…(10000 bytes)"), "{err}");
    }

    #[test]
    fn deep_nesting_and_huge_files_are_refused_before_parsing() {
        // 100 000 open brackets took libyaml 15 s before it gave up on its recursion limit.
        let deep = format!(
            "version: 1\ncvmfs_repo: x\ninput: {}\n",
            "[".repeat(100_000)
        );
        let err = Recipe::parse(&deep, "r").unwrap_err().to_string();
        assert_eq!(
            err,
            "recipe r: flow collections ([ or {) nested more than 64 deep"
        );
        // Brackets in comments and quoted scalars do not count; real flow lists do.
        let odd = format!(
            "# {open}\nversion: 1\ncvmfs_repo: 'x''{open}'\noutput_format: \"\\\"{open}\"\ninput: [\"h.io/r:1\", 'h.io/r:2'] # {open}\n",
            open = "[{".repeat(100)
        );
        assert_eq!(flow_depth(&odd), 1);
        assert_eq!(Recipe::parse(&odd, "r").unwrap().inputs.len(), 2);
        assert_eq!(
            flow_depth(&format!("a: {}{}", "[".repeat(64), "]".repeat(64))),
            64
        );
        assert_eq!(flow_depth("a: [{b: [c]}, [d]]"), 3);

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let mut text = "version: 1\ncvmfs_repo: x\ninput:\n".to_owned();
        while text.len() as u64 <= MAX_RECIPE_BYTES {
            text.push_str("  - 'registry.example.org/some/repository:tag'\n");
        }
        std::fs::write(&big, &text).unwrap();
        let err = Recipe::load(&big).unwrap_err().to_string();
        assert!(err.ends_with("larger than 4 MiB (not a wishlist)"), "{err}");
        text.truncate(MAX_RECIPE_BYTES as usize - 200);
        text.truncate(text.rfind('\n').unwrap() + 1);
        std::fs::write(&big, &text).unwrap();
        assert!(Recipe::load(&big).unwrap().inputs.len() > 80_000);
    }
}
