//! Copies a repository's published revision from its local storage to an S3 bucket (AWS or
//! an S3-compatible store), from where clients read it over HTTP like any stratum 0.
//!
//! The bucket is updated in publish order, so a client (or a replica) reading it at any moment
//! sees the last complete revision: the objects the bucket lacks (catalogs after everything
//! else, as a catalog references the rest) → the root files the bucket's current manifest can
//! live with (`.cvmfswhitelist`, signed by the master key for the same certificate, and
//! `.cvmfs_master_replica`) → `.cvmfspublished` → the root files that go with the new manifest
//! (`.cvmfsreflog`, whose hash is the manifest's `Y`, and `.cvmfs_status.json`). Each S3 put is
//! atomic and every root file's is conditional on the version found at the start, the
//! manifest's included (its ETag, or its absence), so two pushers cannot interleave: the loser
//! writes no root file, and only a push whose manifest is in writes the reflog (a loser that
//! finds the bucket serving what the storage now holds, another home's push of a later
//! revision, has nothing left to do: it ends as `superseded`). A bucket ahead
//! of the local storage (a higher revision, or the same one with another tree) or holding
//! another repository is refused. A push that stops before its manifest leaves the bucket as it
//! was; one that stops between the manifest and the reflog leaves a reflog behind the manifest
//! (a stratum 1's `check` flags it) until the next push, which compares every root file and
//! uploads it. The revision's catalogs are read first: a storage that lost an object of it is
//! refused. With `delete`, objects the bucket holds and the local storage no longer does
//! (after `gc`) are deleted once the new manifest is in place, except what a revision the
//! storage keeps references.
//!
//! [`Repository::set_auto_push`] makes a target the repository's own (kept in `config.json`,
//! without credentials); [`Repository::auto_push`] then pushes there after each publish.
//!
//! The home's lock and the storage's collection lock (shared) are held: no local publish or
//! collection changes the storage during a push. Credentials and region come from the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, ...), else from the profile `AWS_PROFILE` (default `default`) of
//! `~/.aws/credentials` and `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`,
//! `AWS_CONFIG_FILE`), else from web identity, container credentials or the instance
//! metadata; they are never printed. A profile named in [`S3Target::profile`] (`--profile`)
//! comes before the environment's keys, as with the AWS tools' `--profile`.
//!
//! ```no_run
//! use publisher::{PushOptions, Repository, S3Target};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = Repository::open("/var/lib/cvmfs-oci".as_ref(), "sw.example.org")?;
//! let target = S3Target::parse("s3://cvmfs-bucket/sw.example.org")?;
//! let report = repo.push(&PushOptions::new(target))?;
//! println!("revision {}: {} objects uploaded", report.revision, report.objects_uploaded);
//! # Ok(()) }
//! ```

use crate::aws_profile::{ProfileCredential, RoleSettings, RoleSource, SsoSettings};
use crate::aws_role::RoleSigner;
use crate::catalogs::{tree_gap, TreeGap};
use crate::error::{Error, Result};
use crate::gc::referenced_by_kept;
use crate::local::{parse_object_name, LocalStore};
use crate::repo::{load_keys, lock, parse_hash_field, storage_lock, Repository, StorageUse};
use crate::store::{root_files, ObjectStore};
use crate::txn::{fault_armed, fault_point, verified_manifest};
use catalog_writer::hash::ContentHash;
use catalog_writer::namespace::CatalogRef;
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::Path as S3Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    ClientOptions, MultipartUpload, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions,
    PutPayload, RetryConfig, StaticCredentialProvider, UpdateVersion,
};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where to push: `s3://BUCKET[/PREFIX]` plus how to reach the store. Kept in `config.json`
/// as the repository's push target ([`Config::auto_push`](crate::Config::auto_push)); no
/// credentials are part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct S3Target {
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" = the bucket's root).
    pub prefix: String,
    /// S3-compatible endpoint (e.g. `http://127.0.0.1:9000`); `None` = AWS.
    pub endpoint: Option<String>,
    /// `None`: from `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint (TLS is required otherwise).
    pub allow_http: bool,
    /// Upload with the canned ACL `public-read` (for buckets that still use ACLs; most serve
    /// a repository through a bucket policy instead).
    pub public_read: bool,
    /// Push even to an endpoint that ignores conditional writes: the operator sees to it
    /// that only one push at a time goes to this bucket (see [`Push::conditions_hold`]).
    pub single_pusher: bool,
    /// The AWS profile to take credentials from (`--profile`): it wins over `AWS_PROFILE`
    /// and over keys in the environment, which then serve only a role's
    /// `credential_source = Environment`, as for the AWS tools. A name, not a credential.
    pub profile: Option<String>,
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<S3Target> {
        let invalid =
            |why: &str| Error::Invalid(format!("{url}: {why} (expected s3://BUCKET[/PREFIX])"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("not an s3:// address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(invalid("'.' and '..' are not allowed in the prefix"));
        }
        Ok(S3Target {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            ..S3Target::default()
        })
    }

    /// `s3://BUCKET[/PREFIX]`.
    pub fn describe(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    fn key(&self, name: &str) -> S3Path {
        match self.prefix.as_str() {
            "" => S3Path::from(name),
            p => S3Path::from(format!("{p}/{name}")),
        }
    }

    fn client(&self) -> Result<AmazonS3> {
        let builder = self.builder(&process_env())?;
        self.check_scheme(&builder)?;
        let mut headers = http::HeaderMap::new();
        if self.public_read {
            headers.insert("x-amz-acl", http::HeaderValue::from_static("public-read"));
        }
        let client = client_options(self.allow_http).with_default_headers(headers.clone());
        // Transient errors are retried, but a wrong endpoint or a dead store should fail
        // within a minute, not the library's three.
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(60),
            ..RetryConfig::default()
        };
        builder
            .with_retry(retry)
            .with_client_options(client)
            .with_http_connector(self.connector(headers)?)
            .build()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))
    }
}

/// The clients' options: those of object_store's defaults `push` relies on, stated.
fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(crate::s3_http::REQUEST_TIMEOUT)
        .with_connect_timeout(crate::s3_http::CONNECT_TIMEOUT)
}

/// Time since the Unix epoch (zero on a clock set before it).
fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Something that gives AWS credentials (static, a process, a role).
type CredentialSource = dyn object_store::CredentialProvider<Credential = AwsCredential>;

/// The variables that say where an EC2 instance's metadata is (the AWS SDKs' name, then
/// object_store's, which wins), and whether IMDSv1 may serve when IMDSv2's token is refused.
const INSTANCE_KEYS: [(&str, AmazonS3ConfigKey); 3] = [
    (
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        AmazonS3ConfigKey::MetadataEndpoint,
    ),
    ("AWS_METADATA_ENDPOINT", AmazonS3ConfigKey::MetadataEndpoint),
    ("AWS_IMDSV1_FALLBACK", AmazonS3ConfigKey::ImdsV1Fallback),
];

/// The variables that say where a container's credentials are (ECS, EKS Pod Identity).
const CONTAINER_KEYS: [(&str, AmazonS3ConfigKey); 3] = [
    (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
    ),
    (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        AmazonS3ConfigKey::ContainerCredentialsFullUri,
    ),
    (
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
    ),
];

/// What gives a profile's static keys.
fn keys_provider(keys: ProfileCredential) -> Arc<CredentialSource> {
    Arc::new(StaticCredentialProvider::new(AwsCredential {
        key_id: keys.key_id,
        secret_key: keys.secret_key,
        token: keys.token,
    }))
}

/// Whether `key` is one of the keys themselves (the id, the secret, the session token).
fn is_key_setting(key: &AmazonS3ConfigKey) -> bool {
    matches!(
        key,
        AmazonS3ConfigKey::AccessKeyId
            | AmazonS3ConfigKey::SecretAccessKey
            | AmazonS3ConfigKey::Token
    )
}

/// The keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) of `env`.
fn environment_keys(env: &HashMap<String, String>) -> Option<ProfileCredential> {
    Some(ProfileCredential {
        key_id: env.get("AWS_ACCESS_KEY_ID")?.clone(),
        secret_key: env.get("AWS_SECRET_ACCESS_KEY")?.clone(),
        token: env.get("AWS_SESSION_TOKEN").cloned(),
    })
}

/// The process environment's `AWS_*` variables and `HOME`, for [`S3Target::builder`]; an
/// empty one counts as unset, as for the AWS tools.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, v)| (k.starts_with("AWS_") || k == "HOME") && !v.is_empty())
        .collect()
}

