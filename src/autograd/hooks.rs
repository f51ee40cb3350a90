//! Gradient hooks, PyTorch's semantics.
//!
//! - [`Tensor::register_hook`](crate::Tensor::register_hook): called with
//!   the gradient of that tensor once per backward pass. For a leaf that is
//!   the sum of every contribution, before it is added to `.grad` (the
//!   engine sums a leaf's incoming gradients first, as PyTorch's
//!   `AccumulateGrad` node does, so the hook sees the total exactly once).
//!   For an op's output it is the gradient arriving at its `grad_fn`.
//! - [`GradFn::register_prehook`](super::GradFn::register_prehook) and
//!   [`GradFn::register_hook`](super::GradFn::register_hook): before and
//!   after a node's backward.
//!
//! Every hook may return a replacement, which must have the shape and
//! device of what it replaces; hooks run in registration order, each seeing
//! the previous one's result. They run with grad mode off, like the rest
//! of the backward pass. A [`HookHandle`] removes its hook.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A tensor hook or node pre-hook: `grad -> optional replacement`.
pub(crate) type GradHookFn = dyn FnMut(&Tensor) -> Result<Option<Tensor>> + Send;
/// A node post-hook: `(grad_inputs, grad_output) -> optional replacement inputs`.
pub(crate) type NodeHookFn =
    dyn FnMut(&[Option<Tensor>], &Tensor) -> Result<Option<Vec<Option<Tensor>>>> + Send;

static NEXT_HOOK_ID: AtomicU64 = AtomicU64::new(1);

/// One hook, callable while the list itself is unlocked (so a hook may
/// register or remove hooks without deadlocking on the list).
type Slot<F> = Arc<Mutex<Box<F>>>;
type Entries<F> = Mutex<Vec<(u64, Slot<F>)>>;

/// The hooks of one tensor or node, in registration order.
pub(crate) struct HookList<F: ?Sized> {
    entries: Arc<Entries<F>>,
}

impl<F: ?Sized> Default for HookList<F> {
    fn default() -> Self {
        HookList {
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

trait RemoveHook: Send + Sync {
    fn remove(&self, id: u64) -> bool;
}

impl<F: ?Sized + Send + 'static> RemoveHook for Entries<F> {
    fn remove(&self, id: u64) -> bool {
        let mut v = self.lock().unwrap_or_else(|p| p.into_inner());
        let before = v.len();
        v.retain(|(i, _)| *i != id);
        v.len() != before
    }
}

impl<F: ?Sized + Send + 'static> HookList<F> {
    pub(crate) fn push(&self, hook: Box<F>) -> HookHandle {
        let id = NEXT_HOOK_ID.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Arc::new(Mutex::new(hook))));
        let weak: Weak<Entries<F>> = Arc::downgrade(&self.entries);
        HookHandle { list: weak, id }
    }

    /// Whether no hook is registered now.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The hooks registered now, in order.
    pub(crate) fn snapshot(&self) -> Vec<Slot<F>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }
}

/// Removes its hook with [`HookHandle::remove`] (PyTorch's
/// `RemovableHandle`). Dropping the handle keeps the hook.
pub struct HookHandle {
    list: Weak<dyn RemoveHook>,
    id: u64,
}

impl HookHandle {
    /// Removes the hook; false if it was already removed or its tensor or
    /// node no longer exists.
    pub fn remove(&self) -> bool {
        self.list.upgrade().is_some_and(|l| l.remove(self.id))
    }
}

impl std::fmt::Debug for HookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookHandle({})", self.id)
    }
}

fn lock_hook<F: ?Sized>(slot: &Slot<F>) -> Result<std::sync::MutexGuard<'_, Box<F>>> {
    slot.lock()
        .map_err(|_| Error::Autograd("a hook panicked earlier; its lock is poisoned".into()))
}

/// A replacement gradient must stand in for the original exactly.
fn check_replacement(what: &str, old: &Tensor, new: &Tensor) -> Result<()> {
    if new.shape() != old.shape() || new.device() != old.device() || new.dtype() != old.dtype() {
        return Err(Error::Autograd(format!(
            "a hook on {what} returned a gradient of shape {:?} ({:?}, {}) to replace one of \
             shape {:?} ({:?}, {})",
            new.shape(),
            new.dtype(),
            new.device(),
            old.shape(),
            old.dtype(),
            old.device()
        )));
    }
    Ok(())
}

/// Runs tensor hooks or pre-hooks in order on `grad`, each seeing the
/// previous one's replacement; `what` names the tensor or node in errors.
pub(crate) fn run_grad_hooks(
    list: &HookList<GradHookFn>,
    mut grad: Tensor,
    what: &str,
) -> Result<Tensor> {
    for slot in list.snapshot() {
        let replacement = (lock_hook(&slot)?)(&grad)?;
        if let Some(new) = replacement {
            check_replacement(what, &grad, &new)?;
            grad = new;
        }
    }
    Ok(grad)
}

/// Runs a node's post-hooks on its computed input gradients.
pub(crate) fn run_node_hooks(
    list: &HookList<NodeHookFn>,
    mut grads: Vec<Option<Tensor>>,
    grad_output: &Tensor,
    what: &str,
) -> Result<Vec<Option<Tensor>>> {
    for slot in list.snapshot() {
        let replacement = (lock_hook(&slot)?)(&grads, grad_output)?;
        if let Some(new) = replacement {
            if new.len() != grads.len() {
                return Err(Error::Autograd(format!(
                    "a hook on {what} returned {} input gradients for {} inputs",
                    new.len(),
                    grads.len()
                )));
            }
            for (old, new) in grads.iter().zip(&new) {
                match (old, new) {
                    (Some(o), Some(n)) => check_replacement(what, o, n)?,
                    (None, None) => {}
                    _ => {
                        return Err(Error::Autograd(format!(
                            "a hook on {what} added or removed an input gradient; it may only \
                             replace the ones computed"
                        )))
                    }
                }
            }
            grads = new;
        }
    }
    Ok(grads)
}
