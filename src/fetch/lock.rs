//! An exclusive advisory lock on `<cache>/.locks/<name>.lock`, held while one process fetches or
//! verifies `<name>`; a second process waits for it. The lock file is never deleted (deleting it
//! would let a waiter and a newcomer lock two different files).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use super::download::Observer;
use crate::{Error, Result};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

/// Takes the lock at `path`, waiting for another holder to release it; tells `observer` when it
/// has to wait.
pub(crate) fn acquire(path: &Path, observer: &mut dyn Observer) -> Result<Lock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            observer.waiting_for_lock(path);
            file.lock().map_err(|e| Error::io(path, e))?;
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
    }
    Ok(Lock { _file: file })
}
