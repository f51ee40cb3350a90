//! torchvision's ResNet-18: same layers, same names, same initialisation.
//!
//! ```text
//! conv1 7x7/2 (no bias) -> bn1 -> relu -> maxpool 3x3/2 pad 1
//!   -> layer1 (64) -> layer2 (128, /2) -> layer3 (256, /2) -> layer4 (512, /2)
//!   -> adaptive avgpool 1x1 -> flatten -> fc
//! ```
//! Each layer is two [`BasicBlock`]s; the first block of layers 2-4 halves
//! the resolution and doubles the channels, so its shortcut is a 1x1/2
//! conv + batch norm ([`Downsample`], named `downsample.0` / `downsample.1`).

use rand::{Rng, RngCore};

use crate::error::{Error, Result};
use crate::io::StateDict;
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear, Module};
use crate::ops::{self, MaxPool2dOptions};
use crate::tensor::Tensor;

/// The random source while building: `None` builds all-zero placeholders
/// for weights that are loaded right after (see `resnet18_from_state_dict`).
type Init<'a> = Option<&'a mut dyn RngCore>;

/// A shorter-lived copy of `init` for one sub-builder.
fn reborrow<'c>(init: &'c mut Init<'_>) -> Init<'c> {
    match init {
        Some(rng) => Some(&mut **rng),
        None => None,
    }
}

/// `Conv2d` with torchvision ResNet's initialisation and no bias.
fn resnet_conv(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    init: Init,
) -> Result<Conv2d> {
    let config = Conv2dConfig::new(in_c, out_c, kernel)
        .stride(stride)
        .padding(padding)
        .bias(false);
    match init {
        Some(rng) => Conv2d::kaiming_normal_fan_out(config, rng),
        None => Conv2d::zeroed(config),
    }
}

/// The residual shortcut when the shape changes: 1x1 conv with stride, then BN.
pub struct Downsample {
    /// `downsample.0`.
    pub conv: Conv2d,
    /// `downsample.1`.
    pub bn: BatchNorm2d,
}

impl Module for Downsample {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(input)?)
    }
    fn named_children(&self) -> Vec<(String, &dyn Module)> {
        vec![("0".into(), &self.conv), ("1".into(), &self.bn)]
    }
    fn named_children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![("0".into(), &mut self.conv), ("1".into(), &mut self.bn)]
    }
    fn is_training(&self) -> bool {
        self.bn.is_training()
    }
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub downsample: Option<Downsample>,
}

impl BasicBlock {
    /// A block from `in_c` to `out_c` channels; `stride` 2 halves the
    /// resolution. The shortcut gets a [`Downsample`] when the shape changes.
    pub fn new<R: Rng>(in_c: usize, out_c: usize, stride: usize, rng: &mut R) -> Result<Self> {
        Self::build(in_c, out_c, stride, &mut Some(rng))
    }

    fn build(in_c: usize, out_c: usize, stride: usize, init: &mut Init) -> Result<Self> {
        let conv1 = resnet_conv(in_c, out_c, 3, stride, 1, reborrow(init))?;
        let bn1 = BatchNorm2d::new(out_c)?;
        let conv2 = resnet_conv(out_c, out_c, 3, 1, 1, reborrow(init))?;
        let bn2 = BatchNorm2d::new(out_c)?;
        let downsample = if stride != 1 || in_c != out_c {
            let conv = resnet_conv(in_c, out_c, 1, stride, 0, reborrow(init))?;
            Some(Downsample {
                conv,
                bn: BatchNorm2d::new(out_c)?,
            })
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        // bn1 + relu fused (bn2 is followed by the residual add instead).
        let x = self.bn1.forward_relu(&self.conv1.forward(input)?)?;
        let x = self.bn2.forward(&self.conv2.forward(&x)?)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(input)?,
            None => input.clone(),
        };
        // The residual tail fused: `x` is this forward's last handle on
        // bn2's output, so the sum and ReLU are written over it in place.
        ops::add_relu(x, &shortcut)
    }
    fn named_children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
        ];
        if let Some(d) = &self.downsample {
            out.push(("downsample".into(), d));
        }
        out
    }
    fn named_children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut out: Vec<(String, &mut dyn Module)> = vec![
            ("conv1".into(), &mut self.conv1),
            ("bn1".into(), &mut self.bn1),
            ("conv2".into(), &mut self.conv2),
            ("bn2".into(), &mut self.bn2),
        ];
        if let Some(d) = &mut self.downsample {
            out.push(("downsample".into(), d));
        }
        out
    }
    fn is_training(&self) -> bool {
        self.bn1.is_training()
    }
}

