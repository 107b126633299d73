//! The AWS shared files a `push` takes credentials and a region from when the environment has
//! none: the profile `AWS_PROFILE` (default `default`) of the credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, sections `[NAME]`) and of the
//! config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, sections `[profile NAME]` and
//! `[default]`). Keys in the credentials file win over keys in the config file; the region
//! comes from the config file. What a profile gives, as for the AWS tools:
//! - with `role_arn`, that role (see [`crate::aws_role`]), assumed with the credentials of
//!   its `source_profile` (whose own role is assumed first when it names one: a chain of
//!   roles) or of its `credential_source` (`Environment`, `Ec2InstanceMetadata`,
//!   `EcsContainer`), or with the token of its `web_identity_token_file`;
//! - else, signed in through IAM Identity Center (`sso_session` or `sso_start_url`, with
//!   `sso_account_id` and `sso_role_name`), the role credentials of its `aws sso login` (see
//!   [`crate::aws_sso`]);
//! - else its static keys (`aws_access_key_id`, `aws_secret_access_key`,
//!   `aws_session_token`), else its `credential_process` (see [`crate::aws_process`]).
//!
//! The files are read with the subset of INI the AWS tools write: `[section]` lines,
//! `key = value` lines, whole-line comments (`#`, `;`) and comments after a value that follow
//! whitespace; indented lines below a key (nested settings such as `s3 =`) are skipped. No
//! error message quotes a value of these files.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Static credentials from a profile.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProfileCredential {
    pub key_id: String,
    pub secret_key: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for ProfileCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret (nor the token): this may end up in a log.
        f.debug_struct("ProfileCredential")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// What the selected profile gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ProfileSettings {
    pub credential: Option<ProfileCredential>,
    /// The profile's `credential_process` (when it has no static keys) and where it is
    /// configured (`AWS profile 'NAME' in PATH`).
    pub process: Option<(String, String)>,
    /// The role the profile assumes (then `credential` and `process` are `None`).
    pub role: Option<RoleSettings>,
    /// The profile's IAM Identity Center role (then `credential` and `process` are `None`).
    pub sso: Option<SsoSettings>,
    pub region: Option<String>,
}

/// A profile's `role_arn` and what assumes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoleSettings {
    pub role_arn: String,
    /// What the role is assumed with.
    pub source: RoleSource,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
    pub duration_seconds: Option<u32>,
    /// The MFA device whose code `AssumeRole` needs (asked for at the terminal).
    pub mfa_serial: Option<String>,
    /// `AWS profile 'NAME' in PATH`, for messages.
    pub origin: String,
}

/// A profile's IAM Identity Center role: what `aws sso login` signed in to, and the role
/// whose credentials the sign-in gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SsoSettings {
    pub start_url: String,
    /// Where the portal is (`sso_region`).
    pub region: String,
    pub account_id: String,
    pub role_name: String,
    /// What names the sign-in's token in `~/.aws/sso/cache`: the `sso_session`'s name, or
    /// the start URL of a profile without one (the AWS CLI's older form).
    pub cache_key: String,
    /// The profile, for `aws sso login --profile NAME`.
    pub profile: String,
    /// `AWS profile 'NAME' in PATH`, for messages.
    pub origin: String,
    /// An `sso_session`'s sign-in, which the AWS CLI renews with its refresh token (the
    /// older form, a start URL in the profile, has none).
    pub renewable: bool,
}

/// What assumes a role: its profile's `source_profile`, `credential_source` or
/// `web_identity_token_file`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RoleSource {
    /// The source profile's static keys.
    Keys(ProfileCredential),
    /// The source profile's `credential_process` (command, where it is set).
    Process(String, String),
    /// The role the source profile assumes in its turn.
    Role(Box<RoleSettings>),
    /// The source profile's IAM Identity Center role.
    Sso(SsoSettings),
    /// `web_identity_token_file`: `AssumeRoleWithWebIdentity` with the token in that file
    /// (read again for every request: tokens rotate), as Kubernetes projects one.
    WebIdentity(String),
    /// `credential_source = Environment`: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// `credential_source = Ec2InstanceMetadata`: the instance's role, from its metadata.
    Ec2InstanceMetadata,
    /// `credential_source = EcsContainer`: the container's role, from the endpoint that
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `..._FULL_URI` names.
    EcsContainer,
}

