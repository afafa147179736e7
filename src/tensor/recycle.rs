//! A small pool of large f32 buffers, so that activations of the same sizes, batch after batch,
//! reuse memory instead of asking the system for fresh pages (which it maps, faults in and zeroes
//! one 4 KB page at a time, and unmaps again on free: a large share of a layer's time on big
//! maps).
//!
//! Layers give back inputs they are done with ([`give`]) and take their outputs from the pool
//! ([`take`]). A buffer taken holds arbitrary (initialised) values: only outputs that are written
//! in full take one. Buffers under [`MIN_BYTES`] are left to the allocator; the pool holds at most
//! [`MAX_BUFFERS`] buffers and [`MAX_BYTES`] in all, dropping the oldest beyond that.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ndarray::{Array, Dimension, ShapeBuilder};

/// Smallest buffer worth keeping: 1 MiB.
pub const MIN_BYTES: usize = 1 << 20;
/// Most buffers kept: enough for the distinct sizes of a training batch's forward and backward
/// through ResNet-18 at 224×224 (with 8, an augmented fine-tuning run faulted in about 1.5 GB of
/// fresh pages over two epochs, half its system time).
pub const MAX_BUFFERS: usize = 24;
/// Most bytes kept in all: 512 MiB.
pub const MAX_BYTES: usize = 512 << 20;

/// A set of kept buffers; the layers share [`GLOBAL`] through the free functions.
pub struct Pool {
    /// The kept buffers, oldest first.
    kept: Mutex<Vec<Vec<f32>>>,
    /// [`Pool::misses`].
    misses: AtomicUsize,
}

/// The pool the layers share.
pub static GLOBAL: Pool = Pool::new();

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

impl Pool {
    /// An empty pool.
    pub const fn new() -> Self {
        Pool {
            kept: Mutex::new(Vec::new()),
            misses: AtomicUsize::new(0),
        }
    }

    /// Keeps `v`'s memory for a later [`Pool::take`] (when it is large enough to be worth it).
    pub fn give(&self, v: Vec<f32>) {
        if bytes(&v) < MIN_BYTES {
            return;
        }
        let Ok(mut pool) = self.kept.lock() else {
            return;
        };
        pool.push(v);
        while pool.len() > MAX_BUFFERS || pool.iter().map(bytes).sum::<usize>() > MAX_BYTES {
            pool.remove(0);
        }
    }

    /// A buffer of `len` values (arbitrary, initialised): a kept one whose capacity is between
    /// `len` and twice that, or a new one of zeros. Among the kept ones, one that already holds
    /// `len` values (the fewest to zero-fill: a buffer comes back with the length it was taken
    /// at, and a pass that takes several sizes should not clear memory on every call), then the
    /// smallest.
    pub fn take(&self, len: usize) -> Vec<f32> {
        let pooled = len * std::mem::size_of::<f32>() >= MIN_BYTES;
        if pooled {
            if let Ok(mut pool) = self.kept.lock() {
                let best = (pool.iter().enumerate())
                    .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len)
                    .max_by_key(|(_, v)| (v.len().min(len), std::cmp::Reverse(v.capacity())))
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let mut v = pool.swap_remove(i);
                    v.truncate(len);
                    v.resize(len, 0.0);
                    return v;
                }
            }
        }
        if pooled {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        vec![0.0; len]
    }

    /// How many takes of at least [`MIN_BYTES`] found no kept buffer and allocated a fresh one,
    /// since the pool was made: none, batch after batch, once every buffer a pass takes is given
    /// back after its last use.
    pub fn misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// [`Pool::give`] to the shared pool.
pub fn give(v: Vec<f32>) {
    GLOBAL.give(v)
}

/// Gives back the memory of an array that is no longer needed.
pub fn give_array<D: Dimension>(a: Array<f32, D>) {
    if a.len() * std::mem::size_of::<f32>() >= MIN_BYTES {
        let (v, _) = a.into_raw_vec_and_offset();
        give(v);
    }
}

/// [`Pool::take`] from the shared pool.
pub fn take(len: usize) -> Vec<f32> {
    GLOBAL.take(len)
}

/// A worker's scratch buffer, reused from tile to tile and batch to batch: [`Scratch::get`]
/// hands out `len` values (arbitrary) and replaces the buffer only when it holds fewer, so a
/// buffer that serves several sizes is not cleared on every call. Its memory comes from the pool
/// and goes back to it when dropped.
pub struct Scratch {
    buf: Vec<f32>,
    pool: &'static Pool,
}

impl Default for Scratch {
    /// An empty scratch buffer on the shared pool.
    fn default() -> Self {
        Scratch::on(&GLOBAL)
    }
}