/// ResNet-18. Every field is public and replaceable, as in PyTorch:
/// `model.fc = Linear::new(512, 10, &mut rng)?` swaps the classifier head.
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub layer1: Vec<BasicBlock>,
    pub layer2: Vec<BasicBlock>,
    pub layer3: Vec<BasicBlock>,
    pub layer4: Vec<BasicBlock>,
    pub fc: Linear,
    training: bool,
}

/// Channels of the feature vector `fc` sees.
const FEATURES: usize = 512;

/// `torchvision.models.resnet18(num_classes=num_classes)`, randomly initialised.
pub fn resnet18<R: Rng>(num_classes: usize, rng: &mut R) -> Result<ResNet> {
    ResNet::resnet18(num_classes, rng)
}

impl ResNet {
    /// torchvision's ResNet-18 with its initialisation: convs
    /// kaiming-normal (fan_out, relu), BN weight 1 and bias 0, `fc`
    /// PyTorch's `Linear` default. All parameters require gradients and the
    /// model starts in training mode.
    pub fn resnet18<R: Rng>(num_classes: usize, rng: &mut R) -> Result<Self> {
        Self::build(num_classes, &mut Some(rng))
    }

    fn build(num_classes: usize, init: &mut Init) -> Result<Self> {
        let conv1 = resnet_conv(3, 64, 7, 2, 3, reborrow(init))?;
        let mut stage = |in_c: usize, out_c: usize, stride: usize| -> Result<Vec<BasicBlock>> {
            Ok(vec![
                BasicBlock::build(in_c, out_c, stride, init)?,
                BasicBlock::build(out_c, out_c, 1, init)?,
            ])
        };
        let layer1 = stage(64, 64, 1)?;
        let layer2 = stage(64, 128, 2)?;
        let layer3 = stage(128, 256, 2)?;
        let layer4 = stage(256, FEATURES, 2)?;
        let fc = match init {
            Some(rng) => Linear::new(FEATURES, num_classes, rng)?,
            None => Linear::zeroed(FEATURES, num_classes)?,
        };
        Ok(Self {
            conv1,
            bn1: BatchNorm2d::new(64)?,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
            training: true,
        })
    }

    /// A ResNet-18 holding the weights of a torchvision `state_dict`; the
    /// number of classes comes from `fc.weight`. Any missing, unexpected or
    /// mis-shaped key is an error listing them all.
    pub fn resnet18_from_state_dict(state: &StateDict) -> Result<Self> {
        let classes = match state.get("fc.weight") {
            Some(w) if w.shape.len() == 2 && w.shape[1] == FEATURES && w.shape[0] > 0 => w.shape[0],
            Some(w) => {
                return Err(Error::StateDict(format!(
                    "not a ResNet-18 state dict: `fc.weight` has shape {:?}, expected [num_classes, {FEATURES}]",
                    w.shape
                )))
            }
            None => {
                return Err(Error::StateDict(
                    "not a ResNet-18 state dict: it has no `fc.weight` (the classifier head)".into(),
                ))
            }
        };
        let model = Self::build(classes, &mut None)?;
        model.load_state_dict(state)?;
        Ok(model)
    }

    pub fn num_classes(&self) -> usize {
        self.fc.out_features()
    }

    /// The layers in forward order, for code that walks the network.
    pub fn layers(&self) -> [&Vec<BasicBlock>; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }
}