impl RoleSource {
    /// The `credential_source` values of the AWS tools.
    fn named(value: &str) -> Option<RoleSource> {
        match value {
            "Environment" => Some(RoleSource::Environment),
            "Ec2InstanceMetadata" => Some(RoleSource::Ec2InstanceMetadata),
            "EcsContainer" => Some(RoleSource::EcsContainer),
            _ => None,
        }
    }
}

/// The key of an `[sso-session NAME]` section of the config file among the profiles (a
/// profile's name, read from a text line, holds no NUL).
fn sso_session_key(name: &str) -> String {
    format!("\0sso-session {name}")
}

type Profiles = HashMap<String, HashMap<String, String>>;

/// The settings of the profile `explicit` (`--profile`) names, else `AWS_PROFILE`, else
/// `default`, `env` standing for the process environment. A named profile that neither file
/// has is an error; a missing `default` profile (or missing files) is not: there is nothing
/// to take.
pub(crate) fn profile_settings(
    env: &dyn Fn(&str) -> Option<String>,
    explicit: Option<&str>,
) -> Result<ProfileSettings> {
    let named = match explicit {
        Some(p) => Some((p.to_string(), "--profile")),
        None => env("AWS_PROFILE")
            .filter(|p| !p.is_empty())
            .map(|p| (p, "AWS_PROFILE")),
    };
    let profile = named
        .as_ref()
        .map_or_else(|| "default".to_string(), |(p, _)| p.clone());
    let home = env("HOME").filter(|h| !h.is_empty());
    let file = |var: &str, default: &str| -> Option<PathBuf> {
        let path = env(var).filter(|p| !p.is_empty());
        let path = path.unwrap_or_else(|| format!("~/.aws/{default}"));
        match path.strip_prefix("~/") {
            Some(rest) => home.as_ref().map(|h| Path::new(h).join(rest)),
            None => Some(PathBuf::from(path)),
        }
    };
    let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = file("AWS_CONFIG_FILE", "config");
    let credentials = read(credentials_file.as_deref(), false)?;
    let config = read(config_file.as_deref(), true)?;
    let files = Files {
        credentials: &credentials,
        config: &config,
        credentials_file: credentials_file.as_deref(),
        config_file: config_file.as_deref(),
    };
    let in_credentials = credentials.get(&profile);
    let in_config = config.get(&profile);
    if in_credentials.is_none() && in_config.is_none() {
        if let Some((_, by)) = named {
            let shown = |p: &Option<PathBuf>, var: &str| match p {
                Some(p) => p.display().to_string(),
                None => format!("~/.aws/{var} (HOME is not set)"),
            };
            return Err(Error::Invalid(format!(
                "AWS profile '{profile}' ({by}) is in neither {} nor {}",
                shown(&credentials_file, "credentials"),
                shown(&config_file, "config")
            )));
        }
        return Ok(ProfileSettings::default());
    }
    let region = in_config
        .and_then(|s| s.get("region"))
        .filter(|r| !r.is_empty())
        .cloned();
    if let Some(role) = role_settings(&files, &profile)? {
        return Ok(ProfileSettings {
            role: Some(role),
            region,
            ..ProfileSettings::default()
        });
    }
    if let Some(sso) = sso_settings(&files, &profile)? {
        return Ok(ProfileSettings {
            sso: Some(sso),
            region,
            ..ProfileSettings::default()
        });
    }
    let (credential, process) = keys_or_process(&files, &profile)?;
    Ok(ProfileSettings {
        credential,
        process,
        region,
        ..ProfileSettings::default()
    })
}

/// A profile's section of one file (if it has one) and the file's path.
type Section<'a> = (Option<&'a HashMap<String, String>>, Option<&'a Path>);

/// A profile's static keys, or else its `credential_process` (command, where it is set).
type KeysOrProcess = (Option<ProfileCredential>, Option<(String, String)>);

/// Both shared files, read, and where they are.
struct Files<'a> {
    credentials: &'a Profiles,
    config: &'a Profiles,
    credentials_file: Option<&'a Path>,
    config_file: Option<&'a Path>,
}

impl Files<'_> {
    /// The profile's sections: the credentials file's first, as its keys win.
    fn sections(&self, profile: &str) -> [Section<'_>; 2] {
        [
            (self.credentials.get(profile), self.credentials_file),
            (self.config.get(profile), self.config_file),
        ]
    }

    /// A setting of the profile, from whichever file has it (the credentials file first),
    /// with where it was found.
    fn setting(&self, profile: &str, key: &str) -> Option<(String, String)> {
        self.sections(profile)
            .into_iter()
            .find_map(|(settings, path)| {
                let value = settings?.get(key).filter(|v| !v.is_empty())?;
                let origin = format!("AWS profile '{profile}' in {}", path?.display());
                Some((value.clone(), origin))
            })
    }
}

