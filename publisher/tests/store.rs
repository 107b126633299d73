//! LocalStore layout, atomic object writes without overwrite, root-file replacement, and the
//! HTTP store against a loopback server.

mod common;
use catalog_writer::hash::{ContentHash, Suffix};
use common::{serve, tempdir};
use publisher::{HttpStore, LocalStore, ObjectStore};
use std::fs;
use std::os::unix::fs::PermissionsExt;

#[test]
fn create_makes_exactly_the_cas_layout() {
    let dir = tempdir();
    let store = LocalStore::create(&dir.path().join("srv")).unwrap();
    let mut names: Vec<String> = fs::read_dir(store.root().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 257);
    assert_eq!(names[0], "00");
    assert_eq!(names[255], "ff");
    assert_eq!(names[256], "txn");
    assert!(LocalStore::open(&dir.path().join("nothing")).is_err());
}

#[test]
fn put_is_atomic_and_never_overwrites() {
    let dir = tempdir();
    let store = LocalStore::create(dir.path()).unwrap();
    let obj = catalog_writer::zlib::compress(b"hello\n");
    let h = ContentHash::of(&obj);
    assert!(!store.contains(&h, Suffix::None).unwrap());
    store.put(&h, Suffix::None, &obj).unwrap();
    assert!(store.contains(&h, Suffix::None).unwrap());
    assert!(!store.contains(&h, Suffix::Partial).unwrap());
    let path = dir
        .path()
        .join("data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3");
    assert_eq!(fs::read(&path).unwrap(), obj);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Same name ⇒ same content: a second put must leave the first bytes in place.
    store.put(&h, Suffix::None, b"different bytes").unwrap();
    assert_eq!(store.get(&h, Suffix::None).unwrap(), obj);
    assert_eq!(
        fs::read_dir(dir.path().join("data/txn")).unwrap().count(),
        0,
        "temp files left"
    );
    let missing = store
        .get(&ContentHash([0xab; 20]), Suffix::Catalog)
        .unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert!(missing.to_string().contains("data/ab/"), "{missing}");
    store.sync().unwrap();
}

#[test]
fn concurrent_puts_of_one_object_agree() {
    let dir = tempdir();
    let store = std::sync::Arc::new(LocalStore::create(dir.path()).unwrap());
    let obj = catalog_writer::zlib::compress(&vec![7u8; 100_000]);
    let h = ContentHash::of(&obj);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, obj) = (store.clone(), obj.clone());
            std::thread::spawn(move || store.put(&h, Suffix::Partial, &obj).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.get(&h, Suffix::Partial).unwrap(), obj);
    assert_eq!(
        fs::read_dir(dir.path().join("data/txn")).unwrap().count(),
        0
    );
}

#[test]
fn root_files_are_replaced() {
    let dir = tempdir();
    let store = LocalStore::create(dir.path()).unwrap();
    assert_eq!(store.get_root_file(".cvmfspublished").unwrap(), None);
    store.put_root_file(".cvmfspublished", b"one").unwrap();
    store.put_root_file(".cvmfspublished", b"two").unwrap();
    assert_eq!(
        store.get_root_file(".cvmfspublished").unwrap().unwrap(),
        b"two"
    );
    let mode = fs::metadata(dir.path().join(".cvmfspublished"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        fs::read_dir(dir.path().join("data/txn")).unwrap().count(),
        0
    );
}

#[test]
fn http_store_reads_and_refuses_writes() {
    let dir = tempdir();
    let local = LocalStore::create(&dir.path().join("repo")).unwrap();
    let obj = catalog_writer::zlib::compress(b"hello\n");
    let h = ContentHash::of(&obj);
    local.put(&h, Suffix::None, &obj).unwrap();
    local.put_root_file(".cvmfswhitelist", b"wl").unwrap();
    let http = HttpStore::new(&serve(dir.path().to_path_buf())).unwrap();
    assert!(http.contains(&h, Suffix::None).unwrap());
    assert!(!http.contains(&h, Suffix::Catalog).unwrap());
    assert_eq!(http.get(&h, Suffix::None).unwrap(), obj);
    assert_eq!(
        http.get_root_file(".cvmfswhitelist").unwrap().unwrap(),
        b"wl"
    );
    assert_eq!(http.get_root_file(".cvmfspublished").unwrap(), None);
    let err = http.put(&h, Suffix::None, &obj).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(http.put_root_file(".cvmfspublished", b"x").is_err());
    assert!(HttpStore::new("ftp://example.org").is_err());
}
