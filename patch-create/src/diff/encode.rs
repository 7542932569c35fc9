//! Choosing the smallest encoding of each changed file (docs/format.md §6.3, docs/encodings.md):
//! a split diff (bsdiff-style matches with the control, diff and extra streams compressed
//! separately), the new file compressed with the old one as a zstd reference prefix, or the whole
//! new file compressed. The plain bidiff stream is still produced on request (`Chosen::Bidiff`)
//! and decoded by every client, but the creator prefers the split diff, which is smaller.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use formats::exe_filter::ExeFilter;
use formats::exe_project::{self, EqMap, Projection, Undo};
use formats::Pin;

use crate::diff::compress::zerr;
pub use crate::diff::compress::{
    cap_tables, compress, compress_window, window_log_for, MAX_MEMBER_WINDOW_LOG,
};
pub use crate::diff::streams::{put_varint, split_streams, SplitStreams};
use crate::error::{Error, IoContext, Result};
use crate::pack::Member;
use crate::window::{
    auto_budget, single_window_cost, split_diff_windowed, FileAt, MemoryGate, ReadAt, WindowPlan,
};

/// Largest `old + new` size for which the zstd reference-prefix encoding is tried: the client
/// must hold the whole old file in memory to decode it.
pub const ZSTD_REF_MAX: u64 = 24 << 20;

/// New files up to this size also try the costly candidates (zstd-ref, whole file at the patch
/// level) whatever the diff gives; larger ones only when the diff is poor.
pub const SMALL_FILE: usize = 2 << 20;

/// Default [`EncodeOptions::spool_above`]: 64 MiB.
pub const SPOOL_ABOVE: u64 = 64 << 20;

/// Settings of the encoders.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// zstd level for patch members.
    pub level: i32,
    /// Also try zstd with the old file as reference prefix.
    pub try_zstd_ref: bool,
    /// Threads used inside one diff (suffix sort partitions and scan chunks); 0 = all cores.
    pub threads: usize,
    /// Bytes the diffs of one release may hold at once (docs/encodings.md, "Bounded memory"):
    /// a pair whose single-window diff would need more is diffed in windows sized from it.
    /// `None`: [`auto_budget`] of the pair's larger file.
    pub memory_budget: Option<u64>,
    /// Diff every file in windows cut this way, whatever its size (tests and tools).
    pub force_windows: Option<WindowPlan>,
    /// `full` members of files larger than this are written to temporary files instead of
    /// being held in memory until the patch is written.
    pub spool_above: u64,
    /// Also try the `exe-split-diff` candidate on pairs of executables ([`crate::exe`]).
    pub try_exe: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            level: 19,
            try_zstd_ref: true,
            threads: 0,
            memory_budget: None,
            force_windows: None,
            spool_above: SPOOL_ABOVE,
            try_exe: true,
        }
    }
}

impl EncodeOptions {
    /// How a pair of `old_len` → `new_len` bytes is diffed: `None` for one window (the whole
    /// files in memory, the smallest patches), or the windows of the bounded mode when the
    /// single window would exceed the memory budget.
    pub fn window_plan(&self, old_len: u64, new_len: u64) -> Option<WindowPlan> {
        if let Some(p) = self.force_windows {
            return Some(p);
        }
        let budget = self.budget_for(old_len, new_len);
        if single_window_cost(old_len, new_len) <= budget {
            None
        } else {
            Some(WindowPlan::for_budget(budget, self.threads()))
        }
    }

    /// The memory budget of diffing a pair of `old_len` → `new_len` bytes.
    pub fn budget_for(&self, old_len: u64, new_len: u64) -> u64 {
        self.memory_budget
            .unwrap_or_else(|| auto_budget(old_len.max(new_len)))
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// How a changed file was encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// zstd(bidiff stream).
    Bidiff,
    /// Split diff: control, diff and extra streams each zstd-compressed (docs/encodings.md).
    SplitDiff,
    /// Split diff of both files after the branch filter (docs/format.md §6.2.5).
    ExeSplitDiff(ExeFilter),
    /// Equivalence map, then the split diff against the projected old file (§6.2.6).
    ExeProjectDiff(Projection),
    /// zstd with the old file as reference prefix, needing this window log.
    ZstdRef {
        /// Window log the decoder must allow.
        window_log: u32,
    },
    /// zstd of the new file.
    Full,
}

/// An encoded member.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Which encoding.
    pub chosen: Chosen,
    /// The member's bytes.
    pub bytes: Vec<u8>,
}

