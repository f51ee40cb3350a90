//! The kernels' scalar parameters: one `#[repr(C)]` struct per kernel (or
//! per family of kernels), passed by value as the last kernel argument and
//! mirrored field for field by a `struct` of the same name in the kernel's
//! `.cu` file. Buffers stay separate pointer arguments, so that cudarc
//! tracks which buffers each launch reads and writes.
//!
//! A kernel reads its struct's bytes with the C layout of its own
//! declaration, which nothing but this file ties to the Rust one. So every
//! struct is declared through [`kernel_params!`], which records its C name,
//! size, alignment and fields, and [`layout_checks`] turns that record into
//! `static_assert`s the module cache appends to the kernel file's program.
//! A `.cu` struct whose fields differ from the Rust mirror in number, order
//! (by name), type, size or alignment then fails to compile — through NVRTC
//! on a GPU, through the emulation in the tests, and in
//! `scripts/check-kernels.sh` (which appends the same text, committed as
//! `kernels/layout_checks.cuh`). Same field types in the same order give the
//! same offsets in C as in `#[repr(C)]` (that is what `repr(C)` means), so
//! no `offsetof` is needed (NVRTC has none without headers).

use super::module_cache::KernelFile;

/// A type that can be a field of a kernel parameter struct.
pub(crate) trait CField {
    /// Its C spelling, as a type-id (`int`, `long long[8]`, `ConvGeometry`).
    const C_TYPE: &'static str;
    /// A C literal of the field's type for the aggregate initialisation
    /// check, distinct per position `i`; `None` for aggregates (their own
    /// check covers their fields).
    fn literal(i: usize) -> Option<String>;
}

impl CField for i32 {
    const C_TYPE: &'static str = "int";
    fn literal(i: usize) -> Option<String> {
        Some(format!("{i}"))
    }
}

impl CField for f32 {
    const C_TYPE: &'static str = "float";
    fn literal(i: usize) -> Option<String> {
        Some(format!("{i}.0f"))
    }
}

impl CField for i64 {
    const C_TYPE: &'static str = "long long";
    fn literal(i: usize) -> Option<String> {
        Some(format!("{i}LL"))
    }
}

/// The shapes and strides of the strided kernels (`MAX_DIMS` = 8 dims).
impl CField for [i64; 8] {
    const C_TYPE: &'static str = "long long[8]";
    fn literal(_: usize) -> Option<String> {
        None
    }
}

/// One field of a parameter struct, as C sees it.
#[derive(Debug)]
pub(crate) struct FieldLayout {
    pub c_name: &'static str,
    pub c_type: &'static str,
    pub literal: fn(usize) -> Option<String>,
}

/// A parameter struct: its C name, the kernel file declaring it (`None`:
/// `kernels/common.cuh`, part of every program), its Rust size and
/// alignment and its fields in order.
#[derive(Debug)]
pub(crate) struct ParamsLayout {
    pub name: &'static str,
    pub file: Option<KernelFile>,
    pub size: usize,
    pub align: usize,
    pub fields: &'static [FieldLayout],
}

/// Implemented by every struct declared with [`kernel_params!`].
pub(crate) trait KernelParams {
    const LAYOUT: ParamsLayout;
}

/// Declares a kernel parameter struct: `#[repr(C)]`, `Clone + Copy + Debug +
/// Default`, `DeviceRepr`, a [`KernelParams`] layout record and a
/// [`CField`] impl (so it can nest). A field is `rust_name: Type`, or
/// `rust_name as CName: Type` where the `.cu` spells it differently.
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        in $file:expr;
        struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident $(as $cname:ident)? : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default)]
        pub(crate) struct $name {
            $( $(#[$fmeta])* pub(crate) $field: $ty ),*
        }

        // SAFETY: a #[repr(C)] struct of plain numbers (or structs and
        // arrays of them) whose C declaration `layout_checks` holds to this
        // layout; any bit pattern is valid and it holds no pointer.
        unsafe impl cudarc::driver::DeviceRepr for $name {}

        impl $crate::backend::cuda::params::KernelParams for $name {
            const LAYOUT: $crate::backend::cuda::params::ParamsLayout =
                $crate::backend::cuda::params::ParamsLayout {
                    name: stringify!($name),
                    file: $file,
                    size: std::mem::size_of::<$name>(),
                    align: std::mem::align_of::<$name>(),
                    fields: &[$(
                        $crate::backend::cuda::params::FieldLayout {
                            c_name: $crate::backend::cuda::params::kernel_params!(@cname $field $($cname)?),
                            c_type: <$ty as $crate::backend::cuda::params::CField>::C_TYPE,
                            literal: <$ty as $crate::backend::cuda::params::CField>::literal,
                        }
                    ),*],
                };
        }

        impl $crate::backend::cuda::params::CField for $name {
            const C_TYPE: &'static str = stringify!($name);
            fn literal(_: usize) -> Option<String> {
                None
            }
        }
    };
    (@cname $field:ident $cname:ident) => { stringify!($cname) };
    (@cname $field:ident) => { stringify!($field) };
}
pub(crate) use kernel_params;

