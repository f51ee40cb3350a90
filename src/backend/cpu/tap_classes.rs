//! The order in which a chunk of small images lays out its output pixels
//! as GEMM columns when the GEMM skips the padding taps (`conv/forward.rs`,
//! `microkernel::gemm`'s live-row path).
//!
//! A pixel's *class* is the set of kernel taps `(kh, kw)` that see a real
//! input pixel there: the product of the set of valid `kh` for its output
//! row and the set of valid `kw` for its output column (both from
//! `conv::valid_outputs`, so any stride, padding and dilation fall out:
//! for a 3x3, padding-1 layer the interior sees all 9 taps, an edge 6, a
//! corner 4). The GEMM can skip a tap only where all the columns of a
//! panel (32 on AVX-512, 16 on AVX2) miss it, so the columns are ordered by
//! class: row classes in order of appearance (top, interior, bottom), and
//! within each, the column classes left to right, then right to left for
//! the next row class (a snake), so that neighbouring classes share their
//! missing taps where a panel straddles two of them. Within a class,
//! image by image, row by row. Against the best of all orders of the 9
//! classes of a 3x3 layer this one leaves 0-2 % of the FMAs (a script's
//! exhaustive search, 4x4 to 14x14, 2-16 images, both panel widths; the
//! script was not committed).
//!
//! The column classes cut every output row into pieces of a few pixels
//! (one for the left and right edges), which the panel fill then gathers;
//! so the order also comes with all columns as one class (whole rows,
//! ordered by row class only), which `conv::forward::skip_order` takes unless the
//! column classes save clearly more (4x4 in groups of 8 on 32-wide panels:
//! both 30 of 36 tap panels; 7x7 in groups of 8: 0.863 against 0.923 of
//! the FMAs, not enough to pay for the gathers).

use super::conv::valid_outputs;
use crate::backend::Conv2dGeometry;

/// Most output positions per axis, and most classes per axis, a
/// [`ClassOrder`] holds (fixed arrays: building one allocates nothing).
const AXIS_MAX: usize = 64;
const CLASSES_MAX: usize = 16;
/// Most kernel offsets per axis (the class masks are `u16`).
const KERNEL_MAX: usize = 16;

/// One class of an [`Axis`].
#[derive(Clone, Copy, Default, Debug)]
struct AxisClass {
    /// Bit `k`: kernel offset `k` sees a real input along this axis.
    mask: u16,
    /// First index into [`Axis::order`], and how many positions.
    start: u8,
    count: u8,
    /// Whether the positions are consecutive.
    contiguous: bool,
}

/// The output positions along one axis, grouped by class.
#[derive(Clone, Copy, Debug)]
struct Axis {
    order: [u8; AXIS_MAX],
    classes: [AxisClass; CLASSES_MAX],
    len: usize,
}

impl Axis {
    fn new(
        out: usize,
        input: usize,
        stride: usize,
        kernel: usize,
        dilation: usize,
        pad: usize,
    ) -> Option<Self> {
        if out > AXIS_MAX || kernel > KERNEL_MAX || stride == 0 {
            return None;
        }
        let mut ranges = [(0, 0); KERNEL_MAX];
        for (k, r) in ranges.iter_mut().enumerate().take(kernel) {
            *r = valid_outputs(out, input, stride, k * dilation, pad);
        }
        let mask_of = |o: usize| {
            (0..kernel).fold(0u16, |m, k| {
                let (lo, hi) = ranges[k];
                m | (u16::from(lo <= o && o < hi) << k)
            })
        };
        let mut axis = Self {
            order: [0; AXIS_MAX],
            classes: [AxisClass::default(); CLASSES_MAX],
            len: 0,
        };
        for o in 0..out {
            let mask = mask_of(o);
            if !axis.classes[..axis.len].iter().any(|c| c.mask == mask) {
                if axis.len == CLASSES_MAX {
                    return None;
                }
                axis.classes[axis.len].mask = mask;
                axis.len += 1;
            }
        }
        Some(axis.sorted(out, mask_of))
    }

