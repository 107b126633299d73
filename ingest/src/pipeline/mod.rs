//! The object pipeline, as in cvmfs's ingestion pipeline (`cvmfs/ingestion/`): one stage per
//! module, joined by bounded queues.
//!
//! * `read`: the thread adding a file reads it and cuts it into pieces (the chunker costs
//!   about one shift and xor per byte, far less than compression), hashing each piece's
//!   plaintext (BLAKE3, the content index key) as it is assembled.
//! * `compress`: worker threads consult the in-run dedup map and the optional
//!   [`ContentIndex`], and otherwise compress the piece with stock zlib level 6 and name it by
//!   the SHA-1 of the compressed bytes.
//! * `store`: the worker (or, for remote stores, store threads) `put`s new objects, skipping
//!   objects the store already has, and registers finished pieces; a file is resolved once
//!   all its pieces are stored.
//!
//! Memory: the bytes of pieces in flight are bounded by `memory_budget` (`budget`, a byte
//! semaphore, plus bounded channels); each thread adding files holds at most one piece being
//! assembled.
//! Unchunked files larger than a quarter of the budget are compressed by the caller while it
//! reads them, straight into a scratch file the store takes over with `ObjectStore::put_file`
//! (see `streamed.rs`): their plaintext is never written to disk. Such files cannot consult
//! the content index before compressing (their plaintext hash is known only at the end); they
//! are recorded in it afterwards.

mod budget;
mod compress;
#[cfg(test)]
pub(crate) mod memstore;
mod pending;
mod read;
mod store;
mod streamed;

pub(crate) use pending::{finalize, sorted_map, PDir, PLeaf, PNode};

use crate::chunker::ChunkSizes;
use crate::error::{Error, Result};
use budget::{Budget, Permit};
use catalog_writer::entry::FileData;
use catalog_writer::hash::{ContentHash, Suffix};
use compress::{worker, Dedup, DedupKey, Parked};
use crossbeam_channel::{bounded, Sender};
use publisher::store::{ContentIndex, ObjectStore, PlainHash};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use store::{store_stage, try_complete};
use streamed::StreamedObject;

/// Objects from this size on are stored by the worker that compressed them. Smaller ones go
/// to the store thread: creating many small files from several threads at once contends on
/// the directory locks (measured: 100 000 small files took 0.45 s longer with every worker
/// storing), while for large objects the copy into the page cache is cheaper from the core
/// that holds the bytes. When the store thread's queue is full, workers store small objects
/// too rather than wait for a slot (a waiting worker idles a core and costs two context
/// switches per object).
const INLINE_STORE_MIN: u64 = 64 << 10;

/// Floor of the size above which unchunked files are compressed while read (see
/// `PipelineConfig::memory_budget`).
const MIN_STREAM_THRESHOLD: usize = 1 << 20;

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// `None`: every file is one object (as `cvmfs_server ingest`); `Some`: files larger than
    /// `min` are cut with the xor32 chunker (as `cvmfs_server publish`).
    pub chunking: Option<ChunkSizes>,
    /// Compression worker threads (default: available cores).
    pub workers: usize,
    /// Bytes of piece buffers allowed in flight between reading and storing (default 256 MiB).
    pub memory_budget: usize,
    /// Threads calling `ObjectStore::put` for small objects (default 1; 0: the workers store
    /// every object themselves). Objects of 64 KiB or more are always
    /// written by the worker that compressed them, while their bytes are in its CPU cache.
    pub store_threads: usize,
    /// Where the compressed objects of large unchunked files are written while they are
    /// produced, when the store has no [`scratch_dir`](ObjectStore::scratch_dir) (default:
    /// the system temp dir).
    pub spool_dir: Option<PathBuf>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            chunking: Some(ChunkSizes::default()),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_budget: 256 << 20,
            store_threads: 1,
            spool_dir: None,
        }
    }
}

/// Handle of a file given to the pipeline; resolves to its size and `FileData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileTicket(pub(crate) u64);

