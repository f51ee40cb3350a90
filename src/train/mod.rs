//! The training loop of `frostgrad train`, and the evaluation that
//! `frostgrad eval` shares with it.
//!
//! One epoch: set the learning rate from the [`Schedule`], put the model in
//! train mode (with `FrozenBn::Eval`, every batch-norm layer whose
//! parameters are all frozen goes to eval mode), walk the training set in a
//! seeded order, and for each batch run forward, cross-entropy, backward
//! and SGD; then evaluate on the validation set in eval mode.
//!
//! **The feature cache.** When everything in front of the first trainable
//! stage (see [`ResNet::forward_stages`]) is deterministic, its output for
//! an image is the same in every epoch. With a cache, the first epoch runs
//! that prefix once per image and keeps the result; later epochs read it
//! back and run only the stages from the first trainable one on, and never
//! decode an image. The batches and their order are the same as without
//! the cache, so the weights are too (up to the float32 rounding of a
//! different batch grouping in the prefix, which is none for per-image
//! ops). [`cache_boundary`] says why a configuration cannot be cached.

pub mod cache;
pub mod checkpoint;
pub mod log;
pub mod plot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::loader::mix_seed;
use crate::data::{Batch, ImageFolder, LoadOptions, Loader, Sample};
use crate::error::{Error, Result};
use crate::nn::{self, Module, ResNet};
use crate::ops;
use crate::optim::{Sgd, SgdConfig};
use crate::tensor::{Device, Tensor};

pub use cache::FeatureCache;
pub use log::EpochLog;

