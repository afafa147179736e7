//! Parameters and buffers: a value (owned, or borrowed in place from a memory-mapped file), an
//! accumulated gradient, and a trainable flag.
//!
//! A parameter's full dotted name (`features.24.weight`) is not stored here: containers build it
//! from the structure as they visit their children, so names always follow the graph.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};

/// What a tensor is to training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A weight matrix or kernel: trained, and penalised by L1/L2 regularisation.
    Weight,
    /// A bias or a normalisation scale/shift: trained, never penalised.
    Bias,
    /// A running statistic (BatchNorm): saved and loaded, never trained by an optimizer.
    Buffer,
}

/// Bytes of a memory-mapped file that hold one little-endian, 4-byte-aligned f32 tensor.
#[derive(Clone, Debug)]
pub struct MappedF32 {
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
}

impl MappedF32 {
    /// A view of `len` f32 values at byte offset `start` of `map`, or `None` when the bytes are
    /// out of range or not aligned for f32 (the caller then copies).
    pub fn new(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len.checked_mul(4)?)?;
        let bytes = map.get(start..end)?;
        if cfg!(target_endian = "big") || bytemuck::try_cast_slice::<u8, f32>(bytes).is_err() {
            return None;
        }
        Some(MappedF32 { map, start, len })
    }

    /// The values, read in place.
    pub fn as_slice(&self) -> &[f32] {
        bytemuck::cast_slice(&self.map[self.start..self.start + self.len * 4])
    }
}

/// Where a parameter's values live.
#[derive(Clone, Debug)]
enum Storage {
    Owned(ArrayD<f32>),
    Mapped { data: MappedF32, shape: Vec<usize> },
}

impl Storage {
    fn view(&self) -> ArrayViewD<'_, f32> {
        match self {
            Storage::Owned(a) => a.view(),
            Storage::Mapped { data, shape } => {
                ArrayViewD::from_shape(IxDyn(shape), data.as_slice())
                    .expect("mapped length checked")
            }
        }
    }
}

/// One named tensor of a layer.
#[derive(Debug)]
pub struct Param {
    storage: Storage,
    /// The gradient accumulated since the last [`Param::zero_grad`]; `None` until a backward pass
    /// reaches it (frozen parameters never get one).
    pub grad: Option<ArrayD<f32>>,
    trainable: bool,
    kind: ParamKind,
    /// See [`Param::version`].
    version: u64,
    /// The memory of the gradient [`Param::zero_grad`] dropped, for the next one to reuse.
    spare: Option<ArrayD<f32>>,
}

impl Clone for Param {
    /// The value, gradient, flags and version; not the spare gradient memory.
    fn clone(&self) -> Self {
        Param {
            storage: self.storage.clone(),
            grad: self.grad.clone(),
            trainable: self.trainable,
            kind: self.kind,
            version: self.version,
            spare: None,
        }
    }
}

