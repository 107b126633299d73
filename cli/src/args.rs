//! Command-line definitions.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cvmfs-oci",
    version,
    about = "Turn container images and directory trees into signed CernVM-FS repositories"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Holds each repository's config, keys (unless --keys), lock and local state.
    /// Default: $CVMFS_OCI_HOME, else /var/lib/cvmfs-oci for root, else ~/.local/share/cvmfs-oci.
    #[arg(long, global = true, env = "CVMFS_OCI_HOME")]
    pub home: Option<PathBuf>,
    /// Directory with the repository keys (FQRN.masterkey, FQRN.key, FQRN.crt, FQRN.pub): at
    /// `init`, where they are kept; for other commands, looked in first for this run only (e.g.
    /// `resign --keys /media/usb` with the master key kept offline).
    #[arg(long, global = true)]
    pub keys: Option<PathBuf>,
    /// One JSON object per line on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Fail instead of waiting when another publisher holds the repository lock.
    #[arg(long, global = true)]
    pub no_wait: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository: storage, keys, whitelist, empty root catalog, history, manifest.
    Init(InitArgs),
    /// Publish a local directory tree at a path of the repository, as a new revision.
    Publish(PublishArgs),
    /// Publish a tar stream (file or `-` for stdin; gzip, zstd or plain) as a new revision.
    Ingest(IngestArgs),
    /// Verify signatures, catalogs and objects of a repository.
    Check(CheckArgs),
    /// Renew the whitelist (needs the master key).
    Resign(ResignArgs),
    /// Show the repository's meta-info JSON, or replace it (`cvmfs_server update-repoinfo`).
    Repoinfo(RepoinfoArgs),
    /// Show revision, root hash, whitelist expiry and counts.
    Info(FqrnArg),
    /// Delete the objects no kept revision needs (garbage-collectable repositories only).
    Gc(GcArgs),
    /// List the named snapshots (history tags), or add or remove one; gc keeps tagged revisions.
    Tag(TagArgs),
    /// Publish an earlier tagged revision's tree again as a new revision (`cvmfs_server
    /// rollback`): later tags are removed; without --tag, undo the last publish.
    Rollback(RollbackArgs),
    /// Show what changed between two tagged revisions (`cvmfs_server diff`): entries added,
    /// removed and modified, and how the counts changed.
    Diff(DiffArgs),
    /// Show the tree of nested catalogs (`cvmfs_server list-catalogs`).
    ListCatalogs(ListCatalogsArgs),
    /// Copy the published revision to an S3 bucket (objects missing there, then catalogs,
    /// then the manifest); credentials as the AWS tools find them: AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY, the AWS_PROFILE of ~/.aws/credentials and ~/.aws/config, web
    /// identity, container or EC2 instance credentials (see the README).
    Push(PushArgs),
    /// Convert container images into the repository (DUCC-compatible layout).
    Convert(ConvertArgs),
    /// Convert what a DUCC wishlist (YAML) lists and is new or changed.
    Sync(SyncArgs),
    /// Convert a whole registry (`/v2/_catalog` and tag lists) in batches, one revision per
    /// batch; a rerun resumes where an interrupted one stopped.
    Migrate(MigrateArgs),
    /// Publisher caches (content index, layer memo, publish's stat cache).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run the bundled demo: create a repository in a temporary directory, publish a sample
    /// tree, check it and print how to mount it.
    Demo(DemoArgs),
}

impl Command {
    /// The repository the command works on (`demo` makes its own).
    pub fn fqrn(&self) -> Option<&str> {
        Some(match self {
            Command::Init(a) => &a.fqrn,
            Command::Publish(a) => &a.fqrn,
            Command::Ingest(a) => &a.fqrn,
            Command::Check(a) => &a.fqrn,
            Command::Resign(a) => &a.fqrn,
            Command::Repoinfo(a) => &a.fqrn,
            Command::Info(a) => &a.fqrn,
            Command::Gc(a) => &a.fqrn,
            Command::Tag(a) => &a.fqrn,
            Command::Rollback(a) => &a.fqrn,
            Command::Diff(a) => &a.fqrn,
            Command::ListCatalogs(a) => &a.fqrn,
            Command::Push(a) => &a.fqrn,
            Command::Convert(a) => &a.fqrn,
            Command::Sync(a) => &a.fqrn,
            Command::Migrate(a) => &a.fqrn,
            Command::Cache(CacheCommand::Seed(a) | CacheCommand::Stats(a)) => &a.fqrn,
            Command::Demo(_) => return None,
        })
    }
}

