use super::compress::INDEX_MIN_SIZE;
use super::memstore::{lcg_bytes, MemIndex, MemStore};
use super::*;
use crate::chunker::Chunker;
use catalog_writer::hash::EMPTY_OBJECT;
use std::io::Cursor;

fn pipeline(store: &Arc<MemStore>, cfg: PipelineConfig) -> ObjectPipeline {
    ObjectPipeline::new(store.clone(), None, cfg).unwrap()
}

fn small_chunks() -> PipelineConfig {
    PipelineConfig {
        chunking: Some(ChunkSizes::new(4096, 16384, 65536).unwrap()),
        workers: 2,
        ..PipelineConfig::default()
    }
}

#[test]
fn known_object_names() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, PipelineConfig::default());
    let hello = p.add_file(&mut Cursor::new(b"hello\n"), 6).unwrap();
    let empty = p.add_file(&mut io::empty(), 0).unwrap();
    let out = p.finish().unwrap();
    let (size, data) = out.get(hello).unwrap();
    assert_eq!(*size, 6);
    let h = ContentHash::from_hex("5798f7f4ca7585d850eea64610a1f73d8f8de7a3").unwrap();
    assert_eq!(*data, FileData::Whole(h));
    assert_eq!(
        hex::encode(store.get(&h, Suffix::None).unwrap()),
        "789ccb48cdc9c9e70200084b021f"
    );
    assert_eq!(out.get(empty).unwrap(), &(0, FileData::Whole(EMPTY_OBJECT)));
    assert!(store.contains(&EMPTY_OBJECT, Suffix::None).unwrap());
    assert_eq!(out.stats.files, 2);
    assert_eq!(out.stats.bytes_in, 6);
    assert_eq!(out.stats.objects_new, 2);
}

#[test]
fn chunked_round_trip_matches_chunker() {
    let store = Arc::new(MemStore::default());
    let cfg = small_chunks();
    let sizes = cfg.chunking.unwrap();
    let p = pipeline(&store, cfg);
    let input = lcg_bytes(1 << 20, 7);
    let t = p.add_file(&mut Cursor::new(&input), 0).unwrap();
    let (size, data) = p.resolve(t).unwrap();
    let out = p.finish().unwrap();
    assert_eq!(size, input.len() as u64);
    let FileData::Chunked(chunks) = data else {
        panic!("expected chunks, got {data:?}")
    };
    // Independent cut computation over the whole buffer.
    let mut c = Chunker::new(sizes).unwrap();
    let mut marks = vec![0usize];
    while let Some(i) = c.next_cut(&input[*marks.last().unwrap()..]) {
        marks.push(marks.last().unwrap() + i);
    }
    assert_eq!(chunks.len(), marks.len());
    let mut joined = Vec::new();
    let mut expect_off = 0;
    for (ch, mark) in chunks.iter().zip(&marks) {
        assert_eq!(ch.offset, expect_off);
        assert_eq!(ch.offset, *mark as u64);
        assert!(ch.size <= sizes.max as u64 && ch.size > 0);
        expect_off += ch.size;
        joined.extend(store.get_inflated(&ch.hash, Suffix::Partial));
    }
    assert_eq!(joined, input);
    assert_eq!(out.stats.objects_new as usize, chunks.len());
}

#[test]
fn small_file_is_not_chunked() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, small_chunks());
    let input = lcg_bytes(4096, 1);
    let t = p.add_file(&mut Cursor::new(&input), 4096).unwrap();
    let out = p.finish().unwrap();
    let (_, FileData::Whole(h)) = out.get(t).unwrap() else {
        panic!("a file of min size must be one object")
    };
    assert_eq!(store.get_inflated(h, Suffix::None), input);
}

#[test]
fn identical_content_is_compressed_once() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, PipelineConfig::default());
    let input = lcg_bytes(100_000, 3);
    let a = p.add_file(&mut Cursor::new(&input), 0).unwrap();
    let b = p.add_file(&mut Cursor::new(&input), 0).unwrap();
    let out = p.finish().unwrap();
    assert_eq!(out.get(a), out.get(b));
    assert_eq!(out.stats.compressions, 1);
    assert_eq!(out.stats.dedup_hits, 1);
    assert_eq!(out.stats.objects_new, 1);
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
}

