//! What the elementwise ops have in common, so that each op's file keeps
//! only what is its own: the kernel it runs forward, what it saves, and its
//! gradient formula.
//!
//! - [`Unary`] ops (`exp`, `log`, `sigmoid`, `tanh`) save one tensor, the
//!   input or the output, whichever the derivative is cheaper from
//!   (`d/dx e^x` is the output itself; `d/dx ln x = 1/x` needs the input).
//! - [`Binary`] ops (`mul`, `div`) broadcast their operands like NumPy, save
//!   only the operands the needed gradients use, and sum each gradient back
//!   over the dims its operand was broadcast along.
//!
//! The backward structs here implement [`BackwardOp`] once for all of them;
//! `conv2d.rs` shows the same contract written out for a single op.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary as broadcast_binary, reduce_to};
use crate::ops::saved;
use crate::tensor::Tensor;

/// Which tensor a unary op keeps for its backward, under PyTorch's names.
#[derive(Clone, Copy)]
pub(crate) enum Keep {
    /// The input `x`, reported as `self`.
    Input,
    /// The output `y`, reported as `result`.
    Output,
}

/// A unary elementwise op `y = f(x)`.
pub(crate) struct Unary {
    /// PyTorch's `grad_fn` name, e.g. `"ExpBackward0"`.
    pub name: &'static str,
    /// The op's name in backward statistics, e.g. `"exp"`.
    pub op: &'static str,
    /// The backend kernel that computes `f`.
    pub forward: UnaryOp,
    pub keep: Keep,
    /// The input's gradient from the output's gradient `g` and the kept tensor.
    pub backward: fn(g: &Tensor, kept: &Tensor) -> Result<Tensor>,
}

/// Runs `f` on `x` and records its backward node.
pub(crate) fn unary(x: &Tensor, f: &'static Unary) -> Result<Tensor> {
    let out = x.storage().unary(f.forward)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, y| {
        let kept = match f.keep {
            Keep::Input => x.detach(),
            Keep::Output => y.clone(),
        };
        Box::new(UnaryBackward { f, kept })
    })
}

struct UnaryBackward {
    f: &'static Unary,
    kept: Tensor,
}

impl BackwardOp for UnaryBackward {
    fn name(&self) -> &'static str {
        self.f.name
    }
    fn op(&self) -> &'static str {
        self.f.op
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        let name = match self.f.keep {
            Keep::Input => "self",
            Keep::Output => "result",
        };
        vec![(name, &self.kept)]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some((self.f.backward)(grad_output, &self.kept)?)])
    }
}

/// The operands a binary op kept: `a` (PyTorch's `self`) and `b` (`other`),
/// each only if a needed gradient uses it.
pub(crate) struct Operands {
    op: &'static str,
    a: Option<Tensor>,
    b: Option<Tensor>,
}

impl Operands {
    /// `a`, or an engine-bug error if it was not kept.
    pub fn a(&self) -> Result<&Tensor> {
        saved(&self.a, self.op, "self")
    }
    /// `b`, or an engine-bug error if it was not kept.
    pub fn b(&self) -> Result<&Tensor> {
        saved(&self.b, self.op, "other")
    }
}

/// A binary elementwise op `out = f(a, b)` with broadcasting.
pub(crate) struct Binary {
    /// PyTorch's `grad_fn` name, e.g. `"MulBackward0"`.
    pub name: &'static str,
    /// The op's name in backward statistics and errors, e.g. `"mul"`.
    pub op: &'static str,
    /// The backend kernel that computes `f`.
    pub forward: BinaryOp,
    /// Which operands to keep, `[a, b]`, given which gradients will be
    /// needed, `[da, db]`.
    pub keep: fn(needs: [bool; 2]) -> [bool; 2],
    /// The gradients `[da, db]` the mask asks for, at the output's shape
    /// (they are summed back to each operand's shape afterwards).
    pub backward: fn(g: &Tensor, kept: &Operands, needs: [bool; 2]) -> Result<Grads>,
}

/// The gradients of a binary op's two operands, `None` where not needed.
pub(crate) type Grads = [Option<Tensor>; 2];

/// Runs `f` on `a` and `b` (broadcast) and records its backward node.
pub(crate) fn binary(a: &Tensor, b: &Tensor, f: &'static Binary) -> Result<Tensor> {
    let (out, shape) = broadcast_binary(f.op, a, b, f.forward)?;
    record(out, shape, &[Some(a), Some(b)], |needs, _| {
        let [keep_a, keep_b] = (f.keep)([needs[0], needs[1]]);
        Box::new(BinaryBackward {
            f,
            shapes: [a.shape().to_vec(), b.shape().to_vec()],
            kept: Operands {
                op: f.name,
                a: keep_a.then(|| a.detach()),
                b: keep_b.then(|| b.detach()),
            },
        })
    })
}

struct BinaryBackward {
    f: &'static Binary,
    shapes: [Vec<usize>; 2],
    kept: Operands,
}

impl BackwardOp for BinaryBackward {
    fn name(&self) -> &'static str {
        self.f.name
    }
    fn op(&self) -> &'static str {
        self.f.op
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "other"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("self", &self.kept.a), ("other", &self.kept.b)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let grads = (self.f.backward)(grad_output, &self.kept, [needs[0], needs[1]])?;
        grads
            .into_iter()
            .zip(&self.shapes)
            .map(|(g, shape)| g.map(|g| reduce_to(&g, shape)).transpose())
            .collect()
    }
}