#[derive(Args)]
pub struct FqrnArg {
    /// Fully qualified repository name, e.g. sw.example.org
    pub fqrn: String,
}

#[derive(Args)]
pub struct InitArgs {
    pub fqrn: String,
    /// Stratum-0 storage directory (what an HTTP server serves).
    #[arg(long)]
    pub storage: PathBuf,
    /// Whitelist validity in days (1 to 3650; clients refuse the repository once it expires).
    #[arg(long, default_value_t = 30, value_parser = whitelist_days)]
    pub whitelist_days: u32,
    /// Catalog TTL in seconds.
    #[arg(long, default_value_t = 240)]
    pub ttl: u32,
    /// Declare the repository garbage-collectable (manifest G=yes).
    #[arg(long)]
    pub gc: bool,
    /// Collect garbage after a publish, at most once a day, keeping the revisions of this
    /// long (e.g. 3d; cvmfs_server's CVMFS_AUTO_GC with its timespan). Needs a
    /// garbage-collectable repository.
    #[arg(long, value_name = "DURATION")]
    pub auto_gc: Option<String>,
    /// Largest number of entries in one catalog before it is split automatically (0 = never).
    #[arg(long, default_value_t = 100_000)]
    pub max_catalog_entries: u64,
    /// Do not cut large files into chunks (like `cvmfs_server ingest`).
    #[arg(long)]
    pub no_chunking: bool,
    /// Take over the repository already in --storage (made by cvmfs_server, or by cvmfs-oci
    /// with a lost home) instead of creating one: checked like `check`, with the keys that
    /// sign it (--keys, e.g. /etc/cvmfs/keys); its TTL and GC flag are kept. Nothing is
    /// published; run `cache seed` next so known content is never compressed again.
    #[arg(long, conflicts_with_all = ["ttl", "gc"])]
    pub existing: bool,
}

#[derive(Args, Clone)]
pub struct TuningArgs {
    /// Do not cut large files into chunks.
    #[arg(long)]
    pub no_chunking: bool,
    /// Worker threads for compression (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Memory for in-flight buffers (file bytes between reading and storing), in MiB; the
    /// entries' metadata comes on top (see docs/design.md, "Memory per entry").
    #[arg(long)]
    pub memory_mib: Option<usize>,
}

#[derive(Args)]
pub struct PublishArgs {
    pub fqrn: String,
    pub source: PathBuf,
    /// Read every file, even those the stat cache knows unchanged (same device, inode, size,
    /// mtime, ctime, mode and owner as when last read), and record them afresh.
    #[arg(long)]
    pub rescan: bool,
    #[command(flatten)]
    pub graft: GraftArgs,
    #[command(flatten)]
    pub tag: RevisionTagArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Where and how a source tree goes into the repository (`publish`, `ingest`).
#[derive(Args)]
pub struct GraftArgs {
    /// Repository path to publish at (default: the root); what was there is replaced.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Give --path a nested catalog of its own (a `.cvmfscatalog` marker at its top), as
    /// `cvmfs_server ingest --catalog` does.
    #[arg(long)]
    pub catalog: bool,
    /// Own every entry published (and every directory created above --path) by these
    /// numeric ids instead of the source's owners, as `cvmfs_server ingest -u/-g` does.
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

/// A tag for the revision a command makes (`cvmfs_server publish -a NAME -m TEXT`).
#[derive(Args)]
pub struct RevisionTagArgs {
    /// Tag the new revision NAME in the history database (moved if it named an earlier
    /// one); when nothing changed, the current revision is tagged. Letters, digits, '-',
    /// '_' and '.'; not `trunk` or `trunk-previous`.
    #[arg(id = "tag_name", long = "tag", value_name = "NAME", value_parser = parse_tag_name)]
    pub name: Option<String>,
    /// The tag's description (`cvmfs-oci tag` lists it).
    #[arg(
        id = "tag_description",
        long = "tag-description",
        value_name = "TEXT",
        requires = "tag_name"
    )]
    pub description: Option<String>,
}

