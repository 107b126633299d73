//! An image's layer streams for the flattener: each inflated and verified on a thread of its
//! own, the next one requested while the last blocks of the current one are parsed, with a
//! progress bar and a `layer` event per layer read.

use crate::output::{event_json, Counting, Output};
use anyhow::Result;
use ingest::decode::ReadAhead;
use ingest::image::{open_uncompressed_layer, ImageSource, ResolvedImage};
use ingest::pipeline::ObjectPipeline;
use ingest::MemoContext;
use serde_json::json;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Streams the image's layers (top first, so shadowed content is never compressed); layers
/// the memo knows enough about are replayed from it without downloading them.
pub(super) fn flatten(
    source: &Arc<dyn ImageSource>,
    image: &ResolvedImage,
    pipeline: &ObjectPipeline,
    memo: Option<&MemoContext<'_>>,
    out: Output,
) -> Result<catalog_writer::tree::Dir> {
    let image = Arc::new(image.clone());
    let keys = memo_keys(&image);
    // Layers the memo does not know will be read: each is opened as soon as the one above it
    // has been downloaded and inflated.
    let prefetch = (0..image.layers.len())
        .map(|i| !matches!((memo, keys.get(i)), (Some(m), Some(d)) if m.knows(d)))
        .collect();
    let opener = Arc::new(LayerOpener {
        source: source.clone(),
        image: image.clone(),
        prefetch,
        opened: std::sync::Mutex::new(std::collections::HashMap::new()),
        out,
    });
    let layers = (0..image.layers.len())
        .map(|i| {
            let opener = opener.clone();
            ingest::LayerInput {
                name: opener.name(i),
                diff_id: keys.get(i).cloned(),
                open: Box::new(move || opener.open(i)),
            }
        })
        .collect();
    Ok(ingest::flatten_layers_with(layers, pipeline, memo)?)
}

/// The layer memo's keys for an image's layers (their diff_ids), bottom first.
pub(super) fn memo_keys(image: &ResolvedImage) -> Vec<String> {
    image
        .config
        .diff_ids
        .iter()
        .map(|d| d.to_string())
        .collect()
}

/// Opens an image's layer streams, each inflated and verified on a thread of its own. The
/// layer below one being read is opened when that one's blob has been read to its end, so
/// that the request and the first blocks of the next blob overlap with the last blocks of
/// this one (a remote registry takes a round trip or more to start a blob).
struct LayerOpener {
    source: Arc<dyn ImageSource>,
    image: Arc<ResolvedImage>,
    /// Per layer: open it ahead of time (the memo does not know it).
    prefetch: Vec<bool>,
    /// Layers opened ahead of time, until the flattener asks for them.
    opened: std::sync::Mutex<std::collections::HashMap<usize, ingest::Result<ReadAhead>>>,
    out: Output,
}

impl LayerOpener {
    fn name(&self, i: usize) -> String {
        let digest = self.image.layers.get(i).map(|l| l.digest.to_string());
        format!(
            "image {} layer {}",
            self.image.reference,
            digest.unwrap_or_default()
        )
    }

    /// Layer `i` for the flattener: the stream opened ahead of time, or a new one (a second
    /// pass over a layer always opens it again).
    fn open(self: &Arc<Self>, i: usize) -> ingest::Result<Box<dyn Read + Send>> {
        let ahead = self.lock_opened().remove(&i);
        let stream = match ahead {
            Some(stream) => stream?,
            None => self.start(i)?,
        };
        let layer = self.image.layers[i].digest.to_string();
        Ok(Box::new(LayerProgress::new(
            Box::new(stream),
            &self.image.reference,
            layer,
            self.out,
        )))
    }

    fn lock_opened(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<usize, ingest::Result<ReadAhead>>>
    {
        self.opened.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests layer `i` and starts inflating it; at the end of its blob, opens layer `i - 1`
    /// ahead of time. The callback holds the opener weakly: a stream opened ahead and never
    /// asked for must not keep the opener (which holds that stream) alive.
    fn start(self: &Arc<Self>, i: usize) -> ingest::Result<ReadAhead> {
        let stream =
            open_uncompressed_layer(self.source.as_ref(), &self.image, i).map_err(|e| {
                // Most of these already name the image and the layer: say them once.
                let name = self.name(i);
                if e.to_string().contains(&name) {
                    ingest::Error::from(e)
                } else {
                    ingest::Error::Decode {
                        archive: name,
                        msg: e.to_string(),
                    }
                }
            })?;
        let size = self.image.layers[i].size;
        let below = i.checked_sub(1).filter(|&b| self.prefetch[b]);
        let me = Arc::downgrade(self);
        Ok(ingest::decode::read_ahead_then(
            stream,
            256 << 10,
            8,
            move || {
                // Counted once read whole (its digest checked): a blob that fails on the way
                // has not been fetched, whatever size the manifest gave it.
                BLOB_BYTES_FETCHED.fetch_add(size, Ordering::Relaxed);
                if let (Some(b), Some(me)) = (below, me.upgrade()) {
                    let stream = me.start(b);
                    me.lock_opened().insert(b, stream);
                }
            },
        ))
    }
}

/// Blob bytes of the layers read to their end in this process (a second pass counts twice:
/// it fetches twice).
pub(super) static BLOB_BYTES_FETCHED: AtomicU64 = AtomicU64::new(0);

/// Counts a layer's uncompressed bytes for the progress bar, and reports the layer (bytes,
/// seconds) when the flattener is done with it.
struct LayerProgress {
    inner: Box<dyn Read + Send>,
    bar: indicatif::ProgressBar,
    image: String,
    layer: String,
    bytes: u64,
    started: Instant,
    out: Output,
}

impl LayerProgress {
    fn new(inner: Box<dyn Read + Send>, image: &str, layer: String, out: Output) -> LayerProgress {
        let short = layer.get(..19).unwrap_or(&layer).to_string();
        LayerProgress {
            inner,
            bar: out.progress(format!("{image} {short}"), None, Counting::Bytes),
            image: image.to_string(),
            layer,
            bytes: 0,
            started: Instant::now(),
            out,
        }
    }
}

impl Read for LayerProgress {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

impl Drop for LayerProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64();
        if self.out.json {
            self.out.event(
                "",
                event_json(
                    "layer",
                    json!({"image": self.image, "layer": self.layer, "bytes": self.bytes, "seconds": secs}),
                ),
            );
        }
    }
}
