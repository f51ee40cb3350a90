//! `relu(lhs + rhs)` as one op: ResNet's residual tail, `relu(out + shortcut)`.
//!
//! Forward: one pass reads both operands and writes the result; the sum is
//! never written out. torchvision computes it in place (`out += identity;
//! out = relu(out)`); here `lhs` is taken by value, and when that was the
//! last handle on its buffer ([`Tensor::is_sole_handle`]: no clone, no view,
//! nothing a backward node saved shares it) and it is not a leaf that
//! requires a gradient, the result is written over it. Nothing anyone can
//! still read changes, so this is safe with respect to backward: no node
//! needs the overwritten values (a node that did would hold them, and the
//! buffer would not be the sole handle's). Otherwise the result goes to a new
//! buffer.
//!
//! Backward needs only the ReLU's mask, which the output gives (`output >
//! 0`, as `ReluBackward0` saves it): the pre-activation sum is never kept.
//! The masked gradient is one pass over dL/dy, written over dL/dy itself
//! when nothing else reads it (the engine hands it over when the node has no
//! post-hooks, and no hook or other node holds it), and it is the gradient of
//! both operands, handed to both as one tensor (safe: the engine adds in
//! place only into a gradient no other handle reaches, which a shared one
//! is not), so the second costs no copy. A frozen operand gets `None`; when
//! neither operand requires a gradient no node is recorded at all.
//!
//! The node is `AddReluBackward0`; PyTorch would show two,
//! `ReluBackward0` → `AddBackward0`. As for batch norm + ReLU, the node
//! reports the ReLU it absorbed through [`BackwardOp::fused_ops`], so graph
//! counts and backward statistics are those of the unfused ops (the ReLU
//! node exists exactly when the add node does and always computes its one
//! input gradient).

use crate::autograd::{record, record_in_place, BackwardOp, FusedOp};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::ops::{add, grad_tensor, relu, same_device};
use crate::tensor::Tensor;

/// `F.relu(lhs + rhs)` in one pass each way (see the module docs); the same
/// values and gradients as [`crate::ops::relu`](fn@crate::ops::relu) of
/// [`crate::ops::add`](fn@crate::ops::add).
/// Operands of different shapes broadcast through those two ops instead.
/// Pass `lhs` by value (a clone of a handle you keep is cheap): its buffer
/// is reused only when nothing else can read it.
pub fn add_relu(lhs: Tensor, rhs: &Tensor) -> Result<Tensor> {
    if lhs.shape() != rhs.shape() {
        return relu(&add(&lhs, rhs)?);
    }
    same_device("add_relu", &lhs, rhs)?;
    let mut lhs = lhs;
    let make_backward = |_: &[bool], output: &Tensor| -> Box<dyn BackwardOp> {
        Box::new(AddReluBackward {
            output: output.clone(),
        })
    };
    // A leaf requiring a gradient stays untouched: the graph keeps it (its
    // `AccumulateGrad` node) and shows it, as PyTorch refuses in-place ops on it.
    if lhs.is_sole_handle() && !(lhs.is_leaf() && lhs.requires_grad()) {
        lhs.storage_mut().add_relu_assign(&rhs.storage())?;
        record_in_place(&lhs, &[Some(&lhs), Some(rhs)], make_backward)
    } else {
        let out = lhs.storage().add_relu(&rhs.storage())?;
        let shape = lhs.shape().to_vec();
        record(out, shape, &[Some(&lhs), Some(rhs)], make_backward)
    }
}

struct AddReluBackward {
    /// The result: the ReLU's mask.
    output: Tensor,
}

impl BackwardOp for AddReluBackward {
    fn name(&self) -> &'static str {
        "AddReluBackward0"
    }
    fn unfused_name(&self) -> &'static str {
        "AddBackward0"
    }
    fn op(&self) -> &'static str {
        "add"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "other"]
    }
    fn fused_ops(&self) -> &'static [FusedOp] {
        const RELU: [FusedOp; 1] = [FusedOp {
            name: "ReluBackward0",
            op: "relu",
            inputs: &["input"],
        }];
        &RELU
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("result", &self.output)]
    }
    fn backward_consuming(
        self: Box<Self>,
        grad_output: Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        // The incoming gradient is usually a sum the engine made for this
        // node alone: mask it in place instead of writing a new buffer.
        let mut masked = grad_output;
        if masked.requires_grad() || !masked.is_sole_handle() {
            return self.backward(&masked, needs);
        }
        masked
            .storage_mut()
            .relu_backward_assign(&self.output.storage())?;
        Ok(needs.iter().map(|&n| n.then(|| masked.clone())).collect())
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let masked = grad_output
            .storage()
            .relu_backward(&self.output.storage())?;
        let masked = grad_tensor(masked, grad_output.shape())?;
        Ok(needs.iter().map(|&n| n.then(|| masked.clone())).collect())
    }
}