/// The role `profile` assumes, if it names one, with what assumes it.
fn role_settings(files: &Files<'_>, profile: &str) -> Result<Option<RoleSettings>> {
    role_in_chain(files, profile, &mut Vec::new())
}

/// The role `profile` assumes, `chain` naming the profiles whose roles wait for it (a
/// source profile met again would loop).
fn role_in_chain(
    files: &Files<'_>,
    profile: &str,
    chain: &mut Vec<String>,
) -> Result<Option<RoleSettings>> {
    let Some((role_arn, origin)) = files.setting(profile, "role_arn") else {
        return Ok(None);
    };
    let refuse = |why: String| Error::Invalid(format!("{origin}: {why}"));
    let source_profile = files.setting(profile, "source_profile").map(|v| v.0);
    let credential_source = files.setting(profile, "credential_source").map(|v| v.0);
    let token_file = files
        .setting(profile, "web_identity_token_file")
        .map(|v| v.0);
    chain.push(profile.to_string());
    let given = [&source_profile, &credential_source, &token_file];
    if given.iter().filter(|g| g.is_some()).count() > 1 {
        return Err(refuse(
            "role_arn with more than one of source_profile, credential_source and \
             web_identity_token_file (a role takes one)"
                .to_string(),
        ));
    }
    let source = match (source_profile, credential_source, token_file) {
        (None, None, None) => {
            return Err(refuse(
                "role_arn without source_profile, credential_source or web_identity_token_file"
                    .to_string(),
            ))
        }
        (_, _, Some(file)) => RoleSource::WebIdentity(file),
        (None, Some(named), _) => RoleSource::named(&named).ok_or_else(|| {
            refuse(format!(
                "credential_source '{named}' is none of Environment, Ec2InstanceMetadata, \
                 EcsContainer"
            ))
        })?,
        (Some(source), _, _) => source_of(files, profile, &source, chain, &refuse)?,
    };
    let duration_seconds = match files.setting(profile, "duration_seconds") {
        None => None,
        Some((d, _)) => Some(
            d.parse::<u32>()
                .map_err(|_| refuse("duration_seconds is not a number of seconds".to_string()))?,
        ),
    };
    Ok(Some(RoleSettings {
        role_arn,
        source,
        external_id: files.setting(profile, "external_id").map(|v| v.0),
        session_name: files.setting(profile, "role_session_name").map(|v| v.0),
        duration_seconds,
        mfa_serial: files.setting(profile, "mfa_serial").map(|v| v.0),
        origin,
    }))
}

/// What the source profile `source` of `profile` gives to assume a role with: the role it
/// assumes itself, else its keys or `credential_process`. A profile that is its own source
/// gives its keys, as for the AWS tools. `refuse` makes an error about `profile`.
fn source_of(
    files: &Files<'_>,
    profile: &str,
    source: &str,
    chain: &mut Vec<String>,
    refuse: &dyn Fn(String) -> Error,
) -> Result<RoleSource> {
    if source != profile && files.setting(source, "role_arn").is_some() {
        if chain.iter().any(|p| p == source) {
            return Err(refuse(format!(
                "source_profile '{source}' leads back to itself ({} -> {source}): a chain of \
                 roles cannot loop",
                chain.join(" -> ")
            )));
        }
        let inner = role_in_chain(files, source, chain)?
            .ok_or_else(|| refuse(format!("source_profile '{source}' has no role_arn")))?;
        return Ok(RoleSource::Role(Box::new(inner)));
    }
    if let Some(sso) = sso_settings(files, source)? {
        return Ok(RoleSource::Sso(sso));
    }
    match keys_or_process(files, source)? {
        (Some(keys), _) => Ok(RoleSource::Keys(keys)),
        (None, Some((command, origin))) => Ok(RoleSource::Process(command, origin)),
        (None, None) => Err(refuse(format!(
            "source_profile '{source}' has neither keys nor credential_process"
        ))),
    }
}