/// Counters of one pipeline run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Files added (read).
    pub files: u64,
    /// Files not read: a stat cache knew their content and the store still holds it.
    pub files_reused: u64,
    /// Plaintext bytes read.
    pub bytes_in: u64,
    /// Compressed bytes produced (each distinct piece compressed at most once per run).
    pub bytes_compressed: u64,
    /// Pieces compressed.
    pub compressions: u64,
    /// Objects written to the store.
    pub objects_new: u64,
    /// Compressed objects the store already had.
    pub objects_existing: u64,
    /// Pieces whose compression was skipped thanks to the content index.
    pub index_hits: u64,
    /// Pieces whose compression was skipped because the same plaintext came earlier in this run.
    pub dedup_hits: u64,
}

/// The counters of a running [`ObjectPipeline`], readable from any thread (made by
/// [`ObjectPipeline::watch`]).
#[derive(Clone)]
pub struct PipelineWatch(Arc<Counters>);

impl PipelineWatch {
    /// Snapshot of the counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.0.snapshot()
    }
}

/// What [`ObjectPipeline::finish`] returns.
#[derive(Debug)]
pub struct PipelineOutput {
    pub files: HashMap<FileTicket, (u64, FileData)>,
    pub stats: PipelineStats,
}

impl PipelineOutput {
    pub fn get(&self, ticket: FileTicket) -> Option<&(u64, FileData)> {
        self.files.get(&ticket)
    }
}

/// The chunk/compress/hash/store pipeline. `add_file` may be called from several threads.
pub struct ObjectPipeline {
    shared: Arc<Shared>,
    chunking: Option<ChunkSizes>,
    stream_threshold: usize,
    /// Where large unchunked files are compressed to (the store's scratch area if it has one).
    scratch_dir: PathBuf,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    storers: Vec<JoinHandle<()>>,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    index: Option<Arc<dyn ContentIndex>>,
    state: Mutex<State>,
    changed: Condvar,
    failed: AtomicBool,
    dedup: Mutex<HashMap<DedupKey, Dedup>>,
    budget: Arc<Budget>,
    /// Shared with [`PipelineWatch`]es, which may outlive the pipeline.
    counters: Arc<Counters>,
    /// Objects stored in a row that the store did not have (see `store::put_object`).
    new_streak: AtomicU64,
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    files_reused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_compressed: AtomicU64,
    compressions: AtomicU64,
    objects_new: AtomicU64,
    objects_existing: AtomicU64,
    index_hits: AtomicU64,
    dedup_hits: AtomicU64,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Threads waiting in `resolve`: the `changed` condvar is signalled only when there are
    /// any (a signal is a system call, and there are several per file otherwise).
    waiters: usize,
    files: HashMap<FileTicket, FileState>,
    error: Option<Error>,
    error_msg: Option<String>,
}

/// A file of the run: being read and stored, or done (its size and data). Every file keeps
/// its slot until [`ObjectPipeline::finish`] and nearly all are done, so the in-flight state
/// is boxed: a slot of the map takes 48 bytes instead of 96.
enum FileState {
    Open(Box<Progress>),
    Done(u64, FileData),
}

#[derive(Default)]
struct Progress {
    /// Known once the caller has read the whole file: (size, number of pieces).
    total: Option<(u64, usize)>,
    pieces: BTreeMap<usize, PieceDone>,
}

struct PieceDone {
    offset: u64,
    size: u64,
    suffix: Suffix,
    hash: ContentHash,
}

/// One piece of a file on its way to a worker.
struct Job {
    ticket: FileTicket,
    idx: usize,
    offset: u64,
    suffix: Suffix,
    data: PieceData,
    permit: Permit,
}

enum PieceData {
    /// Plaintext and its hash.
    Mem(Vec<u8>, PlainHash),
    /// A large unchunked file, already compressed by the caller.
    Compressed(StreamedObject),
}

/// The compressed bytes of an object on their way to the store.
enum ObjectBytes {
    Mem(Vec<u8>),
    /// A scratch file for `ObjectStore::put_file`.
    File(StreamedObject),
}

