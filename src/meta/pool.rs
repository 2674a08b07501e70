//! Buffers that outlive a call: the meta-gradient engine allocates a few
//! megabytes per task (the RLN's activations over every row, θ snapshots,
//! per-step workspaces), and when every call takes them fresh from the
//! system allocator, much of the time goes to page faults and the kernel's
//! zeroing of new pages (14% and 10% of the `sine` benchmark in a profile).
//! A `Buf` takes its storage from a process-wide pool per scalar type and
//! gives it back when dropped, so from the second call on, the engine reuses
//! the memory of the first. The pool keeps at most [`MAX_BUFFERS`] buffers;
//! what it holds between calls is what the largest call used, never more
//! (the peak is unchanged). [`release`] empties it.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::Real;

/// Buffers the pool keeps (of each scalar type); beyond that the smallest go.
pub const MAX_BUFFERS: usize = 512;

/// The pool of one scalar type (see [`Real::pool`]).
pub type Pool<T> = Mutex<Vec<Vec<T>>>;

/// A vector whose storage returns to the pool when dropped.
pub(crate) struct Buf<T: Real> {
    v: Vec<T>,
}

impl<T: Real> Buf<T> {
    /// Storage for `n` elements: a pooled buffer of exactly that capacity
    /// (the engine asks for the same sizes call after call), else a new one.
    fn take(n: usize) -> Vec<T> {
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        match pool.iter().rposition(|v| v.capacity() == n) {
            Some(i) => pool.swap_remove(i),
            None => Vec::with_capacity(n),
        }
    }

    /// `n` zeros.
    pub(crate) fn zeros(n: usize) -> Self {
        let mut v = Self::take(n);
        v.clear();
        v.resize(n, T::ZERO);
        Buf { v }
    }

    /// `n` elements whose values are unspecified (a pooled buffer's old
    /// contents, or zeros): for buffers every element of which is written
    /// before it is read, so the zeroing would be wasted.
    pub(crate) fn scratch(n: usize) -> Self {
        let mut v = Self::take(n);
        if v.len() != n {
            v.clear();
            v.resize(n, T::ZERO);
        }
        Buf { v }
    }

    /// A copy of `s`.
    pub(crate) fn copy_of(s: &[T]) -> Self {
        let mut v = Self::take(s.len());
        v.clear();
        v.extend_from_slice(s);
        Buf { v }
    }
}

impl<T: Real> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.capacity() == 0 {
            return;
        }
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        pool.push(v);
        if pool.len() > MAX_BUFFERS {
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).unwrap_or(0);
            pool.swap_remove(smallest);
        }
    }
}

impl<T: Real> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v
    }
}

impl<T: Real> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v
    }
}

impl<'a, T: Real> IntoIterator for &'a Buf<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.iter()
    }
}

/// Frees every pooled buffer of both scalar types (the memory a
/// meta-gradient keeps for the next call).
pub fn release() {
    <f32 as Real>::pool().lock().unwrap_or_else(|e| e.into_inner()).clear();
    <f64 as Real>::pool().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_zeroed_and_bounded() {
        // f64 only here; the engine's tests run in other threads but share
        // the pool, so only properties that hold whatever else is pooled are
        // asserted.
        let mut a = Buf::<f64>::zeros(1000);
        a.iter_mut().for_each(|x| *x = 7.0);
        let p = a.v.as_ptr();
        drop(a);
        let b = Buf::<f64>::zeros(1000);
        assert!(b.iter().all(|&x| x == 0.0), "a reused buffer comes back zeroed");
        assert_eq!(b.len(), 1000);
        let c = Buf::<f64>::copy_of(&[1.0, 2.0, 3.0]);
        assert_eq!(&c[..], &[1.0, 2.0, 3.0]);
        let _ = p;
        let many: Vec<Buf<f64>> = (0..MAX_BUFFERS + 10).map(|_| Buf::zeros(1)).collect();
        drop(many);
        assert!(<f64 as Real>::pool().lock().unwrap().len() <= MAX_BUFFERS);
    }
}
