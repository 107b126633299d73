//! `convert` and `sync`: container images into the DUCC layout.

use crate::args::{ConvertArgs, Global, SyncArgs};
use crate::output::Output;
use anyhow::{bail, Result};
use std::path::Path;

pub fn convert(_home: &Path, _g: &Global, _a: &ConvertArgs, _out: Output) -> Result<i32> {
    bail!("convert: not wired yet")
}

pub fn sync(_home: &Path, _g: &Global, _a: &SyncArgs, _out: Output) -> Result<i32> {
    bail!("sync: not wired yet")
}
