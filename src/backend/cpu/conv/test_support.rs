//! Test scaffolding shared by the tests of conv/'s files: the direct
//! float64 convolution they are all checked against, and the pieces every
//! such test repeats (a pool of n threads, a case's pseudo-random operands
//! and reference, scratch poisoned with NaN, a column matrix entry).

use crate::backend::cpu::scratch::{with_scratch, Slot};
use crate::backend::cpu::test_data::pseudo_random;
use crate::backend::Conv2dGeometry;

use super::Limits;

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

/// The largest error of `got` against `want`, relative as [`assert_close`]
/// measures it (`|got - want| / (1 + |want|)`); infinite where any output
/// is NaN (`f64::max` alone would drop a NaN and score it 0). For tests
/// that compare errors rather than hold them to a tolerance.
pub(super) fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / (1.0 + w.abs()))
        .map(|e| if e.is_nan() { f64::INFINITY } else { e })
        .fold(0.0, f64::max)
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

/// A rayon pool of `threads` threads (at least one), for a test to run the
/// kernels on a known number of threads, whatever the machine has.
pub(super) fn thread_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .unwrap()
}

/// Seeds of a case's pseudo-random operands: case `i` of a list uses each
/// seed plus `i`, so that every case has its own data. `b: None` is a bias
/// of zeros (the gradient tests, which do not read the forward's).
#[derive(Clone, Copy)]
pub(super) struct Seeds {
    pub(super) x: u64,
    pub(super) w: u64,
    pub(super) b: Option<u64>,
    pub(super) dy: u64,
}

impl Seeds {
    /// The seeds of x, the weight, the bias (None: zeros) and dy.
    pub(super) const fn new(x: u64, w: u64, b: Option<u64>, dy: u64) -> Self {
        Self { x, w, b, dy }
    }
}

/// One case's geometry, operands and float64 reference.
pub(super) struct Data {
    pub(super) g: Conv2dGeometry,
    pub(super) x: Vec<f32>,
    pub(super) w: Vec<f32>,
    pub(super) b: Vec<f32>,
    pub(super) dy: Vec<f32>,
    pub(super) r: Reference,
}

/// Case number `case`'s data, or None where [`Conv2dGeometry::new`] rejects
/// the geometry (an empty output).
pub(super) fn case_data(
    case: usize,
    &(input, weight, stride, padding, dilation): &Case,
    seeds: Seeds,
) -> Option<Data> {
    let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).ok()?;
    let i = case as u64;
    let x = pseudo_random(input.iter().product(), seeds.x + i);
    let w = pseudo_random(weight.iter().product(), seeds.w + i);
    let b = match seeds.b {
        Some(seed) => pseudo_random(weight[0], seed + i),
        None => vec![0.0; weight[0]],
    };
    let dy = pseudo_random(g.output_shape().iter().product(), seeds.dy + i);
    let r = reference(&g, &x, &w, &b, &dy);
    Some(Data { g, x, w, b, dy, r })
}

/// A case list's item: a [`Case`] alone, or with a number of its own (the
/// threads of its pool, images per group).
pub(super) trait HasCase {
    fn case(&self) -> &Case;
}

impl HasCase for Case {
    fn case(&self) -> &Case {
        self
    }
}

impl HasCase for (Case, usize) {
    fn case(&self) -> &Case {
        &self.0
    }
}

/// Calls `f(case number, item, data)` for every item of `cases`, in order;
/// panics on a geometry that [`Conv2dGeometry::new`] rejects, so a case
/// list cannot lose a case silently.
pub(super) fn for_each_case<C: HasCase>(
    cases: &[C],
    seeds: Seeds,
    mut f: impl FnMut(usize, &C, &Data),
) {
    for (case, item) in cases.iter().enumerate() {
        let data = case_data(case, item.case(), seeds)
            .unwrap_or_else(|| panic!("case {case}: {:?} is no geometry", item.case()));
        f(case, item, &data);
    }
}

/// Fills `len` values of each of `slots` with NaN on every thread of
/// `pool`: a kernel that reads scratch it did not write then fails the
/// comparison with the reference.
pub(super) fn poison_scratch(pool: &rayon::ThreadPool, slots: &[Slot], len: usize) {
    pool.broadcast(|_| {
        for &slot in slots {
            with_scratch(slot, len, |b| {
                b.fill(f32::NAN);
                Ok(())
            })
            .unwrap();
        }
    });
}

/// Leaves a NaN-filled buffer of `len` floats in the buffer pool, for the
/// next output of that size to be handed: a kernel that leaves part of its
/// output unwritten then fails the comparison with the reference.
pub(super) fn poison_pooled(len: usize) {
    let mut dirty = crate::backend::cpu::buffer_pool::uninit::<f32>("test", len).unwrap();
    dirty.fill(f32::NAN);
    crate::backend::cpu::buffer_pool::recycle(dirty);
}

/// The column matrix's entry for tap `(c, kh, kw)` at output pixel
/// `(n, oh, ow)`: the input value it reads, 0 in the padding.
pub(super) fn column_entry(
    g: &Conv2dGeometry,
    x: &[f32],
    (c, kh, kw): (usize, usize, usize),
    (n, oh, ow): (usize, usize, usize),
) -> f32 {
    let ih = source(oh, kh, g.stride.0, g.padding.0, g.dilation.0, g.in_h);
    let iw = source(ow, kw, g.stride.1, g.padding.1, g.dilation.1, g.in_w);
    match (ih, iw) {
        (Some(ih), Some(iw)) => x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw],
        _ => 0.0,
    }
}

/// The chunkings the col2im input gradient's tests run: whole images per
/// group with the groups in parallel, one output row per chunk, and groups
/// of 64 columns, one per thread.
pub(super) fn col2im_limits() -> [Limits; 3] {
    [(usize::MAX / 2, 1, 0), (1, 1, 2), (usize::MAX / 2, 64, 1)].map(
        |(block_elems, min_columns, groups_per_thread)| Limits {
            block_elems,
            min_columns,
            groups_per_thread,
            dx_block_elems: 1 << 10,
            group_pack_elems: None,
        },
    )
}
