//! Stages 4 and 5: store each new object (on the worker that compressed it, or on store
//! threads for remote stores) and register the stored piece with its file, which resolves
//! once all its pieces are stored.

use super::compress::INDEX_MIN_SIZE;
use super::{FileState, ObjectBytes, PieceDone, Shared, Stored};
use crate::error::Result;
use catalog_writer::entry::{Chunk, FileData};
use catalog_writer::hash::Suffix;
use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A store thread: stores what the workers compressed.
pub(super) fn store_stage(sh: Arc<Shared>, rx: Receiver<Stored>) {
    for st in rx {
        if sh.failed.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = store_one(&sh, st) {
            sh.fail(e);
        }
    }
}

/// Writes `st`'s object unless the store has it, records it in the content index, and
/// registers the piece (and the pieces parked behind it) with their files.
pub(super) fn store_one(sh: &Shared, st: Stored) -> Result<()> {
    if let Some((bytes, plain)) = &st.put {
        let created =
            put_object(sh, &st, bytes).map_err(|e| sh.store_error(&st.hash, st.suffix, e))?;
        let counter = match created {
            true => &sh.counters.objects_new,
            false => &sh.counters.objects_existing,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(index) = sh.index.as_ref().filter(|_| st.size >= INDEX_MIN_SIZE) {
            let csize = bytes.len();
            index.record(plain, st.size, st.suffix, st.hash, csize);
        }
    }
    let piece = |offset| PieceDone {
        offset,
        size: st.size,
        suffix: st.suffix,
        hash: st.hash,
    };
    sh.piece_done(st.ticket, st.idx, piece(st.offset));
    for p in st.parked {
        sh.piece_done(p.ticket, p.idx, piece(p.offset));
    }
    Ok(())
}

/// After this many new objects in a row, objects are stored without asking the store first.
pub(super) const NEW_STREAK: u64 = 16;

/// Stores `st`'s object unless the store has it; returns whether it was stored now. While
/// objects keep turning out new (a fresh repository), asking first is a wasted lookup, and
/// `put_if_absent` notices an existing object anyway; once one turns out to exist (content
/// stored by an earlier run), asking first again saves writing what is there.
fn put_object(sh: &Shared, st: &Stored, bytes: &ObjectBytes) -> std::io::Result<bool> {
    let streak = &sh.new_streak;
    let created = match bytes {
        ObjectBytes::Mem(v) if streak.load(Ordering::Relaxed) >= NEW_STREAK => {
            sh.store.put_if_absent(&st.hash, st.suffix, v)?
        }
        _ if sh.store.contains(&st.hash, st.suffix)? => false,
        ObjectBytes::Mem(v) => sh.store.put(&st.hash, st.suffix, v).map(|()| true)?,
        ObjectBytes::File(f) => sh
            .store
            .put_file(&st.hash, st.suffix, &f.path)
            .map(|()| true)?,
    };
    match created {
        true => streak.fetch_add(1, Ordering::Relaxed),
        false => streak.swap(0, Ordering::Relaxed),
    };
    Ok(created)
}

/// Builds the file's `FileData` once its size is known and all pieces are stored.
pub(super) fn try_complete(f: &mut FileState) -> bool {
    let FileState::Open(progress) = f else {
        return false;
    };
    let Some((size, n)) = progress.total else {
        return false;
    };
    if progress.pieces.len() != n {
        return false;
    }
    let data = match progress.pieces.values().next() {
        Some(p) if n == 1 && p.suffix == Suffix::None => FileData::Whole(p.hash),
        _ => FileData::Chunked(
            progress
                .pieces
                .values()
                .map(|p| Chunk {
                    offset: p.offset,
                    size: p.size,
                    hash: p.hash,
                })
                .collect(),
        ),
    };
    *f = FileState::Done(size, data);
    true
}
