//! Test scaffolding shared by the tests of conv/'s files: the direct
//! float64 convolution they are all checked against.

use crate::backend::Conv2dGeometry;

/// Input coordinate of output `o` and tap `k`, if it is not padding.
pub(super) fn source(
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    len: usize,
) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (0..len as isize).contains(&i).then_some(i as usize)
}

/// Calls `f(n, co, oh, ow, c, kh, kw, x_index)` for every multiply of the
/// convolution that reads a real input pixel: the direct 7-loop definition.
pub(super) fn each_term(
    g: &Conv2dGeometry,
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize, usize),
) {
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    for c in 0..g.in_channels {
                        for kh in 0..g.kernel_h {
                            for kw in 0..g.kernel_w {
                                let ih =
                                    source(oh, kh, g.stride.0, g.padding.0, g.dilation.0, g.in_h);
                                let iw =
                                    source(ow, kw, g.stride.1, g.padding.1, g.dilation.1, g.in_w);
                                if let (Some(ih), Some(iw)) = (ih, iw) {
                                    let xi = ((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw;
                                    f(n, co, oh, ow, c, kh, kw, xi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) struct Reference {
    pub(super) y: Vec<f64>,
    pub(super) dx: Vec<f64>,
    pub(super) dw: Vec<f64>,
}

pub(super) fn reference(
    g: &Conv2dGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dy: &[f32],
) -> Reference {
    let [n, co, oh, ow] = g.output_shape();
    let mut y: Vec<f64> = (0..n * co * oh * ow)
        .map(|i| f64::from(b[(i / (oh * ow)) % co]))
        .collect();
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    each_term(g, |n, co, oh, ow, c, kh, kw, xi| {
        let wi = ((co * g.in_channels + c) * g.kernel_h + kh) * g.kernel_w + kw;
        let yi = ((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow;
        y[yi] += f64::from(w[wi]) * f64::from(x[xi]);
        dx[xi] += f64::from(w[wi]) * f64::from(dy[yi]);
        dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
    });
    Reference { y, dx, dw }
}

pub(super) fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

pub(super) type Case = (
    [usize; 4],
    [usize; 4],
    (usize, usize),
    (usize, usize),
    (usize, usize),
);
