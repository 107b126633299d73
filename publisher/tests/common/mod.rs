//! Helpers shared by the integration tests.
#![allow(dead_code)]

use catalog_writer::entry::{Entry, EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::tree::Node;
use publisher::{InitOptions, Repository};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A temporary directory on tmpfs when available: `syncfs`/`fsync` there cost nothing, which
/// keeps these tests fast on a busy shared disk.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("publisher-test")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Keys generated once per test binary and fqrn (RSA generation dominates test time).
fn cached_keys(fqrn: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, tempfile::TempDir>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    let dir = cache.entry(fqrn.to_string()).or_insert_with(|| {
        let d = tempdir();
        let keys = signer::RepoKeys::generate(fqrn).unwrap();
        keys.write(d.path(), fqrn).unwrap();
        d
    });
    dir.path().to_path_buf()
}

/// `Repository::init` under `base` (home `base/home`, storage `base/srv/<fqrn>`), with a
/// copy of the cached keys in the default keys directory (init reuses existing keys).
pub fn init_repo(base: &Path, fqrn: &str) -> Repository {
    init_repo_with(base, fqrn, InitOptions::default())
}

/// [`init_repo`] with options.
pub fn init_repo_with(base: &Path, fqrn: &str, opts: InitOptions) -> Repository {
    let keys = base.join("home").join(fqrn).join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for entry in std::fs::read_dir(cached_keys(fqrn)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keys.join(entry.file_name())).unwrap();
    }
    let storage = base.join("srv").join(fqrn);
    Repository::init(&base.join("home"), fqrn, &storage, opts).unwrap()
}

/// Stores `content` as a data object and grafts a regular file at `path`.
pub fn add_file(txn: &mut publisher::Transaction, path: &[u8], content: &[u8]) {
    let obj = catalog_writer::zlib::compress(content);
    let hash = ContentHash::of(&obj);
    txn.objects().put(&hash, Suffix::None, &obj).unwrap();
    let entry = Entry {
        kind: EntryKind::File {
            size: content.len() as u64,
            data: FileData::Whole(hash),
        },
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_ns: None,
        xattrs: Default::default(),
        hardlink: None,
    };
    let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
    let (ns, objects) = txn.namespace_and_objects();
    ns.replace(path, Node::Leaf(entry), &parent, &objects)
        .unwrap();
}

/// Serves files below `root` over HTTP/1.0 (GET and HEAD) on 127.0.0.1.
pub fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts
                .next()
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let body = if path.contains("..") {
                None
            } else {
                fs::read(root.join(&path)).ok()
            };
            let _ = match body {
                Some(b) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    );
                    if method == "GET" {
                        stream.write_all(&b)
                    } else {
                        Ok(())
                    }
                }
                None => write!(
                    stream,
                    "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                ),
            };
        }
    });
    format!("http://{addr}/repo")
}