/// The IAM Identity Center role of `profile`, if it has `sso_session` or `sso_start_url`.
fn sso_settings(files: &Files<'_>, profile: &str) -> Result<Option<SsoSettings>> {
    let session = files.setting(profile, "sso_session");
    let legacy = files.setting(profile, "sso_start_url");
    let Some((_, origin)) = session.clone().or(legacy.clone()) else {
        return Ok(None);
    };
    let refuse = |why: String| Error::Invalid(format!("{origin}: {why}"));
    let (start_url, region, cache_key, renewable) = match session {
        Some((name, _)) => {
            let section = files.config.get(&sso_session_key(&name));
            let get = |key: &str| {
                section
                    .and_then(|s| s.get(key))
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| {
                        refuse(format!(
                            "sso_session '{name}' has no [sso-session {name}] section with {key}"
                        ))
                    })
            };
            (get("sso_start_url")?, get("sso_region")?, name, true)
        }
        None => {
            let url = legacy.map(|v| v.0).unwrap_or_default();
            let region = files
                .setting(profile, "sso_region")
                .ok_or_else(|| refuse("sso_start_url without sso_region".to_string()))?
                .0;
            (url.clone(), region, url, false)
        }
    };
    let needed = |key: &str| {
        files.setting(profile, key).map(|v| v.0).ok_or_else(|| {
            refuse(format!(
                "{key} is missing: a profile signed in through IAM Identity Center names the \
                 account (sso_account_id) and the role (sso_role_name) whose credentials it takes"
            ))
        })
    };
    Ok(Some(SsoSettings {
        start_url,
        region,
        account_id: needed("sso_account_id")?,
        role_name: needed("sso_role_name")?,
        renewable,
        cache_key,
        profile: profile.to_string(),
        origin,
    }))
}

/// A profile's static keys, else its `credential_process`; an error for a profile that gets
/// its credentials in a way this reader does not follow.
fn keys_or_process(files: &Files<'_>, profile: &str) -> Result<KeysOrProcess> {
    let sources = files.sections(profile);
    let mut credential = None;
    for (settings, path) in sources {
        let (Some(settings), Some(path)) = (settings, path) else {
            continue;
        };
        if let Some(found) = static_credential(settings, profile, path)? {
            credential = Some(found);
            break;
        }
    }
    let mut process = None;
    if credential.is_none() {
        process = files.setting(profile, "credential_process");
    }
    if credential.is_none() && process.is_none() {
        for (settings, path) in sources {
            let (Some(settings), Some(path)) = (settings, path) else {
                continue;
            };
            if settings.contains_key("web_identity_token_file") {
                return Err(Error::Invalid(format!(
                    "AWS profile '{profile}' in {}: web_identity_token_file without role_arn \
                     (the role the token assumes)",
                    path.display()
                )));
            }
        }
    }
    Ok((credential, process))
}

/// The static keys of a profile's section, if it has any.
fn static_credential(
    settings: &HashMap<String, String>,
    profile: &str,
    path: &Path,
) -> Result<Option<ProfileCredential>> {
    let get = |k: &str| settings.get(k).filter(|v| !v.is_empty()).cloned();
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(key_id), Some(secret_key)) => Ok(Some(ProfileCredential {
            key_id,
            secret_key,
            token: get("aws_session_token"),
        })),
        (None, None) => Ok(None),
        (has_id, _) => Err(Error::Invalid(format!(
            "AWS profile '{profile}' in {}: {} without {}",
            path.display(),
            if has_id.is_some() {
                "aws_access_key_id"
            } else {
                "aws_secret_access_key"
            },
            if has_id.is_some() {
                "aws_secret_access_key"
            } else {
                "aws_access_key_id"
            },
        ))),
    }
}

/// The profiles of a file (none when it does not exist).
fn read(path: Option<&Path>, config: bool) -> Result<Profiles> {
    let Some(path) = path else {
        return Ok(Profiles::new());
    };
    match std::fs::read(path) {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes), path, config),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::new()),
        Err(e) => Err(Error::io_path(path, e)),
    }
}

