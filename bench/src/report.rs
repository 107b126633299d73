//! The human table and the JSON document.

use crate::cases::CaseResult;
use serde_json::{json, Value};

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One line per case, then the floor and tool details and any errors.
pub fn table(results: &[CaseResult], cores: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<4} {:>7} {:>8} {:>7} {:>7} {:>8} {:>7} {:>9} {:>13} {:>6} {:<20} {}\n",
        "case",
        "wall s",
        "input MB",
        "MB/s",
        "files",
        "files/s",
        "RSS MiB",
        "stored MB",
        "floor s",
        "ratio",
        "target",
        "result"
    ));
    for r in results {
        let per_s = |x: f64| r.wall_s.filter(|w| *w > 0.0).map(|w| x / w);
        let result = match (r.pass, &r.error) {
            (_, Some(_)) => "ERROR".to_string(),
            (Some(true), _) => "PASS".to_string(),
            (Some(false), _) => format!("MISS({})", r.miss.join("+")),
            (None, _) => "-".to_string(),
        };
        let floor_col = match r.reference.as_str() {
            "floor" => opt(r.reference_s, 2),
            other => format!("{}({other})", opt(r.reference_s, 2)),
        };
        s.push_str(&format!(
            "{:<4} {:>7} {:>8.1} {:>7} {:>7} {:>8} {:>7} {:>9} {:>13} {:>6} {:<20} {}\n",
            r.case,
            opt(r.wall_s, 2),
            mb(r.input_bytes),
            opt(per_s(mb(r.input_bytes)), 1),
            r.files,
            opt(per_s(r.files as f64), 0),
            opt(r.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            opt(r.stored_bytes.map(mb), 1),
            floor_col,
            opt(r.ratio, 3),
            r.target.describe(),
            result
        ));
    }
    s.push('\n');
    for r in results {
        s.push_str(&format!("{}: {}\n", r.case, r.title));
        if let Some(f) = &r.floor {
            let store = f.store_s.map_or(String::new(), |st| {
                format!(
                    " + store {st:.2} s ({} files: scratch file + rename in 256 dirs, syncfs)",
                    f.pieces
                )
            });
            s.push_str(&format!(
                "   floor {:.2} s ({:.2} cpu s) = read {:.2} s ({} of {} {} + sha1, {:.1} MB) + zlib-6 {:.2} s ({} distinct contents, {:.1} MB -> {:.1} MB, {} pieces, {} threads){store}; flatten {:.2} s not counted\n",
                f.floor_s, f.cpu_s, f.read_s, if f.unit == "layers" { "inflate+untar" } else { "walk+read" },
                f.units_read, f.unit, mb(f.bytes_read), f.compress_s,
                f.distinct_contents, mb(f.distinct_bytes), mb(f.compressed_bytes), f.pieces,
                f.threads, f.flatten_s
            ));
        }
        if let Some(run) = &r.run {
            s.push_str(&format!(
                "   tool  {:.2} s wall, cpu {:.2} s user + {:.2} s sys ({:.2} of {cores} cores), peak RSS {:.1} MiB\n",
                run.wall_s, run.user_s, run.sys_s,
                (run.user_s + run.sys_s) / run.wall_s.max(1e-9),
                run.peak_rss_kib as f64 / 1024.0
            ));
            if let Some(m) = run.machine {
                s.push_str(&format!(
                    "   machine meanwhile: {:.2} core-s busy beyond the tool (registry, kernel threads), {:.2} core-s idle\n",
                    (m.busy_s - run.user_s - run.sys_s).max(0.0),
                    m.idle_s
                ));
            }
        }
        if let Some(t) = &r.tool {
            s.push_str(&format!(
                "   tool reported: files {} bytes_in {} bytes_compressed {} objects_new {} objects_existing {} seconds {}\n",
                t["files"], t["bytes_in"], t["bytes_compressed"], t["objects_new"],
                t["objects_existing"], t["seconds"]
            ));
        }
        s.push_str(&format!(
            "   cpu ratio tool/floor {}; load average {} before, {} after\n",
            opt(r.cpu_ratio, 3),
            opt(r.load_before, 2),
            opt(r.load_after, 2)
        ));
        for w in &r.warnings {
            s.push_str(&format!("   warning: {w}\n"));
        }
        if let Some(e) = &r.error {
            s.push_str(&format!("   error: {e}\n"));
        }
    }
    s
}

/// The whole run as one JSON document.
pub fn json_doc(results: &[CaseResult], cores: usize, tool: &str) -> Value {
    json!({
        "machine": { "cores": cores },
        "tool": tool,
        "cases": results,
    })
}
