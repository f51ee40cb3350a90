//! Stochastic gradient descent, PyTorch's algorithm step for step.
//!
//! For each parameter `p` with gradient `g` (see `BackendStorage::sgd_step`):
//!
//! ```text
//! d = g + weight_decay * p
//! if momentum != 0:
//!     b = d                                  on the first step (buffer created)
//!     b = momentum * b + (1 - dampening) * d on later steps
//!     d = d + momentum * b if nesterov else b
//! p = p - lr * d
//! ```
//!
//! A parameter is updated only if it requires a gradient *and* has one: a
//! frozen parameter, or one the last backward never reached, is left
//! exactly as it is and its momentum buffer (if any) is not touched.

use crate::backend::{BackendStorage, SgdConfig};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl SgdConfig {
    /// Plain SGD: no momentum, dampening, weight decay or Nesterov.
    pub fn new(lr: f32) -> Self {
        Self {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
    pub fn momentum(self, momentum: f32) -> Self {
        Self { momentum, ..self }
    }
    pub fn dampening(self, dampening: f32) -> Self {
        Self { dampening, ..self }
    }
    pub fn weight_decay(self, weight_decay: f32) -> Self {
        Self {
            weight_decay,
            ..self
        }
    }
    pub fn nesterov(self, nesterov: bool) -> Self {
        Self { nesterov, ..self }
    }

    /// The checks `torch.optim.SGD.__init__` makes, plus finiteness.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("Sgd", msg));
        for (what, v) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("dampening", self.dampening),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() {
                return bad(format!("{what} must be finite, got {v}"));
            }
        }
        if self.lr < 0.0 {
            return bad(format!("invalid learning rate: {}", self.lr));
        }
        if self.momentum < 0.0 {
            return bad(format!("invalid momentum value: {}", self.momentum));
        }
        if self.weight_decay < 0.0 {
            return bad(format!("invalid weight_decay value: {}", self.weight_decay));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return bad("Nesterov momentum requires a momentum and zero dampening".into());
        }
        Ok(())
    }
}

/// `torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`.
pub struct Sgd {
    params: Vec<Tensor>,
    /// One per parameter, created on its first update when momentum != 0.
    momentum_buffers: Vec<Option<Tensor>>,
    config: SgdConfig,
}

