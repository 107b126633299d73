//! Registry credentials: `--creds USER:PASS`, `REGISTRY_AUTH_FILE`, `~/.docker/config.json`
//! (inline `auths`, and the credential helpers of `credHelpers` / `credsStore`).
//! Secrets never reach `Debug`/`Display` output, and [`Redactor`] blanks them out of text
//! servers send back.

use super::error::{Error, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// What stands in for a secret in text shown to the user.
pub const REDACTED: &str = "[redacted]";

/// The secrets a client has sent, in every form they went out in, for blanking them out of
/// text a server sent back: a registry, proxy or token service may quote the request's
/// `Authorization` header in its error message.
#[derive(Default)]
pub struct Redactor {
    secrets: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    /// The password, `user:password`, and that pair in base64 (with and without padding,
    /// standard and URL-safe alphabet): the forms a basic header or a token request carries.
    /// Percent-encoded forms ([`redact`] matches any) cover a server quoting a request URL or
    /// a form body (a token service's `password=`).
    pub fn add_credentials(&self, creds: &Credentials) {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let pair = format!("{}:{}", creds.username, creds.password.expose());
        let mut forms = vec![creds.password.expose().to_owned()];
        forms.extend([&STANDARD, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD].map(|e| e.encode(&pair)));
        forms.push(pair);
        self.add(forms);
    }

    /// A bearer or identity token (percent-encoded too: a token may go out in a form body or
    /// a query, as OAuth2 refresh tokens do).
    pub fn add_secret(&self, secret: &Secret) {
        self.add([secret.expose().to_owned()]);
    }

    fn add(&self, forms: impl IntoIterator<Item = String>) {
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        secrets.extend(forms.into_iter().filter(|f| !f.is_empty()));
    }

    /// `text` with every secret added so far replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<&str> = secrets.iter().map(String::as_str).collect();
        redact(text, &list)
    }
}