/// zstd of `new` with `old` as reference prefix.
pub fn compress_with_ref(old: &[u8], new: &[u8], level: i32) -> Result<(Vec<u8>, u32)> {
    let wl = window_log_for(old.len() as u64 + new.len() as u64);
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old).map_err(zerr)?;
    enc.set_pledged_src_size(Some(new.len() as u64))
        .map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    enc.window_log(wl).map_err(zerr)?;
    if old.len() + new.len() > 8 << 20 {
        enc.long_distance_matching(true).map_err(zerr)?;
    }
    enc.write_all(new).map_err(zerr)?;
    Ok((enc.finish().map_err(zerr)?, wl))
}

/// The raw bidiff stream from `old` to `new`.
pub fn bidiff_raw(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    bidiff::simple_diff(old, new, &mut raw).map_err(|e| Error::io("<bidiff>", e))?;
    Ok(raw)
}

pub use crate::split_pack::pack_split;

/// The split-diff member from `old` to `new`.
pub fn split_diff(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let s = split_streams(old, new)?;
    pack_split(&s, opts.level)
}

/// zstd level of the zstd-ref candidate at patch levels up to 19. Where the old file is a
/// good reference, matches are long and a middle level finds nearly all of them: over the 37
/// small changed files of the numpy and sympy pairs, the sum of each file's smaller candidate
/// (split diff or zstd-ref) is 8,032 B at level 9 against 7,843 B at level 19, for 1/14 of the
/// time (`examples/ref_levels.rs`). Patch levels above 19 ask for the strongest setting and
/// use their own level.
pub const REF_LEVEL: i32 = 9;

/// New files up to this size always try the whole-file candidate (it costs next to nothing).
const TINY_FILE: usize = 4 << 10;