impl RevisionTagArgs {
    /// The tag to give, if one is named.
    pub fn new_tag(&self) -> Option<publisher::NewTag> {
        let name = self.name.as_deref()?;
        // The name was checked when parsed.
        publisher::NewTag::new(name, self.description.as_deref().unwrap_or("")).ok()
    }
}

fn parse_tag_name(text: &str) -> Result<String, String> {
    publisher::check_tag_name(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let ids = text
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    ids.ok_or_else(|| format!("{text:?}: expected numeric UID:GID such as 1000:1000"))
}

#[derive(Args)]
pub struct IngestArgs {
    pub fqrn: String,
    /// Tar file, or `-` for standard input; may be left out with --delete (only remove paths).
    #[arg(required_unless_present = "delete")]
    pub tar: Option<String>,
    #[command(flatten)]
    pub graft: GraftArgs,
    /// Remove these repository paths in the same revision (without a tar: only that).
    #[arg(long = "delete")]
    pub delete: Vec<String>,
    #[command(flatten)]
    pub tag: RevisionTagArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Repository name; with --storage it names the repository to check there.
    pub fqrn: String,
    /// Also re-hash and inflate every object.
    #[arg(long)]
    pub full: bool,
    /// Check this storage directory or http(s) URL instead of a configured repository.
    #[arg(long)]
    pub storage: Option<String>,
    /// Master public key(s) to trust (needed with --storage; default: the repository's own).
    #[arg(long = "key")]
    pub key: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ResignArgs {
    pub fqrn: String,
    /// Validity of the new whitelist in days (1 to 3650).
    #[arg(long, default_value_t = 30, value_parser = whitelist_days)]
    pub days: u32,
}

/// A whitelist validity: 0 days would sign one that has already expired (every client
/// refuses the repository at once), and decades are a typo rather than a policy.
fn whitelist_days(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(d) if (1..=3650).contains(&d) => Ok(d),
        Ok(0) => Err("0 days would sign a whitelist that has already expired".to_string()),
        _ => Err(format!("{text:?} is not a number of days from 1 to 3650")),
    }
}

#[derive(Args)]
pub struct RepoinfoArgs {
    pub fqrn: String,
    /// Replace the meta-info with this JSON object (a file, or - for stdin); the manifest is
    /// re-signed at the same revision.
    #[arg(long, value_name = "FILE")]
    pub set: Option<PathBuf>,
}

#[derive(Args)]
pub struct TagArgs {
    pub fqrn: String,
    /// Name a revision (the current one unless --revision); an existing tag moves.
    #[arg(long, value_name = "NAME", conflicts_with = "remove")]
    pub add: Option<String>,
    /// The revision --add names.
    #[arg(long, requires = "add")]
    pub revision: Option<u64>,
    /// Description stored with the tag --add creates.
    #[arg(long, requires = "add", default_value = "")]
    pub description: String,
    /// Remove a tag.
    #[arg(long, value_name = "NAME")]
    pub remove: Option<String>,
}

#[derive(Args)]
pub struct RollbackArgs {
    pub fqrn: String,
    /// The tag to go back to (default: trunk-previous, the revision before the current one).
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
}

#[derive(Args)]
pub struct DiffArgs {
    pub fqrn: String,
    /// The older side: a tag, or @HASH for a root catalog.
    #[arg(long, value_name = "TAG", default_value = "trunk-previous")]
    pub from: String,
    /// The newer side: a tag, or @HASH for a root catalog.
    #[arg(long, value_name = "TAG", default_value = "trunk")]
    pub to: String,
    /// Lines as `cvmfs_server diff -m`: `A|R|M[FLAGS] TYPE PATH [+-SIZE]`, `S TYPE DELTA`.
    #[arg(short, long)]
    pub machine_readable: bool,
    /// Print a header line first (with -m, the legend of the line format).
    #[arg(long)]
    pub header: bool,
    /// Leave out entries whose only change is their modification time.
    #[arg(short, long)]
    pub ignore_timediff: bool,
    /// Read the repository from this storage directory or URL instead of the home's (any
    /// repository, e.g. a stratum 1 or one written by the CVMFS tools, named FQRN there);
    /// its signatures are verified with --key.
    #[arg(long, value_name = "DIR|URL")]
    pub storage: Option<String>,
    /// Master public key(s) to trust (needed with --storage; default: the repository's own).
    #[arg(long = "key")]
    pub key: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ListCatalogsArgs {
    pub fqrn: String,
    /// Show each catalog's inflated size (`-s`).
    #[arg(short, long)]
    pub size: bool,
    /// Show each catalog's number of entries (`-e`).
    #[arg(short, long)]
    pub entries: bool,
    /// Show each catalog's hash (`cvmfs_server list-catalogs -h`).
    #[arg(short = 'd', long)]
    pub hash: bool,
    /// No tree drawing (`-x`).
    #[arg(short = 'x', long)]
    pub flat: bool,
    /// A root catalog hash to list instead of the current revision's.
    #[arg(long, value_name = "HASH")]
    pub root: Option<String>,
    /// Read the repository from this storage directory or URL instead of the home's (named
    /// FQRN there); its signatures are verified with --key.
    #[arg(long, value_name = "DIR|URL")]
    pub storage: Option<String>,
    /// Master public key(s) to trust (needed with --storage; default: the repository's own).
    #[arg(long = "key")]
    pub key: Vec<PathBuf>,
}

#[derive(Args)]
pub struct GcArgs {
    pub fqrn: String,
    /// Keep the current revision and this many before it (`cvmfs_server gc -r`).
    #[arg(long, conflicts_with = "keep_since")]
    pub keep_revisions: Option<u64>,
    /// Keep the revisions published since WHEN and the one current then: `3d`, `12h`, `90m`
    /// (ago), `@UNIX` or an RFC 3339 time or date. Default: 3d, as `cvmfs_server gc`.
    /// Tagged revisions are always kept.
    #[arg(long, value_name = "WHEN")]
    pub keep_since: Option<String>,
    /// Report what would be deleted; change nothing (it still waits for the repository lock,
    /// so that what it reports is what a collection would do).
    #[arg(long)]
    pub dry_run: bool,
    /// Append the names of the deleted objects to this file (with --dry-run: of those that would be deleted).
    #[arg(long, value_name = "FILE")]
    pub deletion_log: Option<PathBuf>,
}

#[derive(Args)]
pub struct PushArgs {
    pub fqrn: String,
    /// s3://BUCKET[/PREFIX]; default: the repository's push target (set with --auto).
    pub target: Option<String>,
    /// Also make this the repository's push target: every publish, convert, sync or migrate
    /// batch that makes a revision is pushed there from then on.
    #[arg(long, requires = "target")]
    pub auto: bool,
    /// Forget the repository's push target (no push now, none after publishes).
    #[arg(long, conflicts_with_all = ["target", "auto", "delete"])]
    pub no_auto: bool,
    /// S3-compatible endpoint URL (default: AWS).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Region (default: AWS_REGION / AWS_DEFAULT_REGION, else the profile's `region` in
    /// ~/.aws/config, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint.
    #[arg(long)]
    pub allow_http: bool,
    /// Upload with the canned ACL public-read (buckets without a public-read policy).
    #[arg(long)]
    pub public_read: bool,
    /// Push even if the endpoint ignores conditional writes (If-Match, If-None-Match): only
    /// one push at a time goes to this bucket (kept with --auto).
    #[arg(long, requires = "target")]
    pub single_pusher: bool,
    /// The AWS profile of ~/.aws/credentials and ~/.aws/config to take credentials from, as
    /// the AWS tools' --profile: it wins over AWS_PROFILE and over AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY, which then serve only a role's `credential_source =
    /// Environment`. Kept with --auto; without a target, used instead of the push target's
    /// for this run.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub profile: Option<String>,
    /// Then delete the bucket's objects the local storage no longer holds (after gc).
    #[arg(long)]
    pub delete: bool,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 16)]
    pub jobs: usize,
}

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Registry credentials USER:PASS (else Docker config / REGISTRY_AUTH_FILE, helpers included).
    #[arg(long, env = "CVMFS_OCI_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// Do not verify TLS for this registry host[:port], and use plain HTTP if it does not
    /// speak HTTPS, as Docker's insecure-registries (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Trust the certificate authorities in this PEM file for every registry, besides the
    /// system's (repeatable).
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// A directory laid out as Docker's certs.d: DIR/HOST[:PORT]/*.crt are trusted for that
    /// registry only, and NAME.cert with NAME.key there is the client certificate it gets;
    /// searched before /etc/containers/certs.d and /etc/docker/certs.d
    /// (repeatable).
    #[arg(long = "registry-certs-dir", value_name = "DIR")]
    pub registry_certs_dir: Vec<PathBuf>,
    /// Seconds without a byte from a registry before the request counts as stalled and is
    /// retried (blobs resume where they stopped).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub registry_timeout: u64,
}

