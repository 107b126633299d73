//! A reader under `tar::Archive` that refuses an archive's extension members (GNU long names
//! `L` and `K`, PAX `x` records) larger than any name or header needs, before the `tar` crate
//! reads them whole into memory: a long name of one repeated byte compresses about 1000:1, so
//! a layer of a few MB could otherwise make the process allocate gigabytes.
//!
//! It follows the archive's layout as the crate does (header blocks, a PAX `size` record,
//! GNU sparse extension blocks) and stops looking where the crate stops reading: at the
//! end-of-archive block, or at a header the crate refuses (its checksum or size is wrong).
//!
//! It also refuses GNU sparse members once they declare more than
//! [`MAX_SPARSE_SIZE`](crate::tarsource::MAX_SPARSE_SIZE) bytes in all in one archive: their
//! holes cost nothing in the archive but are read as zeros, chunked and hashed, so a 156-byte
//! gzip layer of many sparse members could otherwise ask for hundreds of GiB of work.
//!
//! Every `tar::Archive` over input is made on one (`guarded`).
//!
//! It also keeps, for the member the crate hands out, the PAX records as they really are
//! ([`MemberExt`]): the crate splits records at every newline, where a record is as long as
//! its length prefix says, so a value holding a newline byte (a binary `security.capability`,
//! a name with a newline) comes out of `tar::Entry::pax_extensions` as malformed fragments.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, PoisonError};

/// Longest GNU long name or link (`L`, `K`) read; names themselves stop at 4095 bytes.
pub(crate) const MAX_LONG_NAME: u64 = 64 << 10;
/// Longest PAX record block (`x`) read: room for many extended attributes.
pub(crate) const MAX_PAX_RECORDS: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// `tar::Archive::new` over `inner` with the guard between them.
pub(crate) fn guarded<R: Read>(inner: R) -> tar::Archive<ExtensionGuard<R>> {
    guarded_with(inner).0
}

/// [`guarded`], and where to find the extension records of each member it hands out.
pub(crate) fn guarded_with<R: Read>(inner: R) -> (tar::Archive<ExtensionGuard<R>>, MemberExtSlot) {
    let guard = ExtensionGuard::new(inner);
    let slot = guard.slot.clone();
    (tar::Archive::new(guard), slot)
}

/// What extension members said of the member the crate handed out last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemberExt {
    /// Its PAX `x` record block, as stored.
    pub records: Option<Vec<u8>>,
    /// Whether a GNU long name (`L`) or long link (`K`) came before it: the crate (as Go,
    /// which container runtimes use; GNU tar prefers the PAX record) takes those over a PAX
    /// `path` or `linkpath`.
    pub long_name: bool,
    pub long_link: bool,
    /// The name in the member's own header (its first 100 bytes, or ustar prefix and name):
    /// what an error names when the crate refuses the member before handing it out.
    pub header_name: Option<Vec<u8>>,
}

/// Shared with the guard inside the archive; read while the member is current (the guard
/// moves on only when the crate reads the next header, after the member's data).
#[derive(Clone, Debug, Default)]
pub(crate) struct MemberExtSlot(Arc<Mutex<MemberExt>>);

impl MemberExtSlot {
    /// The current member's extensions (taken: each member's are read once).
    pub(crate) fn take(&self) -> MemberExt {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, ext: MemberExt) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = ext;
    }
}

/// The error for a member the crate would not hand out: named by its header when the guard
/// saw one (a GNU sparse map that does not add up), else the layer's stream itself failed
/// (its compression, or a header the crate refused). `stream` names the whole: "layer",
/// "archive".
pub(crate) fn next_member_error(
    slot: &MemberExtSlot,
    stream: &str,
    e: &io::Error,
) -> (Vec<u8>, String) {
    match slot.take().header_name {
        Some(name) => (name, format!("reading the member: {e}")),
        None => (Vec::new(), format!("reading the {stream}: {e}")),
    }
}

