//! `&a + &b`, `&a - &b`, `&a * &b`, `&a / &b` and `-&a` on tensors, with
//! broadcasting. Each returns a `Result` (a shape mismatch is an error, not
//! a panic): `(&(&a * &b)? + &c)?`.

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

macro_rules! binary_operator {
    ($trait:ident, $method:ident, $op:path) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                $op(self, rhs)
            }
        }
    };
}

binary_operator!(Add, add, ops::add);
binary_operator!(Sub, sub, ops::sub);
binary_operator!(Mul, mul, ops::mul);
binary_operator!(Div, div, ops::div);

impl Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        ops::neg(self)
    }
}