    /// The axis with its classes' positions listed (`classes` holds their
    /// masks in order of appearance).
    fn sorted(mut self, out: usize, mask_of: impl Fn(usize) -> u16) -> Self {
        let axis = &mut self;
        let mut next = 0;
        for class in &mut axis.classes[..axis.len] {
            class.start = next as u8;
            for o in (0..out).filter(|&o| mask_of(o) == class.mask) {
                axis.order[next] = o as u8;
                next += 1;
            }
            class.count = (next - usize::from(class.start)) as u8;
            let members = &axis.order[usize::from(class.start)..next];
            class.contiguous = members.windows(2).all(|w| w[1] == w[0] + 1);
        }
        self
    }

    /// All positions as one class, of every offset any of them sees (the
    /// panel masks of whole output rows).
    fn merged(self, out: usize) -> Self {
        let mask = self.classes[..self.len].iter().fold(0, |m, c| m | c.mask);
        let mut one = Self {
            order: [0; AXIS_MAX],
            classes: [AxisClass::default(); CLASSES_MAX],
            len: 1,
        };
        one.classes[0].mask = mask;
        one.sorted(out, |_| mask)
    }
}

/// The class order of the columns of a chunk of `images` whole images (see
/// the module doc).
#[derive(Clone, Copy, Debug)]
pub(super) struct ClassOrder {
    rows: Axis,
    cols: Axis,
    kernel_w: usize,
    out_w: usize,
    images: usize,
}

impl ClassOrder {
    /// The order for `images` images of geometry `g`, or `None` when the
    /// geometry is outside what it handles (more than 64 output rows or
    /// columns, more than 64 taps, more than 16 classes per axis). With
    /// `split_columns` false the column classes are one: whole output rows
    /// ordered by row class only.
    pub(super) fn new(g: &Conv2dGeometry, images: usize, split_columns: bool) -> Option<Self> {
        if g.kernel_h * g.kernel_w > 64 {
            return None;
        }
        let rows = Axis::new(
            g.out_h,
            g.in_h,
            g.stride.0,
            g.kernel_h,
            g.dilation.0,
            g.padding.0,
        )?;
        let cols = Axis::new(
            g.out_w,
            g.in_w,
            g.stride.1,
            g.kernel_w,
            g.dilation.1,
            g.padding.1,
        )?;
        let cols = if split_columns {
            cols
        } else {
            cols.merged(g.out_w)
        };
        Some(Self {
            rows,
            cols,
            kernel_w: g.kernel_w,
            out_w: g.out_w,
            images,
        })
    }