/// One PAX record: key and value.
pub(crate) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX block in order, parsed as POSIX lays them out: `LEN KEY=VALUE\n`,
/// where `LEN` counts the whole record, so a value may hold any byte, newlines included.
pub(crate) fn pax_records(block: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let rest = &block[at..];
        let bad = || format!("malformed PAX record at byte {at} of the PAX header");
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let digits = &rest[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 7 {
            return Err(bad());
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let body = &rest[space + 1..len - 1];
        let eq = body.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        out.push((&body[..eq], &body[eq + 1..]));
        at += len;
    }
    Ok(out)
}

pub(crate) struct ExtensionGuard<R> {
    inner: R,
    /// Bytes passed through so far.
    pos: u64,
    /// Where the block looked at next starts (a header or a sparse extension block).
    next: u64,
    /// That block, as far as it has passed.
    block: Vec<u8>,
    state: State,
    /// The PAX records that apply to the next member (the crate takes its `size` from them).
    pax: Option<Vec<u8>>,
    /// GNU long name / long link members seen since the last member.
    long_name: bool,
    long_link: bool,
    /// The last member's extensions, for its reader.
    slot: MemberExtSlot,
    /// An end-of-archive (all-zero) block was read.
    ended: bool,
    /// Sizes declared by the GNU sparse members so far (holes included).
    sparse_bytes: u64,
}

enum State {
    Header,
    /// GNU sparse extension blocks follow the header; then `size` bytes of data.
    Sparse {
        size: u64,
    },
    /// A PAX `x` member's records are passing, up to `end`.
    Pax {
        end: u64,
        records: Vec<u8>,
    },
    /// Past the end of the archive, or at a header the crate will refuse.
    Done,
}

impl<R: Read> ExtensionGuard<R> {
    pub(crate) fn new(inner: R) -> ExtensionGuard<R> {
        ExtensionGuard {
            inner,
            pos: 0,
            next: 0,
            block: Vec::with_capacity(BLOCK as usize),
            state: State::Header,
            pax: None,
            long_name: false,
            long_link: false,
            slot: MemberExtSlot::default(),
            ended: false,
            sparse_bytes: 0,
        }
    }

    /// Whether the archive's end-of-archive block has passed: an archive without one was cut
    /// short, between two members (where the tar crate, as GNU tar, just stops).
    pub(crate) fn saw_end(&self) -> bool {
        self.ended
    }

    /// Follows the layout through `bytes`, which start at `self.pos`.
    fn follow(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.pos + bytes.len() as u64;
        loop {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Pax {
                    end: until,
                    records,
                } => {
                    let from = (self.next + BLOCK).max(self.pos);
                    let to = (*until).min(end);
                    if from < to {
                        records.extend_from_slice(
                            &bytes[(from - self.pos) as usize..(to - self.pos) as usize],
                        );
                    }
                    if to < *until {
                        return Ok(());
                    }
                    let until = *until;
                    self.pax = Some(std::mem::take(records));
                    self.next = round_up(until);
                    self.state = State::Header;
                }
                State::Header | State::Sparse { .. } => {
                    if self.next >= end {
                        return Ok(());
                    }
                    let from = (self.next + self.block.len() as u64).max(self.pos);
                    let want = BLOCK as usize - self.block.len();
                    let take = want.min((end - from) as usize);
                    let at = (from - self.pos) as usize;
                    self.block.extend_from_slice(&bytes[at..at + take]);
                    if self.block.len() < BLOCK as usize {
                        return Ok(());
                    }
                    let block = std::mem::take(&mut self.block);
                    self.block = Vec::with_capacity(BLOCK as usize);
                    match self.state {
                        State::Sparse { size } => self.sparse_block(&block, size),
                        _ => self.header(&block)?,
                    }
                }
            }
        }
    }

    /// A header block at `self.next`.
    fn header(&mut self, block: &[u8]) -> io::Result<()> {
        if block.iter().all(|b| *b == 0) {
            self.ended = true;
            self.state = State::Done;
            return Ok(());
        }
        if !checksum_holds(block) {
            self.state = State::Done;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(block);
        let Ok(stated) = header.entry_size() else {
            self.state = State::Done;
            return Ok(());
        };
        let kind = header.entry_type();
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let body = self.next + BLOCK;
        let limit = match kind {
            _ if !recognised => None,
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => Some(MAX_LONG_NAME),
            tar::EntryType::XHeader => Some(MAX_PAX_RECORDS),
            _ => None,
        };
        if let Some(limit) = limit {
            if stated > limit {
                let why = format!(
                    "{} member of {stated} bytes at byte {} (at most {limit}): not read",
                    describe(kind),
                    self.next
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, Refusal(why)));
            }
            match kind {
                tar::EntryType::GNULongName => self.long_name = true,
                tar::EntryType::GNULongLink => self.long_link = true,
                _ => {}
            }
            self.state = match kind {
                tar::EntryType::XHeader => State::Pax {
                    end: body + stated,
                    records: Vec::new(),
                },
                _ => State::Header,
            };
            if matches!(self.state, State::Header) {
                self.next = round_up(body + stated);
            }
            return Ok(());
        }
        // The member the extension members described: the crate takes its size from a PAX
        // `size` record, except for extension-typed members it hands out as they are.
        let records = self.pax.take();
        let is_extension = matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        );
        let size = match &records {
            Some(r) if !is_extension => pax_size(r).unwrap_or(stated),
            _ => stated,
        };
        let sparse = sparse_size(header, records.as_deref().filter(|_| !is_extension));
        self.slot.set(MemberExt {
            records: records.filter(|_| !is_extension),
            long_name: std::mem::take(&mut self.long_name) && !is_extension,
            long_link: std::mem::take(&mut self.long_link) && !is_extension,
            header_name: Some(header.path_bytes().into_owned()),
        });
        self.next = body;
        self.count_sparse(sparse)?;
        match header.as_gnu() {
            Some(gnu) if kind == tar::EntryType::GNUSparse && gnu.is_extended() => {
                self.state = State::Sparse { size }
            }
            // A size near 2^64 (base-256 or PAX) would overflow: the crate then fails the
            // member as truncated, and no header follows that the guard must see.
            _ => self.next = round_up(body.saturating_add(size)),
        }
        Ok(())
    }

    /// Adds the size a sparse member declares to the archive's, refusing it past the limit
    /// (its name is in the slot already, for the error).
    fn count_sparse(&mut self, declared: u64) -> io::Result<()> {
        let limit = crate::tarsource::MAX_SPARSE_SIZE;
        self.sparse_bytes = self.sparse_bytes.saturating_add(declared);
        if self.sparse_bytes <= limit {
            return Ok(());
        }
        let why = if declared == self.sparse_bytes {
            format!("sparse file of {declared} bytes (at most {limit}): not read")
        } else {
            format!(
                "sparse file of {declared} bytes, {} with the sparse files before it (at most \
                 {limit} in one archive): not read",
                self.sparse_bytes
            )
        };
        Err(io::Error::new(io::ErrorKind::InvalidData, Refusal(why)))
    }

    /// A GNU sparse extension block at `self.next`, of a member with `size` bytes of data.
    fn sparse_block(&mut self, block: &[u8], size: u64) {
        self.next += BLOCK;
        // `isextended`, as `GnuExtSparseHeader::is_extended` reads it.
        if block[504] != 1 {
            self.next = round_up(self.next.saturating_add(size));
            self.state = State::Header;
        }
    }
}