impl ObjectBytes {
    fn len(&self) -> u64 {
        match self {
            ObjectBytes::Mem(v) => v.len() as u64,
            ObjectBytes::File(f) => f.compressed_len,
        }
    }
}

/// A compressed (or already known) piece on its way to the store stage.
struct Stored {
    ticket: FileTicket,
    idx: usize,
    offset: u64,
    size: u64,
    suffix: Suffix,
    hash: ContentHash,
    /// Compressed bytes and plaintext hash when the object may have to be written.
    put: Option<(ObjectBytes, PlainHash)>,
    /// Pieces with the same plaintext, done once this one is stored.
    parked: Vec<Parked>,
    _permit: Permit,
}

impl Stored {
    /// Whether this is a new object smaller than `INLINE_STORE_MIN`.
    fn is_small(&self) -> bool {
        matches!(&self.put, Some((bytes, _)) if bytes.len() < INLINE_STORE_MIN)
    }
}

impl ObjectPipeline {
    /// Starts the worker and store threads.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        index: Option<Arc<dyn ContentIndex>>,
        cfg: PipelineConfig,
    ) -> Result<ObjectPipeline> {
        if let Some(c) = &cfg.chunking {
            c.validate()?;
        }
        // Reading further ahead than the workers can consume buys no throughput, only memory:
        // with chunking, cap the in-flight bytes at (2 × workers + 4) of the largest pieces.
        let budget = match &cfg.chunking {
            Some(c) => cfg
                .memory_budget
                .min((2 * cfg.workers.max(1) + 4).saturating_mul(c.max)),
            None => cfg.memory_budget,
        }
        .max(1);
        let scratch_dir = store
            .scratch_dir()
            .or_else(|| cfg.spool_dir.clone())
            .unwrap_or_else(std::env::temp_dir);
        let max_piece = match cfg.chunking {
            Some(c) => c.max,
            None => (budget / 4).max(MIN_STREAM_THRESHOLD),
        };
        // Channel capacities follow from the budget: about as many pieces as fit in it.
        let cap = (budget / max_piece.max(1)).clamp(1, 1024);
        let shared = Arc::new(Shared {
            store,
            index,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
            dedup: Mutex::new(HashMap::new()),
            budget: Arc::new(Budget::new(budget)),
            counters: Arc::default(),
            new_streak: AtomicU64::new(0),
        });
        let (job_tx, job_rx) = bounded::<Job>(cap);
        let (out_tx, out_rx) = bounded::<Stored>(cap);
        let inline = cfg.store_threads == 0;
        let spawn_err = |e: io::Error| Error::Stopped(format!("cannot start thread: {e}"));
        let mut workers = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let (sh, rx) = (shared.clone(), job_rx.clone());
            let tx = (!inline).then(|| out_tx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("ingest-compress-{i}"))
                    .spawn(move || worker(sh, rx, tx))
                    .map_err(spawn_err)?,
            );
        }
        drop(out_tx);
        let mut storers = Vec::new();
        for i in 0..cfg.store_threads {
            let (sh, rx) = (shared.clone(), out_rx.clone());
            storers.push(
                std::thread::Builder::new()
                    .name(format!("ingest-store-{i}"))
                    .spawn(move || store_stage(sh, rx))
                    .map_err(spawn_err)?,
            );
        }
        Ok(ObjectPipeline {
            shared,
            chunking: cfg.chunking,
            stream_threshold: max_piece,
            scratch_dir,
            jobs: Some(job_tx),
            workers,
            storers,
        })
    }

    /// Streams one regular file into the pipeline. `size_hint` only sizes buffers (bounded).
    pub fn add_file(&self, reader: &mut dyn Read, size_hint: u64) -> Result<FileTicket> {
        self.add_named_file("input file", reader, size_hint)
    }

    /// Like [`add_file`](Self::add_file); `name` appears in read errors.
    pub fn add_named_file(
        &self,
        name: &str,
        reader: &mut dyn Read,
        size_hint: u64,
    ) -> Result<FileTicket> {
        let ticket = self.reserve_ticket();
        self.add_reserved_file(ticket, name, reader, size_hint)?;
        Ok(ticket)
    }

    /// A ticket for a file that another thread will read later with
    /// [`add_reserved_file`](Self::add_reserved_file): a source can then place the file in
    /// its tree before the file is read.
    pub(crate) fn reserve_ticket(&self) -> FileTicket {
        let mut st = self.shared.lock();
        let t = FileTicket(st.next_ticket);
        st.next_ticket += 1;
        st.files.insert(t, FileState::Open(Box::default()));
        t
    }

    /// Reads the file of a reserved ticket; on an error the ticket is forgotten.
    pub(crate) fn add_reserved_file(
        &self,
        ticket: FileTicket,
        name: &str,
        reader: &mut dyn Read,
        size_hint: u64,
    ) -> Result<()> {
        match self.feed(ticket, name, reader, size_hint) {
            Ok((size, npieces)) => {
                self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
                let mut st = self.shared.lock();
                if let Some(f) = st.files.get_mut(&ticket) {
                    if let FileState::Open(p) = f {
                        p.total = Some((size, npieces));
                    }
                    if try_complete(f) {
                        self.shared.notify_resolved(st);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.shared.lock().files.remove(&ticket);
                Err(e)
            }
        }
    }

    /// Resolves a reserved ticket with content stored by an earlier run, without reading the
    /// file, if the store still has every object of `data` (gc or a rolled back publish may
    /// have removed them). `Ok(false)`: it does not, read the file instead.
    pub(crate) fn add_known_file(
        &self,
        ticket: FileTicket,
        size: u64,
        data: &FileData,
    ) -> Result<bool> {
        let objects: Vec<(ContentHash, Suffix)> = match data {
            FileData::Whole(h) => vec![(*h, Suffix::None)],
            FileData::Chunked(chunks) => chunks.iter().map(|c| (c.hash, Suffix::Partial)).collect(),
        };
        for (hash, suffix) in objects {
            let present = self
                .shared
                .store
                .contains(&hash, suffix)
                .map_err(|e| self.shared.store_error(&hash, suffix, e))?;
            if !present {
                return Ok(false);
            }
        }
        self.shared
            .counters
            .files_reused
            .fetch_add(1, Ordering::Relaxed);
        let mut st = self.shared.lock();
        if let Some(f) = st.files.get_mut(&ticket) {
            *f = FileState::Done(size, data.clone());
            self.shared.notify_resolved(st);
        }
        Ok(true)
    }

    fn check_failed(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::Stopped(self.shared.failure_message()));
        }
        Ok(())
    }

    /// Waits until `ticket`'s pieces are stored and returns its size and `FileData`. Objects
    /// are guaranteed to be in the store only once [`finish`](Self::finish) returned `Ok`.
    pub fn resolve(&self, ticket: FileTicket) -> Result<(u64, FileData)> {
        self.wait_for(ticket, false)
    }

    /// [`resolve`](Self::resolve) for the ticket's last reader: the pipeline forgets the
    /// file (it is not in [`PipelineOutput::files`]). Every file of a run has a slot until
    /// then; a tree finalised with its files' data no longer needs them, and images of
    /// hundreds of thousands of files kept megabytes of them through catalog writing.
    pub(crate) fn take(&self, ticket: FileTicket) -> Result<(u64, FileData)> {
        self.wait_for(ticket, true)
    }

    fn wait_for(&self, ticket: FileTicket, forget: bool) -> Result<(u64, FileData)> {
        let mut st = self.shared.lock();
        loop {
            if let Some(msg) = &st.error_msg {
                return Err(Error::Stopped(msg.clone()));
            }
            match st.files.get(&ticket) {
                None => return Err(Error::Stopped(format!("unknown file ticket {}", ticket.0))),
                Some(FileState::Done(size, data)) if !forget => return Ok((*size, data.clone())),
                Some(FileState::Done(..)) => {
                    if let Some(FileState::Done(size, data)) = st.files.remove(&ticket) {
                        // The map never shrinks by itself: give back what a finished image
                        // left.
                        let len = st.files.len();
                        if st.files.capacity() > 1024 && len * 4 < st.files.capacity() {
                            st.files.shrink_to(len * 2);
                        }
                        return Ok((size, data));
                    }
                }
                Some(_) => {}
            }
            st.waiters += 1;
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.waiters -= 1;
        }
    }

    /// Whether every one of `tickets` is resolved already (never waits).
    pub fn all_stored(&self, mut tickets: impl Iterator<Item = FileTicket>) -> bool {
        let st = self.shared.lock();
        tickets.all(|t| matches!(st.files.get(&t), Some(FileState::Done(..))))
    }

    /// Snapshot of the counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.shared.counters.snapshot()
    }

    /// How files are cut into objects (`None`: one object per file).
    pub fn chunking(&self) -> Option<ChunkSizes> {
        self.chunking
    }

    /// A handle on the counters that another thread can read while the pipeline works (a
    /// progress display).
    pub fn watch(&self) -> PipelineWatch {
        PipelineWatch(Arc::clone(&self.shared.counters))
    }

    /// Waits for all workers and returns every file's resolution and the counters, or the
    /// first error of any stage.
    pub fn finish(mut self) -> Result<PipelineOutput> {
        let panicked = self.shutdown();
        let mut st = self.shared.lock();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if panicked {
            return Err(Error::Stopped("a pipeline thread panicked".into()));
        }
        let mut files = HashMap::with_capacity(st.files.len());
        for (t, f) in st.files.drain() {
            match f {
                FileState::Done(size, data) => {
                    files.insert(t, (size, data));
                }
                FileState::Open(_) => {
                    return Err(Error::Stopped(format!(
                        "file ticket {} was not completed",
                        t.0
                    )))
                }
            }
        }
        drop(st);
        Ok(PipelineOutput {
            files,
            stats: self.shared.counters.snapshot(),
        })
    }

    /// Closes the job queue and joins all threads; returns whether any thread panicked.
    fn shutdown(&mut self) -> bool {
        drop(self.jobs.take());
        let mut panicked = false;
        for h in self.workers.drain(..).chain(self.storers.drain(..)) {
            panicked |= h.join().is_err();
        }
        panicked
    }
}