    /// The column classes of row class `a`, in snake order.
    fn pairs(&self) -> impl Iterator<Item = (AxisClass, AxisClass)> + '_ {
        let (rows, cols) = (&self.rows, &self.cols);
        (0..rows.len).flat_map(move |a| {
            (0..cols.len).map(move |i| {
                let b = if a % 2 == 1 { cols.len - 1 - i } else { i };
                (rows.classes[a], cols.classes[b])
            })
        })
    }

    /// The taps `kh * KW + kw` a pair of classes sees, as a mask.
    fn taps(&self, row: AxisClass, col: AxisClass) -> u64 {
        let mut mask = 0u64;
        for kh in (0..16).filter(|&kh| row.mask >> kh & 1 == 1) {
            for kw in (0..16).filter(|&kw| col.mask >> kw & 1 == 1) {
                mask |= 1 << (kh * self.kernel_w + kw);
            }
        }
        mask
    }

    /// Calls `visit(offset, image, oh, ow, len, taps)` for the columns
    /// `j0..j0 + count` in order, as pieces of `len` consecutive columns
    /// that are the consecutive pixels `ow..ow + len` of output row `oh` of
    /// image `image` (within the chunk), all of one class, which sees the
    /// taps of mask `taps`; `offset` is the piece's first column minus `j0`.
    pub(super) fn pieces(
        &self,
        j0: usize,
        count: usize,
        visit: impl FnMut(usize, usize, usize, usize, usize, u64),
    ) {
        self.walk(j0, count, false, visit);
    }

    /// As [`Self::pieces`], but a piece may run on into the next output
    /// rows where the pixels stay consecutive in the image plane (a class
    /// of whole rows that follow each other): `ow + len` may pass `out_w`.
    /// For copying the output, which needs no row boundaries.
    pub(super) fn spans(
        &self,
        j0: usize,
        count: usize,
        visit: impl FnMut(usize, usize, usize, usize, usize, u64),
    ) {
        self.walk(j0, count, true, visit);
    }

    fn walk(
        &self,
        j0: usize,
        count: usize,
        across_rows: bool,
        mut visit: impl FnMut(usize, usize, usize, usize, usize, u64),
    ) {
        let end = j0 + count;
        let mut start = 0;
        for (row, col) in self.pairs() {
            if start >= end {
                break;
            }
            let (ra, cb) = (usize::from(row.count), usize::from(col.count));
            let size = ra * cb * self.images;
            if start + size <= j0 || size == 0 {
                start += size;
                continue;
            }
            let taps = self.taps(row, col);
            // Whole rows, one after the other: an image's pixels of this
            // class are one stretch of its plane.
            let plane = across_rows && col.contiguous && row.contiguous && cb == self.out_w;
            let mut q = j0.saturating_sub(start);
            let last = (end - start).min(size);
            while q < last {
                let (image, rem) = (q / (ra * cb), q % (ra * cb));
                let (ri, ci) = (rem / cb, rem % cb);
                let oh = usize::from(self.rows.order[usize::from(row.start) + ri]);
                let ow = usize::from(self.cols.order[usize::from(col.start) + ci]);
                let len = if plane {
                    (ra * cb - rem).min(last - q)
                } else if col.contiguous {
                    (cb - ci).min(last - q)
                } else {
                    1
                };
                visit(start + q - j0, image, oh, ow, len, taps);
                q += len;
            }
            start += size;
        }
    }

    /// The taps any of the columns `j0..j0 + count` sees.
    pub(super) fn taps_of(&self, j0: usize, count: usize) -> u64 {
        let mut mask = 0;
        self.pieces(j0, count, |_, _, _, _, _, taps| mask |= taps);
        mask
    }

    /// The share of the FMAs a GEMM over `columns` columns in this order
    /// computes, in panels of `nr`, against computing every tap of every
    /// panel: what skipping the padding saves is `1 -` it.
    pub(super) fn live_share(&self, columns: usize, nr: usize, taps: usize) -> f64 {
        let panels = columns.div_ceil(nr.max(1));
        if panels == 0 || taps == 0 {
            return 1.0;
        }
        let live: u32 = (0..panels)
            .map(|p| {
                let j0 = p * nr;
                self.taps_of(j0, nr.min(columns - j0)).count_ones()
            })
            .sum();
        f64::from(live) / (panels * taps) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(size: usize, stride: usize, kernel: usize, pad: usize) -> Conv2dGeometry {
        Conv2dGeometry::new(
            [3, 2, size, size],
            [2, 2, kernel, kernel],
            (stride, stride),
            (pad, pad),
            (1, 1),
        )
        .unwrap()
    }

    /// Every column is one pixel of one image, each exactly once, and the
    /// mask a piece reports is the set of taps that see input there (with
    /// column classes), or holds it (whole rows).
    #[test]
    fn pieces_cover_every_pixel_once_with_its_taps() {
        for g in [
            geo(4, 1, 3, 1),
            geo(7, 1, 3, 1),
            geo(7, 2, 3, 1),
            geo(14, 2, 3, 1),
            geo(9, 1, 5, 2),
            geo(5, 1, 3, 0),
            geo(6, 3, 2, 2),
            Conv2dGeometry::new([2, 1, 5, 9], [1, 1, 3, 2], (1, 2), (2, 0), (2, 1)).unwrap(),
        ] {
            for (images, split) in [1, 2, 3].into_iter().flat_map(|i| [(i, true), (i, false)]) {
                let order = ClassOrder::new(&g, images, split).unwrap();
                let pixels = g.out_h * g.out_w;
                let columns = images * pixels;
                let mut seen = vec![usize::MAX; columns];
                // In windows of every size, so pieces start and end inside
                // classes and rows.
                for window in [1, 5, 32, columns] {
                    for j0 in (0..columns).step_by(window) {
                        let count = window.min(columns - j0);
                        let mut covered = 0;
                        order.pieces(j0, count, |off, image, oh, ow, len, taps| {
                            assert_eq!(off, covered, "{g:?}: pieces in order");
                            covered += len;
                            for e in 0..len {
                                let pixel = image * pixels + oh * g.out_w + ow + e;
                                let j = j0 + off + e;
                                assert!(seen[j] == usize::MAX || seen[j] == pixel);
                                seen[j] = pixel;
                                // The taps that see input at this pixel.
                                let mut want = 0u64;
                                for kh in 0..g.kernel_h {
                                    for kw in 0..g.kernel_w {
                                        let ih = (oh * g.stride.0 + kh * g.dilation.0) as isize
                                            - g.padding.0 as isize;
                                        let iw = ((ow + e) * g.stride.1 + kw * g.dilation.1)
                                            as isize
                                            - g.padding.1 as isize;
                                        if (0..g.in_h as isize).contains(&ih)
                                            && (0..g.in_w as isize).contains(&iw)
                                        {
                                            want |= 1 << (kh * g.kernel_w + kw);
                                        }
                                    }
                                }
                                // Whole rows (no column classes) report
                                // the taps any pixel of the row sees.
                                let what = format!("{g:?} split {split} pixel ({oh}, {})", ow + e);
                                assert_eq!(want & !taps, 0, "{what}: a seen tap missing");
                                if split {
                                    assert_eq!(taps, want, "{what}");
                                }
                            }
                        });
                        assert_eq!(covered, count);
                    }
                }
                // Spans: the same columns, as stretches of image planes.
                let mut covered = 0;
                order.spans(0, columns, |off, image, oh, ow, len, _| {
                    assert_eq!(off, covered);
                    covered += len;
                    for e in 0..len {
                        assert_eq!(seen[off + e], image * pixels + oh * g.out_w + ow + e);
                    }
                });
                assert_eq!(covered, columns);
                let mut pixels_seen = seen.clone();
                pixels_seen.sort_unstable();
                assert_eq!(pixels_seen, (0..columns).collect::<Vec<_>>(), "{g:?}");
            }
        }
    }

    #[test]
    fn the_class_order_saves_what_the_plan_expects() {
        // 3x3 padding 1 at 4x4, 8 images, 32-wide panels: the top and
        // bottom rows fill a panel each (6 taps), the middle rows two (9).
        for split in [false, true] {
            let order = ClassOrder::new(&geo(4, 1, 3, 1), 8, split).unwrap();
            assert!((order.live_share(128, 32, 9) - 30.0 / 36.0).abs() < 1e-12);
        }
        // 16-wide panels separate the left and right edges too, when the
        // column classes are kept apart.
        let order = ClassOrder::new(&geo(4, 1, 3, 1), 8, true).unwrap();
        assert!((order.live_share(128, 16, 9) - 0.75).abs() < 1e-12);
        // Nothing to skip without padding.
        let order = ClassOrder::new(&geo(7, 1, 3, 0), 4, true).unwrap();
        assert_eq!(order.live_share(100, 32, 9), 1.0);
        // Too large for the fixed tables.
        assert!(ClassOrder::new(&geo(65, 1, 3, 1), 1, true).is_none());
    }
}
