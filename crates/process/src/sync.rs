//! Locks that survive a panic elsewhere.
//!
//! A panic while a guard is held poisons a std lock, and `lock().unwrap()` would spread that one
//! panic to every later caller: the HTTP server, the agent loop, the reconciler. The helpers here
//! hand out the guard anyway. Use them for data whose every critical section leaves it
//! consistent (a replace, an insert, a read, no half-done multi-step update): then a panic in one
//! task costs nothing to the others.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, also after a panic poisoned it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, also after a panic poisoned it.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, also after a panic poisoned it.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics in another thread while holding the guard `hold` takes, so the lock is poisoned.
    fn poison<L: Sync>(lock: &L, hold: impl Fn(&L) + Send + Sync) {
        std::thread::scope(|s| {
            let joined = s
                .spawn(|| {
                    hold(lock);
                })
                .join();
            assert!(joined.is_err(), "the holder panicked");
        });
    }

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let m = Mutex::new(vec![1]);
        poison(&m, |m| {
            let mut g = m.lock().unwrap();
            g.push(2);
            panic!("panic while holding the lock");
        });
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), vec![1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let l = RwLock::new(String::from("before"));
        poison(&l, |l| {
            let _g = l.write().unwrap();
            panic!("panic while holding the write lock");
        });
        assert!(l.is_poisoned());
        *write(&l) = "after".into();
        assert_eq!(*read(&l), "after");
    }
}