impl Drop for ObjectPipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stopped_channel() -> Error {
    Error::Stopped("pipeline threads have exited".into())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough counters; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: Error) {
        let mut st = self.lock();
        if st.error.is_none() {
            st.error_msg = Some(e.to_string());
            st.error = Some(e);
        }
        self.failed.store(true, Ordering::Release);
        self.notify_resolved(st);
    }

    /// Wakes the threads waiting in `resolve`, if any; releases the lock.
    fn notify_resolved(&self, st: MutexGuard<'_, State>) {
        let waiting = st.waiters > 0;
        drop(st);
        if waiting {
            self.changed.notify_all();
        }
    }

    fn failure_message(&self) -> String {
        self.lock()
            .error_msg
            .clone()
            .unwrap_or_else(|| "unknown error".into())
    }

    fn piece_done(&self, ticket: FileTicket, idx: usize, p: PieceDone) {
        let mut st = self.lock();
        if let Some(f) = st.files.get_mut(&ticket) {
            if let FileState::Open(progress) = f {
                progress.pieces.insert(idx, p);
            }
            if try_complete(f) {
                self.notify_resolved(st);
            }
        }
    }

    fn store_error(&self, hash: &ContentHash, suffix: Suffix, source: io::Error) -> Error {
        Error::Store {
            object: hash.object_path(suffix),
            store: self.store.describe(),
            source,
        }
    }
}

impl Counters {
    fn snapshot(&self) -> PipelineStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PipelineStats {
            files: g(&self.files),
            files_reused: g(&self.files_reused),
            bytes_in: g(&self.bytes_in),
            bytes_compressed: g(&self.bytes_compressed),
            compressions: g(&self.compressions),
            objects_new: g(&self.objects_new),
            objects_existing: g(&self.objects_existing),
            index_hits: g(&self.index_hits),
            dedup_hits: g(&self.dedup_hits),
        }
    }
}

#[cfg(test)]
mod tests;