#[test]
fn a_run_of_new_objects_stops_asking_the_store_first() {
    let store = Arc::new(MemStore::default());
    // One worker storing in order: which object is looked up is deterministic.
    let cfg = PipelineConfig {
        workers: 1,
        store_threads: 0,
        ..PipelineConfig::default()
    };
    let add = |p: &ObjectPipeline, name: &str| {
        p.add_file(&mut Cursor::new(name.as_bytes().to_vec()), 0)
            .unwrap()
    };
    let p = pipeline(&store, cfg.clone());
    add(&p, "stored before");
    p.finish().unwrap();
    let asked_before = store.lookups.load(Ordering::SeqCst);

    let p = pipeline(&store, cfg);
    for i in 0..40 {
        add(&p, &format!("new {i}"));
    }
    add(&p, "stored before");
    for i in 40..50 {
        add(&p, &format!("new {i}"));
    }
    let out = p.finish().unwrap();
    assert_eq!(out.stats.objects_new, 50);
    assert_eq!(out.stats.objects_existing, 1);
    assert_eq!(store.len(), 51);
    // The first NEW_STREAK objects are looked up, the existing one ends the streak without a
    // lookup of its own, and the ten after it are looked up again.
    let asked = store.lookups.load(Ordering::SeqCst) - asked_before;
    assert_eq!(asked, store::NEW_STREAK + 10);
}

#[test]
fn content_index_skips_compression_only_if_object_exists() {
    let store = Arc::new(MemStore::default());
    let index = Arc::new(MemIndex::default());
    let input = lcg_bytes(50_000, 5);
    let run = |store: &Arc<MemStore>| {
        let p = ObjectPipeline::new(store.clone(), Some(index.clone()), small_chunks()).unwrap();
        let t = p.add_file(&mut Cursor::new(&input), 0).unwrap();
        let out = p.finish().unwrap();
        (out.get(t).unwrap().clone(), out.stats)
    };
    let (first, s1) = run(&store);
    assert_eq!(s1.index_hits, 0);
    assert!(s1.compressions > 0);
    let (second, s2) = run(&store);
    assert_eq!(first, second);
    // Pieces below INDEX_MIN_SIZE bypass the index: they are compressed again.
    let small = match &first.1 {
        FileData::Chunked(c) => c.iter().filter(|c| c.size < INDEX_MIN_SIZE).count(),
        FileData::Whole(_) => 0,
    } as u64;
    assert!(s2.index_hits > 0);
    assert_eq!(s2.compressions, small);
    assert_eq!(s2.index_hits + small, s1.compressions);
    // An index hit whose object is gone (GC) is not trusted.
    let empty_store = Arc::new(MemStore::default());
    let (third, s3) = run(&empty_store);
    assert_eq!(third, first);
    assert_eq!(s3.index_hits, 0);
    assert_eq!(s3.compressions, s1.compressions);
}

#[test]
fn a_piece_seen_again_while_compressed_does_not_hold_up_a_worker() {
    let store = Arc::new(MemStore::default());
    let index = Arc::new(MemIndex::default());
    let same = lcg_bytes(10_000, 1);
    // The first worker to take `same` is held in its index lookup, i.e. before compressing.
    *index.hold.lock().unwrap() = Some(same.len() as u64);
    let cfg = PipelineConfig {
        chunking: None,
        workers: 2,
        ..PipelineConfig::default()
    };
    let p = ObjectPipeline::new(store.clone(), Some(index.clone()), cfg).unwrap();
    // The copy is parked, so the other worker is free for the next file.
    let a = p.add_file(&mut Cursor::new(&same), 0).unwrap();
    let b = p.add_file(&mut Cursor::new(&same), 0).unwrap();
    let other = p.add_file(&mut Cursor::new(b"other"), 0).unwrap();
    // Bounded wait: with both workers stuck this would never resolve.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !p.all_stored([other].into_iter()) {
        if std::time::Instant::now() > deadline {
            index.release();
            panic!("no worker took the next file");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!p.all_stored([a, b].into_iter()));
    index.release();
    let (ra, rb) = (p.resolve(a).unwrap(), p.resolve(b).unwrap());
    assert_eq!(ra, rb);
    let out = p.finish().unwrap();
    assert_eq!((out.stats.compressions, out.stats.dedup_hits), (2, 1));
}