/// Every parameter struct. A kernel taking a struct by value that is not
/// listed here fails `every_by_value_kernel_parameter_is_checked`.
pub(crate) const ALL: &[ParamsLayout] = &[
    <super::conv::ConvGeometry as KernelParams>::LAYOUT,
    <super::conv::ConvParams as KernelParams>::LAYOUT,
    <super::conv::SumSplitsParams as KernelParams>::LAYOUT,
    <super::pool::PoolParams as KernelParams>::LAYOUT,
    <super::pool::AdaptivePoolParams as KernelParams>::LAYOUT,
    <super::elementwise::MapParams as KernelParams>::LAYOUT,
    <super::elementwise::ScaleParams as KernelParams>::LAYOUT,
    <super::elementwise::InvStdParams as KernelParams>::LAYOUT,
    <super::elementwise::RowsParams as KernelParams>::LAYOUT,
    <super::elementwise::ChannelSumsParams as KernelParams>::LAYOUT,
    <super::gemm::GemmParams as KernelParams>::LAYOUT,
    <super::batch_norm::BnParams as KernelParams>::LAYOUT,
    <super::loss::LossParams as KernelParams>::LAYOUT,
    <super::sgd::SgdParams as KernelParams>::LAYOUT,
    <super::general::StridedParams as KernelParams>::LAYOUT,
    <super::general::UnaryParams as KernelParams>::LAYOUT,
    <super::general::ReduceRowsParams as KernelParams>::LAYOUT,
    <super::general::BatchedMatmulParams as KernelParams>::LAYOUT,
];

/// The `static_assert`s for the structs of `file`'s program (its own and
/// those of `common.cuh`), to be appended to it.
pub(crate) fn layout_checks(file: KernelFile) -> String {
    let mut out = String::from(
        "// Layout checks of the kernel parameter structs against their Rust\n\
         // mirrors (src/backend/cuda/params.rs), generated.\n\
         template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };\n\
         template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };\n",
    );
    for layout in ALL
        .iter()
        .filter(|l| l.file.is_none() || l.file == Some(file))
    {
        struct_checks(layout, &mut out);
    }
    out
}

fn struct_checks(l: &ParamsLayout, out: &mut String) {
    use std::fmt::Write;
    let name = l.name;
    let mirror = "differs from the Rust mirror";
    let _ = writeln!(
        out,
        "static_assert(sizeof({name}) == {}, \"{name}: size {mirror}\");",
        l.size
    );
    let _ = writeln!(
        out,
        "static_assert(alignof({name}) == {}, \"{name}: alignment {mirror}\");",
        l.align
    );
    for f in l.fields {
        let _ = writeln!(
            out,
            "static_assert(fg_layout_same<decltype({name}::{}), {}>::value, \"{name}.{}: type {mirror}\");",
            f.c_name, f.c_type, f.c_name
        );
    }
    // Aggregate initialisation fills the fields in declaration order: each
    // scalar must read back the value of its Rust position. Too many or too
    // few C fields, or two swapped, fail here.
    let inits: Vec<String> = l
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.literal)(i).unwrap_or_else(|| "{}".into()))
        .collect();
    let _ = writeln!(
        out,
        "constexpr {name} fg_layout_{name}{{{}}};",
        inits.join(", ")
    );
    for (i, f) in l.fields.iter().enumerate() {
        if let Some(v) = (f.literal)(i) {
            let _ = writeln!(
                out,
                "static_assert(fg_layout_{name}.{} == {v}, \"{name}.{}: not field {i} of the Rust mirror\");",
                f.c_name, f.c_name
            );
        }
    }
}

