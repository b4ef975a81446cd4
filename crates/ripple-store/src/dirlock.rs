//! The owner of an embedded data directory: one process at a time.
//!
//! Two processes writing one SQLite directory would hand out the same sequence numbers and
//! compact each other's logs away. A server (and a maintenance command that writes) therefore
//! holds an exclusive advisory lock on `DATA_DIR/ripple.lock` for as long as it runs; the file
//! names the holder's pid so that the one refused can say who has it. The operating system
//! drops the lock when the holder exits, however it exits (kill -9 included), so there is no
//! stale lock to clean up. Readers (`ripple rooms`, `ripple export`) need no lock: SQLite's WAL
//! lets them read beside the writer.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ripple_core::StoreError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "ripple.lock";

/// Held while this process owns a data directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (creating the directory when `create`), or says which
    /// process holds it.
    pub fn acquire(data_dir: &Path, create: bool) -> Result<Self, StoreError> {
        if create {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                StoreError::Unavailable(format!("creating {}: {e}", data_dir.display()))
            })?;
        }
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another ripple process (pid {holder})")
                };
                return Err(StoreError::Unavailable(format!(
                    "data directory {} is in use by {who}, which holds {}; stop it, or give \
                     this process its own --data-dir",
                    data_dir.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "locking {}: {e}",
                    path.display()
                )))
            }
        }
        // Ours now: record who we are (best effort: the lock, not the text, is what counts).
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = writeln!(file, "{}", std::process::id());
        let _ = file.sync_data();
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path(), true).expect("first");
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly like another process would.
        let err = DataDirLock::acquire(dir.path(), true).expect_err("second refused");
        let msg = err.to_string();
        assert!(msg.contains("in use by another ripple process"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DataDirLock::acquire(dir.path(), true).expect("free again once dropped");
    }
}