impl Scratch {
    /// An empty scratch buffer whose memory comes from and goes back to `pool`.
    pub fn on(pool: &'static Pool) -> Self {
        Scratch {
            buf: Vec::new(),
            pool,
        }
    }

    /// `len` values of arbitrary content.
    pub fn get(&mut self, len: usize) -> &mut [f32] {
        if self.buf.len() < len {
            let grown = self.pool.take(len);
            self.pool.give(std::mem::replace(&mut self.buf, grown));
        }
        &mut self.buf[..len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// An array of `shape` in C order for an output that will be written in full (values arbitrary
/// until then).
pub fn take_array<Sh: ShapeBuilder>(shape: Sh) -> Array<f32, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let shape = shape.into_shape_with_order();
    let len = shape.raw_dim().size();
    Array::from_shape_vec(shape, take(len)).expect("length matches the shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_asked_length_and_small_ones_are_not_kept() {
        let pool = Pool::new();
        let n = MIN_BYTES / 4 * 3;
        let mut a = pool.take(n);
        assert_eq!(a.len(), n);
        a.iter_mut().for_each(|v| *v = 7.0);
        let ptr = a.as_ptr();
        pool.give(a);
        // A little smaller: the same memory, cut to the length asked.
        let b = pool.take(n - 5);
        assert_eq!(b.len(), n - 5);
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&v| v == 7.0), "values as they were left");
        pool.give(b);
        // More than twice smaller: not that buffer.
        let c = pool.take(n / 3);
        assert_eq!(c.len(), n / 3);
        assert_ne!(c.as_ptr(), ptr);
        // Only that last take allocated.
        assert_eq!(
            pool.misses(),
            2,
            "the first take and the one that did not fit"
        );
        // Small buffers are never pooled: always fresh zeros.
        pool.give(vec![3.0f32; 16]);
        assert_eq!(pool.take(16), vec![0.0; 16]);
        // At most MAX_BUFFERS kept: the oldest go first.
        for _ in 0..MAX_BUFFERS + 2 {
            pool.give(vec![1.0f32; n]);
        }
        assert_eq!(pool.kept.lock().unwrap().len(), MAX_BUFFERS);
        let arr: ndarray::Array3<f32> = take_array((3, n / 3, 1));
        assert_eq!(arr.shape(), &[3, n / 3, 1]);
    }

    #[test]
    fn take_prefers_a_buffer_that_holds_the_length_asked() {
        let pool = Pool::new();
        let n = MIN_BYTES / 4 * 3;
        // Two buffers that fit by capacity: one cut short, one still holding n values.
        let mut short = vec![1.0f32; n];
        short.truncate(n / 2 + 1);
        let full = vec![2.0f32; n + 8];
        let (short_ptr, full_ptr) = (short.as_ptr(), full.as_ptr());
        pool.give(short);
        pool.give(full);
        let a = pool.take(n);
        assert_eq!(a.as_ptr(), full_ptr, "the buffer that needs no filling");
        assert!(a.iter().all(|&v| v == 2.0));
        // Then the short one, topped up with zeros after what it held.
        let b = pool.take(n);
        assert_eq!(b.as_ptr(), short_ptr);
        assert_eq!((b[n / 2], b[n / 2 + 1], b[n - 1]), (1.0, 0.0, 0.0));
    }

    #[test]
    fn scratch_keeps_its_values_until_it_must_grow_and_returns_memory_to_the_pool() {
        // A pool of this test's own (the shared one serves the other tests meanwhile).
        static POOL: Pool = Pool::new();
        let kept = || -> Vec<*const f32> {
            POOL.kept
                .lock()
                .unwrap()
                .iter()
                .map(|v| v.as_ptr())
                .collect()
        };
        let n = MIN_BYTES / 4 * 2;
        let mut s = Scratch::on(&POOL);
        s.get(n).iter_mut().for_each(|v| *v = 5.0);
        let first = s.get(1).as_ptr();
        // Shorter asks are views of the same values: nothing cleared, nothing taken.
        assert!(s.get(n / 2).iter().all(|&v| v == 5.0));
        assert!(s.get(n).iter().all(|&v| v == 5.0));
        assert_eq!(s.get(n).as_ptr(), first);
        assert!(kept().is_empty());
        // A larger ask takes a new buffer and gives the old one back.
        assert_eq!(s.get(3 * n).len(), 3 * n);
        let second = s.get(1).as_ptr();
        assert_eq!(kept(), vec![first]);
        drop(s);
        assert_eq!(
            kept(),
            vec![first, second],
            "dropped: its buffer is back in the pool"
        );
    }
}
