//! The AWS CLI's cache of assumed-role credentials (`~/.aws/cli/cache/KEY.json`), shared for
//! roles with `mfa_serial`: credentials the AWS CLI got with a code typed there serve a push
//! without asking again, and those a push got serve the AWS CLI and the next push, until 15
//! minutes before they expire (botocore's `CachedCredentialFetcher`). The key is botocore's:
//! the SHA-1 of the `AssumeRole` arguments as Python's `json.dumps(sort_keys=True)` writes
//! them, a generated session name left out. A file is written whole (renamed into place) with
//! mode 0600, as the AWS CLI writes it; one that cannot be read or is not what botocore writes
//! is a miss.

use crate::aws_process::{parse_time, sha1_hex, write_private, Fetched};
use object_store::aws::AwsCredential;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Cached credentials closer than this to their expiry are fetched again (botocore's
/// `DEFAULT_EXPIRY_WINDOW_SECONDS`).
const EXPIRY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Largest cache file read (botocore's hold a few KiB).
const MAX_FILE: u64 = 64 << 10;

/// The `AssumeRole` arguments a profile gives, as botocore names them.
pub(crate) struct AssumeArgs<'a> {
    pub role_arn: &'a str,
    /// The profile's `role_session_name` (a generated one is not part of the key).
    pub session_name: Option<&'a str>,
    pub external_id: Option<&'a str>,
    pub mfa_serial: Option<&'a str>,
    pub duration_seconds: Option<u32>,
}

/// Where the AWS CLI keeps assumed-role credentials, for `HOME`.
pub(crate) fn dir(home: &str) -> PathBuf {
    Path::new(home).join(".aws/cli/cache")
}

/// botocore's cache key for these arguments.
pub(crate) fn key(args: &AssumeArgs<'_>) -> String {
    // Sorted by name, as `sort_keys=True` sorts them.
    let mut fields: Vec<(&str, String)> = Vec::new();
    if let Some(secs) = args.duration_seconds {
        fields.push(("DurationSeconds", secs.to_string()));
    }
    let strings = [
        ("ExternalId", args.external_id),
        ("RoleArn", Some(args.role_arn)),
        ("RoleSessionName", args.session_name),
        ("SerialNumber", args.mfa_serial),
    ];
    for (name, value) in strings {
        if let Some(v) = value {
            fields.push((name, python_json_string(v)));
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\": {value}"))
        .collect();
    sha1_hex(&format!("{{{}}}", body.join(", ")))
}

/// `s` as Python's `json.dumps` writes a string (`ensure_ascii`: controls, DEL and everything
/// beyond ASCII as `\uXXXX`, UTF-16 pairs beyond the BMP).
fn python_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Python escapes all but ' '..='~' (DEL too).
            c if !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The credentials cached under `key` in `dir` if they last beyond the expiry window.
pub(crate) fn load(dir: &Path, key: &str, now: SystemTime) -> Option<Fetched> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(dir.join(format!("{key}.json")))
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .ok()?;
    let cached: serde_json::Value = serde_json::from_str(&text).ok()?;
    let creds = cached.get("Credentials")?;
    let field = |name: &str| {
        creds
            .get(name)?
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let expires = parse_cached_time(&field("Expiration")?)?;
    if expires < now + EXPIRY_WINDOW {
        return None;
    }
    Some(Fetched {
        credential: Arc::new(AwsCredential {
            key_id: field("AccessKeyId")?,
            secret_key: field("SecretAccessKey")?,
            token: Some(field("SessionToken")?),
        }),
        expires: Some(expires),
    })
}

/// An expiration as botocore writes it in its cache (`2026-11-29T10:12:00UTC`, from
/// `strftime('%Y-%m-%dT%H:%M:%S%Z')`) or as RFC 3339.
fn parse_cached_time(text: &str) -> Option<SystemTime> {
    if let Some(t) = parse_time(text) {
        return Some(t);
    }
    let naive = text
        .strip_suffix("UTC")
        .or_else(|| text.strip_suffix("GMT"))?;
    let t = chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Caches `fetched` under `key` in `dir` (made 0700 if missing), as the AWS CLI would.
pub(crate) fn store(dir: &Path, key: &str, fetched: &Fetched) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(expires) = fetched.expires else {
        // Credentials that do not expire are not what AssumeRole gives.
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let expiration = chrono::DateTime::<chrono::Utc>::from(expires)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let c = &fetched.credential;
    let value = serde_json::json!({
        "Credentials": {
            "AccessKeyId": c.key_id,
            "SecretAccessKey": c.secret_key,
            "SessionToken": c.token,
            "Expiration": expiration,
        }
    });
    write_private(&dir.join(format!("{key}.json")), &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(mfa: Option<&'a str>, duration: Option<u32>) -> AssumeArgs<'a> {
        AssumeArgs {
            role_arn: "arn:aws:iam::123456789012:role/guarded",
            session_name: None,
            external_id: None,
            mfa_serial: mfa,
            duration_seconds: duration,
        }
    }

    #[test]
    fn keys_are_botocores() {
        // From botocore 1.43's AssumeRoleCredentialFetcher._create_cache_key for the same
        // arguments (json.dumps(sort_keys=True), then SHA-1).
        let mfa = Some("arn:aws:iam::123456789012:mfa/operator");
        assert_eq!(
            key(&args(mfa, None)),
            "a238ae6868a12e927a470bbb1363ecccd9902055"
        );
        assert_eq!(
            key(&args(mfa, Some(3600))),
            "8e8c717b562f79fa817aa00d32fd0f4b81afb5c0"
        );
        let all = AssumeArgs {
            session_name: Some("ops"),
            external_id: Some("ext-\"1\"-é-😀"),
            ..args(mfa, Some(900))
        };
        assert_eq!(key(&all), "3c8ba12194abb6b240fb2af8391a1849a63e8cd6");
    }

    #[test]
    fn cached_credentials_serve_until_fifteen_minutes_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cli/cache");
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        let fetched = Fetched {
            credential: Arc::new(AwsCredential {
                key_id: "ASIAROLE".into(),
                secret_key: "role-secret".into(),
                token: Some("role-token".into()),
            }),
            expires: Some(expires),
        };
        store(&cache, "k", &fetched).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let file = cache.join("k.json");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let early = expires - Duration::from_secs(16 * 60);
        let got = load(&cache, "k", early).expect("a hit");
        assert_eq!(got.credential.key_id, "ASIAROLE");
        assert_eq!(got.credential.token.as_deref(), Some("role-token"));
        assert_eq!(got.expires, Some(expires));
        assert!(load(&cache, "k", expires - Duration::from_secs(14 * 60)).is_none());
        assert!(load(&cache, "other", early).is_none());

        // As botocore writes it: the whole AssumeRole response, `%Z` times.
        let botocore = r#"{"Credentials": {"AccessKeyId": "ASIACLI", "SecretAccessKey":
            "cli-secret", "SessionToken": "cli-token", "Expiration": "2030-01-01T00:00:00UTC"},
            "AssumedRoleUser": {"AssumedRoleId": "AROA:botocore-session-1", "Arn":
            "arn:aws:sts::123456789012:assumed-role/guarded/botocore-session-1"},
            "ResponseMetadata": {"HTTPStatusCode": 200}}"#;
        std::fs::write(cache.join("cli.json"), botocore).unwrap();
        let got = load(&cache, "cli", early).expect("botocore's file");
        assert_eq!(got.credential.key_id, "ASIACLI");
        assert_eq!(got.expires, Some(expires));
        std::fs::write(cache.join("torn.json"), &botocore[..80]).unwrap();
        assert!(load(&cache, "torn", early).is_none());
    }
}
