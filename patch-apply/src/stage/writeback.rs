//! Early writeback of large outputs: while a big file is being produced, a helper thread
//! flushes what has been written so far, so that the commit's fsync of the staged file finds
//! little left to write (a 1 GiB output otherwise waits for its whole writeback there).
//! `sync_file_range` would start the writeback without waiting, but needs `unsafe` code,
//! which the workspace forbids; `sync_data` on a second handle of the same file, off the
//! producing thread, overlaps the writeback with decoding just as well.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use crate::error::{Error, IoContext, Result};

/// Bytes written between two requests for a flush.
pub const FLUSH_EVERY: u64 = 32 << 20;

/// A file writer that asks a helper thread to flush the file every [`FLUSH_EVERY`] bytes.
/// A request made while the previous flush still runs is dropped (the next one covers it).
pub struct EarlyWriteback {
    file: File,
    path: PathBuf,
    since_flush: u64,
    flusher: Option<(SyncSender<()>, JoinHandle<std::io::Result<()>>)>,
}

impl EarlyWriteback {
    /// Wraps `file` (at `path`, for errors). The helper thread starts with the first request.
    pub fn new(file: File, path: &Path) -> Self {
        EarlyWriteback {
            file,
            path: path.to_path_buf(),
            since_flush: 0,
            flusher: None,
        }
    }

    fn request_flush(&mut self) -> std::io::Result<()> {
        if self.flusher.is_none() {
            let handle = self.file.try_clone()?;
            let (tx, rx) = sync_channel::<()>(1);
            let join = std::thread::spawn(move || {
                while rx.recv().is_ok() {
                    handle.sync_data()?;
                }
                Ok(())
            });
            self.flusher = Some((tx, join));
        }
        if let Some((tx, _)) = &self.flusher {
            // Full: a flush is pending and covers this request. Disconnected: the thread
            // stopped on an error, which `finish` reports.
            let _ = tx.try_send(());
        }
        Ok(())
    }

    /// Waits for the helper thread; an error of any flush is returned here (a failed
    /// writeback is reported once, so it must not be lost).
    pub fn finish(mut self) -> Result<()> {
        if let Some((tx, join)) = self.flusher.take() {
            drop(tx);
            match join.join() {
                Ok(r) => r.at(&self.path)?,
                Err(_) => {
                    return Err(Error::io(
                        &self.path,
                        std::io::Error::other("the writeback thread panicked"),
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_flush += n as u64;
        if self.since_flush >= FLUSH_EVERY {
            self.since_flush = 0;
            self.request_flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn writes_every_byte_through_several_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = EarlyWriteback::new(File::create(&path).unwrap(), &path);
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let n = (FLUSH_EVERY * 3 / chunk.len() as u64 + 1) as usize;
        for _ in 0..n {
            w.write_all(&chunk).unwrap();
        }
        assert!(w.flusher.is_some(), "the helper thread started");
        w.finish().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), n * chunk.len());
        assert!(back.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    }

    #[test]
    fn small_files_start_no_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = EarlyWriteback::new(File::create(&path).unwrap(), &path);
        w.write_all(b"small").unwrap();
        assert!(w.flusher.is_none());
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"small");
    }
}