/// The learning rate over epochs (`epoch` counts from 0), as PyTorch's
/// schedulers stepped once per epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `StepLR(step_size, gamma)`.
    Step {
        step_size: usize,
        gamma: f32,
    },
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)`.
    Cosine {
        epochs: usize,
    },
}

impl Schedule {
    pub fn lr_at(&self, base: f32, epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine { epochs } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

/// What batch norm does when its parameters are frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrozenBn {
    /// PyTorch's `model.train()`: batch statistics, running statistics updated.
    Train,
    /// Eval mode for every BN whose parameters are all frozen: running
    /// statistics used and left unchanged.
    Eval,
}

/// Puts `model` in train mode, with frozen batch norm as `frozen_bn` says.
/// Returns the names of the batch-norm layers left in eval mode.
pub fn set_train_mode(model: &mut ResNet, frozen_bn: FrozenBn) -> Vec<String> {
    model.train();
    let mut in_eval = Vec::new();
    if frozen_bn == FrozenBn::Eval {
        nn::for_each_module_mut(model, "", &mut |name, m| {
            if let Some(bn) = m.as_batch_norm_mut() {
                if !bn.weight.requires_grad() && !bn.bias.requires_grad() {
                    bn.set_training(false);
                    in_eval.push(name.to_string());
                }
            }
        });
    }
    in_eval
}

/// Where the feature cache can cut the network: the first stage with a
/// trainable parameter, or an error saying why nothing can be cached.
pub fn cache_boundary(model: &ResNet, frozen_bn: FrozenBn, augment: bool) -> Result<usize> {
    let why = |msg: String| Err(Error::invalid("--cache-features", msg));
    let mut first: Option<(usize, String)> = None;
    for (name, p) in model.named_parameters() {
        if p.requires_grad() {
            let stage = ResNet::stage_of(&name).unwrap_or(0);
            if first.as_ref().is_none_or(|(s, _)| stage < *s) {
                first = Some((stage, name));
            }
        }
    }
    let Some((stage, name)) = first else {
        return why("no parameter is trainable".into());
    };
    if stage == 0 {
        return why(format!(
            "`{name}` is trainable and sits in the stem, so no frozen prefix exists to cache"
        ));
    }
    if augment {
        return why(
            "--augment feeds the frozen prefix a different crop every epoch, so its output cannot be reused"
                .into(),
        );
    }
    if frozen_bn == FrozenBn::Train {
        return why(format!(
            "frozen batch norm in train mode (the default, PyTorch's) normalises with batch statistics and \
             updates its running statistics, so the frozen prefix (up to {}) is not deterministic; \
             pass --frozen-bn eval",
            ResNet::stage_name(stage - 1)
        ));
    }
    Ok(stage)
}

/// Options of [`train`].
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Epochs already done (a resumed run starts here).
    pub start_epoch: usize,
    pub batch: usize,
    pub size: u32,
    pub sgd: SgdConfig,
    pub schedule: Schedule,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub augment: bool,
    pub skip_bad: bool,
    pub frozen_bn: FrozenBn,
    /// `Some((memory budget in bytes, folder for what does not fit))`.
    pub cache: Option<(usize, PathBuf)>,
    pub workers: usize,
    pub prefetch: usize,
    pub device: Device,
    pub progress: bool,
}

/// Loss, accuracy and confusion matrix of one pass over a set.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub loss: f64,
    pub correct: usize,
    pub images: usize,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub skipped: Vec<(PathBuf, String)>,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.correct as f64 / self.images as f64
        }
    }
}

/// Index of the largest value of each row of `[rows, cols]` (the first on ties, like `argmax`).
pub fn argmax_rows(values: &[f32], cols: usize) -> Vec<usize> {
    values
        .chunks(cols.max(1))
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

fn progress_bar(show: bool, len: usize, label: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {pos}/{len} batches, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

/// The batches of one pass: `order` cut into `batch`-sized pieces.
fn batches_of(order: Vec<usize>, batch: usize, drop_last: bool) -> Vec<Vec<usize>> {
    order
        .chunks(batch.max(1))
        .filter(|c| !drop_last || c.len() == batch)
        .map(<[usize]>::to_vec)
        .collect()
}

/// A source of model inputs for a pass: decoded images, or cached features.
enum Inputs {
    Images(Loader),
    Cached(std::vec::IntoIter<Vec<usize>>),
}

/// One pass's inputs: `(indices, input tensor, labels, first stage to run)`.
struct Pass<'a> {
    inputs: Inputs,
    samples: &'a [Sample],
    cache: Option<&'a mut FeatureCache>,
    boundary: usize,
    device: Device,
    size: u32,
    skipped: Vec<(PathBuf, String)>,
}

impl Pass<'_> {
    /// The next batch as model input starting at the returned stage. With
    /// a cache being filled, runs the prefix (in no-grad mode) and stores it.
    fn next(&mut self, model: &ResNet) -> Option<Result<(Tensor, Tensor, usize, usize)>> {
        loop {
            let step = match &mut self.inputs {
                Inputs::Images(loader) => {
                    let batch = match loader.next()? {
                        Ok(b) => b,
                        Err(e) => return Some(Err(e)),
                    };
                    self.images_step(model, batch)
                }
                Inputs::Cached(batches) => {
                    let indices = batches.next()?;
                    self.cached_step(indices)
                }
            };
            match step {
                Ok(Some(v)) => return Some(Ok(v)),
                Ok(None) => continue, // every image of the batch was skipped
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn labels(&self, indices: &[usize]) -> Result<Tensor> {
        let labels = indices
            .iter()
            .map(|&i| self.samples[i].label as i64)
            .collect();
        Tensor::from_vec_i64(labels, &[indices.len()], self.device)
    }

    fn images_step(
        &mut self,
        model: &ResNet,
        batch: Batch,
    ) -> Result<Option<(Tensor, Tensor, usize, usize)>> {
        if let Some(cache) = self.cache.as_deref_mut() {
            for (path, _) in &batch.skipped {
                if let Some(i) = self.samples.iter().position(|s| &s.path == path) {
                    cache.mark_absent(i);
                }
            }
        }
        self.skipped.extend(batch.skipped);
        let n = batch.indices.len();
        if n == 0 {
            return Ok(None);
        }
        let s = self.size as usize;
        let images = Tensor::from_vec(batch.images, &[n, 3, s, s], self.device)?;
        let labels = self.labels(&batch.indices)?;
        match self.cache.as_deref_mut() {
            None => Ok(Some((images, labels, 0, n))),
            Some(cache) => {
                let features = crate::no_grad(|| model.forward_stages(&images, 0..self.boundary))?;
                cache.put(&batch.indices, &features.to_vec_f32()?, features.shape())?;
                Ok(Some((features, labels, self.boundary, n)))
            }
        }
    }

    fn cached_step(
        &mut self,
        indices: Vec<usize>,
    ) -> Result<Option<(Tensor, Tensor, usize, usize)>> {
        let Some(cache) = self.cache.as_deref_mut() else {
            return Err(Error::invalid("train", "cached pass without a cache"));
        };
        let indices: Vec<usize> = indices
            .into_iter()
            .filter(|&i| !cache.is_absent(i))
            .collect();
        if indices.is_empty() {
            return Ok(None);
        }
        let (values, shape) = cache.gather(&indices)?;
        let features = Tensor::from_vec(values, &shape, self.device)?;
        let labels = self.labels(&indices)?;
        Ok(Some((features, labels, self.boundary, indices.len())))
    }
}

/// Starts a pass over `batches` of `set`, from the cache when it is complete.
#[allow(clippy::too_many_arguments)]
fn start_pass<'a>(
    set: &'a ImageFolder,
    samples: &Arc<Vec<Sample>>,
    batches: Vec<Vec<usize>>,
    cache: Option<&'a mut FeatureCache>,
    boundary: usize,
    cfg: &TrainConfig,
    augment: bool,
    epoch: usize,
) -> Result<(Pass<'a>, bool)> {
    let cached = cache.as_ref().is_some_and(|c| c.is_complete());
    let inputs = if cached {
        Inputs::Cached(batches.into_iter())
    } else {
        Inputs::Images(Loader::spawn(
            Arc::clone(samples),
            batches,
            LoadOptions {
                size: cfg.size,
                augment,
                seed: cfg.seed,
                epoch,
                skip_bad: cfg.skip_bad,
                prefetch: cfg.prefetch,
                threads: cfg.workers,
            },
        )?)
    };
    Ok((
        Pass {
            inputs,
            samples: &set.samples,
            cache,
            boundary,
            device: cfg.device,
            size: cfg.size,
            skipped: Vec::new(),
        },
        cached,
    ))
}

/// Evaluates `model` (in eval mode, no graph) on `set`; with a cache, the
/// prefix `0..boundary` is read from (or stored into) it.
pub fn evaluate(
    model: &mut ResNet,
    set: &ImageFolder,
    cfg: &TrainConfig,
    cache: Option<&mut FeatureCache>,
    boundary: usize,
    label: &str,
) -> Result<(Evaluation, bool)> {
    model.eval();
    let samples = Arc::new(set.samples.clone());
    let batches = batches_of((0..set.len()).collect(), cfg.batch, false);
    let bar = progress_bar(cfg.progress, batches.len(), label.to_string());
    let (mut pass, cached) = start_pass(set, &samples, batches, cache, boundary, cfg, false, 0)?;
    let classes = set.classes.len();
    let mut ev = Evaluation {
        confusion: vec![vec![0; classes]; classes],
        ..Evaluation::default()
    };
    let _guard = crate::autograd::NoGradGuard::new();
    while let Some(step) = pass.next(model) {
        let (x, labels, from, n) = step?;
        let logits = model.forward_stages(&x, from..ResNet::STAGES)?;
        let loss = ops::cross_entropy(&logits, &labels)?.to_scalar_f32()?;
        ev.loss += loss as f64 * n as f64;
        let cols = logits.shape()[1];
        let predicted = argmax_rows(&logits.to_vec_f32()?, cols);
        for (p, l) in predicted.iter().zip(labels.to_vec_i64()?) {
            let l = l as usize;
            if *p == l {
                ev.correct += 1;
            }
            if let Some(row) = ev.confusion.get_mut(l) {
                if let Some(c) = row.get_mut(*p) {
                    *c += 1;
                }
            }
        }
        ev.images += n;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if ev.images > 0 {
        ev.loss /= ev.images as f64;
    }
    ev.skipped = pass.skipped;
    Ok((ev, cached))
}

/// Trains `model` with `sgd` for epochs `cfg.start_epoch..cfg.epochs`,
/// calling `on_epoch` after each (to print, log and checkpoint).
pub fn train(
    model: &mut ResNet,
    sgd: &mut Sgd,
    train_set: &ImageFolder,
    val_set: Option<&ImageFolder>,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&ResNet, &Sgd, &EpochLog) -> Result<()>,
) -> Result<Vec<EpochLog>> {
    if cfg.batch == 0 {
        return Err(Error::invalid("train", "--batch must be at least 1"));
    }
    if !model.parameters().iter().any(Tensor::requires_grad) {
        return Err(Error::invalid(
            "train",
            "no parameter is trainable (--trainable selected nothing)",
        ));
    }
    let boundary = match &cfg.cache {
        Some(_) => cache_boundary(model, cfg.frozen_bn, cfg.augment)?,
        None => 0,
    };
    let dir_of = |c: &Option<(usize, PathBuf)>| c.as_ref().map(|(m, d)| (*m, d.clone()));
    let mut train_cache =
        dir_of(&cfg.cache).map(|(m, d)| FeatureCache::new(train_set.len(), m, &d));
    let mut val_cache = match (dir_of(&cfg.cache), val_set) {
        // The validation features share the budget left after training's.
        (Some((m, d)), Some(v)) => Some(FeatureCache::new(v.len(), m / 2, &d)),
        _ => None,
    };
    let samples = Arc::new(train_set.samples.clone());
    let mut logs = Vec::new();
    for epoch in cfg.start_epoch..cfg.epochs {
        let started = Instant::now();
        let lr = cfg.schedule.lr_at(cfg.sgd.lr, epoch);
        sgd.set_lr(lr)?;
        set_train_mode(model, cfg.frozen_bn);

        let mut order: Vec<usize> = (0..train_set.len()).collect();
        if cfg.shuffle {
            let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(cfg.seed, epoch as u64, 7));
            order.shuffle(&mut rng);
        }
        let batches = batches_of(order, cfg.batch, cfg.drop_last);
        if batches.is_empty() {
            return Err(Error::invalid(
                "train",
                format!(
                    "{} training images make no batch of {} (--drop-last)",
                    train_set.len(),
                    cfg.batch
                ),
            ));
        }
        let bar = progress_bar(
            cfg.progress,
            batches.len(),
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let (mut pass, cached) = start_pass(
            train_set,
            &samples,
            batches,
            train_cache.as_mut(),
            boundary,
            cfg,
            cfg.augment,
            epoch,
        )?;
        let (mut loss_sum, mut correct, mut images) = (0f64, 0usize, 0usize);
        while let Some(step) = pass.next(model) {
            let (x, labels, from, n) = step?;
            let logits = model.forward_stages(&x, from..ResNet::STAGES)?;
            let loss = ops::cross_entropy(&logits, &labels)?;
            sgd.zero_grad(true)?;
            loss.backward()?;
            sgd.step()?;
            let value = loss.to_scalar_f32()?;
            if !value.is_finite() {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "the loss became {value} in epoch {} (lower --lr?)",
                        epoch + 1
                    ),
                ));
            }
            loss_sum += value as f64 * n as f64;
            let cols = logits.shape()[1];
            let predicted = argmax_rows(&logits.to_vec_f32()?, cols);
            let truth = labels.to_vec_i64()?;
            correct += predicted
                .iter()
                .zip(&truth)
                .filter(|(p, t)| **p as i64 == **t)
                .count();
            images += n;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let skipped = std::mem::take(&mut pass.skipped);
        drop(pass);
        for (path, why) in &skipped {
            eprintln!("warning: skipped {}: {why}", path.display());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let val = match val_set {
            Some(v) => Some(evaluate(
                model,
                v,
                cfg,
                val_cache.as_mut(),
                boundary,
                "validation",
            )?),
            None => None,
        };
        if let Some((ev, _)) = &val {
            for (path, why) in &ev.skipped {
                eprintln!("warning: skipped {}: {why}", path.display());
            }
        }
        let log = EpochLog {
            epoch: epoch + 1,
            train_loss: if images > 0 {
                loss_sum / images as f64
            } else {
                f64::NAN
            },
            train_acc: if images > 0 {
                correct as f64 / images as f64
            } else {
                0.0
            },
            val_loss: val.as_ref().map(|(e, _)| e.loss),
            val_acc: val.as_ref().map(|(e, _)| e.accuracy()),
            seconds: started.elapsed().as_secs_f64(),
            images_per_s: images as f64 / train_seconds.max(1e-9),
            cached,
            lr: lr as f64,
            skipped: skipped.len() + val.as_ref().map_or(0, |(e, _)| e.skipped.len()),
        };
        on_epoch(model, sgd, &log)?;
        logs.push(log);
    }
    Ok(logs)
}
