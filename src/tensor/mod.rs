//! The tensor: a shape, a dtype, a device, shared contiguous storage, and the
//! autograd fields PyTorch users know (`requires_grad`, `grad`, `grad_fn`).
//!
//! Every tensor is contiguous. A reshape is a view: it shares the storage
//! `Arc` and only changes the shape, so flatten costs nothing.

mod creation;
pub mod memory;

pub use crate::backend::Storage;
pub use crate::core_types::{DType, Device};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLockReadGuard, RwLockWriteGuard};

use memory::TrackedStorage;

use crate::autograd::{self, BackwardStats, GradFn, GradHookFn, Graph, HookHandle, HookList, Node};
use crate::backend::BackendStorage;
use crate::core_types::HostData;
use crate::error::{Error, Result};

static NEXT_TENSOR_ID: AtomicUsize = AtomicUsize::new(1);

/// A cheaply clonable handle: clones refer to the same tensor (same grad,
/// same requires_grad flag), like two Python names for one `torch.Tensor`.
#[derive(Clone)]
pub struct Tensor {
    inner: Arc<TensorImpl>,
}

struct TensorImpl {
    id: usize,
    storage: Arc<TrackedStorage>,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    /// For a leaf: the user's flag. For an op's output: true iff it has a `grad_fn`.
    requires_grad: AtomicBool,
    grad: Mutex<Option<Tensor>>,
    /// [`Tensor::register_hook`] on a leaf (an op output's hooks live on its node).
    hooks: HookList<GradHookFn>,
    /// The backward node that produced this tensor; `None` for leaves and for
    /// outputs of ops none of whose inputs required a gradient.
    grad_fn: Option<Arc<Node>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Tensor");
        s.field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .field("device", &self.device());
        if let Some(g) = self.grad_fn() {
            s.field("grad_fn", &g.name());
        } else if self.requires_grad() {
            s.field("requires_grad", &true);
        }
        s.finish()
    }
}

