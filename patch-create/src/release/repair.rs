//! Repair files written as streams: a release file of any size is read and compressed in
//! bounded memory (docs/format.md §6.1 for the artifact).

use std::io::{BufWriter, Write};
use std::path::Path;

use formats::container::ArtifactKind;
use formats::hash::PinningWriter;
use formats::Pin;

use crate::error::{IoContext, Result};

/// Writes the repair file of the file at `src` (pinned `pin`) to `dest`, streaming: the file is
/// read in 1 MiB pieces (checked against `pin` on the way) and compressed like
/// [`crate::pack::repair_bytes`] into a temporary file beside `dest`, which is then renamed into place.
/// Returns the repair file's pin.
pub fn write_repair_file(src: &Path, pin: Pin, dest: &Path, level: i32) -> Result<Pin> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    let mut out = PinningWriter::new(BufWriter::new(tmp.as_file()));
    out.write_all(&formats::container::header(ArtifactKind::Repair))
        .at(dest)?;
    let mut out = crate::encode::compress_file_into(src, pin, level, out)?;
    let repair = out.pin();
    out.get_mut().flush().at(dest)?;
    drop(out);
    tmp.as_file().sync_all().at(dest)?;
    let tmp = tmp.into_temp_path();
    patch_apply::atomic::rename(&tmp, dest)?;
    // Renamed: nothing left to delete.
    let _ = tmp.keep();
    Ok(repair)
}