/// The forward pass cut into [`ResNet::STAGES`] consecutive stages, so a
/// caller can run a frozen prefix once and the rest many times (the
/// feature cache of `frostgrad train`):
///
/// | stage | what | parameters |
/// | --- | --- | --- |
/// | 0 | conv1, bn1, relu, maxpool | `conv1.*`, `bn1.*` |
/// | 1..=8 | the blocks `layer1.0` ... `layer4.1` | `layerK.i.*` |
/// | 9 | adaptive average pool, flatten | none |
/// | 10 | fc | `fc.*` |
impl ResNet {
    pub const STAGES: usize = 11;

    /// The stage (see the table above) a parameter or buffer belongs to,
    /// or `None` for a name that is not ResNet-18's.
    pub fn stage_of(name: &str) -> Option<usize> {
        let mut parts = name.split('.');
        match parts.next()? {
            "conv1" | "bn1" => Some(0),
            "fc" => Some(10),
            layer => {
                let k: usize = layer.strip_prefix("layer")?.parse().ok()?;
                let i: usize = parts.next()?.parse().ok()?;
                ((1..=4).contains(&k) && i < 2).then_some(1 + 2 * (k - 1) + i)
            }
        }
    }

    /// A short name for stage `s`: `stem`, `layer3.1`, `avgpool`, `fc`.
    pub fn stage_name(s: usize) -> String {
        match s {
            0 => "stem".into(),
            1..=8 => format!("layer{}.{}", (s - 1) / 2 + 1, (s - 1) % 2),
            9 => "avgpool".into(),
            _ => "fc".into(),
        }
    }

    /// Runs stages `stages.start..stages.end` on `x` (the images for a
    /// range starting at 0, otherwise the output of stage `start - 1`).
    pub fn forward_stages(&self, x: &Tensor, stages: std::ops::Range<usize>) -> Result<Tensor> {
        if stages.start > stages.end || stages.end > Self::STAGES {
            return Err(Error::invalid(
                "ResNet::forward_stages",
                format!("stages {stages:?} outside 0..{}", Self::STAGES),
            ));
        }
        let mut x = x.clone();
        for s in stages {
            x = match s {
                0 => {
                    let [_, channels, _, _] = x.dims4("ResNet-18")?;
                    if channels != 3 {
                        return Err(Error::shape(
                            "ResNet-18",
                            format!("expects 3-channel images, got shape {:?}", x.shape()),
                        ));
                    }
                    let y = self.bn1.forward_relu(&self.conv1.forward(&x)?)?;
                    let pool = MaxPool2dOptions {
                        kernel: (3, 3),
                        stride: (2, 2),
                        padding: (1, 1),
                        dilation: (1, 1),
                    };
                    ops::max_pool2d(&y, pool)?
                }
                1..=8 => self.layers()[(s - 1) / 2][(s - 1) % 2].forward(&x)?,
                9 => ops::flatten(&ops::adaptive_avg_pool2d(&x, (1, 1))?, 1)?,
                _ => self.fc.forward(&x)?,
            };
        }
        Ok(x)
    }
}

impl Module for ResNet {
    /// `images [N, 3, H, W]` to logits `[N, num_classes]`.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_stages(images, 0..Self::STAGES)
    }
    fn named_children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("layer1".into(), &self.layer1),
            ("layer2".into(), &self.layer2),
            ("layer3".into(), &self.layer3),
            ("layer4".into(), &self.layer4),
            ("fc".into(), &self.fc),
        ]
    }
    fn named_children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("conv1".into(), &mut self.conv1),
            ("bn1".into(), &mut self.bn1),
            ("layer1".into(), &mut self.layer1),
            ("layer2".into(), &mut self.layer2),
            ("layer3".into(), &mut self.layer3),
            ("layer4".into(), &mut self.layer4),
            ("fc".into(), &mut self.fc),
        ]
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
        for (_, child) in self.named_children_mut() {
            child.set_training(training);
        }
    }
    fn is_training(&self) -> bool {
        self.training
    }
}