impl S3Target {
    /// A plain HTTP client with the S3 client's connection settings (but none of its default
    /// headers: an unsigned `x-amz-acl` would void a signed URL).
    fn http_client(&self) -> Result<HttpClient> {
        self.connector(http::HeaderMap::new())?
            .connect(&client_options(self.allow_http))
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))
    }

    /// The connector of the clients, which send `headers` with every request.
    fn connector(&self, headers: http::HeaderMap) -> Result<crate::s3_http::BoundedConnector> {
        crate::s3_http::BoundedConnector::new(headers)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))
    }

    /// The client's settings, in the order of the AWS tools: the options (`--endpoint`,
    /// `--region`), then the environment `env` (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, ...), then the profile `--profile` or `AWS_PROFILE`
    /// names in the shared credentials and config files (see [`crate::aws_profile`]; with
    /// `--profile`, the environment's keys are passed over); without credentials from any of
    /// these, the client's own chain (web identity, container, instance metadata).
    fn builder(&self, env: &HashMap<String, String>) -> Result<AmazonS3Builder> {
        let mut builder = AmazonS3Builder::new().with_bucket_name(&self.bucket);
        for (key, value) in env {
            // As `AmazonS3Builder::from_env`.
            if let (true, Ok(config)) = (
                key.starts_with("AWS_"),
                key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>(),
            ) {
                if self.profile.is_none() || !is_key_setting(&config) {
                    builder = builder.with_config(config, value);
                }
            }
        }
        if let (Some(imds), None) = (
            env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            env.get("AWS_METADATA_ENDPOINT"),
        ) {
            // The AWS SDKs' name for what object_store calls AWS_METADATA_ENDPOINT.
            builder = builder.with_config(AmazonS3ConfigKey::MetadataEndpoint, imds);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let has_keys = [
            AmazonS3ConfigKey::AccessKeyId,
            AmazonS3ConfigKey::SecretAccessKey,
        ]
        .iter()
        .any(|k| builder.get_config_value(k).is_some());
        let has_region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_some();
        if has_keys && has_region {
            return Ok(builder);
        }
        let profile =
            crate::aws_profile::profile_settings(&|k| env.get(k).cloned(), self.profile.as_deref())
                .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))?;
        if let (false, Some(region)) = (has_region, &profile.region) {
            builder = builder.with_region(region);
        }
        if !has_keys {
            let provider = match (profile.role, profile.sso) {
                (Some(role), _) => {
                    let region = builder
                        .get_config_value(&AmazonS3ConfigKey::Region)
                        .unwrap_or_else(|| "us-east-1".to_string());
                    Some(self.role_provider(role, env, region)?)
                }
                (None, Some(sso)) => Some(self.sso_provider(sso, env)?),
                (None, None) => self.profile_provider(profile.credential, profile.process)?,
            };
            if let Some(provider) = provider {
                builder = builder.with_credentials(provider);
            }
        }
        Ok(builder)
    }

    /// What gives a profile's credentials: its static keys, else its `credential_process`.
    fn profile_provider(
        &self,
        credential: Option<ProfileCredential>,
        process: Option<(String, String)>,
    ) -> Result<Option<Arc<CredentialSource>>> {
        match (credential, process) {
            (Some(keys), _) => Ok(Some(keys_provider(keys))),
            (None, Some((command, origin))) => Ok(Some(self.process_provider(&command, origin)?)),
            (None, None) => Ok(None),
        }
    }

    /// What runs `command`, the `credential_process` of `origin`.
    fn process_provider(&self, command: &str, origin: String) -> Result<Arc<CredentialSource>> {
        let provider = crate::aws_process::ProcessCredentials::new(command, origin.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: credential_process of {origin} is not a command line",
                    self.describe()
                ))
            })?;
        Ok(Arc::new(provider))
    }

    /// The URL of the AWS service `what`: the service's own variable `var`, else
    /// `AWS_ENDPOINT_URL`, else AWS's `default`; a plain-HTTP one is refused unless allowed.
    fn service_endpoint(
        &self,
        env: &HashMap<String, String>,
        var: &str,
        default: String,
        what: &str,
    ) -> Result<String> {
        let endpoint = env
            .get(var)
            .or_else(|| env.get("AWS_ENDPOINT_URL"))
            .cloned()
            .unwrap_or(default);
        self.refuse_plain_http(&endpoint, what)?;
        Ok(endpoint)
    }

    /// Refuses a plain-HTTP `endpoint` of a credentials service (`what`) unless allowed.
    fn refuse_plain_http(&self, endpoint: &str, what: &str) -> Result<()> {
        if !self.allow_http && endpoint.to_ascii_lowercase().starts_with("http://") {
            return Err(Error::Invalid(format!(
                "{}: {what} endpoint {endpoint} is plain HTTP, refused without --allow-http \
                 (allow_http)",
                self.describe()
            )));
        }
        Ok(())
    }

    /// The credentials of the role a profile assumes, through STS (see
    /// [`crate::aws_role`]), signed for `region`.
    fn role_provider(
        &self,
        role: RoleSettings,
        env: &HashMap<String, String>,
        region: String,
    ) -> Result<Arc<CredentialSource>> {
        let source = self.role_signer(role.source, &role.origin, env, &region)?;
        let endpoint = self.service_endpoint(
            env,
            "AWS_ENDPOINT_URL_STS",
            format!("https://sts.{region}.amazonaws.com"),
            &format!("STS (for role_arn of {})", role.origin),
        )?;
        let secs = since_epoch().as_secs();
        let shared = role.mfa_serial.as_deref().and_then(|serial| {
            let args = crate::aws_cli_cache::AssumeArgs {
                role_arn: &role.role_arn,
                session_name: role.session_name.as_deref(),
                external_id: role.external_id.as_deref(),
                mfa_serial: Some(serial),
                duration_seconds: role.duration_seconds,
            };
            let dir = crate::aws_cli_cache::dir(env.get("HOME")?);
            Some((dir, crate::aws_cli_cache::key(&args)))
        });
        Ok(Arc::new(crate::aws_role::RoleCredentials {
            role_arn: role.role_arn,
            session_name: role
                .session_name
                .unwrap_or_else(|| format!("cvmfs-oci-{secs}")),
            external_id: role.external_id,
            duration_seconds: role.duration_seconds,
            mfa_serial: role.mfa_serial,
            source,
            endpoint,
            region,
            http: self.http_client()?,
            origin: role.origin,
            cached: Default::default(),
            shared,
        }))
    }

    /// The role credentials of an IAM Identity Center sign-in (see [`crate::aws_sso`]).
    fn sso_provider(
        &self,
        sso: SsoSettings,
        env: &HashMap<String, String>,
    ) -> Result<Arc<CredentialSource>> {
        let endpoint = self.service_endpoint(
            env,
            "AWS_ENDPOINT_URL_SSO",
            format!("https://portal.sso.{}.amazonaws.com", sso.region),
            &format!("IAM Identity Center (for {})", sso.origin),
        )?;
        let oidc_endpoint = self.service_endpoint(
            env,
            "AWS_ENDPOINT_URL_SSO_OIDC",
            format!("https://oidc.{}.amazonaws.com", sso.region),
            &format!("IAM Identity Center OIDC (for {})", sso.origin),
        )?;
        let cache_dir = env
            .get("HOME")
            .map(|h| std::path::Path::new(h).join(".aws/sso/cache"));
        Ok(Arc::new(crate::aws_sso::SsoCredentials {
            settings: sso,
            cache_dir,
            endpoint,
            oidc_endpoint,
            http: self.http_client()?,
            cached: Default::default(),
        }))
    }

    /// What the role `origin` configures is assumed with: credentials that sign its
    /// `AssumeRole`, or a web identity token.
    fn role_signer(
        &self,
        source: RoleSource,
        origin: &str,
        env: &HashMap<String, String>,
        region: &str,
    ) -> Result<RoleSigner> {
        let missing =
            |why: &str| Error::Invalid(format!("{}: role_arn of {origin}: {why}", self.describe()));
        let provider: Arc<CredentialSource> = match source {
            RoleSource::Keys(keys) => keys_provider(keys),
            RoleSource::Process(command, at) => self.process_provider(&command, at)?,
            RoleSource::Role(inner) => self.role_provider(*inner, env, region.to_string())?,
            RoleSource::Sso(sso) => self.sso_provider(sso, env)?,
            RoleSource::WebIdentity(file) => return Ok(RoleSigner::TokenFile(file)),
            // Keys in the environment reach a role only with --profile (see `builder`);
            // otherwise they sign requests themselves, as for the AWS tools.
            RoleSource::Environment => match environment_keys(env) {
                Some(keys) => keys_provider(keys),
                None => {
                    return Err(missing(
                        "credential_source = Environment, but AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY are not set",
                    ))
                }
            },
            RoleSource::Ec2InstanceMetadata => {
                if env
                    .get("AWS_EC2_METADATA_DISABLED")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                {
                    return Err(missing(
                        "credential_source = Ec2InstanceMetadata, but \
                         AWS_EC2_METADATA_DISABLED is true",
                    ));
                }
                self.object_store_provider(env, region, &INSTANCE_KEYS)?
            }
            RoleSource::EcsContainer => {
                // Without either, object_store would ask the instance metadata instead.
                let set = |var: &str| env.contains_key(var);
                let relative = set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
                let full = set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    && set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
                if !relative && !full {
                    return Err(missing(
                        "credential_source = EcsContainer, but neither \
                         AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor \
                         AWS_CONTAINER_CREDENTIALS_FULL_URI with \
                         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is set",
                    ));
                }
                self.object_store_provider(env, region, &CONTAINER_KEYS)?
            }
        };
        Ok(RoleSigner::Credentials(provider))
    }

    /// object_store's own provider for the instance's or the container's role: the one its
    /// client picks when given only `keys`' variables of `env` (and no keys or web identity).
    fn object_store_provider(
        &self,
        env: &HashMap<String, String>,
        region: &str,
        keys: &[(&str, AmazonS3ConfigKey)],
    ) -> Result<Arc<CredentialSource>> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(region);
        for (var, key) in keys {
            if let Some(value) = env.get(*var) {
                builder = builder.with_config(*key, value);
            }
        }
        let s3 = builder
            .with_client_options(client_options(self.allow_http))
            .with_http_connector(self.connector(http::HeaderMap::new())?)
            .build()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))?;
        Ok(Arc::clone(s3.credentials()))
    }

    /// Refuses a plain-HTTP endpoint (given, or from `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3`)
    /// unless allowed: the client would fail each request with a bare "builder error".
    fn check_scheme(&self, builder: &AmazonS3Builder) -> Result<()> {
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        match endpoint {
            Some(url) if !self.allow_http && url.to_ascii_lowercase().starts_with("http://") => {
                Err(Error::Invalid(format!(
                    "{}: endpoint {} is plain HTTP, refused without --allow-http (allow_http)",
                    self.describe(),
                    redact_userinfo(&url)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// `url` without a `user[:password]@` before its host.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

/// What to do about an S3 error whose cause is a common set-up mistake, judged by the text
/// of the error and its sources (the client's errors are not typed that finely).
fn hint(e: &object_store::Error) -> Option<String> {
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        text.push_str(&err.to_string());
        text.push('\n');
        next = err.source();
    }
    hint_for(&text)
}

/// [`hint`] of the text of an error and its sources, one per line.
fn hint_for(text: &str) -> Option<String> {
    // The TLS library's reason is the last source, under "error sending request".
    if let Some(at) = text.find("invalid peer certificate") {
        let reason = text[at..].lines().next().unwrap_or_default();
        let lower = reason.to_ascii_lowercase();
        let what = if lower.contains("not valid for name") || lower.contains("notvalidforname") {
            "the endpoint's address must be a name or IP address its certificate lists"
        } else if lower.contains("expired") || lower.contains("not valid yet") {
            "the endpoint's certificate is out of its validity period (or this clock is wrong)"
        } else if lower.contains("causedasendentity") {
            "the endpoint's certificate is marked as a CA (CA:TRUE), as a self-signed one \
             often is: trust that certificate itself through SSL_CERT_FILE=/path/to/it.pem"
        } else {
            "a private CA is trusted through SSL_CERT_FILE=/path/to/ca.pem"
        };
        return Some(format!("TLS refused the endpoint: {reason}; {what}"));
    }
    if text.contains("/latest/api/token") || text.contains("/latest/meta-data") {
        return Some(
            "no credentials found: push reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
             AWS_SESSION_TOKEN), then the profile AWS_PROFILE (default: default) of \
             ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE) and ~/.aws/config \
             (AWS_CONFIG_FILE), web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN), \
             container credentials (AWS_CONTAINER_CREDENTIALS_*), then the EC2 instance \
             metadata"
                .to_string(),
        );
    }
    None
}

/// What [`Repository::push`] does besides copying.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub target: S3Target,
    /// Delete the bucket's objects the local storage no longer holds (after the manifest).
    pub delete: bool,
    /// Uploads in flight at once.
    pub jobs: usize,
    /// Wait for a busy lock instead of failing.
    pub wait: bool,
    /// Incomplete multipart uploads of objects under the prefix that were started longer ago
    /// than this are a killed push's and are aborted (a younger one may be a concurrent
    /// push's).
    pub stale_upload_age: std::time::Duration,
    /// Counters the push keeps up to date, for a progress display.
    pub progress: Option<Arc<PushProgress>>,
}

/// How far a running push is ([`PushOptions::progress`]).
#[derive(Debug, Default)]
pub struct PushProgress {
    /// Objects the bucket lacks, to upload (0 until the bucket has been listed).
    pub objects_to_upload: AtomicU64,
    pub objects_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
}

/// [`PushOptions::stale_upload_age`] by default: a day, as the lifecycle rule the README
/// suggests; no push runs that long.
pub const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl PushOptions {
    pub fn new(target: S3Target) -> PushOptions {
        PushOptions {
            target,
            delete: false,
            jobs: 16,
            wait: true,
            stale_upload_age: STALE_UPLOAD_AGE,
            progress: None,
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    /// The revision the bucket serves now.
    pub revision: u64,
    /// The revision it served before (`None`: no repository there yet).
    pub remote_revision: Option<u64>,
    pub objects_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Of those, how many went up in parts (large objects).
    pub multipart_uploads: usize,
    /// Objects the bucket already held.
    pub objects_present: usize,
    pub objects_deleted: usize,
    /// Whether `.cvmfspublished` was written (not when the bucket already had this one).
    pub manifest_written: bool,
    /// Other root files written (e.g. the whitelist after `resign`, the manifest unchanged).
    pub root_files_written: Vec<String>,
    /// With `delete`: objects the storage lacks but a revision it keeps references, left in
    /// the bucket.
    pub objects_spared: usize,
    /// Incomplete multipart uploads of killed pushes aborted (see
    /// [`PushOptions::stale_upload_age`]).
    pub stale_uploads_aborted: usize,
    /// Why looking for or aborting them failed, if it did: the push itself stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_uploads_error: Option<String>,
    /// The key of the probe of conditional writes and why deleting it failed (a policy may
    /// allow PutObject but deny DeleteObject): it stays in the bucket, 24 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_left: Option<String>,
    /// Whether the bucket, during this push, came to serve a later revision of the storage
    /// (pushed from another home sharing it): the revision is then that one, and this push
    /// stopped short of its own manifest.
    pub superseded: bool,
}

impl Repository {
    /// Makes `target` the repository's push target, to which every publish that makes a
    /// revision is pushed from then on (`None`: no more automatic pushes).
    pub fn set_auto_push(&mut self, target: Option<S3Target>) -> Result<()> {
        let fqrn = self.fqrn().to_string();
        let _lock = lock(&self.home().lock_path(), &fqrn, true)?;
        let mut config = self.config().clone();
        config.auto_push = target;
        config.save(&self.home().config_path())?;
        self.config = config;
        Ok(())
    }

    /// After a publish that made a revision: the push to the repository's push target, if it
    /// has one.
    pub fn auto_push(
        &self,
        progress: Option<Arc<PushProgress>>,
        wait: bool,
    ) -> Result<Option<PushReport>> {
        match &self.config().auto_push {
            Some(target) => {
                let opts = PushOptions {
                    progress,
                    wait,
                    ..PushOptions::new(target.clone())
                };
                self.push(&opts).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Copies the published revision to an S3 bucket; see the module documentation.
    pub fn push(&self, opts: &PushOptions) -> Result<PushReport> {
        let fqrn = self.fqrn();
        let _lock = lock(&self.home().lock_path(), fqrn, opts.wait)?;
        let store = self.store();
        // `--delete` decides from the storage's objects and the bucket's what no revision
        // needs: no other home may publish (and push what it then finds in the bucket)
        // meanwhile, so it holds the storage as `gc` does.
        let usage = match opts.delete {
            true => StorageUse::Collect,
            false => StorageUse::Publish,
        };
        let _storage = storage_lock(&store, fqrn, usage, opts.wait)?;
        let keys = load_keys(self.config())?;
        let (manifest, parsed) = verified_manifest(&store, fqrn, &keys)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client", e))?;
        let budget_mib = (self.config().memory_budget >> 20).clamp(16, u32::MAX as u64) as u32;
        let push = Push {
            target: &opts.target,
            client: opts.target.client()?,
            http: opts.target.http_client()?,
            store: &store,
            master: &keys.master_public,
            certificate: &keys.certificate,
            buffers: tokio::sync::Semaphore::new(budget_mib as usize),
            budget_mib,
            multipart: Default::default(),
        };
        runtime.block_on(push.run(&manifest, &parsed, opts))
    }
}

/// A root file of the storage other than the manifest, and the bucket's copy.
struct RootFile {
    name: &'static str,
    bytes: Vec<u8>,
    /// The bucket's version when the push began (`None`: it had none).
    remote: Option<UpdateVersion>,
    /// Whether the bucket already holds these bytes.
    current: bool,
}

impl RootFile {
    /// Whether it goes up before the manifest: only what the bucket's current manifest can
    /// live with. The reflog cannot (the manifest's `Y` is its hash); the whitelist can when
    /// it names the same certificate; the status and the marker are not checked by clients.
    fn before_manifest(&self, same_certificate: bool) -> bool {
        match self.name {
            root_files::WHITELIST => same_certificate,
            root_files::MASTER_REPLICA => true,
            _ => false,
        }
    }
}

/// Conditional puts of a root file after the manifest before giving up: each failure means
/// another push wrote it meanwhile, which takes pushes from several homes at once.
const ROOT_FILE_ATTEMPTS: usize = 5;

/// A put conditional on `version` (`None`: on there being nothing).
fn mode_for(version: Option<UpdateVersion>) -> PutMode {
    match version {
        Some(v) => PutMode::Update(v),
        None => PutMode::Create,
    }
}

fn version_of(meta: &object_store::ObjectMeta) -> UpdateVersion {
    UpdateVersion {
        e_tag: meta.e_tag.clone(),
        version: meta.version.clone(),
    }
}

/// The manifest a bucket held when the push began.
struct RemoteManifest {
    manifest: signer::Manifest,
    bytes: Vec<u8>,
    /// Its ETag: the manifest is replaced only if it is still this one.
    version: UpdateVersion,
}

struct Push<'a> {
    target: &'a S3Target,
    client: AmazonS3,
    /// For the one request the client has no call for (listing multipart uploads).
    http: HttpClient,
    store: &'a LocalStore,
    /// The repository's master public key: a bucket whose whitelist another key signed holds
    /// another repository (of the same name), which clients trust by that key.
    master: &'a openssl::pkey::PKey<openssl::pkey::Public>,
    /// The repository's certificate: what a bucket's manifest of this repository is signed
    /// with (a key rotation aside).
    certificate: &'a openssl::x509::X509,
    /// MiB of object bytes in memory at once: the repository's memory budget.
    buffers: tokio::sync::Semaphore,
    budget_mib: u32,
    /// Objects uploaded in parts.
    multipart: std::sync::atomic::AtomicUsize,
}

impl Push<'_> {
    /// The push, then the clean-up of killed pushes' multipart uploads: last, so that it
    /// never delays the revision, and without failing the push.
    async fn run(
        &self,
        manifest: &[u8],
        local: &signer::Manifest,
        opts: &PushOptions,
    ) -> Result<PushReport> {
        let mut report = self.copy(manifest, local, opts).await?;
        match self
            .abort_stale_uploads(opts.stale_upload_age, opts.jobs)
            .await
        {
            Ok(n) => report.stale_uploads_aborted = n,
            Err(e) => report.stale_uploads_error = Some(e.to_string()),
        }
        Ok(report)
    }

    async fn copy(
        &self,
        manifest: &[u8],
        local: &signer::Manifest,
        opts: &PushOptions,
    ) -> Result<PushReport> {
        let remote = self.remote_manifest().await?;
        let mut report = PushReport {
            revision: local.revision,
            remote_revision: remote.as_ref().map(|r| r.manifest.revision),
            ..PushReport::default()
        };
        if let Some(remote) = &remote {
            if remote.bytes != manifest && self.superseded(remote, &mut report).await? {
                return Ok(report);
            }
            self.may_replace(remote, local)?;
            self.same_master_key().await?;
        }
        // Root files change without a new manifest too (`resign` renews the whitelist).
        let roots = self.root_files().await?;
        let up_to_date = remote.as_ref().is_some_and(|r| r.bytes == manifest);
        if up_to_date && !opts.delete && roots.iter().all(|f| f.current) {
            return Ok(report);
        }
        let objects = match !up_to_date || opts.delete {
            true => Some(self.copy_objects(local, opts, &mut report).await?),
            false => None,
        };
        // The whitelist is signed by the master key and names the certificate: with the same
        // certificate the new one holds for the bucket's manifest as well, so it may go first
        // (a manifest with a new certificate needs it before, and the old one after).
        let same_certificate = remote
            .as_ref()
            .is_none_or(|r| r.manifest.certificate == local.certificate);
        let (before, after): (Vec<&RootFile>, Vec<&RootFile>) = roots
            .iter()
            .filter(|f| !f.current)
            .partition(|f| f.before_manifest(same_certificate));
        if !self.target.single_pusher {
            report.probe_left = self.conditions_hold().await?;
        }
        for file in before {
            self.put_root_before_manifest(file).await?;
            report.root_files_written.push(file.name.to_string());
        }
        fault_point("push-before-manifest");
        if !up_to_date {
            let start = remote.map(|r| r.version);
            if let Some(newer) = self.put_manifest(manifest, start).await? {
                if self.superseded(&newer, &mut report).await? {
                    return Ok(report);
                }
                return Err(self.conflict(root_files::MANIFEST));
            }
            report.manifest_written = true;
        }
        fault_point("push-after-manifest");
        for file in after {
            if self.put_root_after_manifest(file, manifest).await? {
                report.root_files_written.push(file.name.to_string());
            }
        }
        if let (true, Some((held, local_names))) = (opts.delete, objects) {
            let kept = referenced_by_kept(self.store, local)?;
            // What the storage lacks but a revision it keeps references stays: the storage
            // lost it (a disk error, an operator's rm), the bucket did not.
            let (gone, spared): (Vec<&String>, Vec<&String>) = held
                .iter()
                .filter(|n| !local_names.contains(*n))
                .partition(|n| hash_of_name(n).is_none_or(|h| !kept.contains(&h)));
            report.objects_spared = spared.len();
            report.objects_deleted = self.delete_all(&gone, opts.jobs).await?;
        }
        Ok(report)
    }

    /// Uploads the objects the bucket lacks, once it is sure the storage holds every object
    /// of the revision; returns the bucket's objects and the storage's.
    async fn copy_objects(
        &self,
        local: &signer::Manifest,
        opts: &PushOptions,
        report: &mut PushReport,
    ) -> Result<(HashSet<String>, HashSet<String>)> {
        let names = local_objects(self.store)?;
        check_complete(self.store, local, &names)?;
        let held = self.remote_objects(max_listed(names.len())).await?;
        let (catalogs, rest): (Vec<_>, Vec<_>) = names
            .iter()
            .filter(|name| !held.contains(*name))
            .partition(|name| name.ends_with('C'));
        report.objects_present = names.len() - catalogs.len() - rest.len();
        if let Some(p) = &opts.progress {
            let n = (catalogs.len() + rest.len()) as u64;
            p.objects_to_upload.store(n, Ordering::Relaxed);
        }
        for batch in [rest, catalogs] {
            let (n, bytes) = self.upload_all(&batch, opts).await?;
            report.objects_uploaded += n;
            report.bytes_uploaded += bytes;
        }
        report.multipart_uploads = self.multipart.load(Ordering::Relaxed);
        Ok((held, names))
    }

    /// The storage's root files besides the manifest, each with the bucket's version.
    async fn root_files(&self) -> Result<Vec<RootFile>> {
        let mut files = Vec::new();
        for name in [
            root_files::WHITELIST,
            root_files::MASTER_REPLICA,
            root_files::REFLOG,
            root_files::STATUS,
        ] {
            let Some(bytes) = self.root_file(name)? else {
                continue;
            };
            let (remote, current) = self.remote_root_file(name, &bytes).await?;
            files.push(RootFile {
                name,
                bytes,
                remote,
                current,
            });
        }
        Ok(files)
    }

    /// The bucket's version of root file `name` (`None`: it has none), and whether it holds
    /// `ours` (any content will do for the replication marker, which is not read).
    async fn remote_root_file(
        &self,
        name: &str,
        ours: &[u8],
    ) -> Result<(Option<UpdateVersion>, bool)> {
        let got = match self.client.get(&self.target.key(name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok((None, false)),
            Err(e) => return Err(self.remote_error(name, e)),
        };
        let version = version_of(&got.meta);
        let current = name == root_files::MASTER_REPLICA
            || (got.meta.size == ours.len() as u64 && self.body(name, got).await? == ours);
        Ok((Some(version), current))
    }

    /// A root file the bucket's current manifest can live with (whitelist, replication
    /// marker), before the new manifest: conditional on the version found at the start, so
    /// that a push losing a race does not replace the winner's.
    async fn put_root_before_manifest(&self, file: &RootFile) -> Result<()> {
        let payload = PutPayload::from(file.bytes.clone());
        let written = self
            .try_put(file.name, payload, mode_for(file.remote.clone()))
            .await?;
        // Another push made the marker meanwhile: any will do.
        if written || file.name == root_files::MASTER_REPLICA {
            return Ok(());
        }
        Err(self.conflict(file.name))
    }

    /// A root file that goes with the new manifest (the reflog, whose hash is its `Y`; the
    /// status), after it: a push that stops or loses the race before its manifest leaves
    /// the bucket's pair as it was. Only a push whose manifest is in writes them, conditional
    /// on the version found at the start. When that changed, another push wrote the file:
    /// an earlier one finishing after its manifest was replaced by ours (ours must still go
    /// up), or a later one whose manifest replaced ours (its file belongs there; `false`).
    /// A crash between the manifest and these leaves the bucket's reflog behind its manifest
    /// until the next push, which finds the manifest current and uploads the reflog.
    async fn put_root_after_manifest(&self, file: &RootFile, ours: &[u8]) -> Result<bool> {
        let payload = PutPayload::from(file.bytes.clone());
        let mut expected = file.remote.clone();
        for _ in 0..ROOT_FILE_ATTEMPTS {
            if self
                .try_put(file.name, payload.clone(), mode_for(expected))
                .await?
            {
                return Ok(true);
            }
            let manifest = self.remote_manifest().await?;
            if manifest.is_none_or(|m| m.bytes != ours) {
                return Ok(false);
            }
            expected = self.remote_version(file.name).await?;
        }
        Err(self.conflict(file.name))
    }

    /// The manifest, conditional on the one found at the start (`None`: none). Returns the
    /// bucket's manifest when another push replaced it first (`None`: ours is in).
    async fn put_manifest(
        &self,
        ours: &[u8],
        start: Option<UpdateVersion>,
    ) -> Result<Option<RemoteManifest>> {
        let name = root_files::MANIFEST;
        let payload = PutPayload::from(ours.to_vec());
        if fault_armed("push-manifest-reply-lost") {
            // As if the reply to a put that went through were lost: the put below is the
            // client's retry.
            self.try_put(name, payload.clone(), mode_for(start.clone()))
                .await?;
        }
        if self.try_put(name, payload, mode_for(start)).await? {
            return Ok(None);
        }
        // A retried put whose first attempt went through (its reply lost) fails its condition
        // against our own manifest: that is success.
        match self.remote_manifest().await? {
            Some(m) if m.bytes == ours => Ok(None),
            Some(m) => Ok(Some(m)),
            None => Err(self.conflict(name)),
        }
    }

    /// Whether the bucket's manifest, not the one this push set out with, is what the storage
    /// holds now: a publish and push from another home sharing the storage overtook this
    /// push. The root files that go with that manifest are then brought up too (the push
    /// that wrote it may have stopped before them), so that the bucket is as current as this
    /// push would have made it.
    async fn superseded(&self, remote: &RemoteManifest, report: &mut PushReport) -> Result<bool> {
        let now = self.root_file(root_files::MANIFEST)?;
        if now.as_deref() != Some(remote.bytes.as_slice()) {
            return Ok(false);
        }
        report.revision = remote.manifest.revision;
        report.superseded = true;
        for file in self.root_files().await? {
            // A reflog newer than the manifest (a publish under way) is not its pair.
            let pair = file.name != root_files::REFLOG
                || remote.manifest.reflog.as_deref()
                    == Some(ContentHash::of(&file.bytes).to_hex().as_str());
            if !file.current && pair && self.put_root_after_manifest(&file, &remote.bytes).await? {
                report.root_files_written.push(file.name.to_string());
            }
        }
        Ok(true)
    }

    /// Refuses to replace another repository's manifest, or a newer revision of this one. A
    /// manifest this repository did not sign is named as such rather than believed: its
    /// revision may be anything.
    fn may_replace(&self, remote_file: &RemoteManifest, local: &signer::Manifest) -> Result<()> {
        let remote = &remote_file.manifest;
        let there = self.target.describe();
        let refuse =
            |reason: String| match signer::Manifest::verify(&remote_file.bytes, self.certificate) {
                Ok(_) => Err(Error::Invalid(reason)),
                Err(e) => Err(Error::signature(
                    format!("{there}/{}", root_files::MANIFEST),
                    format!(
                        "not signed by this repository's key ({e}), and clients refuse it too; it \
                     says: {reason}. If it is damaged or forged, delete it from the bucket and \
                     push again"
                    ),
                )),
            };
        if !remote.fqrn.is_empty() && remote.fqrn != local.fqrn {
            return refuse(format!(
                "{there}: holds repository {}, not {}; refusing to replace it",
                remote.fqrn, local.fqrn
            ));
        }
        if remote.revision == local.revision && remote.root_catalog != local.root_catalog {
            // Clients and replicas that have the bucket's revision would keep it, new ones
            // would get ours: same number, two trees. Re-signing (gc, a tag, repoinfo) keeps C.
            return refuse(format!(
                "{there}: serves another revision {} (root catalog {}, the local one is {}); \
                 refusing to replace it (publish a newer revision to supersede it)",
                remote.revision, remote.root_catalog, local.root_catalog
            ));
        }
        if remote.revision > local.revision {
            return refuse(format!(
                "{there}: serves revision {}, newer than the local revision {}; refusing to \
                 go back",
                remote.revision, local.revision
            ));
        }
        Ok(())
    }

    /// Refuses a bucket whose whitelist is not signed by this repository's master key: it
    /// holds a repository of the same name with other keys (an `init` where `init --existing`
    /// was meant, a CI runner making a new home each time), and its clients, trusting that
    /// key, would fail every signature of ours.
    async fn same_master_key(&self) -> Result<()> {
        let name = root_files::WHITELIST;
        let got = match self.client.get(&self.target.key(name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(self.remote_error(name, e)),
        };
        let bytes = self.body(name, got).await?;
        let there = format!("{}/{name}", self.target.describe());
        match signer::Whitelist::signed_by(&bytes, std::slice::from_ref(self.master)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Invalid(format!(
                "{there}: signed by another master key than this repository's: the bucket \
                 holds another repository of this name, whose clients trust that key; \
                 refusing to replace it (use that repository's keys: `init --existing` with \
                 its storage and keys, or push to another bucket or prefix)"
            ))),
            Err(e) => Err(Error::corrupt(there, e.to_string())),
        }
    }

    /// The bucket's `.cvmfspublished`, if any.
    async fn remote_manifest(&self) -> Result<Option<RemoteManifest>> {
        let key = self.target.key(root_files::MANIFEST);
        let got = match self.client.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.remote_error(root_files::MANIFEST, e)),
        };
        let version = version_of(&got.meta);
        let bytes = self.body(root_files::MANIFEST, got).await?;
        let parsed = signer::Manifest::parse(&bytes).map_err(|e| {
            Error::corrupt(
                format!("{}/{}", self.target.describe(), root_files::MANIFEST),
                e.to_string(),
            )
        })?;
        Ok(Some(RemoteManifest {
            manifest: parsed.manifest,
            bytes,
            version,
        }))
    }

    /// The version of root file `name` in the bucket (`None`: it has none).
    async fn remote_version(&self, name: &str) -> Result<Option<UpdateVersion>> {
        match self.client.head(&self.target.key(name)).await {
            Ok(meta) => Ok(Some(version_of(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote_error(name, e)),
        }
    }

    /// The body of the bucket's root file `name`, refused (unread, or read no further than
    /// the limit) when it is longer than that root file may be.
    async fn body(&self, name: &str, got: object_store::GetResult) -> Result<Vec<u8>> {
        let limit = root_files::max_bytes(name);
        let too_large = || Error::Remote {
            what: format!("{}/{name}", self.target.describe()),
            reason: format!("longer than the limit of {limit} bytes; refusing to read it"),
        };
        if got.meta.size > limit {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.remote_error(name, e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Names (`data/XX/…`) of the objects the bucket holds under the repository's prefix.
    /// S3 lists keys in ascending order, each once: a listing that repeats or goes back (a
    /// continuation token handed out again) is refused rather than followed for ever, and so
    /// is one of more than `max` keys.
    async fn remote_objects(&self, max: usize) -> Result<HashSet<String>> {
        let prefix = self.target.key("data");
        let strip = match self.target.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let refuse = |reason: String| Error::Remote {
            what: format!("{}/data/", self.target.describe()),
            reason,
        };
        let mut listing = self.client.list(Some(&prefix));
        let (mut held, mut listed) = (HashSet::new(), 0usize);
        let mut last: Option<String> = None;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.remote_error("data/", e))?;
            let key = meta.location.as_ref();
            if last.as_deref().is_some_and(|l| key <= l) {
                return Err(refuse(format!(
                    "the listing goes back to {:?} after {listed} keys (S3 lists every key \
                     once, in order): not followed further",
                    shown_key(key)
                )));
            }
            listed += 1;
            if listed > max {
                return Err(refuse(format!(
                    "the bucket lists more than {max} keys under data/, far more than the \
                     storage holds: not read further (is the prefix shared?)"
                )));
            }
            let name = key.strip_prefix(strip.as_str()).unwrap_or(key);
            if is_object_key(name) {
                held.insert(name.to_string());
            }
            last = Some(key.to_string());
        }
        Ok(held)
    }

    /// Uploads the named local objects, `jobs` at a time; returns how many and their bytes.
    async fn upload_all(&self, names: &[&String], opts: &PushOptions) -> Result<(usize, u64)> {
        let progress = opts.progress.as_deref();
        futures_util::stream::iter(names.iter().map(|name| self.upload(name)))
            .buffer_unordered(opts.jobs.max(1))
            .try_fold((0, 0), |(n, total), bytes| async move {
                if let Some(p) = progress {
                    p.objects_uploaded.fetch_add(1, Ordering::Relaxed);
                    p.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok((n + 1, total + bytes))
            })
            .await
    }

    async fn upload(&self, name: &str) -> Result<u64> {
        let path = self.store.root().join(name);
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| Error::io_path(&path, e))?
            .len();
        // Held until the put is done: the object whole, or what a multipart upload holds (the
        // parts in flight, the one being filled, and the read buffer).
        let held = size.min(MULTIPART_PART as u64 * (MULTIPART_IN_FLIGHT as u64 + 2));
        let mib = u32::try_from(held.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let _buffer = self
            .buffers
            .acquire_many(mib.clamp(1, self.budget_mib))
            .await
            .map_err(|e| Error::io(name.to_string(), std::io::Error::other(e)))?;
        if size >= MULTIPART_FROM {
            self.upload_in_parts(name, &path).await?;
            self.multipart.fetch_add(1, Ordering::Relaxed);
            return Ok(size);
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::io_path(&path, e))?;
        let len = bytes.len() as u64;
        // Same name, same bytes: an object someone stored meanwhile may be overwritten.
        self.try_put(name, PutPayload::from(bytes), PutMode::Overwrite)
            .await?;
        Ok(len)
    }

    /// A large object (a single PUT takes at most 5 GB) as a multipart upload, read part by
    /// part: at most [`MULTIPART_IN_FLIGHT`] parts and the one being read are in memory. On
    /// any failure the upload is aborted: S3 would otherwise keep (and bill) the parts until
    /// a lifecycle rule removes them. A push killed meanwhile cannot abort; see the README.
    async fn upload_in_parts(&self, name: &str, path: &std::path::Path) -> Result<()> {
        let key = self.target.key(name);
        let remote = |e| self.remote_error(name, e);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io_path(path, e))?;
        let mut upload = self.client.put_multipart(&key).await.map_err(remote)?;
        let sent = self
            .send_parts(upload.as_mut(), &mut file, name, path)
            .await;
        let completed = match sent {
            Ok(()) => upload.complete().await.map(|_| ()).map_err(remote),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort: the error that stopped the upload is the one to report.
            let _ = upload.abort().await;
        }
        completed
    }

    /// The parts of `file`, [`MULTIPART_IN_FLIGHT`] at a time.
    async fn send_parts(
        &self,
        upload: &mut dyn MultipartUpload,
        file: &mut tokio::fs::File,
        name: &str,
        path: &std::path::Path,
    ) -> Result<()> {
        let remote = |e| self.remote_error(name, e);
        let mut in_flight: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
        loop {
            let mut part = vec![0u8; MULTIPART_PART];
            let n = read_full(file, &mut part)
                .await
                .map_err(|e| Error::io_path(path, e))?;
            if n == 0 {
                break;
            }
            part.truncate(n);
            while in_flight.len() >= MULTIPART_IN_FLIGHT {
                if let Some(done) = in_flight.next().await {
                    done.map_err(remote)?;
                }
            }
            in_flight.push(upload.put_part(PutPayload::from(part)));
            if n < MULTIPART_PART {
                break;
            }
        }
        while let Some(done) = in_flight.next().await {
            done.map_err(remote)?;
        }
        Ok(())
    }

    /// Aborts the incomplete multipart uploads of objects under the prefix (`PREFIX/data/`)
    /// started more than `age` ago: those of pushes killed during a large object, which S3
    /// would keep (and bill) for ever without a lifecycle rule. Returns how many.
    async fn abort_stale_uploads(&self, age: std::time::Duration, jobs: usize) -> Result<usize> {
        let prefix = format!("{}/", self.target.key("data").as_ref());
        let strip = match self.target.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let now = since_epoch().as_secs();
        let mut stale = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_UPLOAD_PAGES {
            let mut query = vec![("uploads", ""), ("prefix", prefix.as_str())];
            if let Some((key, id)) = &marker {
                query.extend([
                    ("key-marker", key.as_str()),
                    ("upload-id-marker", id.as_str()),
                ]);
            }
            let page = self.incomplete_uploads(&query).await?;
            for upload in page.uploads {
                let ours = upload
                    .key
                    .strip_prefix(strip.as_str())
                    .is_some_and(is_object_key);
                if ours && is_stale(&upload.initiated, now, age) {
                    stale.push(upload);
                }
            }
            marker = match (page.is_truncated, page.next_key_marker) {
                (true, Some(key)) if !key.is_empty() => {
                    Some((key, page.next_upload_id_marker.unwrap_or_default()))
                }
                _ => break,
            };
        }
        futures_util::stream::iter(stale.iter().map(|upload| async move {
            let key = S3Path::parse(&upload.key).map_err(|e| Error::Remote {
                what: format!("{}/{}", self.target.describe(), upload.key),
                reason: e.to_string(),
            })?;
            let aborted = MultipartStore::abort_multipart(&self.client, &key, &upload.upload_id);
            match aborted.await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.remote_error(&upload.key, e)),
            }
        }))
        .buffer_unordered(jobs.max(1))
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await
    }

    /// One page of `ListMultipartUploads` (`query`: its parameters), a request the client
    /// signs (as a URL valid for a few minutes) but has no call for.
    async fn incomplete_uploads(&self, query: &[(&str, &str)]) -> Result<ListUploadsPage> {
        let what = "data/ (incomplete multipart uploads)";
        let failed = |reason: String| Error::Remote {
            what: format!("{}/{what}", self.target.describe()),
            reason,
        };
        let options = SignedUrlOptions::new().with_query(query.iter().copied());
        let url = self
            .client
            .signed_url_opts(
                http::Method::GET,
                &S3Path::default(),
                std::time::Duration::from_secs(300),
                &options,
            )
            .await
            .map_err(|e| self.remote_error(what, e))?;
        // The URL carries a signature: no message quotes it.
        let hide = |text: String| text.replace(url.as_str(), "…");
        let request = http::Request::get(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| failed(hide(e.to_string())))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| failed(hide(crate::error::one_line(&e))))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| failed(hide(crate::error::one_line(&e))))?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let detail = quick_xml::de::from_str::<S3ErrorBody>(&text)
                .map(|e| format!(": {} {}", e.code, e.message))
                .unwrap_or_default();
            return Err(failed(hide(format!("HTTP {status}{detail}"))));
        }
        quick_xml::de::from_str(&text)
            .map_err(|e| failed(format!("unreadable ListMultipartUploads reply: {e}")))
    }

    async fn delete_all(&self, names: &[&String], jobs: usize) -> Result<usize> {
        futures_util::stream::iter(names.iter().map(|name| async move {
            match self.client.delete(&self.target.key(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.remote_error(name, e)),
            }
        }))
        .buffer_unordered(jobs.max(1))
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await
    }

    /// Puts `payload` as `name`; `false` when the put's condition failed.
    async fn try_put(&self, name: &str, payload: PutPayload, mode: PutMode) -> Result<bool> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let key = self.target.key(name);
        match self.client.put_opts(&key, payload, opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(false),
            Err(e) => Err(self.remote_error(name, e)),
        }
    }

    /// Refuses an endpoint that ignores conditional writes: two pushes at once rely on them
    /// to never overwrite each other's root files (a slow push would put an older manifest
    /// back over a newer one). S3 honours them since 2024; an S3-compatible server that
    /// does not answers 200 where it should answer 412. Probed on a key of its own, before
    /// the first root file: a create, the same create again, an update against a version
    /// that is not the key's; then the key is deleted.
    /// Returns the probe's key and why, if it could not be deleted.
    async fn conditions_hold(&self) -> Result<Option<String>> {
        let nanos = since_epoch().as_nanos();
        let name = format!(".cvmfs-oci-probe-{}-{nanos}", std::process::id());
        let body = || PutPayload::from_static(b"conditional write probe\n");
        let stale = UpdateVersion {
            e_tag: Some("\"00000000000000000000000000000000\"".to_string()),
            version: None,
        };
        let answers = async {
            let created = self.try_put(&name, body(), PutMode::Create).await?;
            let again = self.try_put(&name, body(), PutMode::Create).await?;
            let updated = self.try_put(&name, body(), PutMode::Update(stale)).await?;
            Ok::<_, Error>((created, again, updated))
        }
        .await;
        // Whatever the answers, the probe key goes (a failed delete leaves 24 bytes).
        let deleted = self.client.delete(&self.target.key(&name)).await;
        let ignored = match answers? {
            (true, false, false) => {
                return Ok(deleted
                    .err()
                    .map(|e| self.remote_error(&name, e).to_string()));
            }
            (false, _, _) => {
                return Err(Error::Remote {
                    what: format!("{}/{name}", self.target.describe()),
                    reason: "a conditional create of a new key was refused".to_string(),
                })
            }
            (true, true, _) => "If-None-Match: * (a create over an existing key went through)",
            (true, false, true) => "If-Match (an update against another version went through)",
        };
        Err(Error::Remote {
            what: self.target.describe(),
            reason: format!(
                "the endpoint ignores conditional writes, {ignored}: two pushes at once could \
                 put an older manifest over a newer one; if only one push at a time goes to \
                 this bucket, push with --single-pusher"
            ),
        })
    }

    fn conflict(&self, name: &str) -> Error {
        Error::Conflict {
            path: PathBuf::from(format!("{}/{name}", self.target.describe())),
        }
    }

    fn root_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.store
            .get_root_file(name)
            .map_err(|e| Error::io(format!("{}/{name}", self.store.describe()), e))
    }

    fn remote_error(&self, name: &str, e: object_store::Error) -> Error {
        // One line: S3 errors may quote a multi-line XML response.
        let mut reason = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some((at, _)) = reason.char_indices().nth(MAX_REASON_CHARS) {
            reason = format!("{}… ({} bytes)", &reason[..at], reason.len());
        }
        if let Some(hint) = hint(&e) {
            reason = format!("{reason}; {hint}");
        }
        Error::Remote {
            what: format!("{}/{name}", self.target.describe()),
            reason,
        }
    }
}