/// The text of `kernels/layout_checks.cuh`: every file's checks, each
/// under `#ifdef FG_KERNEL_FILE_<stem>` (scripts/check-kernels.sh defines
/// it before appending the file).
#[cfg(test)]
pub(crate) fn layout_checks_file() -> String {
    let mut out = String::from(
        "// Generated from the #[repr(C)] kernel parameter structs in src/backend/cuda/\n\
         // (params.rs) -- do not edit. Rewrite it with\n\
         //   FROSTGRAD_WRITE_LAYOUT_CHECKS=1 cargo test --lib layout_checks_file_is_current\n\
         // The module cache appends a file's section to its program at run time;\n\
         // scripts/check-kernels.sh appends this file after `#define FG_KERNEL_FILE_<stem>`.\n",
    );
    for file in KernelFile::ALL {
        let stem = file.file_name().trim_end_matches(".cu");
        out.push_str(&format!("\n#ifdef FG_KERNEL_FILE_{stem}\n"));
        out.push_str(&layout_checks(file));
        out.push_str("#endif\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = "kernels/layout_checks.cuh";

    #[test]
    fn layout_checks_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
        let want = layout_checks_file();
        if std::env::var_os("FROSTGRAD_WRITE_LAYOUT_CHECKS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{COMMITTED} is stale: rerun with FROSTGRAD_WRITE_LAYOUT_CHECKS=1"
        );
    }

    /// The by-value (non-pointer) parameter types of every `extern "C"
    /// __global__` kernel of `source`.
    fn by_value_param_types(source: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find("__global__ void ") {
            rest = &rest[at + "__global__ void ".len()..];
            let open = rest.find('(').unwrap();
            let kernel = rest[..open].trim().to_string();
            let close = open + rest[open..].find(')').unwrap();
            for param in rest[open + 1..close].split(',') {
                let param = param.trim();
                if param.is_empty() || param.contains('*') {
                    continue;
                }
                let words: Vec<&str> = param
                    .split_whitespace()
                    .filter(|w| *w != "const" && !w.starts_with("__"))
                    .collect();
                let ty = words[..words.len() - 1].join(" ");
                out.push((kernel.clone(), ty));
            }
        }
        out
    }

    #[test]
    fn every_by_value_kernel_parameter_is_a_checked_struct() {
        for file in KernelFile::ALL {
            for (kernel, ty) in by_value_param_types(file.source()) {
                let found = ALL
                    .iter()
                    .any(|l| l.name == ty && (l.file.is_none() || l.file == Some(file)));
                assert!(
                    found,
                    "{}: kernel {kernel} takes `{ty}` by value; its scalars belong in a \
                     kernel_params! struct listed in params::ALL",
                    file.file_name()
                );
            }
        }
    }

    #[test]
    fn every_struct_is_declared_in_its_file() {
        for l in ALL {
            let text = match l.file {
                Some(f) => f.source(),
                None => super::super::module_cache::COMMON,
            };
            assert!(
                text.contains(&format!("struct {} {{", l.name)),
                "{} is not declared in {:?}",
                l.name,
                l.file
            );
        }
    }

    #[test]
    fn the_checks_name_every_field_in_order() {
        let pool = layout_checks(KernelFile::Pool);
        assert!(pool.contains("static_assert(sizeof(PoolParams) == 52,"));
        assert!(pool.contains("constexpr PoolParams fg_layout_PoolParams{0, 1, 2,"));
        assert!(pool.contains("static_assert(fg_layout_PoolParams.H == 1,"));
        assert!(!pool.contains("ConvParams"));
        let conv = layout_checks(KernelFile::Conv2d);
        assert!(conv.contains("fg_layout_same<decltype(ConvParams::g), ConvGeometry>"));
        assert!(conv.contains("constexpr ConvParams fg_layout_ConvParams{{}, 1, 2, 3, 4};"));
    }

    /// Compiles `file` with `edit` applied to its source, through NVRTC (the
    /// emulation's or a GPU's), with the layout checks of the Rust mirrors.
    fn compile_edited(file: KernelFile, from: &str, to: &str) -> crate::error::Result<()> {
        use super::super::module_cache::{compile_program, COMMON};
        let source = file.source();
        assert!(
            source.contains(from),
            "{from:?} not in {}",
            file.file_name()
        );
        let text = format!(
            "{COMMON}\n{}\n{}",
            source.replacen(from, to, 1),
            layout_checks(file)
        );
        let dev = crate::backend::cuda::device::get(0)?;
        compile_program(file.file_name(), &text, dev.compute_capability()).map(|_| ())
    }

    /// A `.cu` struct that drifts from its Rust mirror no longer compiles:
    /// swapped fields, a field of another type, one field too many.
    #[test]
    fn a_drifted_struct_fails_to_compile() {
        crate::backend::cuda::cuda_emu::cuda_test(
            "backend::cuda::params::tests::a_drifted_struct_fails_to_compile",
            || {
                let decl = "int planes, H, W, KH, KW,";
                compile_edited(KernelFile::Pool, decl, decl).expect("the file as it is");
                let cases = [
                    ("int planes, W, H, KH, KW,", "PoolParams.H: not field 1"),
                    ("int planes, H, W, KH; float KW; int", "PoolParams.KW: type"),
                    ("int extra, planes, H, W, KH, KW,", "PoolParams: size"),
                ];
                for (to, message) in cases {
                    let err = compile_edited(KernelFile::Pool, decl, to)
                        .expect_err(to)
                        .to_string();
                    assert!(err.contains(message), "{to}: {err}");
                }
            },
        );
    }
}