#[test]
fn workers_store_small_objects_themselves_while_the_store_thread_is_stuck() {
    let store = Arc::new(MemStore::default());
    *store.hold_first_put.lock().unwrap() = true;
    let cfg = PipelineConfig {
        chunking: None,
        workers: 2,
        store_threads: 1,
        ..PipelineConfig::default()
    };
    let p = pipeline(&store, cfg);
    // The first object reaches the store thread, whose write then hangs; the queue behind it
    // fills up, and the workers must not wait for a slot.
    let files: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("file {i}\n").into_bytes())
        .collect();
    let tickets = std::thread::scope(|s| {
        // Fed from another thread: with blocked workers, feeding blocks too.
        let feeder = s.spawn(|| {
            let add = |f: &Vec<u8>| p.add_file(&mut Cursor::new(f), f.len() as u64).unwrap();
            files.iter().map(add).collect::<Vec<_>>()
        });
        // Bounded wait: with workers blocked on the full queue nothing more would be stored.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.len() < 150 {
            if std::time::Instant::now() > deadline {
                let stored = store.len();
                store.release_put();
                panic!("workers waited for the stuck store thread: {stored} stored");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        store.release_put();
        feeder.join().unwrap()
    });
    let out = p.finish().unwrap();
    for (f, t) in files.iter().zip(tickets) {
        let (size, data) = out.get(t).unwrap();
        assert_eq!(*size as usize, f.len());
        let FileData::Whole(h) = data else {
            panic!("small file chunked")
        };
        assert_eq!(&store.get_inflated(h, Suffix::None), f);
    }
    assert_eq!(store.len(), 200);
}

#[test]
fn big_file_with_small_budget() {
    let input = lcg_bytes(64 << 20, 11);
    // Stored by the workers themselves (the default) and by store threads.
    let cases = [Some(ChunkSizes::default()), None]
        .into_iter()
        .flat_map(|c| [(c, 0), (c, 2)]);
    for (chunking, store_threads) in cases {
        let store = Arc::new(MemStore::default());
        let cfg = PipelineConfig {
            chunking,
            workers: 2,
            memory_budget: 8 << 20,
            store_threads,
            ..PipelineConfig::default()
        };
        let p = pipeline(&store, cfg);
        let t = p.add_file(&mut Cursor::new(&input), u64::MAX).unwrap();
        assert!(p.shared.budget.peak.load(Ordering::Relaxed) <= 8 << 20);
        let out = p.finish().unwrap();
        let (size, data) = out.get(t).unwrap().clone();
        assert_eq!(size, input.len() as u64);
        let restored: Vec<u8> = match data {
            FileData::Whole(h) => {
                assert!(chunking.is_none());
                store.get_inflated(&h, Suffix::None)
            }
            FileData::Chunked(chunks) => {
                assert!(chunking.is_some() && chunks.len() >= 4);
                chunks
                    .iter()
                    .flat_map(|c| store.get_inflated(&c.hash, Suffix::Partial))
                    .collect()
            }
        };
        assert!(restored == input);
    }
}

#[test]
fn store_error_names_object_and_stops() {
    for store_threads in [0, 1] {
        let store = Arc::new(MemStore::default());
        store.fail_puts.store(true, Ordering::SeqCst);
        let cfg = PipelineConfig {
            store_threads,
            ..PipelineConfig::default()
        };
        let p = pipeline(&store, cfg);
        let t = p.add_file(&mut Cursor::new(b"hello\n"), 6).unwrap();
        assert!(p.resolve(t).is_err());
        assert!(p.add_file(&mut Cursor::new(b"more"), 4).is_err());
        let err = p.finish().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3")
                && msg.contains("No space left"),
            "{msg}"
        );
    }
}

#[test]
fn read_error_names_file() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("boom"))
        }
    }
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, PipelineConfig::default());
    let err = p.add_named_file("/x/y", &mut Broken, 1).unwrap_err();
    assert_eq!(err.to_string(), "/x/y: boom");
    p.finish().unwrap();
}

/// Throughput probe: `cargo test --release -p ingest --lib -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    // Text-like data (64-symbol alphabet): compresses to about 75 %, like binaries and text.
    let text: Vec<u8> = lcg_bytes(256 << 20, 5)
        .iter()
        .map(|b| 0x20 + (b & 0x3f))
        .collect();
    let random = lcg_bytes(256 << 20, 6);
    let small: Vec<Vec<u8>> = (0..20_000).map(|i| lcg_bytes(4096, i)).collect();
    for (kind, data) in [("text", &text), ("random", &random)] {
        let t0 = std::time::Instant::now();
        let z = catalog_writer::zlib::compress(&data[..64 << 20]);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "reference: one-thread zlib-6 {kind:6}: {:.0} MB/s ({} bytes out)",
            (64 << 20) as f64 / secs / 1e6,
            z.len()
        );
    }
    for (label, chunking) in [
        ("chunked 4/8/16M", Some(ChunkSizes::default())),
        ("whole files", None),
    ] {
        for (kind, data) in [("text", &text), ("random", &random)] {
            let store = Arc::new(MemStore::default());
            let cfg = PipelineConfig {
                chunking,
                ..PipelineConfig::default()
            };
            let p = pipeline(&store, cfg);
            let t0 = std::time::Instant::now();
            p.add_file(&mut Cursor::new(data), data.len() as u64)
                .unwrap();
            let out = p.finish().unwrap();
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{label:16} {kind:6}: {:.0} MB/s in ({} bytes -> {} compressed, {} objects)",
                data.len() as f64 / secs / 1e6,
                out.stats.bytes_in,
                out.stats.bytes_compressed,
                out.stats.objects_new
            );
        }
    }
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, PipelineConfig::default());
    let t0 = std::time::Instant::now();
    for f in &small {
        p.add_file(&mut Cursor::new(f), f.len() as u64).unwrap();
    }
    let out = p.finish().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "20000 x 4 KiB files: {:.0} files/s, {:.0} MB/s ({} objects)",
        small.len() as f64 / secs,
        out.stats.bytes_in as f64 / secs / 1e6,
        out.stats.objects_new
    );
}