impl<R: Read> Read for ExtensionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// For archives the crate reads with `entries_with_seek`: it seeks only to skip a member's
/// data, never past the next header; a seek that does anything else ends the guarding.
impl<R: Read + Seek> Seek for ExtensionGuard<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(to)?;
        let skips_data = at >= self.pos && at <= self.next && self.block.is_empty();
        if !skips_data || matches!(self.state, State::Pax { .. }) {
            self.state = State::Done;
        }
        self.pos = at;
        Ok(at)
    }
}

/// The guard's refusal, told apart by its type from the tar crate's own errors (which some
/// callers reword).
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// Whether `e` is the guard refusing an extension member.
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refusal>())
}

/// The size a sparse member declares, holes included: a GNU `S` member's real size, or a PAX
/// one's `GNU.sparse.*` size; 0 for other members. An unreadable size counts 0 here and is
/// refused when the member is read.
fn sparse_size(header: &tar::Header, records: Option<&[u8]>) -> u64 {
    if header.entry_type() == tar::EntryType::GNUSparse {
        return header
            .as_gnu()
            .and_then(|g| g.real_size().ok())
            .unwrap_or(0);
    }
    let Some(records) = records.and_then(|r| pax_records(r).ok()) else {
        return 0;
    };
    match crate::paxsparse::PaxSparse::from_records(&records) {
        Ok(Some(sparse)) => sparse.size,
        _ => 0,
    }
}

fn round_up(at: u64) -> u64 {
    at.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// The header checksum as the crate checks it (the field itself counted as spaces).
fn checksum_holds(block: &[u8]) -> bool {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|b| *b as u32)
        .sum::<u32>()
        + 8 * 32;
    tar::Header::from_byte_slice(block)
        .cksum()
        .is_ok_and(|c| c == sum)
}