/// The sections of an AWS shared file by profile name: in the config file `[profile NAME]`
/// and `[default]` (other sections, such as `[sso-session …]`, are not profiles), in the
/// credentials file `[NAME]`. A section seen twice is merged, the later key winning.
fn parse(text: &str, path: &Path, config: bool) -> Result<Profiles> {
    let mut profiles = Profiles::new();
    // The profile the lines belong to; `None` before any section and in other sections.
    let mut current: Option<String> = None;
    let mut in_section = false;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let malformed =
            |what: &str| Error::Invalid(format!("{} line {}: {what}", path.display(), number + 1));
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(inner) = line.strip_prefix('[') {
            let name = strip_comment(inner)
                .strip_suffix(']')
                .ok_or_else(|| malformed("a section header without its closing ']'"))?
                .trim();
            let after = |prefix: &str| {
                name.strip_prefix(prefix)
                    .filter(|rest| rest.starts_with([' ', '\t']))
                    .map(|rest| rest.trim().to_string())
            };
            current = if !config || name == "default" {
                Some(name.to_string())
            } else {
                after("profile").or_else(|| after("sso-session").map(|n| sso_session_key(&n)))
            };
            if let Some(name) = &current {
                profiles.entry(name.clone()).or_default();
            }
            in_section = true;
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // A nested setting under the key above (`s3 =` then `  addressing_style = path`).
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| malformed("neither a [section] nor a key = value line"))?;
        if !in_section {
            return Err(malformed("a setting before the first [section]"));
        }
        if let Some(settings) = current.as_ref().and_then(|name| profiles.get_mut(name)) {
            let value = strip_comment(value).trim().to_string();
            settings.insert(key.trim().to_ascii_lowercase(), value);
        }
    }
    Ok(profiles)
}

/// `text` up to a `#` or `;` that follows whitespace (a comment after a value).
fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b'#' || *b == b';') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return text[..i].trim_end();
        }
    }
    text.trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = DEFAULTKEY
aws_secret_access_key = default/secret+1

# the team's bucket
[team]
aws_access_key_id=TEAMKEY
aws_secret_access_key=team/secret ; rotated monthly
aws_session_token = team-token
";

    const CONFIG: &str = "\
[default]
region = eu-west-1
s3 =
    addressing_style = path
    region = not-a-profile-key

[profile team]
region = eu-central-1 # Frankfurt

[profile config-only]
aws_access_key_id = CONFIGKEY
aws_secret_access_key = config-secret

[sso-session corp]
sso_region = us-east-1

