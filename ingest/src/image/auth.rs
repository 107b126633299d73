//! Registry credentials: `--creds USER:PASS`, `REGISTRY_AUTH_FILE`, `~/.docker/config.json`.
//! Secrets never reach `Debug`/`Display` output.

use super::error::{Error, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A string that must not be printed: passwords and tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for building a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password (or token) for HTTP basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// Parses `USER:PASS` as given to `--creds` (the password may contain ':').
    pub fn parse(text: &str) -> Result<Credentials> {
        match text.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Ok(Credentials {
                username: user.to_owned(),
                password: Secret(pass.to_owned()),
            }),
            _ => Err(Error::Credentials {
                origin: "--creds".to_owned(),
                reason: "expected USER:PASS".to_owned(),
            }),
        }
    }

    /// Value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials per registry host, from a Docker/containers auth file.
#[derive(Clone, Default)]
pub struct AuthStore {
    by_host: BTreeMap<String, Credentials>,
    /// Used for every host when set (`--creds`).
    everywhere: Option<Credentials>,
}

impl fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthStore")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("everywhere", &self.everywhere.is_some())
            .finish()
    }
}

/// Host part of an `auths` key: `https://index.docker.io/v1/` → `index.docker.io`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The host under which credentials are looked up; Docker Hub's aliases are one host.
fn canonical_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io"
        }
        other => other,
    }
}

impl AuthStore {
    /// No credentials: anonymous access only.
    pub fn anonymous() -> AuthStore {
        AuthStore::default()
    }

    /// Parses the JSON of a Docker `config.json` or containers `auth.json`; `origin` names it
    /// in errors. Entries hold a base64 `auth` (`user:pass`) or `username` + `password`.
    pub fn from_json(json: &[u8], origin: &str) -> Result<AuthStore> {
        let bad = |reason: String| Error::Credentials {
            origin: origin.to_owned(),
            reason,
        };
        let file: ConfigFile =
            serde_json::from_slice(json).map_err(|e| bad(format!("not a valid auth file: {e}")))?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let creds = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad(format!("entry {key:?}: `auth` is not base64")))?;
                    let text = String::from_utf8(raw)
                        .map_err(|_| bad(format!("entry {key:?}: `auth` is not UTF-8")))?;
                    Credentials::parse(&text)
                        .map_err(|_| bad(format!("entry {key:?}: `auth` is not user:password")))?
                }
                (_, Some(username), Some(password)) => Credentials {
                    username,
                    password: Secret(password),
                },
                // Entries without secrets (credential helpers) give nothing usable here.
                _ => continue,
            };
            by_host.insert(canonical_host(key_host(&key)).to_owned(), creds);
        }
        Ok(AuthStore {
            by_host,
            everywhere: None,
        })
    }

    /// Reads an auth file; a missing file means no credentials.
    pub fn from_file(path: &Path) -> Result<AuthStore> {
        match std::fs::read(path) {
            Ok(bytes) => AuthStore::from_json(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthStore::anonymous()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The auth file in effect: `REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            return Some(PathBuf::from(p));
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Credentials as the CLI resolves them: `--creds` wins, else the default auth file.
    pub fn from_environment(creds: Option<&str>) -> Result<AuthStore> {
        let mut store = match AuthStore::default_path() {
            Some(path) => AuthStore::from_file(&path)?,
            None => AuthStore::anonymous(),
        };
        if let Some(text) = creds {
            store.everywhere = Some(Credentials::parse(text)?);
        }
        Ok(store)
    }

    /// Uses `creds` for every registry.
    pub fn with_credentials(mut self, creds: Credentials) -> AuthStore {
        self.everywhere = Some(creds);
        self
    }

    /// Credentials for a registry host (`host[:port]`).
    pub fn lookup(&self, host: &str) -> Option<&Credentials> {
        self.everywhere
            .as_ref()
            .or_else(|| self.by_host.get(canonical_host(host)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnNlY3JldA=="},
            "127.0.0.1:5001": {"username": "alice", "password": "s3cret"},
            "helper.example.org": {}
        },
        "credsStore": "desktop"
    }"#;

    #[test]
    fn parses_base64_and_plain_entries() {
        let store = AuthStore::from_json(CONFIG.as_bytes(), "test").unwrap();
        let hub = store.lookup("registry-1.docker.io").unwrap();
        assert_eq!(hub.username, "hub");
        assert_eq!(hub.password.expose(), "hubsecret");
        let alice = store.lookup("127.0.0.1:5001").unwrap();
        assert_eq!(alice.password.expose(), "s3cret");
        assert_eq!(alice.basic_header(), "Basic YWxpY2U6czNjcmV0");
        assert!(store.lookup("127.0.0.1:5000").is_none());
        assert!(store.lookup("helper.example.org").is_none());
    }

    #[test]
    fn creds_flag_applies_everywhere() {
        let store = AuthStore::anonymous().with_credentials(Credentials::parse("u:p:q").unwrap());
        assert_eq!(store.lookup("any.host").unwrap().password.expose(), "p:q");
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":x").is_err());
    }

    #[test]
    fn secrets_never_printed() {
        let store = AuthStore::from_json(CONFIG.as_bytes(), "test").unwrap();
        let creds = store.lookup("127.0.0.1:5001").unwrap();
        for text in [
            format!("{creds:?}"),
            format!("{store:?}"),
            format!("{:#?}", creds),
        ] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(!text.contains("hubsecret"), "{text}");
            assert!(!text.contains("aHViOmh1YnNlY3JldA"), "{text}");
        }
        assert!(format!("{creds:?}").contains("alice"));
        let err = Credentials::parse("bad").unwrap_err().to_string();
        assert!(!err.contains("bad"), "{err}");
    }

    #[test]
    fn malformed_files_are_named() {
        let err = AuthStore::from_json(br#"{"auths": {"h": {"auth": "!!"}}}"#, "/x/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/x/config.json") && err.contains("not base64"),
            "{err}"
        );
        assert!(AuthStore::from_json(b"[", "f").is_err());
    }
}