/// `text` with each occurrence of any of `secrets` replaced by [`REDACTED`], in one pass and
/// longest first where they overlap (`user:pass` goes whole, not as `user:` + a redaction).
/// An occurrence may have any of its bytes percent-encoded (either hex case, `+` for a
/// space): encoders differ in what they leave alone (`/`, `@`, `~`…).
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut by_length: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    by_length.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match by_length
            .iter()
            .find_map(|s| encoded_match(rest.as_bytes(), s.as_bytes()))
        {
            Some(len) => {
                out.push_str(REDACTED);
                rest = &rest[len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The length of the start of `text` that spells `secret`, each byte as itself or
/// percent-encoded (a space also as `+`). It ends on a character boundary: the secret is
/// text, and an encoded byte is matched whole.
fn encoded_match(text: &[u8], secret: &[u8]) -> Option<usize> {
    let mut at = 0;
    for &want in secret {
        let hex = |i: usize| char::from(*text.get(i)?).to_digit(16);
        match text.get(at)? {
            &b if b == want => at += 1,
            b'+' if want == b' ' => at += 1,
            b'%' if hex(at + 1)? * 16 + hex(at + 2)? == u32::from(want) => at += 3,
            _ => return None,
        }
    }
    Some(at)
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
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Registry → helper name (`docker-credential-NAME`).
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    /// The helper for every registry without its own.
    #[serde(default)]
    creds_store: Option<String>,
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
    /// Helper per host (`credHelpers`), and for the other hosts (`credsStore`).
    helpers: BTreeMap<String, String>,
    default_helper: Option<String>,
    /// Used for every host when set (`--creds`).
    everywhere: Option<Credentials>,
    /// Where helpers are found: `docker-credential-` (on `PATH`) unless a test says otherwise.
    helper_prefix: Option<PathBuf>,
    /// What each helper said, per host: a helper runs once per host and process.
    asked: Arc<Mutex<BTreeMap<String, HelperAnswer>>>,
}

type HelperAnswer = std::result::Result<Option<Credentials>, String>;

/// How long a credential helper may take (they may talk to a cloud API).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

impl fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthStore")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("helpers", &self.helpers)
            .field("default_helper", &self.default_helper)
            .field("everywhere", &self.everywhere.is_some())
            .finish()
    }
}

/// Why an auth file does not parse, without quoting it: serde names the offending value
/// (`invalid type: string "…"`), and in an auth file that value may be a password.
fn describe_json_error(e: &serde_json::Error) -> String {
    let place = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        serde_json::error::Category::Data => format!(
            "not a valid auth file: a value of the wrong kind at {place} (`auths` maps hosts to \
             objects holding `auth`, or `username` and `password`; `credHelpers` maps hosts to \
             helper names; `credsStore` is a helper name)"
        ),
        // Syntax and end-of-file errors say what was expected, never what was found.
        _ => format!("not a valid auth file: {e}"),
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

/// The scope an `auths` key covers, as containers-auth.json(5) reads it: `host` or
/// `host/namespace[/repository]` (Docker Hub's aliases as one host). A URL-form key
/// (`https://index.docker.io/v1/`, `http://host:5000/v2/`) names its host only: its path is
/// the API's, not a namespace.
fn key_scope(key: &str) -> String {
    let host = canonical_host(key_host(key));
    if key.contains("://") {
        return host.to_owned();
    }
    let path = key.split_once('/').map_or("", |(_, p)| p.trim_matches('/'));
    if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    }
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
            serde_json::from_slice(json).map_err(|e| bad(describe_json_error(&e)))?;
        let mut by_host = BTreeMap::new();
        let helpers = file
            .cred_helpers
            .into_iter()
            .map(|(key, helper)| (canonical_host(key_host(&key)).to_owned(), helper))
            .collect();
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
            // A later key of the same scope (`host` and `https://host/v2/`) wins, as in Docker.
            by_host.insert(key_scope(&key), creds);
        }
        Ok(AuthStore {
            by_host,
            helpers,
            default_helper: file.creds_store.filter(|h| !h.is_empty()),
            ..AuthStore::default()
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
    /// An empty variable counts as unset.
    pub fn default_path() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(p) = var("REGISTRY_AUTH_FILE") {
            return Some(PathBuf::from(p));
        }
        if let Some(dir) = var("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        var("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
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

    /// Runs credential helpers from `prefix` + NAME instead of `docker-credential-NAME`.
    pub fn with_helper_prefix(mut self, prefix: PathBuf) -> AuthStore {
        self.helper_prefix = Some(prefix);
        self
    }

    /// Credentials for a registry host (`host[:port]`) as a whole (e.g. its catalog): see
    /// [`AuthStore::lookup_repository`].
    pub fn lookup(&self, host: &str) -> std::result::Result<Option<Credentials>, String> {
        self.lookup_repository(host, None)
    }

    /// Credentials for `repository` of a registry host, in Docker's order: `--creds`, the
    /// host's `credHelpers` entry, `credsStore`, the inline `auths` entry. Of the `auths`
    /// keys, the most specific one that covers `host/repository` component-wise wins
    /// (`host/team/app`, then `host/team`, then `host`), as in podman and skopeo; without a
    /// repository only a host-wide key applies. A helper runs at most once per host; `Err`
    /// says why it gave nothing (no secret in it).
    pub fn lookup_repository(
        &self,
        host: &str,
        repository: Option<&str>,
    ) -> std::result::Result<Option<Credentials>, String> {
        if let Some(c) = &self.everywhere {
            return Ok(Some(c.clone()));
        }
        let host = canonical_host(host);
        match self.helpers.get(host).or(self.default_helper.as_ref()) {
            Some(helper) => self.ask_helper(helper, host),
            None => Ok(self.inline(host, repository).cloned()),
        }
    }

    /// The most specific `auths` entry covering `host/repository`.
    fn inline(&self, host: &str, repository: Option<&str>) -> Option<&Credentials> {
        let mut scope = match repository.filter(|r| !r.is_empty()) {
            Some(r) => format!("{host}/{r}"),
            None => host.to_owned(),
        };
        loop {
            if let Some(c) = self.by_host.get(&scope) {
                return Some(c);
            }
            // Drop the last component, down to the host and no further.
            match scope.rfind('/') {
                Some(cut) if scope.len() > host.len() => scope.truncate(cut),
                _ => return None,
            }
        }
    }

    fn ask_helper(&self, helper: &str, host: &str) -> HelperAnswer {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(answer) = asked.get(host) {
            return answer.clone();
        }
        let program = match &self.helper_prefix {
            Some(prefix) => {
                let mut p = prefix.clone().into_os_string();
                p.push(helper);
                PathBuf::from(p)
            }
            None => PathBuf::from(format!("docker-credential-{helper}")),
        };
        let answer = run_helper(&program, helper_server_url(host)).map_err(|reason| {
            format!(
                "credential helper {} for {host}: {reason}",
                program.display()
            )
        });
        asked.insert(host.to_owned(), answer.clone());
        answer
    }
}

/// The server URL Docker hands helpers: Docker Hub is known by its v1 index URL.
fn helper_server_url(host: &str) -> &str {
    if host == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        host
    }
}

/// The credential-helper protocol: `PROGRAM get`, the server URL on stdin, JSON on stdout.
fn run_helper(program: &Path, server: &str) -> HelperAnswer {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found (is it installed and on PATH?)".to_owned(),
            _ => format!("cannot run it: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its exit status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = PipeReader::start(child.stdout.take());
    let err = PipeReader::start(child.stderr.take());
    let status = wait_with_timeout(&mut child, HELPER_TIMEOUT)?;
    let out = out.finish();
    let err = err.finish();
    if !status.success() {
        // Helpers report a missing entry on stdout ("credentials not found in native keychain").
        let text = String::from_utf8_lossy(if out.is_empty() { &err } else { &out });
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        // What it said is not passed on: a helper may quote the secret it failed to use.
        return Err(format!(
            "failed ({status}); to see why, run `echo {server} | {} get` by hand",
            program.display()
        ));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: Option<String>,
        secret: Option<String>,
    }
    let reply: Reply = serde_json::from_slice(&out)
        .map_err(|e| format!("its answer is not the expected JSON: {e}"))?;
    match (reply.username, reply.secret) {
        (Some(u), _) if u == "<token>" => Err(
            "it gave an identity token, which is not supported (use --creds USER:TOKEN)".to_owned(),
        ),
        (Some(username), Some(secret)) if !username.is_empty() && !secret.is_empty() => {
            Ok(Some(Credentials {
                username,
                password: Secret(secret),
            }))
        }
        _ => Ok(None),
    }
}

/// Collects what a helper writes to one of its pipes (at most 1 MiB), on a thread of its own.
struct PipeReader {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    eof: std::sync::mpsc::Receiver<()>,
}

/// How long a pipe may stay open after the helper exited: a process it started in the
/// background may hold it open for good, and what the helper wrote has arrived by then.
const PIPE_GRACE: Duration = Duration::from_secs(1);

impl PipeReader {
    fn start(pipe: Option<impl Read + Send + 'static>) -> PipeReader {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, eof) = std::sync::mpsc::channel();
        let sink = buf.clone();
        std::thread::spawn(move || {
            if let Some(pipe) = pipe {
                let mut pipe = pipe.take(1 << 20);
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            }
            let _ = tx.send(());
        });
        PipeReader { buf, eof }
    }

    /// What was read once the pipe closed, or after [`PIPE_GRACE`] if it stays open (the
    /// reading thread is then left to end with the pipe).
    fn finish(self) -> Vec<u8> {
        let _ = self.eof.recv_timeout(PIPE_GRACE);
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *buf)
    }
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::result::Result<std::process::ExitStatus, String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer after {} s", limit.as_secs()));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
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
        }
    }"#;

    #[test]
    fn parses_base64_and_plain_entries() {
        let store = AuthStore::from_json(CONFIG.as_bytes(), "test").unwrap();
        let hub = store.lookup("registry-1.docker.io").unwrap().unwrap();
        assert_eq!(hub.username, "hub");
        assert_eq!(hub.password.expose(), "hubsecret");
        let alice = store.lookup("127.0.0.1:5001").unwrap().unwrap();
        assert_eq!(alice.password.expose(), "s3cret");
        assert_eq!(alice.basic_header(), "Basic YWxpY2U6czNjcmV0");
        assert!(store.lookup("127.0.0.1:5000").unwrap().is_none());
        assert!(store.lookup("helper.example.org").unwrap().is_none());
    }

    /// containers-auth.json(5): `host/namespace` keys are matched most specific first against
    /// `host/repository`, component-wise; host-wide and URL-form keys still apply.
    #[test]
    fn namespaced_keys_match_most_specific_first() {
        let entry = |user: &str| {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
            format!(r#"{{"auth":"{auth}"}}"#)
        };
        let json = format!(
            r#"{{"auths":{{
                "reg.example:5000/team-a":{a},
                "reg.example:5000/team-a/special":{special},
                "reg.example:5000/zzz-other":{other},
                "reg.example:5000":{host},
                "https://index.docker.io/v1/":{hub},
                "docker.io/library":{library},
                "http://plain.example:5001/v2/":{plain}}}}}"#,
            a = entry("team-a"),
            special = entry("special"),
            other = entry("other"),
            host = entry("host-wide"),
            hub = entry("hub"),
            library = entry("library"),
            plain = entry("plain"),
        );
        let store = AuthStore::from_json(json.as_bytes(), "test").unwrap();
        let user = |host: &str, repo: Option<&str>| {
            store
                .lookup_repository(host, repo)
                .unwrap()
                .map(|c| c.username)
        };
        let reg = "reg.example:5000";
        assert_eq!(user(reg, Some("team-a/app")).as_deref(), Some("team-a"));
        assert_eq!(user(reg, Some("team-a")).as_deref(), Some("team-a"));
        assert_eq!(
            user(reg, Some("team-a/special/x")).as_deref(),
            Some("special")
        );
        assert_eq!(user(reg, Some("zzz-other/app")).as_deref(), Some("other"));
        // Component-wise: `team-ab` is not below `team-a`.
        assert_eq!(user(reg, Some("team-ab/app")).as_deref(), Some("host-wide"));
        assert_eq!(user(reg, None).as_deref(), Some("host-wide"));
        assert_eq!(
            user("registry-1.docker.io", Some("library/ubuntu")).as_deref(),
            Some("library")
        );
        assert_eq!(
            user("registry-1.docker.io", Some("someone/tool")).as_deref(),
            Some("hub")
        );
        assert_eq!(
            user("plain.example:5001", Some("x/y")).as_deref(),
            Some("plain")
        );
        // Only namespaced keys: other namespaces and the host as a whole get nothing.
        let json = format!(
            r#"{{"auths":{{"reg.example:5000/team-a":{}}}}}"#,
            entry("a")
        );
        let store = AuthStore::from_json(json.as_bytes(), "test").unwrap();
        assert!(store
            .lookup_repository(reg, Some("team-b/app"))
            .unwrap()
            .is_none());
        assert!(store.lookup(reg).unwrap().is_none());
    }

    #[test]
    fn creds_flag_applies_everywhere() {
        let store = AuthStore::anonymous().with_credentials(Credentials::parse("u:p:q").unwrap());
        let any = store.lookup("any.host").unwrap().unwrap();
        assert_eq!(any.password.expose(), "p:q");
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":x").is_err());
    }

    #[test]
    fn secrets_never_printed() {
        let store = AuthStore::from_json(CONFIG.as_bytes(), "test").unwrap();
        let creds = store.lookup("127.0.0.1:5001").unwrap().unwrap();
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

    /// Writes a fake `docker-credential-NAME` script into `dir`.
    fn helper(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn credential_helpers_in_dockers_order() {
        let dir = tempfile::tempdir().unwrap();
        // Answers with the server URL it was given, so the test sees what was asked.
        helper(
            dir.path(),
            "ecr",
            r#"read url; [ "$1" = get ] || exit 3; echo "{\"ServerURL\":\"$url\",\"Username\":\"AWS\",\"Secret\":\"tok-$url\"}""#,
        );
        helper(
            dir.path(),
            "store",
            r#"read url; echo "{\"Username\":\"s\",\"Secret\":\"from-store-$url\"}"; echo "$url" >> "$0.log""#,
        );
        let config = r#"{
            "auths": {"inline.example.org": {"auth": "dTpw"}},
            "credHelpers": {"123.dkr.ecr.example.com": "ecr", "https://index.docker.io/v1/": "ecr"},
            "credsStore": "store"
        }"#;
        let prefix = dir.path().join("docker-credential-");
        let store = AuthStore::from_json(config.as_bytes(), "cfg")
            .unwrap()
            .with_helper_prefix(prefix);
        let ecr = store.lookup("123.dkr.ecr.example.com").unwrap().unwrap();
        assert_eq!(ecr.username, "AWS");
        assert_eq!(ecr.password.expose(), "tok-123.dkr.ecr.example.com");
        // Docker Hub: the helper is asked for the v1 index URL, whatever alias the image used.
        let hub = store.lookup("registry-1.docker.io").unwrap().unwrap();
        assert_eq!(hub.password.expose(), "tok-https://index.docker.io/v1/");
        // credsStore covers every other host, inline entries included (as in Docker).
        let other = store.lookup("inline.example.org").unwrap().unwrap();
        assert_eq!(other.password.expose(), "from-store-inline.example.org");
        // Each host's helper runs once per process.
        store.lookup("inline.example.org").unwrap();
        store.clone().lookup("inline.example.org").unwrap();
        let log = std::fs::read_to_string(dir.path().join("docker-credential-store.log")).unwrap();
        assert_eq!(log, "inline.example.org\n");
        assert!(!format!("{store:?}").contains("tok-"));
    }

    #[test]
    fn credential_helper_failures_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        helper(
            dir.path(),
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        helper(
            dir.path(),
            "broken",
            "echo 'secret hunter2 has expired' >&2; exit 2",
        );
        helper(
            dir.path(),
            "loud",
            "echo 'stored secret hunter3 is locked'; exit 1",
        );
        helper(dir.path(), "garbage", "echo 'not json'");
        helper(
            dir.path(),
            "identity",
            r#"echo '{"Username":"<token>","Secret":"refresh"}'"#,
        );
        let prefix = dir.path().join("docker-credential-");
        let with = |helper: &str| {
            let config = format!(r#"{{"credsStore": "{helper}"}}"#);
            AuthStore::from_json(config.as_bytes(), "cfg")
                .unwrap()
                .with_helper_prefix(prefix.clone())
                .lookup("r.example.org")
        };
        // Not found: anonymous, no error.
        assert_eq!(with("none").unwrap(), None);
        // Which helper, its status, how to see why; never what it said (it may be the secret).
        let err = with("broken").unwrap_err();
        assert!(
            err.contains("docker-credential-broken for r.example.org: failed (exit status: 2)")
                && err.contains("run `echo r.example.org | ")
                && err.contains("docker-credential-broken get` by hand"),
            "{err}"
        );
        assert!(
            !err.contains("hunter2") && !err.contains("expired"),
            "{err}"
        );
        let err = with("loud").unwrap_err();
        assert!(
            err.contains("exit status: 1") && !err.contains("hunter3"),
            "{err}"
        );
        assert!(with("garbage")
            .unwrap_err()
            .contains("not the expected JSON"));
        let err = with("identity").unwrap_err();
        assert!(
            err.contains("identity token") && !err.contains("refresh"),
            "{err}"
        );
        // A helper that leaves a background process holding its output open still answers.
        helper(
            dir.path(),
            "lingering",
            r#"sleep 30 & echo '{"Username":"u","Secret":"s"}'"#,
        );
        let started = Instant::now();
        let creds = with("lingering").unwrap().unwrap();
        assert_eq!(creds.password.expose(), "s");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited for the pipe"
        );
        let err = with("missing").unwrap_err();
        assert!(
            err.contains("docker-credential-missing") && err.contains("not found"),
            "{err}"
        );
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
        // A value of the wrong kind is placed, not quoted: it may be a password.
        for json in [
            r#"{"auths": {"h": "SECRETPW123"}}"#,
            r#"{"auths": {"h": {"password": ["SECRETPW123"]}}}"#,
            r#"{"credsStore": {"x": "SECRETPW123"}}"#,
        ] {
            let err = AuthStore::from_json(json.as_bytes(), "/x/config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("/x/config.json") && err.contains("wrong kind at line 1 column"),
                "{err}"
            );
            assert!(!err.contains("SECRETPW123"), "{err}");
        }
        let err = AuthStore::from_json(br#"{"auths": {"h": {"auth": "x"#, "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("EOF") && !err.contains("\"x"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_every_form_they_were_sent() {
        let redactor = Redactor::default();
        let quoted = "denied; you sent Authorization: Basic cWF1c2VyOlNFQ1JFVFBXMTIz \
                      decoded=qauser:SECRETPW123, or cWF1c2VyOlNFQ1JFVFBXMTIz; Bearer tok-9 pw=SECRETPW123";
        // Nothing known yet: the text is left alone.
        assert_eq!(redactor.redact(quoted), quoted);
        redactor.add_credentials(&Credentials::parse("qauser:SECRETPW123").unwrap());
        redactor.add_secret(&Secret::new("tok-9".to_owned()));
        let shown = redactor.redact(quoted);
        assert_eq!(
            shown,
            "denied; you sent Authorization: Basic [redacted] \
             decoded=[redacted], or [redacted]; Bearer [redacted] pw=[redacted]"
        );
        // Base64 with and without padding, and in the URL-safe alphabet (`u:a~~~~` is
        // `dTphfn5+fg==` in the standard one).
        let r = Redactor::default();
        r.add_credentials(&Credentials::parse("u:a~~~~").unwrap());
        for form in ["dTphfn5+fg==", "dTphfn5+fg", "dTphfn5-fg"] {
            assert_eq!(r.redact(&format!("<{form}>")), "<[redacted]>", "{form}");
        }
        // Percent-encoded, as a quoted URL or form body has them (either hex case, `+` for
        // a space); the token too.
        let r = Redactor::default();
        r.add_credentials(&Credentials::parse("u:p@ss w/rd").unwrap());
        r.add_secret(&Secret::new("t/k=1".to_owned()));
        for form in [
            "p%40ss%20w%2Frd",
            "p%40ss%20w%2frd",
            "p%40ss+w%2Frd",
            "u%3Ap%40ss%20w%2Frd",
            "t%2Fk%3D1",
            // As Python's `quote` writes them (`/` left alone), and every byte encoded.
            "p%40ss%20w/rd",
            "%70%40%73%73%20%77%2f%72%64",
        ] {
            assert_eq!(r.redact(&format!("?x={form}&")), "?x=[redacted]&", "{form}");
        }
        // Overlapping secrets go longest first, in one pass; multi-byte text survives.
        assert_eq!(
            redact("ä abcd ab é", &["ab", "abcd", ""]),
            "ä [redacted] [redacted] é"
        );
    }
}