impl Sgd {
    /// An optimizer over `params` (typically `model.parameters()`; frozen
    /// ones may be included, they are skipped while frozen).
    pub fn new(params: impl IntoIterator<Item = Tensor>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        let params: Vec<Tensor> = params.into_iter().collect();
        let momentum_buffers = vec![None; params.len()];
        Ok(Self {
            params,
            momentum_buffers,
            config,
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Changes the learning rate for later steps (a schedule, like writing
    /// `param_group["lr"]` in PyTorch).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let config = SgdConfig { lr, ..self.config };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Restores the momentum buffer of `params()[i]` (resuming training):
    /// the next step then continues it instead of starting a new one.
    pub fn set_momentum_buffer(&mut self, i: usize, buffer: Tensor) -> Result<()> {
        let param = self.params.get(i).ok_or_else(|| {
            Error::invalid("Sgd::set_momentum_buffer", format!("no parameter {i}"))
        })?;
        if buffer.shape() != param.shape() || buffer.device() != param.device() {
            return Err(Error::shape(
                "Sgd::set_momentum_buffer",
                format!(
                    "buffer {:?} on {:?} for parameter {:?} on {:?}",
                    buffer.shape(),
                    buffer.device(),
                    param.shape(),
                    param.device()
                ),
            ));
        }
        self.momentum_buffers[i] = Some(buffer);
        Ok(())
    }

    /// The momentum buffer of `params()[i]`, once a step has created it.
    pub fn momentum_buffer(&self, i: usize) -> Option<&Tensor> {
        self.momentum_buffers.get(i).and_then(Option::as_ref)
    }

    /// Updates, in place, every parameter that requires a gradient and has
    /// one. Returns how many were updated.
    pub fn step(&mut self) -> Result<usize> {
        let cfg = self.config;
        let mut updated = 0;
        for (param, buffer) in self.params.iter().zip(&mut self.momentum_buffers) {
            if !param.requires_grad() {
                continue;
            }
            let Some(grad) = param.grad() else { continue };
            if grad.shape() != param.shape() {
                return Err(Error::shape(
                    "Sgd::step",
                    format!(
                        "gradient {:?} for parameter {:?}",
                        grad.shape(),
                        param.shape()
                    ),
                ));
            }
            // PyTorch creates the buffer from the first gradient it sees;
            // the kernel fills it (`initialize_buffer`), so a copy of the
            // gradient is just a correctly sized allocation on the right device.
            let initialize = cfg.momentum != 0.0 && buffer.is_none();
            if initialize {
                *buffer = Some(grad.deep_clone()?);
            }
            let grad_storage = grad.storage();
            let mut param_storage = param.storage_mut();
            match buffer.as_ref().filter(|_| cfg.momentum != 0.0) {
                Some(b) => {
                    let mut b = b.storage_mut();
                    param_storage.sgd_step(&grad_storage, Some(&mut b), &cfg, initialize)?
                }
                None => param_storage.sgd_step(&grad_storage, None, &cfg, false)?,
            }
            updated += 1;
        }
        Ok(updated)
    }

    /// `optimizer.zero_grad(set_to_none)`: drops every gradient (`true`,
    /// PyTorch's default) or replaces it with zeros (`false`).
    pub fn zero_grad(&self, set_to_none: bool) -> Result<()> {
        for p in &self.params {
            match p.grad() {
                None => {}
                Some(_) if set_to_none => p.set_grad(None)?,
                Some(g) => p.set_grad(Some(Tensor::zeros(g.shape(), g.device())?))?,
            }
        }
        Ok(())
    }
}

// The references are pasted as PyTorch printed them (9 significant digits,
// enough to round-trip any f32).
#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use crate::Device;

    const P0: [f32; 4] = [1.0, -2.0, 0.5, 0.0];
    const GRADS: [[f32; 4]; 3] = [
        [0.5, 0.25, -1.0, 2.0],
        [-0.75, 0.5, 0.125, 1.0],
        [0.3, -0.6, 0.9, -1.2],
    ];

    /// Runs 3 steps and compares with `torch.optim.SGD`'s parameters after
    /// each, printed by `scripts/sgd_reference.py` (PyTorch 2.9.1).
    fn check(cfg: SgdConfig, torch_after: [[f32; 4]; 3]) {
        let p = Tensor::from_vec(P0.to_vec(), &[4], Device::Cpu)
            .unwrap()
            .requires_grad_(true)
            .unwrap();
        let mut opt = Sgd::new([p.clone()], cfg).unwrap();
        for (g, want) in GRADS.iter().zip(torch_after) {
            p.set_grad(Some(
                Tensor::from_vec(g.to_vec(), &[4], Device::Cpu).unwrap(),
            ))
            .unwrap();
            assert_eq!(opt.step().unwrap(), 1);
            let got = p.to_vec_f32().unwrap();
            for (a, b) in got.iter().zip(want) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{cfg:?}: got {got:?}, torch {want:?}"
                );
            }
        }
        assert_eq!(opt.momentum_buffer(0).is_some(), cfg.momentum != 0.0);
    }

    #[test]
    fn plain() {
        check(
            SgdConfig::new(0.1),
            [
                [
                    9.499999881e-01,
                    -2.025000095e+00,
                    6.000000238e-01,
                    -2.000000030e-01,
                ],
                [
                    1.024999976e+00,
                    -2.075000048e+00,
                    5.875000358e-01,
                    -3.000000119e-01,
                ],
                [
                    9.949999452e-01,
                    -2.015000105e+00,
                    4.975000322e-01,
                    -1.800000072e-01,
                ],
            ],
        );
    }

    #[test]
    fn momentum_with_weight_decay() {
        check(
            SgdConfig::new(0.1).momentum(0.9).weight_decay(0.1),
            [
                [
                    9.399999976e-01,
                    -2.005000114e+00,
                    5.950000286e-01,
                    -2.000000030e-01,
                ],
                [
                    9.516000152e-01,
                    -2.039450169e+00,
                    6.620500088e-01,
                    -4.780000150e-01,
                ],
                [
                    9.225240350e-01,
                    -1.990060687e+00,
                    6.257745028e-01,
                    -6.034200191e-01,
                ],
            ],
        );
    }

    #[test]
    fn nesterov() {
        check(
            SgdConfig::new(0.05)
                .momentum(0.9)
                .nesterov(true)
                .weight_decay(0.01),
            [
                [
                    9.515500069e-01,
                    -2.021850109e+00,
                    5.945249796e-01,
                    -1.899999976e-01,
                ],
                [
                    1.001241088e+00,
                    -2.076744318e+00,
                    6.223827004e-01,
                    -3.658194840e-01,
                ],
                [
                    9.831900001e-01,
                    -2.045586109e+00,
                    5.672559142e-01,
                    -3.647949994e-01,
                ],
            ],
        );
    }

    #[test]
    fn dampening() {
        check(
            SgdConfig::new(0.2)
                .momentum(0.5)
                .dampening(0.3)
                .weight_decay(0.01),
            [
                [
                    8.980000019e-01,
                    -2.046000004e+00,
                    6.990000010e-01,
                    -4.000000060e-01,
                ],
                [
                    9.507427812e-01,
                    -2.136135578e+00,
                    7.800214291e-01,
                    -7.394400239e-01,
                ],
                [
                    9.337831140e-01,
                    -2.094212770e+00,
                    6.934400797e-01,
                    -7.401248217e-01,
                ],
            ],
        );
    }

    #[test]
    fn frozen_or_gradless_parameters_are_left_alone() {
        let dev = Device::Cpu;
        let frozen = Tensor::from_vec(vec![1.0, 2.0], &[2], dev).unwrap();
        frozen
            .set_grad(Some(Tensor::ones(&[2], dev).unwrap()))
            .unwrap();
        let no_grad_yet = Tensor::from_vec(vec![3.0], &[1], dev)
            .unwrap()
            .requires_grad_(true)
            .unwrap();
        let trained = Tensor::from_vec(vec![5.0], &[1], dev)
            .unwrap()
            .requires_grad_(true)
            .unwrap();
        trained
            .set_grad(Some(Tensor::from_vec(vec![2.0], &[1], dev).unwrap()))
            .unwrap();
        let mut opt = Sgd::new(
            [frozen.clone(), no_grad_yet.clone(), trained.clone()],
            SgdConfig::new(0.5).momentum(0.9),
        )
        .unwrap();
        assert_eq!(opt.step().unwrap(), 1);
        assert_eq!(frozen.to_vec_f32().unwrap(), [1.0, 2.0]);
        assert_eq!(no_grad_yet.to_vec_f32().unwrap(), [3.0]);
        assert_eq!(trained.to_vec_f32().unwrap(), [4.0]);
        assert!(opt.momentum_buffer(0).is_none() && opt.momentum_buffer(1).is_none());
        assert_eq!(opt.momentum_buffer(2).unwrap().to_vec_f32().unwrap(), [2.0]);
    }

    #[test]
    fn zero_grad_to_none_or_zeros() {
        let p = Tensor::from_vec(vec![1.0, 2.0], &[2], Device::Cpu)
            .unwrap()
            .requires_grad_(true)
            .unwrap();
        let opt = Sgd::new([p.clone()], SgdConfig::new(0.1)).unwrap();
        p.set_grad(Some(Tensor::ones(&[2], Device::Cpu).unwrap()))
            .unwrap();
        opt.zero_grad(false).unwrap();
        assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), [0.0, 0.0]);
        opt.zero_grad(true).unwrap();
        assert!(p.grad().is_none());
    }

    #[test]
    fn hyper_parameters_are_validated_like_pytorch() {
        let ok = |c: SgdConfig| c.validate().is_ok();
        assert!(!ok(SgdConfig::new(-0.1)));
        assert!(!ok(SgdConfig::new(0.1).momentum(-0.5)));
        assert!(!ok(SgdConfig::new(0.1).weight_decay(-1.0)));
        assert!(
            !ok(SgdConfig::new(0.1).nesterov(true)),
            "nesterov needs momentum"
        );
        assert!(!ok(SgdConfig::new(0.1)
            .momentum(0.9)
            .dampening(0.1)
            .nesterov(true)));
        assert!(!ok(SgdConfig::new(f32::NAN)));
        assert!(ok(SgdConfig::new(0.0)));
        assert!(ok(SgdConfig::new(0.1).momentum(0.9).nesterov(true)));
        let err = Sgd::new(Vec::new(), SgdConfig::new(-1.0))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("learning rate"), "{err}");
    }
}