/// Encodes `new` against `old`, returning the smallest candidate: the split diff, then
/// [`whole_candidates`].
pub fn encode_change(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Encoded> {
    if old.is_empty() || new.is_empty() {
        return Ok(Encoded {
            chosen: Chosen::Full,
            bytes: compress(new, opts.level)?,
        });
    }
    let split = split_candidate(old, new, opts, None)?;
    whole_candidates(old, new, opts, split)
}

/// The split-diff candidate of a pair of non-empty files, keeping in `eqs` the split diff's
/// matches of at least [`MIN_EQ`] bytes as `(old start, new start, length)` equivalences.
fn split_candidate(
    old: &[u8],
    new: &[u8],
    opts: &EncodeOptions,
    eqs: Option<&mut Vec<(u64, u64, u64)>>,
) -> Result<Encoded> {
    let bytes = match eqs {
        None => split_diff(old, new, opts)?,
        Some(eqs) => {
            let s =
                crate::diff::streams::split_streams_with(old, new, |m| keep_equivalence(eqs, m))?;
            pack_split(&s, opts.level)?
        }
    };
    Ok(Encoded {
        chosen: Chosen::SplitDiff,
        bytes,
    })
}

/// The smallest of `best` and the candidates made of the new file as a whole: zstd with the
/// old file as reference prefix and the new file compressed alone. Each costs a compression
/// of the whole new file, so each is tried only where it can win:
/// - zstd-ref for pairs of at most [`ZSTD_REF_MAX`] bytes, when the new file is small or
///   `best` is poor (over 1/16 of the new file);
/// - the whole file for tiny files, and otherwise when `best` is small or poor and more than a
///   third of a fast (level 1) compression of the file: level 19 is rarely under a third of
///   level 1, and on a 34 MB executable it costs 39 s against 0.3 s for level 1 (uv 0.5.2:
///   9,789,895 B at level 19, 14,223,202 B at level 1, against a 4.27 MB diff).
fn whole_candidates(
    old: &[u8],
    new: &[u8],
    opts: &EncodeOptions,
    mut best: Encoded,
) -> Result<Encoded> {
    let small = new.len() <= SMALL_FILE;
    let poor = best.bytes.len() > new.len() / 16;
    if opts.try_zstd_ref && (old.len() + new.len()) as u64 <= ZSTD_REF_MAX && (small || poor) {
        let level = if opts.level > 19 {
            opts.level
        } else {
            opts.level.min(REF_LEVEL)
        };
        let (zr, window_log) = compress_with_ref(old, new, level)?;
        if zr.len() < best.bytes.len() {
            best = Encoded {
                chosen: Chosen::ZstdRef { window_log },
                bytes: zr,
            };
        }
    }
    let full_may_win = new.len() <= TINY_FILE
        || ((small || poor) && best.bytes.len() * 3 > compress(new, 1)?.len());
    if full_may_win {
        let full = compress(new, opts.level)?;
        if full.len() < best.bytes.len() {
            best = Encoded {
                chosen: Chosen::Full,
                bytes: full,
            };
        }
    }
    Ok(best)
}

/// Shortest match of the plain split diff kept as an equivalence of the `exe-project-diff`
/// candidate: shorter ones cost more map bytes than they save. Session 17 chose 128 (on uv
/// 0.5.1 → 0.5.2, 32-byte equivalences gave 0.994 × the plain split diff, 128-byte ones
/// 0.943, before relocations were projected). Since touching entries with one shift are
/// merged (session 18), 64 is better: uv's member 3,453,079 B against 3,482,227 at 128,
/// esbuild's 134,719 against 134,715 (`exe_probe`, bench/RESULTS.md).
pub const MIN_EQ: usize = 64;

/// Adds the add region of match `m` to `eqs` as an `(old start, new start, length)`
/// equivalence when it is at least [`MIN_EQ`] bytes long.
fn keep_equivalence(eqs: &mut Vec<(u64, u64, u64)>, m: &bidiff::Match) {
    if m.add_length >= MIN_EQ {
        eqs.push((
            m.add_old_start as u64,
            m.add_new_start as u64,
            m.add_length as u64,
        ));
    }
}

/// The `exe-project-diff` member of `old` → `new` with projection `p`, from the equivalences
/// `eqs` of their plain diff, plus the `.eh_frame` records paired by
/// [`crate::exe::frame_equivalences`] under that map. `old` is projected in place (no copy of
/// it is made; the returned [`Undo`] puts it back), recording which map entries changed a
/// byte, and the map is cut to those: projecting through the cut map gives the same bytes
/// (a property of `formats::exe_project`). The member is the zstd-compressed map behind its
/// varint length, then the split diff of the projected old file to `new`.
pub fn project_member(
    old: &mut [u8],
    new: &[u8],
    p: &Projection,
    eqs: Vec<(u64, u64, u64)>,
    opts: &EncodeOptions,
) -> Result<(Vec<u8>, Undo)> {
    let diffed = EqMap::from_equivalences(eqs);
    let mut eqs: Vec<(u64, u64, u64)> = diffed
        .entries()
        .iter()
        .map(|&(o, l, shift)| (o, o.wrapping_add_signed(shift), l))
        .collect();
    eqs.extend(crate::exe::frame_equivalences(old, new, p, &diffed));
    drop(diffed);
    let map = EqMap::from_equivalences(eqs);
    let mut used = vec![false; map.entries().len()];
    let mut undo = Undo::default();
    exe_project::project_undoable(old, p, &map, Some(&mut used), Some(&mut undo));
    let map = map.retain(&used);
    let sd = split_diff(old, new, opts);
    let sd = match sd {
        Ok(sd) => sd,
        Err(e) => {
            undo.restore(old);
            return Err(e);
        }
    };
    let map_bytes = compress(&map.encode(), opts.level)?;
    let mut member = Vec::with_capacity(10 + map_bytes.len() + sd.len());
    put_varint(&mut member, map_bytes.len() as u64);
    member.extend_from_slice(&map_bytes);
    member.extend_from_slice(&sd);
    Ok((member, undo))
}

/// [`encode_change`], with, when both files are executables of one instruction set (and
/// `opts.try_exe`), the `exe-project-diff` candidate for x86-64 ELF files whose old file is at
/// most [`crate::exe::PROJECT_MAX_OLD`] bytes (one more diff; the old file is projected in
/// place, and put back), and, unless that one beat the split diff, `exe-split-diff`, whose
/// buffers are filtered in place (they are consumed): each candidate costs one more diff but
/// no copy of a file. The whole-file candidates ([`whole_candidates`]) are weighed against
/// the best diff, so a projection that wins spares them.
pub fn encode_change_owned(
    mut old: Vec<u8>,
    mut new: Vec<u8>,
    opts: &EncodeOptions,
) -> Result<Encoded> {
    if !opts.try_exe || old.is_empty() || new.is_empty() {
        return encode_change(&old, &new, opts);
    }
    let projection = crate::exe::projection_for(&old, &new);
    let mut eqs = Vec::new();
    let best = split_candidate(&old, &new, opts, projection.as_ref().map(|_| &mut eqs))?;
    if let Some(p) = projection {
        // The branch filter is tried only when the projection did not win: on the x86-64 ELF
        // pairs measured (esbuild, uv) it wins by far, and the filter would cost one more
        // whole diff.
        let (member, undo) = project_member(&mut old, &new, &p, eqs, opts)?;
        undo.restore(&mut old);
        if member.len() < best.bytes.len() {
            let projected = Encoded {
                chosen: Chosen::ExeProjectDiff(p),
                bytes: member,
            };
            return whole_candidates(&old, &new, opts, projected);
        }
    }
    // Before the branch filter, which changes both buffers.
    let best = whole_candidates(&old, &new, opts, best)?;
    let Some(filter) = crate::exe::filter_for(&old, &new) else {
        return Ok(best);
    };
    crate::exe::encode_pair(&filter, &mut old, &mut new);
    let sd = split_diff(&old, &new, opts)?;
    Ok(if sd.len() < best.bytes.len() {
        Encoded {
            chosen: Chosen::ExeSplitDiff(filter),
            bytes: sd,
        }
    } else {
        best
    })
}

/// Encodes `new` against `old` as `chosen` (tests and tools).
pub fn encode_as(old: &[u8], new: &[u8], chosen: &Chosen, opts: &EncodeOptions) -> Result<Vec<u8>> {
    match chosen {
        Chosen::ExeSplitDiff(filter) => {
            let (mut old, mut new) = (old.to_vec(), new.to_vec());
            crate::exe::encode_pair(filter, &mut old, &mut new);
            split_diff(&old, &new, opts)
        }
        Chosen::ExeProjectDiff(p) => {
            let mut eqs = Vec::new();
            crate::diff::sa_scan::diff(old, new, |m| {
                keep_equivalence(&mut eqs, &m);
                Ok(())
            })?;
            Ok(project_member(&mut old.to_vec(), new, p, eqs, opts)?.0)
        }
        Chosen::Bidiff => compress(&bidiff_raw(old, new)?, opts.level),
        Chosen::SplitDiff => split_diff(old, new, opts),
        Chosen::ZstdRef { .. } => Ok(compress_with_ref(old, new, opts.level)?.0),
        Chosen::Full => compress(new, opts.level),
    }
}

/// zstd (`level`, window at most [`MAX_MEMBER_WINDOW_LOG`]) of the file at `path`, read in
/// 1 MiB pieces and checked against `pin` on the way.
pub fn compress_file(path: &Path, pin: Pin, level: i32) -> Result<Vec<u8>> {
    compress_file_into(path, pin, level, Vec::new())
}

/// A file whose first MiB zstd level 1 cannot shrink by 3 % (already compressed or encrypted)
/// is compressed at level 1: level 19 gains nothing on such bytes and costs about a minute per
/// 128 MiB here.
pub fn level_for_sample(sample: &[u8], level: i32) -> i32 {
    if level <= 1 || sample.len() < 64 << 10 {
        return level;
    }
    match zstd::bulk::compress(sample, 1) {
        Ok(c) if c.len() as u64 * 100 >= sample.len() as u64 * 97 => 1,
        _ => level,
    }
}

/// [`compress_file`], writing the compressed bytes to `out` as they come. The level drops to 1
/// for a file that does not compress ([`level_for_sample`]).
pub fn compress_file_into<W: Write>(path: &Path, pin: Pin, level: i32, out: W) -> Result<W> {
    let f = File::open(path).at(path)?;
    let mut r = f.take(pin.size.saturating_add(1));
    let mut buf = vec![0u8; 1 << 20];
    let first = formats::hash::read_full(&mut r, &mut buf).at(path)?;
    let level = level_for_sample(&buf[..first], level);
    let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(zerr)?;
    enc.set_pledged_src_size(Some(pin.size)).map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    enc.include_contentsize(true).map_err(zerr)?;
    let window_log = window_log_for(pin.size).min(MAX_MEMBER_WINDOW_LOG);
    if pin.size > 8 << 20 {
        enc.long_distance_matching(true).map_err(zerr)?;
        enc.window_log(window_log).map_err(zerr)?;
    }
    cap_tables(&mut enc, level, window_log)?;
    let mut check = formats::hash::StreamCheck::new(path.display().to_string(), &pin.into());
    check.update(&buf[..first])?;
    enc.write_all(&buf[..first]).map_err(zerr)?;
    loop {
        let n = r.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n])?;
        enc.write_all(&buf[..n]).map_err(zerr)?;
    }
    check.finish()?;
    enc.finish().map_err(zerr)
}