[profile sso]
sso_session = corp
";

    /// A temporary HOME with `~/.aws/credentials` and `~/.aws/config`, and an environment
    /// made of `vars` (HOME included).
    fn with_files(
        credentials: &str,
        config: &str,
        vars: &[(&str, &str)],
    ) -> (tempfile::TempDir, HashMap<String, String>) {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(aws.join("credentials"), credentials).unwrap();
        std::fs::write(aws.join("config"), config).unwrap();
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("HOME".into(), home.path().display().to_string());
        (home, env)
    }

    fn settings(env: &HashMap<String, String>) -> Result<ProfileSettings> {
        profile_settings(&|k| env.get(k).cloned(), None)
    }

    fn key_of(s: &ProfileSettings) -> Option<&str> {
        s.credential.as_ref().map(|c| c.key_id.as_str())
    }

    #[test]
    fn aws_profile_selects_the_profile() {
        let (_home, env) = with_files(CREDENTIALS, CONFIG, &[]);
        let default = settings(&env).unwrap();
        let c = default.credential.clone().unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str(), c.token),
            ("DEFAULTKEY", "default/secret+1", None)
        );
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));

        let (_home, env) = with_files(CREDENTIALS, CONFIG, &[("AWS_PROFILE", "team")]);
        let team = settings(&env).unwrap();
        let c = team.credential.clone().unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str()),
            ("TEAMKEY", "team/secret")
        );
        assert_eq!(c.token.as_deref(), Some("team-token"));
        assert_eq!(team.region.as_deref(), Some("eu-central-1"));
        assert!(!format!("{team:?}").contains("secret"), "{team:?}");

        // Keys in the config file's profile count when the credentials file has none.
        let (_home, env) = with_files(CREDENTIALS, CONFIG, &[("AWS_PROFILE", "config-only")]);
        assert_eq!(key_of(&settings(&env).unwrap()), Some("CONFIGKEY"));

        // --profile wins over AWS_PROFILE, and a missing one is named as given there.
        let explicit = |name| profile_settings(&|k| env.get(k).cloned(), Some(name));
        assert_eq!(key_of(&explicit("team").unwrap()), Some("TEAMKEY"));
        let err = explicit("nosuch").unwrap_err().to_string();
        assert!(
            err.contains("AWS profile 'nosuch' (--profile) is in neither"),
            "{err}"
        );
    }

    #[test]
    fn other_files_are_named_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("creds");
        let config = dir.path().join("conf");
        std::fs::write(
            &credentials,
            "[ci]\naws_access_key_id=CI\naws_secret_access_key=s\n",
        )
        .unwrap();
        std::fs::write(&config, "[profile ci]\nregion=ap-south-1\n").unwrap();
        let (_home, mut env) = with_files(CREDENTIALS, CONFIG, &[("AWS_PROFILE", "ci")]);
        env.insert(
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            credentials.display().to_string(),
        );
        env.insert("AWS_CONFIG_FILE".into(), config.display().to_string());
        let s = settings(&env).unwrap();
        assert_eq!(key_of(&s), Some("CI"));
        assert_eq!(s.region.as_deref(), Some("ap-south-1"));
    }

    #[test]
    fn a_missing_profile_is_an_error_only_when_named() {
        let (home, env) = with_files(CREDENTIALS, CONFIG, &[("AWS_PROFILE", "nosuch")]);
        let err = settings(&env).unwrap_err().to_string();
        let credentials = home.path().join(".aws/credentials");
        assert!(
            err.contains("AWS profile 'nosuch'")
                && err.contains(&credentials.display().to_string()),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("secret") && !err.contains("KEY"), "{err}");

        // No files, no AWS_PROFILE: nothing to take, and no error.
        let empty = tempfile::tempdir().unwrap();
        let env: HashMap<String, String> =
            [("HOME".to_string(), empty.path().display().to_string())].into();
        assert_eq!(settings(&env).unwrap(), ProfileSettings::default());
        // A default profile with only a region (an EC2 host's): no credentials from it.
        let (_home, env) = with_files("", "[default]\nregion = us-west-2\n", &[]);
        let s = settings(&env).unwrap();
        assert!(s.credential.is_none());
        assert_eq!(s.region.as_deref(), Some("us-west-2"));
    }

    #[test]
    fn a_credential_process_serves_when_the_profile_has_no_keys() {
        let config = "[profile p]\ncredential_process = helper --x 'a b'\nregion = eu-west-1\n";
        let (_home, env) = with_files("", config, &[("AWS_PROFILE", "p")]);
        let got = settings(&env).unwrap();
        let (command, origin) = got.process.unwrap();
        assert_eq!(command, "helper --x 'a b'");
        assert!(origin.starts_with("AWS profile 'p' in "), "{origin}");
        assert_eq!(got.region.as_deref(), Some("eu-west-1"));
        // Static keys in the credentials file win, as for the AWS tools.
        let keys = "[p]\naws_access_key_id = K\naws_secret_access_key = S\n";
        let (_home, env) = with_files(keys, config, &[("AWS_PROFILE", "p")]);
        let got = settings(&env).unwrap();
        assert!(got.credential.is_some() && got.process.is_none());
    }

    #[test]
    fn a_role_is_assumed_with_its_source_profiles_credentials() {
        let credentials = "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = S\n";
        let config = "[profile r]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = base\n\
                      external_id = e\nduration_seconds = 900\nregion = eu-west-1\n\
                      aws_access_key_id = IGNORED\naws_secret_access_key = IGNORED\n\
                      [profile p]\ncredential_process = helper\n\
                      [profile by-process]\nrole_arn = arn:aws:iam::1:role/y\nsource_profile = p\n\
                      [profile mfa]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = base\n\
                      mfa_serial = arn:aws:iam::1:mfa/me\n\
                      [profile nothing]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = p2\n";
        let profile = |name: &str| {
            let (_home, env) = with_files(credentials, config, &[("AWS_PROFILE", name)]);
            settings(&env)
        };
        // The role wins over keys in the same profile, as for the AWS tools.
        let r = profile("r").unwrap();
        assert!(r.credential.is_none() && r.process.is_none());
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        let role = r.role.unwrap();
        assert_eq!(role.role_arn, "arn:aws:iam::1:role/x");
        assert!(matches!(&role.source, RoleSource::Keys(k) if k.key_id == "BASEKEY"));
        assert_eq!(role.external_id.as_deref(), Some("e"));
        assert_eq!(role.duration_seconds, Some(900));
        let by_process = profile("by-process").unwrap().role.unwrap();
        assert!(matches!(&by_process.source, RoleSource::Process(c, _) if c == "helper"));
        assert_eq!(role.mfa_serial, None);
        let mfa = profile("mfa").unwrap().role.unwrap();
        assert_eq!(mfa.mfa_serial.as_deref(), Some("arn:aws:iam::1:mfa/me"));
        let err = profile("nothing").unwrap_err().to_string();
        assert!(
            err.contains("source_profile 'p2' has neither keys nor credential_process")
                && err.contains("AWS profile 'nothing' in "),
            "{err}"
        );
        assert!(!err.contains("BASEKEY"), "{err}");
    }

    #[test]
    fn a_role_behind_a_role_is_assumed_in_turn_and_a_loop_is_refused() {
        let credentials = "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = S\n\
                           [self]\naws_access_key_id = SELFKEY\naws_secret_access_key = S\n";
        let config = "[profile inner]\nrole_arn = arn:aws:iam::1:role/inner\nsource_profile = base\n\
                      [profile outer]\nrole_arn = arn:aws:iam::2:role/outer\nsource_profile = inner\n\
                      role_session_name = o\n\
                      [profile top]\nrole_arn = arn:aws:iam::3:role/top\nsource_profile = outer\n\
                      [profile self]\nrole_arn = arn:aws:iam::1:role/s\nsource_profile = self\n\
                      [profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n\
                      [profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = c\n\
                      [profile c]\nrole_arn = arn:aws:iam::1:role/c\nsource_profile = a\n\
                      [profile broken]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = mid\n\
                      [profile mid]\nrole_arn = arn:aws:iam::1:role/y\nsource_profile = web\n\
                      [profile web]\nweb_identity_token_file = /t\n";
        let profile = |name: &str| {
            let (_home, env) = with_files(credentials, config, &[("AWS_PROFILE", name)]);
            settings(&env)
        };
        // top -> outer -> inner -> base's keys: the innermost role is assumed first.
        let top = profile("top").unwrap().role.unwrap();
        assert_eq!(top.role_arn, "arn:aws:iam::3:role/top");
        let RoleSource::Role(outer) = top.source else {
            panic!("{:?}", top.source)
        };
        assert_eq!(outer.role_arn, "arn:aws:iam::2:role/outer");
        assert_eq!(outer.session_name.as_deref(), Some("o"));
        assert!(
            outer.origin.starts_with("AWS profile 'outer' in "),
            "{}",
            outer.origin
        );
        let RoleSource::Role(inner) = outer.source else {
            panic!("{:?}", outer.source)
        };
        assert!(matches!(inner.source, RoleSource::Keys(k) if k.key_id == "BASEKEY"));
        // A profile that is its own source takes its own keys: no loop.
        let own = profile("self").unwrap().role.unwrap();
        assert!(matches!(own.source, RoleSource::Keys(k) if k.key_id == "SELFKEY"));

        let err = profile("a").unwrap_err().to_string();
        assert!(
            err.contains("AWS profile 'c' in ")
                && err.contains("source_profile 'a' leads back to itself (a -> b -> c -> a)"),
            "{err}"
        );
        // An error in a profile down the chain names that profile.
        let err = profile("broken").unwrap_err().to_string();
        assert!(
            err.contains("AWS profile 'web' in ")
                && err.contains("web_identity_token_file without role_arn"),
            "{err}"
        );
    }

    #[test]
    fn a_role_takes_its_credential_source() {
        let config = "[profile env]\nrole_arn = arn:aws:iam::1:role/e\ncredential_source = Environment\n\
                      [profile ec2]\nrole_arn = arn:aws:iam::1:role/i\n\
                      credential_source = Ec2InstanceMetadata\n\
                      [profile ecs]\nrole_arn = arn:aws:iam::1:role/c\ncredential_source = EcsContainer\n\
                      [profile odd]\nrole_arn = arn:aws:iam::1:role/o\ncredential_source = Ec2\n\
                      [profile both]\nrole_arn = arn:aws:iam::1:role/b\ncredential_source = Environment\n\
                      source_profile = env\n\
                      [profile none]\nrole_arn = arn:aws:iam::1:role/n\n\
                      [profile behind]\nrole_arn = arn:aws:iam::2:role/x\nsource_profile = ec2\n\
                      [profile web]\nrole_arn = arn:aws:iam::1:role/w\n\
                      web_identity_token_file = /var/run/secrets/token\n";
        let profile = |name: &str| {
            let (_home, env) = with_files("", config, &[("AWS_PROFILE", name)]);
            settings(&env)
        };
        for (name, source) in [
            ("env", RoleSource::Environment),
            ("ec2", RoleSource::Ec2InstanceMetadata),
            ("ecs", RoleSource::EcsContainer),
            (
                "web",
                RoleSource::WebIdentity("/var/run/secrets/token".to_string()),
            ),
        ] {
            assert_eq!(profile(name).unwrap().role.unwrap().source, source);
        }
        let behind = profile("behind").unwrap().role.unwrap();
        assert!(
            matches!(&behind.source, RoleSource::Role(r) if r.source == RoleSource::Ec2InstanceMetadata)
        );
        for (name, why) in [
            (
                "odd",
                "credential_source 'Ec2' is none of Environment, Ec2InstanceMetadata, EcsContainer",
            ),
            (
                "both",
                "more than one of source_profile, credential_source and web_identity_token_file",
            ),
            (
                "none",
                "role_arn without source_profile, credential_source or web_identity_token_file",
            ),
        ] {
            let err = profile(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(err.contains(&format!("AWS profile '{name}' in ")), "{err}");
        }
    }

    #[test]
    fn an_sso_profile_names_its_sign_in_and_role() {
        let keys = "[dev]\naws_access_key_id = K\naws_secret_access_key = S\n";
        let config = "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n\
                      sso_role_name = Pusher\nregion = eu-west-1\n\
                      [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n\
                      sso_region = us-east-1\nsso_registration_scopes = sso:account:access\n\
                      [profile old]\nsso_start_url = https://old.awsapps.com/start\n\
                      sso_region = eu-central-1\nsso_account_id = 1\nsso_role_name = R\n\
                      [profile login-only]\nsso_session = corp\n\
                      [profile lost]\nsso_session = gone\nsso_account_id = 1\nsso_role_name = R\n\
                      [profile via]\nrole_arn = arn:aws:iam::2:role/x\nsource_profile = dev\n";
        let profile = |name: &str| {
            let (_home, env) = with_files(keys, config, &[("AWS_PROFILE", name)]);
            settings(&env)
        };
        // Before keys, as for the AWS tools; the region is the profile's, not the portal's.
        let dev = profile("dev").unwrap();
        assert!(dev.credential.is_none());
        assert_eq!(dev.region.as_deref(), Some("eu-west-1"));
        let sso = dev.sso.unwrap();
        assert_eq!(
            (
                sso.start_url.as_str(),
                sso.region.as_str(),
                sso.account_id.as_str(),
                sso.role_name.as_str(),
                sso.cache_key.as_str(),
                sso.profile.as_str()
            ),
            (
                "https://corp.awsapps.com/start",
                "us-east-1",
                "111122223333",
                "Pusher",
                "corp",
                "dev"
            )
        );
        assert!(sso.renewable);
        // The older form: the start URL names the sign-in, which has no refresh token.
        let old = profile("old").unwrap().sso.unwrap();
        assert_eq!(old.cache_key, "https://old.awsapps.com/start");
        assert_eq!(old.region, "eu-central-1");
        assert!(!old.renewable);
        // A role assumed with an SSO profile's credentials.
        let via = profile("via").unwrap().role.unwrap();
        assert!(matches!(&via.source, RoleSource::Sso(s) if s.profile == "dev"));
        for (name, why) in [
            ("login-only", "sso_account_id is missing"),
            (
                "lost",
                "sso_session 'gone' has no [sso-session gone] section with sso_start_url",
            ),
        ] {
            let err = profile(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(err.contains(&format!("AWS profile '{name}' in ")), "{err}");
        }
    }

    #[test]
    fn profiles_this_reader_cannot_follow_are_refused_without_values() {
        let web = "[profile web]\nweb_identity_token_file = /var/run/token\n";
        let (_home, env) = with_files("", web, &[("AWS_PROFILE", "web")]);
        let err = settings(&env).unwrap_err().to_string();
        assert!(
            err.contains("'web'") && err.contains("web_identity_token_file without role_arn"),
            "{err}"
        );
        assert!(!err.contains("/var/run/token"), "{err}");

        let half = "[default]\naws_access_key_id = HALFKEY\n";
        let (_home, env) = with_files(half, "", &[]);
        let err = settings(&env).unwrap_err().to_string();
        assert!(
            err.contains("aws_access_key_id without aws_secret_access_key"),
            "{err}"
        );
        assert!(!err.contains("HALFKEY"), "{err}");

        let bad = "[default]\naws_secret_access_key VERYSECRET\n";
        let (_home, env) = with_files(bad, "", &[]);
        let err = settings(&env).unwrap_err().to_string();
        assert!(err.contains("credentials line 2:"), "{err}");
        assert!(!err.contains("VERYSECRET"), "{err}");
    }
}