pub(crate) fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Wraps backend storage as a tensor with no autograd history.
    pub(crate) fn from_storage(storage: Storage, shape: Vec<usize>) -> Result<Tensor> {
        let numel = numel_of(&shape);
        if storage.len() != numel {
            return Err(Error::shape(
                "tensor",
                format!(
                    "storage holds {} elements but shape {:?} needs {}",
                    storage.len(),
                    shape,
                    numel
                ),
            ));
        }
        Ok(Self::build(
            Arc::new(TrackedStorage::new(storage)),
            shape,
            None,
            false,
        ))
    }

    /// A new tensor sharing this one's storage under another shape.
    pub(crate) fn view_with(&self, shape: Vec<usize>, grad_fn: Option<Arc<Node>>) -> Tensor {
        debug_assert_eq!(numel_of(&shape), self.numel());
        let requires_grad = grad_fn.is_some();
        Self::build(self.inner.storage.clone(), shape, grad_fn, requires_grad)
    }

    fn build(
        storage: Arc<TrackedStorage>,
        shape: Vec<usize>,
        grad_fn: Option<Arc<Node>>,
        requires_grad: bool,
    ) -> Tensor {
        let (dtype, device) = {
            let s = storage.lock.read().unwrap_or_else(|p| p.into_inner());
            (s.dtype(), s.device())
        };
        Tensor {
            inner: Arc::new(TensorImpl {
                id: NEXT_TENSOR_ID.fetch_add(1, Ordering::Relaxed),
                storage,
                shape,
                dtype,
                device,
                requires_grad: AtomicBool::new(requires_grad),
                grad: Mutex::new(None),
                hooks: HookList::default(),
                grad_fn,
            }),
        }
    }

    // ----- metadata -------------------------------------------------------

    /// A process-unique id (stable across clones of this handle).
    pub fn id(&self) -> usize {
        self.inner.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.inner.shape
    }
    pub fn rank(&self) -> usize {
        self.inner.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel_of(&self.inner.shape)
    }
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }
    pub fn device(&self) -> Device {
        self.inner.device
    }
    /// Bytes of element data this tensor's storage holds.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }
    /// True when two handles share one storage (e.g. a tensor and its reshape).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.inner.storage, &other.inner.storage)
    }

    /// Identifies the storage, so that bytes held by several views count once.
    pub(crate) fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.inner.storage) as usize
    }

    /// The shape as `[n, c, h, w]`, or an error naming `op` for another rank.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match *self.shape() {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::shape(
                op,
                format!(
                    "expected a 4-d [N, C, H, W] tensor, got shape {:?}",
                    self.shape()
                ),
            )),
        }
    }

    /// The shape as `[rows, cols]`, or an error naming `op` for another rank.
    pub fn dims2(&self, op: &'static str) -> Result<[usize; 2]> {
        match *self.shape() {
            [r, c] => Ok([r, c]),
            _ => Err(Error::shape(
                op,
                format!("expected a 2-d tensor, got shape {:?}", self.shape()),
            )),
        }
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.inner
            .storage
            .lock
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Write access for the few in-place updates the engine does: the
    /// optimizer's parameter update and batch norm's running statistics.
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.inner
            .storage
            .lock
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    // ----- data out -------------------------------------------------------

    pub fn to_cpu_storage(&self) -> Result<HostData> {
        self.storage().to_cpu()
    }

    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match self.to_cpu_storage()? {
            HostData::F32(v) => Ok(v),
            other => Err(Error::DType {
                op: "to_vec_f32",
                expected: DType::F32,
                got: other.dtype(),
            }),
        }
    }

    pub fn to_vec_i64(&self) -> Result<Vec<i64>> {
        match self.to_cpu_storage()? {
            HostData::I64(v) => Ok(v),
            other => Err(Error::DType {
                op: "to_vec_i64",
                expected: DType::I64,
                got: other.dtype(),
            }),
        }
    }

    /// The value of a one-element f32 tensor (e.g. a loss).
    pub fn to_scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar_f32",
                format!("expected one element, got shape {:?}", self.shape()),
            ));
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// A copy on `device` (no autograd history; the copy is a new leaf).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.detach());
        }
        let cpu = self.to_cpu_storage()?;
        let storage = Storage::from_cpu(cpu, device)?;
        Tensor::from_storage(storage, self.shape().to_vec())
    }

    /// A deep copy of the data, with no autograd history.
    pub fn deep_clone(&self) -> Result<Tensor> {
        let storage = self.storage().try_clone()?;
        Tensor::from_storage(storage, self.shape().to_vec())
    }

    // ----- autograd -------------------------------------------------------

    /// Whether gradients flow to (leaf) or through (non-leaf) this tensor.
    pub fn requires_grad(&self) -> bool {
        self.inner.requires_grad.load(Ordering::Relaxed)
    }

    /// PyTorch's `t.requires_grad = flag`. Only leaves may change the flag:
    /// an op's output requires a gradient exactly when it has a `grad_fn`.
    pub fn set_requires_grad(&self, flag: bool) -> Result<()> {
        if !self.is_leaf() {
            return Err(Error::Autograd(
                "requires_grad can only be changed on leaf tensors; use detach() to get a leaf"
                    .into(),
            ));
        }
        if flag && self.dtype() != DType::F32 {
            return Err(Error::Autograd(format!(
                "only f32 tensors can require gradients, this one is {:?}",
                self.dtype()
            )));
        }
        self.inner.requires_grad.store(flag, Ordering::Relaxed);
        Ok(())
    }

    /// Builder form of [`set_requires_grad`](Self::set_requires_grad) for fresh leaves.
    pub fn requires_grad_(self, flag: bool) -> Result<Tensor> {
        self.set_requires_grad(flag)?;
        Ok(self)
    }

    /// A leaf is a tensor with no `grad_fn`: created by the user, or the
    /// output of an op recorded without history.
    pub fn is_leaf(&self) -> bool {
        self.inner.grad_fn.is_none()
    }

    /// True when this handle is the only way to reach its data: no clone of
    /// the handle, no view sharing the storage, nothing detached from it
    /// (which is how a backward node saves a tensor). An op given such a
    /// handle by value may write its result over the data (see
    /// [`crate::ops::add_relu`]) and nobody can tell. `&mut` because only an
    /// owner can be sure no other handle appears meanwhile.
    pub(crate) fn is_sole_handle(&mut self) -> bool {
        Arc::get_mut(&mut self.inner).is_some_and(|t| Arc::get_mut(&mut t.storage).is_some())
    }

    /// The accumulated gradient of a leaf, if a backward pass produced one.
    pub fn grad(&self) -> Option<Tensor> {
        self.inner
            .grad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the gradient (`None` drops it, like `zero_grad(set_to_none=True)`).
    pub fn set_grad(&self, grad: Option<Tensor>) -> Result<()> {
        if let Some(g) = &grad {
            if g.shape() != self.shape() {
                return Err(Error::shape(
                    "set_grad",
                    format!(
                        "gradient shape {:?} != tensor shape {:?}",
                        g.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        *self.inner.grad.lock().unwrap_or_else(|p| p.into_inner()) = grad;
        Ok(())
    }

    /// Adds `g` to the stored gradient (the engine's AccumulateGrad).
    /// A fresh tensor is built for the sum, never an in-place add: `g` may
    /// be shared with another input's gradient (e.g. both sides of an add).
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = self.inner.grad.lock().unwrap_or_else(|p| p.into_inner());
        let next = match slot.take() {
            None => g,
            Some(old) => {
                let sum = old.storage().add(&g.storage())?;
                Tensor::from_storage(sum, self.shape().to_vec())?
            }
        };
        *slot = Some(next);
        Ok(())
    }

    /// PyTorch's `grad_fn`: the node that will run in backward, with the
    /// name PyTorch prints (`ConvolutionBackward0`, ...).
    pub fn grad_fn(&self) -> Option<GradFn> {
        self.inner.grad_fn.clone().map(GradFn::new)
    }

    pub(crate) fn grad_fn_node(&self) -> Option<&Arc<Node>> {
        self.inner.grad_fn.as_ref()
    }

    /// A new leaf sharing this tensor's storage, cut from the graph.
    pub fn detach(&self) -> Tensor {
        Self::build(
            self.inner.storage.clone(),
            self.shape().to_vec(),
            None,
            false,
        )
    }

    /// PyTorch's `tensor.register_hook(hook)`: during each backward pass,
    /// `hook(grad)` is called once with this tensor's gradient (for a leaf,
    /// the sum of all contributions, before it is added to `.grad`).
    /// Returning `Some(g)` replaces the gradient with `g` (same shape,
    /// dtype and device) for everything downstream. Hooks run in
    /// registration order with grad mode off. An error for a tensor that
    /// does not require a gradient, as in PyTorch.
    pub fn register_hook(
        &self,
        hook: impl FnMut(&Tensor) -> Result<Option<Tensor>> + Send + 'static,
    ) -> Result<HookHandle> {
        if !self.requires_grad() {
            return Err(Error::Autograd(
                "cannot register a hook on a tensor that doesn't require a gradient".into(),
            ));
        }
        Ok(match &self.inner.grad_fn {
            Some(node) => node.tensor_hooks.push(Box::new(hook)),
            None => self.inner.hooks.push(Box::new(hook)),
        })
    }

    pub(crate) fn hooks(&self) -> &HookList<GradHookFn> {
        &self.inner.hooks
    }

    /// The backward graph reachable from this tensor, as data: every node
    /// with PyTorch's `grad_fn` name, where each input's gradient goes or
    /// that it will be skipped, and what the node saved. Empty when the
    /// tensor does not require a gradient. See [`Graph`].
    pub fn graph(&self) -> Graph {
        autograd::inspect_graph(self)
    }

    /// Runs reverse-mode autodiff from this one-element tensor, accumulating
    /// into the `.grad` of every leaf that requires a gradient, and returns
    /// what the pass computed and skipped.
    pub fn backward(&self) -> Result<BackwardStats> {
        autograd::backward(self)
    }
}
