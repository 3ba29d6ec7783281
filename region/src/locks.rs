//! Locking that carries on after a panic: one place for the region's "ignore poisoning" policy.
//!
//! A std lock is poisoned when a holder panics. The region's readers (API handlers, sessions, the worker)
//! and its small caches hold data that stays consistent across such a panic — a reader only reads, and a
//! cache entry is written whole — and a region that stops answering because one request panicked would be
//! worse. So they take the guard anyway. The state machine's writer (`raft::store`) does not use these: it
//! treats a poisoned state as a storage error, because a panic in the middle of an apply may have left it
//! half-changed.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A shared guard on `l`, even if a previous holder panicked.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// An exclusive guard on `l`, even if a previous holder panicked.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The guard of `m`, even if a previous holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
