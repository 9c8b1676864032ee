//! Locks that stay usable after a panic.
//!
//! Poisoning protects a reader from state that a panicking holder left half changed. The code
//! that runs under Tally's locks does no I/O and calls nothing that can fail, so short of a bug
//! in it, it cannot panic; and the pending map's shards, the one place where requests change
//! shared state, change by single assignments. A poisoned lock therefore means a bug that was
//! already reported where it panicked, and making every later request, flush or journal write
//! panic as well would only turn it into a stopped node: the lock is taken as usual.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locks `m`, whether or not an earlier holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` with `guard`, like [`Condvar::wait`], whether or not another holder of
/// the lock panicked meanwhile.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}