/// An S3 error quoted at more length than this is cut: its XML page may be up to
/// [`crate::s3_http::MAX_ERROR_BODY`].
const MAX_REASON_CHARS: usize = 600;

/// Keys a bucket's listing may hold for a storage of `local` objects: a bucket keeps objects
/// the storage collected (until `push --delete`), so ten times as many, and a million at least.
fn max_listed(local: usize) -> usize {
    local.saturating_mul(10).max(1_000_000)
}

/// A key as an error message shows it: at most 120 characters.
fn shown_key(key: &str) -> String {
    match key.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &key[..at]),
        None => key.to_owned(),
    }
}

/// Pages of `ListMultipartUploads` (1000 uploads each) read at most.
const MAX_UPLOAD_PAGES: usize = 100;

/// A page of `ListMultipartUploads`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ListUploadsPage {
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(rename = "Upload")]
    uploads: Vec<IncompleteUpload>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct IncompleteUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

/// An S3 error reply.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct S3ErrorBody {
    code: String,
    message: String,
}

/// Whether an upload started at `initiated` (RFC 3339, as S3 gives it) is more than `age`
/// before `now` (seconds since the epoch); one without a readable time is not.
fn is_stale(initiated: &str, now: u64, age: std::time::Duration) -> bool {
    chrono::DateTime::parse_from_rfc3339(initiated)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp()).ok())
        .is_some_and(|t| now.saturating_sub(t) > age.as_secs())
}