/// The PAX `size` record, as the crate reads it (the first `size`; none if a record before it
/// is malformed or its value is not a number).
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::GNULongName => "GNU long name",
        tar::EntryType::GNULongLink => "GNU long link",
        _ => "PAX header",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn pax_records_are_split_by_their_lengths() {
        let block = b"29 SCHILY.xattr.user.a=x\ny\nz\n12 path=abc\n";
        let records = pax_records(block).unwrap();
        assert_eq!(
            records,
            vec![
                (&b"SCHILY.xattr.user.a"[..], &b"x\ny\nz"[..]),
                (&b"path"[..], &b"abc"[..])
            ]
        );
        assert_eq!(pax_records(b"").unwrap(), vec![]);
        for bad in [
            &b"12 path=abc"[..],    // no newline at the end
            b"13 path=abc\n",       // longer than the block
            b"11 pathabc\n",        // no '='
            b"x path=abc\n",        // no length
            b"5 a\n",               // shorter than its own prefix
            b"99999999 path=abc\n", // absurd length
        ] {
            assert!(
                pax_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    type Members = Vec<(String, Vec<u8>)>;

    /// Every member of `tar` read through the guard, in small and odd-sized reads, and where
    /// the guard found the end of the archive.
    fn read_through(tar: &[u8], step: usize) -> io::Result<(Members, u64)> {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut archive = tar::Archive::new(ExtensionGuard::new(Trickle(tar, step)));
        let mut out = Vec::new();
        for e in archive.entries()? {
            let mut e = e?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            out.push((String::from_utf8_lossy(&e.path_bytes()).into_owned(), data));
        }
        let guard = archive.into_inner();
        assert!(matches!(guard.state, State::Done));
        Ok((out, guard.next))
    }

    /// GNU long names, PAX records (with a `size`), a sparse member with extension blocks
    /// and a plain member after them all: the guard keeps in step and lets it all through.
    #[test]
    fn long_names_pax_and_sparse_members_pass() {
        let mut b = tar::Builder::new(Vec::new());
        member(&mut b, &"n".repeat(300), b"long name");
        let mut pax = tar::Builder::new(Vec::new());
        pax.append_pax_extensions([("path", b"pax/named".as_slice()), ("size", b"3")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("short").unwrap();
        h.set_cksum();
        pax.append(&h, b"abc".as_slice()).unwrap();
        let pax = pax.into_inner().unwrap();
        // (Without the end-of-archive blocks `into_inner` adds.)
        b.get_mut().extend_from_slice(&pax[..pax.len() - 1024]);
        b.get_mut().extend_from_slice(&sparse_member());
        member(&mut b, "last", b"the end");
        let tar = b.into_inner().unwrap();
        for step in [1, 7, 512, 4096, 1 << 20] {
            let (got, end) = read_through(&tar, step).unwrap();
            assert_eq!(
                end,
                tar.len() as u64 - 1024,
                "in step up to the end-of-archive block"
            );
            let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, [&*"n".repeat(300), "pax/named", "sparse", "last"]);
            assert_eq!(got[1].1, b"abc");
            assert_eq!(got[3].1, b"the end");
        }
    }

    /// A GNU sparse member (`S`) whose map continues in two extension blocks: data 3 × 512
    /// bytes at offsets 0, 4096 and 8192 of an 8704-byte file.
    fn sparse_member() -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_path("sparse").unwrap();
        h.set_mode(0o644);
        h.set_size(3 * 512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].offset = octal(0);
        gnu.sparse[0].numbytes = octal(512);
        gnu.isextended[0] = 1;
        gnu.realsize = octal(8704);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        for (offset, last) in [(4096u64, false), (8192, true)] {
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.sparse[0].offset = octal(offset);
            ext.sparse[0].numbytes = octal(512);
            ext.isextended[0] = u8::from(!last);
            out.extend_from_slice(ext.as_bytes());
        }
        out.extend(std::iter::repeat_n(b'x', 3 * 512));
        out
    }

    fn octal(n: u64) -> [u8; 12] {
        let mut field = [0u8; 12];
        let text = format!("{n:011o}");
        field[..11].copy_from_slice(text.as_bytes());
        field
    }

    /// A member declaring 2^64 - 1 bytes (GNU base-256, or a PAX `size` record) fails as the
    /// crate fails it, without the guard's position arithmetic overflowing (a panic with
    /// overflow checks on; found by fuzzing).
    #[test]
    fn members_declaring_sizes_near_2_64_fail_without_overflow() {
        let mut gnu = tar::Header::new_gnu();
        gnu.set_path("a").unwrap();
        gnu.set_size(u64::MAX);
        gnu.set_cksum();
        let mut pax = tar::Builder::new(Vec::new());
        pax.append_pax_extensions([("size", &b"18446744073709551615"[..])])
            .unwrap();
        let mut plain = tar::Header::new_ustar();
        plain.set_path("a").unwrap();
        plain.set_size(1);
        plain.set_cksum();
        pax.append(&plain, &b"x"[..]).unwrap();
        for tar in [gnu.as_bytes().to_vec(), pax.into_inner().unwrap()] {
            let mut tar = tar;
            tar.extend([0u8; 1024]);
            assert!(read_through(&tar, 512).is_err());
        }
    }

    /// A GNU sparse member of `real` bytes: 512 bytes of data at offset 0, a hole after them.
    fn sparse_of(name: &str, real: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_path(name).unwrap();
        h.set_size(512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        // The crate wants the map to end where the file does: an empty chunk at its size.
        gnu.sparse[1].set_offset(real);
        gnu.sparse[1].set_length(0);
        gnu.set_real_size(real);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend([b'x'; 512]);
        out
    }

    /// Sparse members may declare 64 GiB in all, not each: the member that passes it is
    /// refused at its header, by name, however small it is itself (found by fuzzing: four
    /// members of 64 GiB each in a gzip layer of 156 bytes).
    #[test]
    fn sparse_members_may_declare_64_gib_in_all() {
        let quarter = crate::tarsource::MAX_SPARSE_SIZE / 4;
        let mut tar = Vec::new();
        for i in 0..4 {
            tar.extend(sparse_of(&format!("s{i}"), quarter));
        }
        tar.extend(sparse_of("last", 4096));
        tar.extend([0u8; 1024]);
        // Names only: moving to the next member skips the holes without reading them.
        let mut archive = tar::Archive::new(ExtensionGuard::new(&tar[..]));
        let mut names = Vec::new();
        let mut failure = None;
        for e in archive.entries().unwrap() {
            match e {
                Ok(e) => names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        assert_eq!(names, ["s0", "s1", "s2", "s3"], "{failure:?}");
        let err = failure.expect("the fifth member is refused");
        assert!(is_refusal(&err), "{err}");
        let want = format!(
            "sparse file of 4096 bytes, {} with the sparse files before it (at most {} in one \
             archive): not read",
            4 * quarter + 4096,
            4 * quarter
        );
        assert!(err.to_string().contains(&want), "{err}");

        // PAX sparse files (format 0.1 here) count too.
        let mut b = tar::Builder::new(Vec::new());
        for name in ["p0", "p1"] {
            let half = (2 * quarter).to_string();
            b.append_pax_extensions([
                ("GNU.sparse.size", half.as_bytes()),
                ("GNU.sparse.name", name.as_bytes()),
                ("GNU.sparse.map", b"0,1".as_slice()),
            ])
            .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_size(1);
            h.set_cksum();
            b.append_data(&mut h, format!("GNUSparseFile.1/{name}"), &b"x"[..])
                .unwrap();
        }
        b.append_pax_extensions([
            ("GNU.sparse.size", b"1".as_slice()),
            ("GNU.sparse.map", b"0,1"),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_cksum();
        b.append_data(&mut h, "GNUSparseFile.1/p2", &b"x"[..])
            .unwrap();
        let pax = b.into_inner().unwrap();
        let mut archive = tar::Archive::new(ExtensionGuard::new(&pax[..]));
        let got: Vec<_> = archive.entries().unwrap().collect();
        assert_eq!(got.len(), 3);
        assert!(got[0].is_ok() && got[1].is_ok());
        let err = got[2].as_ref().err().expect("the third is refused");
        assert!(err.to_string().contains("sparse file of 1 bytes"), "{err}");

        // Each archive counts its own.
        let mut one = sparse_of("big", 4 * quarter);
        one.extend([0u8; 1024]);
        let mut archive = tar::Archive::new(ExtensionGuard::new(&one[..]));
        assert_eq!(archive.entries().unwrap().filter(Result::is_ok).count(), 1);
    }

    /// A long name, a long link and PAX records each one byte over their limit are refused
    /// while their header passes, before their bytes are read.
    #[test]
    fn oversized_extension_members_are_refused_at_their_header() {
        for (kind, limit) in [
            (tar::EntryType::GNULongName, MAX_LONG_NAME),
            (tar::EntryType::GNULongLink, MAX_LONG_NAME),
            (tar::EntryType::XHeader, MAX_PAX_RECORDS),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_path("././@LongLink").unwrap();
            h.set_size(limit + 1);
            h.set_cksum();
            // Only the header: the guard must refuse before asking for the body.
            let err = read_through(h.as_bytes(), 512).unwrap_err();
            assert!(is_refusal(&err), "{err}");
            let err = err.to_string();
            assert!(
                err.contains(&format!(
                    "of {} bytes at byte 0 (at most {limit})",
                    limit + 1
                )),
                "{err}"
            );
        }
    }
}