#[derive(Args)]
pub struct ConvertArgs {
    pub fqrn: String,
    /// docker://REGISTRY/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE
    #[arg(required = true)]
    pub images: Vec<String>,
    /// os/arch[/variant] to convert from a multi-platform image (default: this host's).
    #[arg(long, conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Convert every platform of a multi-platform image.
    #[arg(long)]
    pub all_platforms: bool,
    /// Also remove, in the same revision, the flattened images no link points to any more
    /// (a tag converted again after it moved to another image leaves its old image behind),
    /// so that `gc` can free them. No link is removed.
    #[arg(long)]
    pub prune_unlinked: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tag: RevisionTagArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args)]
pub struct SyncArgs {
    pub fqrn: String,
    pub recipe: PathBuf,
    /// Remove the links this wishlist listed at an earlier sync and lists no more (never links
    /// that `convert`, `migrate` or another wishlist made), and the flattened images no link
    /// points to any more (pruned, or a tag moved to another image). Nothing is pruned when an
    /// input cannot be listed, nor at a wishlist's first sync.
    #[arg(long)]
    pub prune: bool,
    /// The wishlist's name in the sync ledger, instead of its file's canonical path: for a CI
    /// job that checks the same wishlist out at changing paths (a runner's build directory, a
    /// temporary file). Syncs of one name prune what earlier syncs of that name listed.
    #[arg(long, value_name = "NAME")]
    pub wishlist_name: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tag: RevisionTagArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo repository in this directory instead of a temporary one. Its home and
    /// keys are kept inside it too (--home and --keys do not apply).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Fill the plaintext content index from the objects of the current revision, so content
    /// the repository already holds is never compressed again.
    Seed(FqrnArg),
    /// Show what the content index, the layer memo and the stat cache hold.
    Stats(FqrnArg),
}

#[derive(Args)]
pub struct MigrateArgs {
    pub fqrn: String,
    /// docker://REGISTRY[/REPOSITORY-PREFIX]
    pub registry_url: String,
    /// Only `repository:tag` names matching one of these globs (default: all).
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip `repository:tag` names matching one of these globs.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Images per revision.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Print a forecast (images, layers already known, bytes to download) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse a listing that selects more images than this (a registry listing millions of
    /// tags would otherwise fill the memory before the first conversion).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_images: u64,
    /// After the batches, remove the links below this registry (and prefix) whose images are
    /// no longer listed or selected, and the flattened images no link reaches any more.
    #[arg(long)]
    pub prune: bool,
    /// os/arch[/variant] to convert from multi-platform images (default: this host's).
    #[arg(long, conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Convert every platform of multi-platform images (links `TAG@os-arch[-variant]` beside
    /// the host platform's `TAG`).
    #[arg(long)]
    pub all_platforms: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}