/// Objects from this size on go up as multipart uploads (one PUT takes at most 5 GB; parts
/// also retry alone).
const MULTIPART_FROM: u64 = 64 << 20;
/// Part size of a multipart upload.
const MULTIPART_PART: usize = 16 << 20;
/// Parts of one multipart upload in flight at once.
const MULTIPART_IN_FLIGHT: usize = 2;

/// Fills `buf` from `file` unless the file ends first; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `data/XX/<38 hex>[suffix]`: an object file name, as [`local_objects`] lists them.
fn is_object_key(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("data/") else {
        return false;
    };
    let Some((dir, file)) = rest.split_once('/') else {
        return false;
    };
    let Ok(prefix) = u8::from_str_radix(dir, 16) else {
        return false;
    };
    dir.len() == 2 && parse_object_name(prefix, std::ffi::OsStr::new(file)).is_some()
}

/// The hash of object key `data/XX/<38 hex>[suffix]`.
fn hash_of_name(name: &str) -> Option<ContentHash> {
    let hex = name.strip_prefix("data/")?;
    let (dir, file) = hex.split_once('/')?;
    ContentHash::from_hex(&format!("{dir}{}", file.get(..38)?))
}

/// Refuses a revision whose objects the storage does not all hold: the bucket would serve a
/// revision with holes. Every catalog of the revision is read (as `check` does).
fn check_complete(
    store: &LocalStore,
    manifest: &signer::Manifest,
    names: &HashSet<String>,
) -> Result<()> {
    let root = CatalogRef {
        hash: parse_hash_field("C", &manifest.root_catalog)?,
        size: manifest.root_size,
    };
    let refusal = |what: String| {
        Error::Invalid(format!(
            "{}: revision {}: {what}; not pushing (`check {} --full` tells more)",
            store.describe(),
            manifest.revision,
            manifest.fqrn
        ))
    };
    let mut also = Vec::new();
    for (field, text) in [
        ("X", Some(manifest.certificate.as_str())),
        ("H", manifest.history.as_deref()),
        ("M", manifest.meta_info.as_deref()),
    ] {
        if let Some(text) = text {
            also.push(parse_hash_field(field, text)?);
        }
    }
    // Hashes with any suffix, as garbage collection compares them: a name per object would
    // double the memory.
    let held: HashSet<ContentHash> = names.iter().filter_map(|n| hash_of_name(n)).collect();
    match tree_gap(store, root, &also, &|h| held.contains(h)) {
        None => Ok(()),
        Some(TreeGap::Unreadable(n, first)) => Err(refusal(format!(
            "{n} problem(s) reading its catalogs, first: {first}"
        ))),
        Some(TreeGap::Missing(n, first)) => Err(refusal(format!(
            "{n} object(s) it references are missing from the storage, first {first}"
        ))),
    }
}