/// A version no parameter has had before: one counter for the whole process.
fn next_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Param {
    /// A trainable parameter (or a buffer, which is never trainable) with an owned value.
    pub fn new(kind: ParamKind, value: ArrayD<f32>) -> Self {
        Param {
            storage: Storage::Owned(value),
            grad: None,
            trainable: kind != ParamKind::Buffer,
            kind,
            version: next_version(),
            spare: None,
        }
    }

    /// Identifies the value: a new number, never used before in this process, each time the
    /// value may change (a [`Param::value_mut`] borrow, [`Param::set_value`],
    /// [`Param::set_mapped`]); a clone keeps its original's until either changes. Two reads with
    /// the same version see the same values, so what is derived from a value (a convolution's
    /// Winograd-domain weights) can be kept until the version moves.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The tensor's role.
    pub fn kind(&self) -> ParamKind {
        self.kind
    }

    /// Whether an optimizer updates it and backward computes its gradient.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Freezes (`false`) or unfreezes (`true`) the parameter. Buffers stay untrainable.
    /// Freezing drops any accumulated gradient.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable && self.kind != ParamKind::Buffer;
        if !self.trainable {
            self.grad = None;
            self.spare = None;
        }
    }

    /// The shape of the value.
    pub fn shape(&self) -> &[usize] {
        match &self.storage {
            Storage::Owned(a) => a.shape(),
            Storage::Mapped { shape, .. } => shape,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// True when the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value, wherever it lives.
    pub fn value(&self) -> ArrayViewD<'_, f32> {
        self.storage.view()
    }

    /// The value for writing; a memory-mapped value is copied out of the map first.
    pub fn value_mut(&mut self) -> ArrayViewMutD<'_, f32> {
        self.version = next_version();
        if let Storage::Mapped { .. } = self.storage {
            let owned = self.value().to_owned();
            self.storage = Storage::Owned(owned);
        }
        match &mut self.storage {
            Storage::Owned(a) => a.view_mut(),
            Storage::Mapped { .. } => unreachable!("converted above"),
        }
    }

    /// Replaces the value with an owned array.
    ///
    /// # Panics
    /// Panics if the shape differs (loading checks shapes before it gets here).
    pub fn set_value(&mut self, value: ArrayD<f32>) {
        assert_eq!(value.shape(), self.shape(), "set_value: shape");
        self.storage = Storage::Owned(value);
        self.version = next_version();
    }

    /// Replaces the value with values read in place from a memory map.
    ///
    /// # Panics
    /// Panics if the number of values differs from the parameter's.
    pub fn set_mapped(&mut self, data: MappedF32) {
        assert_eq!(data.len, self.len(), "set_mapped: length");
        let shape = self.shape().to_vec();
        self.storage = Storage::Mapped { data, shape };
        self.version = next_version();
    }

    /// True when the value is read in place from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The address of the first value (to show where it lives).
    pub fn as_ptr(&self) -> *const f32 {
        self.value().as_ptr()
    }

    /// Adds `g` to the gradient (creating it at zero first).
    ///
    /// # Panics
    /// Panics if `g`'s shape differs from the parameter's.
    pub fn accumulate_grad(&mut self, g: ArrayViewD<'_, f32>) {
        assert_eq!(g.shape(), self.shape(), "gradient shape");
        self.write_grad(|mut buf, accumulate| {
            // In parallel: memory that was written before has no fresh pages to fault in, and
            // copying a large gradient is then the cost.
            let zip = ndarray::Zip::from(&mut buf).and(&g);
            if accumulate {
                zip.par_for_each(|d, &s| *d += s);
            } else {
                zip.par_for_each(|d, &s| *d = s);
            }
        });
    }

    /// Adds a gradient computed straight into the gradient's memory: `write(buf, accumulate)`
    /// sets `buf` (the parameter's shape) to the gradient when `accumulate` is false (its values
    /// are then arbitrary) and adds the gradient to it when true (it holds what was accumulated
    /// since [`Param::zero_grad`]). The memory is the last step's gradient's, so a large
    /// gradient (VGG16's fc6: 411 MB) is neither allocated, faulted in page by page, nor copied
    /// again every step.
    pub fn write_grad(&mut self, write: impl FnOnce(ArrayViewMutD<'_, f32>, bool)) {
        let (buf, accumulate) = self.grad_mut();
        write(buf, accumulate);
    }

    /// The memory of [`Param::write_grad`], for a caller that must hold it beside other borrows:
    /// `(buf, accumulate)` with the same contract (when `accumulate` is false, `buf`'s values are
    /// arbitrary and the caller must set all of them).
    pub fn grad_mut(&mut self) -> (ArrayViewMutD<'_, f32>, bool) {
        let accumulate = self.grad.is_some();
        let shape = self.shape().to_vec();
        let grad = self.grad.get_or_insert_with(|| match self.spare.take() {
            Some(spare) if spare.shape() == shape => spare,
            _ => ArrayD::zeros(shape),
        });
        (grad.view_mut(), accumulate)
    }

    /// Drops the accumulated gradient (its memory is kept for the next one).
    pub fn zero_grad(&mut self) {
        if let Some(g) = self.grad.take() {
            self.spare = Some(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_moves_with_every_way_of_changing_the_value() {
        let mut p = Param::new(ParamKind::Weight, ArrayD::zeros(IxDyn(&[2, 3])));
        let mut seen = vec![p.version()];
        let _ = p.value();
        p.grad = Some(ArrayD::ones(IxDyn(&[2, 3])));
        assert_eq!(p.version(), seen[0], "reads and gradients leave it");
        let copy = p.clone();
        assert_eq!(copy.version(), p.version(), "a clone has the same values");
        p.value_mut()[[0, 1]] = 1.0;
        seen.push(p.version());
        p.set_value(ArrayD::ones(IxDyn(&[2, 3])));
        seen.push(p.version());
        let map = Arc::new(
            memmap2::MmapMut::map_anon(24)
                .expect("anonymous map")
                .make_read_only()
                .expect("read-only"),
        );
        p.set_mapped(MappedF32::new(map, 0, 6).expect("aligned"));
        seen.push(p.version());
        let mut other = copy.clone();
        other.value_mut()[[1, 2]] = 2.0;
        seen.push(other.version());
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seen.len(),
            "every change a new version: {seen:?}"
        );
        assert_eq!(
            copy.version(),
            seen[0],
            "changing a clone leaves the original"
        );
    }

    #[test]
    fn gradients_accumulate_until_zeroed_and_reuse_the_last_steps_memory() {
        let mut p = Param::new(ParamKind::Weight, ArrayD::zeros(IxDyn(&[2, 3])));
        let g = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .expect("shape");
        let mut calls = Vec::new();
        p.write_grad(|mut buf, accumulate| {
            calls.push(accumulate);
            buf.assign(&g);
        });
        p.accumulate_grad(g.view());
        p.write_grad(|mut buf, accumulate| {
            calls.push(accumulate);
            buf += &g;
        });
        assert_eq!(calls, [false, true], "only the first write of a step sets");
        let grad = p.grad.as_ref().expect("a gradient");
        assert_eq!(grad, &(&g * 3.0), "three gradients summed");
        let memory = grad.as_ptr();
        p.zero_grad();
        assert!(p.grad.is_none(), "zero_grad drops the gradient");
        p.accumulate_grad((&g * -1.0).view());
        let grad = p.grad.as_ref().expect("a gradient");
        assert_eq!(grad, &(&g * -1.0), "the next step starts afresh");
        assert_eq!(grad.as_ptr(), memory, "in the last step's memory");
    }
}