/// An encoded member of a file pair ([`encode_files`]): large members are spooled to disk.
#[derive(Debug)]
pub struct EncodedMember {
    /// Which encoding.
    pub chosen: Chosen,
    /// The member.
    pub member: Member,
}

/// The `full` member of the file at `path` (pinned `pin`) at `opts.level`: in memory, or for
/// files over `opts.spool_above` written to a temporary file as it is compressed.
pub fn compress_file_member(path: &Path, pin: Pin, opts: &EncodeOptions) -> Result<Member> {
    if pin.size <= opts.spool_above {
        return Ok(Member::Bytes(compress_file(path, pin, opts.level)?));
    }
    let tmp = tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let f = compress_file_into(path, pin, opts.level, BufWriter::new(tmp.as_file()))?;
    f.into_inner()
        .map_err(|e| Error::io(tmp.path(), e.into_error()))?;
    let len = tmp.as_file().metadata().at(tmp.path())?.len();
    Ok(Member::Spooled {
        file: tmp.into_temp_path(),
        len,
    })
}

/// Encodes the file `new` (pinned `new_pin`) against the file `old` (pinned `old_pin`),
/// returning the smallest candidate, within the memory budget of `opts`: pairs whose
/// single-window diff fits are read whole and go through [`encode_change_owned`] (executables
/// also try `exe-split-diff`); larger ones are
/// diffed in windows read from disk ([`split_diff_windowed`]) and fall back to the whole new
/// file, compressed as it is read, when the diff is poor. Both files are checked against their
/// pins (the windowed mode hashes them with a bounded buffer before diffing). Diffs of one
/// process share the budget through [`MemoryGate::global`]. A windowed diff of a file that has
/// nothing in common with the old one gives up early ([`split_diff_windowed`]) instead of
/// holding a member the size of the file; the `full` member is then spooled to disk
/// ([`compress_file_member`]).
pub fn encode_files(
    old: &Path,
    old_pin: Pin,
    new: &Path,
    new_pin: Pin,
    opts: &EncodeOptions,
) -> Result<EncodedMember> {
    let gate = MemoryGate::global();
    let budget = opts.budget_for(old_pin.size, new_pin.size);
    match opts.window_plan(old_pin.size, new_pin.size) {
        None => {
            let _r = gate.reserve(single_window_cost(old_pin.size, new_pin.size), budget);
            let read = |p: &Path, pin: Pin| -> Result<Vec<u8>> {
                let bytes = std::fs::read(p).at(p)?;
                pin.check(&p.display().to_string(), &bytes)?;
                Ok(bytes)
            };
            let (old_bytes, new_bytes) = rayon::join(|| read(old, old_pin), || read(new, new_pin));
            let e = encode_change_owned(old_bytes?, new_bytes?, opts)?;
            Ok(EncodedMember {
                chosen: e.chosen,
                member: Member::Bytes(e.bytes),
            })
        }
        Some(plan) => {
            let _r = gate.reserve(plan.peak(), budget);
            for (p, pin) in [(old, old_pin), (new, new_pin)] {
                let actual = formats::hash::pin_file(p)?;
                if actual != pin {
                    return Err(Error::Format(formats::Error::HashMismatch {
                        what: p.display().to_string(),
                        algorithm: "blake3",
                        expected: pin.blake3.to_hex(),
                        actual: actual.blake3.to_hex(),
                    }));
                }
            }
            let old_at = FileAt::open(old)?;
            let new_at = FileAt::open(new)?;
            if old_at.len() != old_pin.size || new_at.len() != new_pin.size {
                return Err(Error::io(
                    new,
                    std::io::Error::other("file changed size while being diffed"),
                ));
            }
            let strong = (opts.level.max(19) + 3).min(22);
            let poor = new_pin.size / 16;
            let sd = split_diff_windowed(&old_at, &new_at, &plan, strong, true)?;
            let split = |sd| EncodedMember {
                chosen: Chosen::SplitDiff,
                member: Member::Bytes(sd),
            };
            let sd = match sd {
                Some(sd) if sd.len() as u64 <= poor => return Ok(split(sd)),
                sd => sd,
            };
            let full = compress_file_member(new, new_pin, opts)?;
            Ok(match sd {
                Some(sd) if (sd.len() as u64) < full.len() => split(sd),
                _ => EncodedMember {
                    chosen: Chosen::Full,
                    member: full,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` random bytes out of 16 values: about half their size compressed, at any level.
    fn nibbles(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"0123456789abcdef"[(x >> 60) as usize]
            })
            .collect()
    }

    fn split_of(len: usize) -> Encoded {
        Encoded {
            chosen: Chosen::SplitDiff,
            bytes: vec![0; len],
        }
    }

    #[test]
    fn the_whole_file_is_weighed_only_where_a_level_1_compression_says_it_can_win() {
        let new = nibbles(3 << 20);
        assert!(new.len() > SMALL_FILE);
        let opts = EncodeOptions {
            try_zstd_ref: false,
            ..EncodeOptions::default()
        };
        let fast = compress(&new, 1).expect("level 1").len();
        let whole = compress(&new, opts.level).expect("level 19").len();
        // A poor diff larger than the whole file: the whole file is weighed, and wins.
        let got = whole_candidates(b"old", &new, &opts, split_of(whole + 1)).expect("encode");
        assert_eq!(got.chosen, Chosen::Full);
        assert_eq!(got.bytes.len(), whole);
        // A poor diff (over 1/16 of the file) under a third of level 1 stays: level 19 would
        // need to be under a third of level 1 to beat it.
        let poor_but_small = fast / 3 - 1;
        assert!(
            poor_but_small > new.len() / 16,
            "{poor_but_small} {}",
            new.len()
        );
        let got = whole_candidates(b"old", &new, &opts, split_of(poor_but_small)).expect("encode");
        assert_eq!(got.chosen, Chosen::SplitDiff);
        // A good diff of a large file: nothing else is tried.
        let got = whole_candidates(b"old", &new, &opts, split_of(new.len() / 20)).expect("encode");
        assert_eq!(got.chosen, Chosen::SplitDiff);
    }
}