/// Every object file of the local storage, as `data/XX/<name>`.
fn local_objects(store: &LocalStore) -> Result<HashSet<String>> {
    let mut names = HashSet::new();
    for prefix in 0..=255u8 {
        for (entry, _, _) in store.object_files(prefix)? {
            // An object name is ASCII: `object_files` parsed it.
            if let Some(file) = entry.file_name().to_str() {
                names.insert(format!("data/{prefix:02x}/{file}"));
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_name_keys() {
        let t = S3Target::parse("s3://bucket/a/b/").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bucket", "a/b"));
        assert_eq!(t.key(".cvmfspublished").as_ref(), "a/b/.cvmfspublished");
        let t = S3Target::parse("s3://bucket").unwrap();
        assert_eq!(t.key("data/ab/cd").as_ref(), "data/ab/cd");
        for bad in ["http://x/y", "s3://", "s3:///p", "s3://b/../c"] {
            assert!(S3Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_come_from_the_options_the_environment_then_the_profile() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = file-secret\n\
             [team]\naws_access_key_id = TEAMKEY\naws_secret_access_key = team-secret\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[profile team]\nregion = eu-central-1\n",
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The access key and region the client would use.
        let resolve = |target: &S3Target, vars: &[(&str, &str)]| -> Result<(String, String)> {
            let mut env: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            env.insert("HOME".into(), home.path().display().to_string());
            let builder = target.builder(&env)?;
            let region = builder
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_default();
            let client = builder.build().unwrap();
            let credential = runtime
                .block_on(client.credentials().get_credential())
                .unwrap();
            Ok((credential.key_id.clone(), region))
        };
        let target = S3Target::parse("s3://bucket/repo").unwrap();
        let got = |vars: &[(&str, &str)]| resolve(&target, vars).unwrap();
        let pair = |k: &str, r: &str| (k.to_string(), r.to_string());
        assert_eq!(got(&[]), pair("FILEKEY", ""));
        assert_eq!(
            got(&[("AWS_PROFILE", "team")]),
            pair("TEAMKEY", "eu-central-1")
        );
        // The environment beats the file, key by key and region by region.
        let env_keys = [
            ("AWS_PROFILE", "team"),
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ];
        assert_eq!(got(&env_keys), pair("ENVKEY", "eu-central-1"));
        let all = [&env_keys[..], &[("AWS_REGION", "us-west-1")]].concat();
        assert_eq!(got(&all), pair("ENVKEY", "us-west-1"));
        // And --region beats both.
        let flagged = S3Target {
            region: Some("ap-east-1".into()),
            ..target.clone()
        };
        let (_, region) = resolve(&flagged, &[("AWS_PROFILE", "team")]).unwrap();
        assert_eq!(region, "ap-east-1");
        // A profile that is in neither file: one line naming it and the file, no secret.
        let err = resolve(&target, &[("AWS_PROFILE", "nosuch")])
            .unwrap_err()
            .to_string();
        let file = aws.join("credentials").display().to_string();
        assert!(
            err.contains("AWS profile 'nosuch' (AWS_PROFILE)") && err.contains(&file),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn credential_services_over_plain_http_need_allow_http() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("config"),
            "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = role\n\
             aws_access_key_id = K\naws_secret_access_key = S\n\
             [profile sso]\nsso_start_url = https://x.awsapps.com/start\nsso_region = us-east-1\n\
             sso_account_id = 1\nsso_role_name = R\n",
        )
        .unwrap();
        let target = S3Target::parse("s3://bucket/repo").unwrap();
        let allowed = S3Target {
            allow_http: true,
            ..target.clone()
        };
        for (profile, var, what) in [
            (
                "role",
                "AWS_ENDPOINT_URL_STS",
                "STS (for role_arn of AWS profile 'role' in ",
            ),
            (
                "sso",
                "AWS_ENDPOINT_URL_SSO",
                "IAM Identity Center (for AWS profile 'sso' in ",
            ),
        ] {
            let env: HashMap<String, String> = [
                ("HOME", home.path().to_str().unwrap()),
                ("AWS_PROFILE", profile),
                (var, "http://127.0.0.1:9"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let err = target.builder(&env).err().unwrap().to_string();
            assert!(
                err.contains(what)
                    && err.contains("endpoint http://127.0.0.1:9 is plain HTTP, refused"),
                "{err}"
            );
            assert!(allowed.builder(&env).is_ok(), "{profile}");
        }
    }

    /// A loopback stand-in for S3's `ListMultipartUploads` (`pages`: the replies to the first
    /// request and to one with a `key-marker`, or a status and body for every listing) and
    /// `AbortMultipartUpload` (204); each connection is closed after its answer. Returns the
    /// endpoint and the request lines, filled until `requests` were answered or 30 s passed.
    fn fake_s3(
        listing: impl Fn(&str) -> (u16, String) + Send + 'static,
        requests: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut seen = Vec::new();
            while seen.len() < requests && std::time::Instant::now() < deadline {
                let mut conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let (status, body) = if line.starts_with("DELETE ") {
                    (204, String::new())
                } else if line.starts_with("GET ") {
                    listing(&line)
                } else {
                    (404, String::new())
                };
                let reason = match status {
                    200 => "OK",
                    204 => "No Content",
                    403 => "Forbidden",
                    _ => "Not Found",
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\
                     Content-Type: application/xml\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                seen.push(line);
            }
            seen
        });
        (endpoint, server)
    }

    /// Runs `abort_stale_uploads` of a push to `endpoint`'s bucket `b`, prefix `repo`.
    fn abort_stale(endpoint: &str) -> Result<usize> {
        with_test_push(endpoint, |push| {
            Box::pin(push.abort_stale_uploads(STALE_UPLOAD_AGE, 2))
        })
    }

    /// Runs `run` on a [`Push`] of an empty storage to `s3://b/repo` at `endpoint`.
    fn with_test_push<T>(
        endpoint: &str,
        run: impl for<'p> FnOnce(
            &'p Push<'p>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'p>>,
    ) -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("storage")).unwrap();
        let target = S3Target {
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            allow_http: true,
            ..S3Target::parse("s3://b/repo").unwrap()
        };
        let env: HashMap<String, String> = [
            ("AWS_ACCESS_KEY_ID", "test-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let client = target
            .builder(&env)
            .unwrap()
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .unwrap();
        let keys = signer::RepoKeys::generate("repo.test.org").unwrap();
        let push = Push {
            target: &target,
            client,
            http: target.http_client().unwrap(),
            store: &store,
            master: &keys.master_public,
            certificate: &keys.certificate,
            buffers: tokio::sync::Semaphore::new(16),
            budget_mib: 16,
            multipart: Default::default(),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(&push))
    }

    #[test]
    fn a_bucket_manifest_this_repository_did_not_sign_is_not_believed() {
        let keys = signer::RepoKeys::generate("repo.test.org").unwrap();
        let manifest = |revision: u64| signer::Manifest {
            root_catalog: "0".repeat(40),
            root_size: 1,
            ttl: 240,
            revision,
            gc: false,
            alt: false,
            fqrn: "repo.test.org".into(),
            certificate: String::new(),
            history: None,
            timestamp: 1,
            meta_info: None,
            reflog: None,
        };
        let remote = |bytes: Vec<u8>| RemoteManifest {
            manifest: signer::Manifest::parse(&bytes).unwrap().manifest,
            bytes,
            version: UpdateVersion {
                e_tag: None,
                version: None,
            },
        };
        let signed = manifest(999).sign(&keys.repo_key).unwrap();
        // A stranger's key signed the forged one.
        let other = signer::RepoKeys::generate("repo.test.org").unwrap();
        let forged = manifest(999).sign(&other.repo_key).unwrap();
        let (signed, forged) = (remote(signed), remote(forged));
        let local = manifest(2);
        // `with_test_push` generates its own keys: check with this test's.
        with_test_push("http://127.0.0.1:9", |push| {
            let push = Push {
                certificate: &keys.certificate,
                target: push.target,
                client: push.client.clone(),
                http: push.http.clone(),
                store: push.store,
                master: push.master,
                buffers: tokio::sync::Semaphore::new(16),
                budget_mib: 16,
                multipart: Default::default(),
            };
            let newer = push.may_replace(&signed, &local).unwrap_err().to_string();
            assert!(newer.contains("serves revision 999, newer than the local revision 2"));
            assert!(!newer.contains("not signed"), "{newer}");
            let err = push.may_replace(&forged, &local).unwrap_err().to_string();
            assert!(
                err.contains("s3://b/repo/.cvmfspublished")
                    && err.contains("not signed by this repository's key")
                    && err.contains("delete it from the bucket"),
                "{err}"
            );
            Box::pin(async {})
        });
    }

    #[test]
    fn listings_that_go_back_or_never_end_are_refused() {
        let hex = "0123456789abcdef0123456789abcdef012345";
        let page = |keys: &[String], next: Option<&str>| {
            let contents: String = keys
                .iter()
                .map(|k| {
                    format!(
                        "<Contents><Key>{k}</Key><LastModified>2026-01-01T00:00:00.000Z\
                         </LastModified><ETag>\"x\"</ETag><Size>1</Size></Contents>"
                    )
                })
                .collect();
            let more = match next {
                Some(t) => format!(
                    "<IsTruncated>true</IsTruncated><NextContinuationToken>{t}\
                     </NextContinuationToken>"
                ),
                None => "<IsTruncated>false</IsTruncated>".to_owned(),
            };
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>\
                 <Prefix>repo/data</Prefix><KeyCount>{}</KeyCount>{more}{contents}\
                 </ListBucketResult>",
                keys.len()
            )
        };
        // `data/XX/` and 38 more hex digits: an object's key.
        let key = move |i: usize| format!("repo/data/{i:02x}/{hex}");
        // An honest listing of two pages.
        let (first, second) = (page(&[key(1)], Some("t1")), page(&[key(2)], None));
        let (endpoint, server) = fake_s3(
            move |line| match line.contains("continuation-token=t1") {
                false => (200, first.clone()),
                true => (200, second.clone()),
            },
            2,
        );
        let held = with_test_push(&endpoint, |push| Box::pin(push.remote_objects(10)));
        server.join().unwrap();
        assert_eq!(held.unwrap().len(), 2);
        // The same page handed out for ever: refused at its second reading.
        let same = page(&[key(1), key(2)], Some("again"));
        let (endpoint, server) = fake_s3(move |_| (200, same.clone()), 2);
        let err = with_test_push(&endpoint, |push| Box::pin(push.remote_objects(10)))
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(
            err.contains("the listing goes back to \"repo/data/01/"),
            "{err}"
        );
        // New keys on every page: refused past the bound.
        let pages = std::sync::atomic::AtomicUsize::new(0);
        let (endpoint, server) = fake_s3(
            move |_| {
                let n = pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    200,
                    page(&[key(3 * n), key(3 * n + 1), key(3 * n + 2)], Some("more")),
                )
            },
            2,
        );
        let err = with_test_push(&endpoint, |push| Box::pin(push.remote_objects(4)))
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(err.contains("lists more than 4 keys"), "{err}");
        assert_eq!(max_listed(10), 1_000_000);
        assert_eq!(max_listed(1_000_000), 10_000_000);
    }

    #[test]
    fn only_stale_uploads_of_the_repository_objects_are_aborted() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ago = |hours: i64| {
            chrono::DateTime::from_timestamp(now - hours * 3600, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let hex = "0123456789abcdef0123456789abcdef012345";
        let upload = |key: String, id: &str, initiated: String| {
            format!(
                "<Upload><Key>{key}</Key><UploadId>{id}</UploadId><Initiator><ID>x</ID>\
                 </Initiator><StorageClass>STANDARD</StorageClass><Initiated>{initiated}\
                 </Initiated></Upload>"
            )
        };
        let page = |truncated: bool, uploads: Vec<String>| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult \
                 xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket>\
                 <KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
                 <NextKeyMarker>repo/data/ab/{hex}</NextKeyMarker>\
                 <NextUploadIdMarker>old-1</NextUploadIdMarker><MaxUploads>1000</MaxUploads>\
                 <IsTruncated>{truncated}</IsTruncated>{}</ListMultipartUploadsResult>",
                uploads.concat()
            )
        };
        let first = page(
            true,
            vec![
                upload(format!("repo/data/ab/{hex}"), "old-1", ago(48)),
                // A concurrent push's: kept.
                upload(format!("repo/data/cd/{hex}C"), "fresh", ago(1)),
                // Not an object's key, or no readable time: kept.
                upload("repo/data/txn/scratch".into(), "not-ours", ago(48)),
                upload(format!("repo/data/ef/{hex}"), "no-time", "yesterday".into()),
            ],
        );
        let second = page(
            false,
            vec![
                upload(format!("repo/data/ef/{hex}P"), "old-2", ago(25)),
                upload(format!("repo/data/12/{hex}"), "young", ago(23)),
            ],
        );
        // Two listings (the second after the first's marker), two aborts.
        let (endpoint, server) = fake_s3(
            move |line| match line.contains("key-marker=repo") {
                false => (200, first.clone()),
                true => (200, second.clone()),
            },
            4,
        );
        assert_eq!(abort_stale(&endpoint).unwrap(), 2);
        let seen = server.join().unwrap();
        let aborted: Vec<&String> = seen.iter().filter(|l| l.starts_with("DELETE")).collect();
        assert_eq!(aborted.len(), 2, "{seen:?}");
        for (id, key) in [("old-1", "ab"), ("old-2", "ef")] {
            assert!(
                aborted.iter().any(|l| l.contains(&format!("uploadId={id}"))
                    && l.contains(&format!("/b/repo/data/{key}/"))),
                "{id}: {seen:?}"
            );
        }
        let listing = &seen[0];
        assert!(
            listing.contains("uploads") && listing.contains("prefix=repo%2Fdata%2F"),
            "{listing}"
        );

        // A listing refused (a policy without s3:ListBucketMultipartUploads): an error that
        // names the bucket and S3's reason, not the signed URL.
        let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let (endpoint, server) = fake_s3(move |_| (403, denied.to_string()), 1);
        let err = abort_stale(&endpoint).unwrap_err().to_string();
        server.join().unwrap();
        assert!(
            err.contains("s3://b/repo/data/ (incomplete multipart uploads): HTTP 403")
                && err.contains("AccessDenied Access Denied"),
            "{err}"
        );
        assert!(
            !err.contains("Signature") && !err.contains("test-key-id"),
            "{err}"
        );
    }

    #[test]
    fn upload_ages() {
        let day = STALE_UPLOAD_AGE;
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00.000Z")
            .unwrap()
            .timestamp() as u64;
        assert!(is_stale("2026-01-01T00:00:00.000Z", t + 1, day));
        assert!(!is_stale("2026-01-01T00:00:00.000Z", t, day));
        assert!(!is_stale("2026-01-01T12:00:00Z", t, day));
        assert!(!is_stale("not a time", t, day));
        assert!(!is_stale("2027-01-01T00:00:00Z", t, day));
    }

    #[test]
    fn common_set_up_mistakes_get_a_hint() {
        let tls = |reason: &str| {
            let text = format!("Generic S3 error\nerror sending request\n{reason}\n");
            hint_for(&text).unwrap()
        };
        let unknown = tls("invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("UnknownIssuer; a private CA"), "{unknown}");
        assert!(unknown.contains("SSL_CERT_FILE"), "{unknown}");
        let name = tls("invalid peer certificate: certificate not valid for name \"127.0.0.1\"");
        assert!(
            name.contains("a name or IP address its certificate lists"),
            "{name}"
        );
        let expired = tls("invalid peer certificate: certificate expired: verification time 9");
        assert!(expired.contains("validity period"), "{expired}");
        let ca = tls("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))");
        assert!(
            ca.contains("CA:TRUE") && ca.contains("certificate itself"),
            "{ca}"
        );
        let imds = "error performing put http://169.254.169.254/latest/api/token";
        assert!(hint_for(imds).unwrap().contains("AWS_ACCESS_KEY_ID"));
        assert!(hint_for("NoSuchBucket").is_none());
        assert_eq!(
            redact_userinfo("http://u:SECRET@h:9000/p"),
            "http://…@h:9000/p"
        );
        assert_eq!(redact_userinfo("http://h:9000"), "http://h:9000");
    }

    #[test]
    fn object_keys_name_their_hash() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let name = format!("data/{}/{}P", &hex[..2], &hex[2..]);
        assert_eq!(hash_of_name(&name).unwrap().to_hex(), hex);
        assert!(hash_of_name("data/01/23").is_none());
    }

    #[test]
    fn only_object_names_are_object_keys() {
        let hex = "0123456789abcdef0123456789abcdef012345";
        assert!(is_object_key(&format!("data/ab/{hex}")));
        assert!(is_object_key(&format!("data/ab/{hex}C")));
        assert!(!is_object_key(&format!("data/ab/{hex}Q")));
        assert!(!is_object_key(&format!("data/txn/{hex}")));
        assert!(!is_object_key(&format!("data/ab/{}", &hex[..30])));
        assert!(!is_object_key(".cvmfspublished"));
    }
}