#[test]
fn concurrent_callers_share_one_pipeline() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, small_chunks());
    let contents: Vec<Vec<u8>> = (0..10)
        .map(|i| lcg_bytes(1000 + i * 9000, i as u64))
        .collect();
    let tickets: Vec<(usize, FileTicket)> = std::thread::scope(|s| {
        let handles: Vec<std::thread::ScopedJoinHandle<'_, Vec<(usize, FileTicket)>>> = (0..4)
            .map(|t| {
                let (p, contents) = (&p, &contents);
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let c = (t * 7 + i) % contents.len();
                            (c, p.add_file(&mut Cursor::new(&contents[c]), 0).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Spawn all before joining any, so the callers really overlap.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let out = p.finish().unwrap();
    assert_eq!(out.stats.files, 100);
    // Every distinct piece was compressed once; the rest were dedup hits.
    assert_eq!(out.stats.compressions as usize, store.len());
    for (c, t) in tickets {
        let (size, data) = out.get(t).unwrap();
        assert_eq!(*size as usize, contents[c].len());
        let bytes = match data {
            FileData::Whole(h) => store.get_inflated(h, Suffix::None),
            FileData::Chunked(ch) => ch
                .iter()
                .flat_map(|c| store.get_inflated(&c.hash, Suffix::Partial))
                .collect(),
        };
        assert!(bytes == contents[c]);
    }
}

/// A store with a scratch area; `put_file` is the trait's default (read, `put`, remove).
struct ScratchStore {
    inner: MemStore,
    scratch: std::path::PathBuf,
}

impl ObjectStore for ScratchStore {
    fn contains(&self, h: &ContentHash, s: Suffix) -> io::Result<bool> {
        self.inner.contains(h, s)
    }
    fn put(&self, h: &ContentHash, s: Suffix, b: &[u8]) -> io::Result<()> {
        self.inner.put(h, s, b)
    }
    fn get(&self, h: &ContentHash, s: Suffix) -> io::Result<Vec<u8>> {
        self.inner.get(h, s)
    }
    fn put_root_file(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn get_root_file(&self, _: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn describe(&self) -> String {
        "scratch store".into()
    }
    fn scratch_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.scratch.clone())
    }
}

/// Reads `data` and, every 4 MiB, records the files in two directories and their total size.
struct Watching<'a> {
    data: &'a [u8],
    pos: usize,
    dirs: [&'a std::path::Path; 2],
    seen: Vec<[(usize, u64); 2]>,
}

impl Read for Watching<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos.is_multiple_of(4 << 20) && self.pos > 0 {
            let look = |d: &std::path::Path| {
                let files: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap()).collect();
                let bytes = files.iter().map(|e| e.metadata().unwrap().len()).sum();
                (files.len(), bytes)
            };
            self.seen.push([look(self.dirs[0]), look(self.dirs[1])]);
        }
        let n = buf.len().min(self.data.len() - self.pos).min(1 << 20);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn large_unchunked_file_is_compressed_while_read() {
    let scratch = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let store = Arc::new(ScratchStore {
        inner: MemStore::default(),
        scratch: scratch.path().to_path_buf(),
    });
    let index = Arc::new(MemIndex::default());
    let cfg = PipelineConfig {
        chunking: None,
        workers: 2,
        memory_budget: 4 << 20, // files above 1 MiB are streamed
        spool_dir: Some(spool.path().to_path_buf()),
        ..PipelineConfig::default()
    };
    // Text-like, so the compressed object is clearly smaller than the plaintext.
    let input: Vec<u8> = lcg_bytes(24 << 20, 8)
        .iter()
        .map(|b| b'a' + b % 16)
        .collect();
    let p = ObjectPipeline::new(store.clone(), Some(index.clone()), cfg).unwrap();
    let mut reader = Watching {
        data: &input,
        pos: 0,
        dirs: [scratch.path(), spool.path()],
        seen: Vec::new(),
    };
    let t = p.add_file(&mut reader, input.len() as u64).unwrap();
    let out = p.finish().unwrap();
    assert!(reader.seen.len() >= 4, "{:?}", reader.seen);
    for (i, [(n_scratch, scratch_bytes), (n_spool, _)]) in reader.seen.iter().enumerate() {
        // One scratch file holding compressed bytes only; nothing anywhere else.
        assert_eq!((*n_scratch, *n_spool), (1, 0), "at {} MiB", 4 * (i + 1));
        assert!(*scratch_bytes < (4 * (i as u64 + 1)) << 20);
    }
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    let (size, data) = out.get(t).unwrap();
    assert_eq!(*size, input.len() as u64);
    let FileData::Whole(h) = data else {
        panic!("one object expected: {data:?}")
    };
    let expected = catalog_writer::zlib::compress(&input);
    assert_eq!(*h, ContentHash::of(&expected));
    assert_eq!(store.inner.get(h, Suffix::None).unwrap(), expected);
    assert_eq!(out.stats.compressions, 1);
    assert_eq!(out.stats.bytes_compressed, expected.len() as u64);
    // Recorded in the content index afterwards.
    let plain = publisher::store::plain_hash(&input);
    assert_eq!(
        index.lookup(&plain, input.len() as u64, Suffix::None),
        Some((*h, expected.len() as u64))
    );
    // The same file again: compressed again (no lookup possible), but not stored twice.
    let p = ObjectPipeline::new(
        store.clone(),
        Some(index),
        PipelineConfig {
            chunking: None,
            memory_budget: 4 << 20,
            ..PipelineConfig::default()
        },
    )
    .unwrap();
    let t2 = p.add_file(&mut Cursor::new(&input), 0).unwrap();
    let out2 = p.finish().unwrap();
    assert_eq!(out2.get(t2), out.get(t));
    assert_eq!(
        (out2.stats.objects_new, out2.stats.objects_existing),
        (0, 1)
    );
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// A watch sees the counters grow while the pipeline works, and keeps the last ones after it
/// finished (a progress display may read once more after the run).
#[test]
fn a_watch_follows_the_counters_from_another_thread() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(&store, PipelineConfig::default());
    let watch = p.watch();
    assert_eq!(watch.stats(), PipelineStats::default());
    let t = p.add_file(&mut Cursor::new(b"hello\n"), 6).unwrap();
    p.resolve(t).unwrap();
    let seen = std::thread::spawn({
        let watch = watch.clone();
        move || watch.stats()
    })
    .join()
    .unwrap();
    assert_eq!((seen.files, seen.bytes_in), (1, 6));
    let out = p.finish().unwrap();
    assert_eq!(watch.stats(), out.stats);
}

/// Gives `first` bytes, then waits for a signal before the rest: a file being read slowly.
struct Stalling {
    first: Vec<u8>,
    rest: Vec<u8>,
    go: std::sync::mpsc::Receiver<()>,
}

impl Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let part = if !self.first.is_empty() {
            &mut self.first
        } else {
            if !self.rest.is_empty() {
                let _ = self.go.recv();
            }
            &mut self.rest
        };
        let n = part.len().min(buf.len());
        buf[..n].copy_from_slice(&part[..n]);
        part.drain(..n);
        Ok(n)
    }
}

#[test]
fn bytes_read_show_in_a_watch_before_the_file_is_done() {
    let store = Arc::new(MemStore::default());
    let p = Arc::new(pipeline(&store, PipelineConfig::default()));
    let watch = p.watch();
    let (go, wait) = std::sync::mpsc::channel();
    let reader = Stalling {
        first: vec![7; 100_000],
        rest: vec![8; 50_000],
        go: wait,
    };
    let adder = std::thread::spawn({
        let p = p.clone();
        move || {
            let mut reader = reader;
            p.add_file(&mut reader, 150_000).unwrap()
        }
    });
    // The first part is counted while the reader waits for the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while watch.stats().bytes_in < 100_000 {
        assert!(std::time::Instant::now() < deadline, "{:?}", watch.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(watch.stats().bytes_in, 100_000);
    go.send(()).unwrap();
    let ticket = adder.join().unwrap();
    p.resolve(ticket).unwrap();
    assert_eq!(watch.stats().bytes_in, 150_000);
}
