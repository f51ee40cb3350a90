// Generated from the #[repr(C)] kernel parameter structs in src/backend/cuda/
// (params.rs) -- do not edit. Rewrite it with
//   FROSTGRAD_WRITE_LAYOUT_CHECKS=1 cargo test --lib layout_checks_file_is_current
// The module cache appends a file's section to its program at run time;
// scripts/check-kernels.sh appends this file after `#define FG_KERNEL_FILE_<stem>`.

#ifdef FG_KERNEL_FILE_conv2d
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(ConvGeometry) == 60, "ConvGeometry: size differs from the Rust mirror");
static_assert(alignof(ConvGeometry) == 4, "ConvGeometry: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::N), int>::value, "ConvGeometry.N: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::C), int>::value, "ConvGeometry.C: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::H), int>::value, "ConvGeometry.H: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::W), int>::value, "ConvGeometry.W: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::O), int>::value, "ConvGeometry.O: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::KH), int>::value, "ConvGeometry.KH: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::KW), int>::value, "ConvGeometry.KW: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::stride_h), int>::value, "ConvGeometry.stride_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::stride_w), int>::value, "ConvGeometry.stride_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::pad_h), int>::value, "ConvGeometry.pad_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::pad_w), int>::value, "ConvGeometry.pad_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::dil_h), int>::value, "ConvGeometry.dil_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::dil_w), int>::value, "ConvGeometry.dil_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::OH), int>::value, "ConvGeometry.OH: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvGeometry::OW), int>::value, "ConvGeometry.OW: type differs from the Rust mirror");
constexpr ConvGeometry fg_layout_ConvGeometry{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
static_assert(fg_layout_ConvGeometry.N == 0, "ConvGeometry.N: not field 0 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.C == 1, "ConvGeometry.C: not field 1 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.H == 2, "ConvGeometry.H: not field 2 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.W == 3, "ConvGeometry.W: not field 3 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.O == 4, "ConvGeometry.O: not field 4 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.KH == 5, "ConvGeometry.KH: not field 5 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.KW == 6, "ConvGeometry.KW: not field 6 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.stride_h == 7, "ConvGeometry.stride_h: not field 7 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.stride_w == 8, "ConvGeometry.stride_w: not field 8 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.pad_h == 9, "ConvGeometry.pad_h: not field 9 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.pad_w == 10, "ConvGeometry.pad_w: not field 10 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.dil_h == 11, "ConvGeometry.dil_h: not field 11 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.dil_w == 12, "ConvGeometry.dil_w: not field 12 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.OH == 13, "ConvGeometry.OH: not field 13 of the Rust mirror");
static_assert(fg_layout_ConvGeometry.OW == 14, "ConvGeometry.OW: not field 14 of the Rust mirror");
static_assert(sizeof(ConvParams) == 76, "ConvParams: size differs from the Rust mirror");
static_assert(alignof(ConvParams) == 4, "ConvParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvParams::g), ConvGeometry>::value, "ConvParams.g: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvParams::has_bias), int>::value, "ConvParams.has_bias: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvParams::a_vec), int>::value, "ConvParams.a_vec: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvParams::b_vec), int>::value, "ConvParams.b_vec: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ConvParams::chunk), int>::value, "ConvParams.chunk: type differs from the Rust mirror");
constexpr ConvParams fg_layout_ConvParams{{}, 1, 2, 3, 4};
static_assert(fg_layout_ConvParams.has_bias == 1, "ConvParams.has_bias: not field 1 of the Rust mirror");
static_assert(fg_layout_ConvParams.a_vec == 2, "ConvParams.a_vec: not field 2 of the Rust mirror");
static_assert(fg_layout_ConvParams.b_vec == 3, "ConvParams.b_vec: not field 3 of the Rust mirror");
static_assert(fg_layout_ConvParams.chunk == 4, "ConvParams.chunk: not field 4 of the Rust mirror");
static_assert(sizeof(SumSplitsParams) == 8, "SumSplitsParams: size differs from the Rust mirror");
static_assert(alignof(SumSplitsParams) == 4, "SumSplitsParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SumSplitsParams::n), int>::value, "SumSplitsParams.n: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SumSplitsParams::splits), int>::value, "SumSplitsParams.splits: type differs from the Rust mirror");
constexpr SumSplitsParams fg_layout_SumSplitsParams{0, 1};
static_assert(fg_layout_SumSplitsParams.n == 0, "SumSplitsParams.n: not field 0 of the Rust mirror");
static_assert(fg_layout_SumSplitsParams.splits == 1, "SumSplitsParams.splits: not field 1 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_batch_norm
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(BnParams) == 52, "BnParams: size differs from the Rust mirror");
static_assert(alignof(BnParams) == 4, "BnParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::N), int>::value, "BnParams.N: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::C), int>::value, "BnParams.C: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::S), int>::value, "BnParams.S: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::planes), int>::value, "BnParams.planes: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::eps), float>::value, "BnParams.eps: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::inv_count), float>::value, "BnParams.inv_count: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::momentum), float>::value, "BnParams.momentum: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::unbias), float>::value, "BnParams.unbias: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::has_weight), int>::value, "BnParams.has_weight: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::has_bias), int>::value, "BnParams.has_bias: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::fuse_relu), int>::value, "BnParams.fuse_relu: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::mask), int>::value, "BnParams.mask: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BnParams::with_xhat), int>::value, "BnParams.with_xhat: type differs from the Rust mirror");
constexpr BnParams fg_layout_BnParams{0, 1, 2, 3, 4.0f, 5.0f, 6.0f, 7.0f, 8, 9, 10, 11, 12};
static_assert(fg_layout_BnParams.N == 0, "BnParams.N: not field 0 of the Rust mirror");
static_assert(fg_layout_BnParams.C == 1, "BnParams.C: not field 1 of the Rust mirror");
static_assert(fg_layout_BnParams.S == 2, "BnParams.S: not field 2 of the Rust mirror");
static_assert(fg_layout_BnParams.planes == 3, "BnParams.planes: not field 3 of the Rust mirror");
static_assert(fg_layout_BnParams.eps == 4.0f, "BnParams.eps: not field 4 of the Rust mirror");
static_assert(fg_layout_BnParams.inv_count == 5.0f, "BnParams.inv_count: not field 5 of the Rust mirror");
static_assert(fg_layout_BnParams.momentum == 6.0f, "BnParams.momentum: not field 6 of the Rust mirror");
static_assert(fg_layout_BnParams.unbias == 7.0f, "BnParams.unbias: not field 7 of the Rust mirror");
static_assert(fg_layout_BnParams.has_weight == 8, "BnParams.has_weight: not field 8 of the Rust mirror");
static_assert(fg_layout_BnParams.has_bias == 9, "BnParams.has_bias: not field 9 of the Rust mirror");
static_assert(fg_layout_BnParams.fuse_relu == 10, "BnParams.fuse_relu: not field 10 of the Rust mirror");
static_assert(fg_layout_BnParams.mask == 11, "BnParams.mask: not field 11 of the Rust mirror");
static_assert(fg_layout_BnParams.with_xhat == 12, "BnParams.with_xhat: not field 12 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_pool
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(PoolParams) == 52, "PoolParams: size differs from the Rust mirror");
static_assert(alignof(PoolParams) == 4, "PoolParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::planes), int>::value, "PoolParams.planes: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::H), int>::value, "PoolParams.H: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::W), int>::value, "PoolParams.W: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::KH), int>::value, "PoolParams.KH: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::KW), int>::value, "PoolParams.KW: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::stride_h), int>::value, "PoolParams.stride_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::stride_w), int>::value, "PoolParams.stride_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::pad_h), int>::value, "PoolParams.pad_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::pad_w), int>::value, "PoolParams.pad_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::dil_h), int>::value, "PoolParams.dil_h: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::dil_w), int>::value, "PoolParams.dil_w: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::OH), int>::value, "PoolParams.OH: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(PoolParams::OW), int>::value, "PoolParams.OW: type differs from the Rust mirror");
constexpr PoolParams fg_layout_PoolParams{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static_assert(fg_layout_PoolParams.planes == 0, "PoolParams.planes: not field 0 of the Rust mirror");
static_assert(fg_layout_PoolParams.H == 1, "PoolParams.H: not field 1 of the Rust mirror");
static_assert(fg_layout_PoolParams.W == 2, "PoolParams.W: not field 2 of the Rust mirror");
static_assert(fg_layout_PoolParams.KH == 3, "PoolParams.KH: not field 3 of the Rust mirror");
static_assert(fg_layout_PoolParams.KW == 4, "PoolParams.KW: not field 4 of the Rust mirror");
static_assert(fg_layout_PoolParams.stride_h == 5, "PoolParams.stride_h: not field 5 of the Rust mirror");
static_assert(fg_layout_PoolParams.stride_w == 6, "PoolParams.stride_w: not field 6 of the Rust mirror");
static_assert(fg_layout_PoolParams.pad_h == 7, "PoolParams.pad_h: not field 7 of the Rust mirror");
static_assert(fg_layout_PoolParams.pad_w == 8, "PoolParams.pad_w: not field 8 of the Rust mirror");
static_assert(fg_layout_PoolParams.dil_h == 9, "PoolParams.dil_h: not field 9 of the Rust mirror");
static_assert(fg_layout_PoolParams.dil_w == 10, "PoolParams.dil_w: not field 10 of the Rust mirror");
static_assert(fg_layout_PoolParams.OH == 11, "PoolParams.OH: not field 11 of the Rust mirror");
static_assert(fg_layout_PoolParams.OW == 12, "PoolParams.OW: not field 12 of the Rust mirror");
static_assert(sizeof(AdaptivePoolParams) == 20, "AdaptivePoolParams: size differs from the Rust mirror");
static_assert(alignof(AdaptivePoolParams) == 4, "AdaptivePoolParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(AdaptivePoolParams::planes), int>::value, "AdaptivePoolParams.planes: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(AdaptivePoolParams::H), int>::value, "AdaptivePoolParams.H: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(AdaptivePoolParams::W), int>::value, "AdaptivePoolParams.W: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(AdaptivePoolParams::OH), int>::value, "AdaptivePoolParams.OH: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(AdaptivePoolParams::OW), int>::value, "AdaptivePoolParams.OW: type differs from the Rust mirror");
constexpr AdaptivePoolParams fg_layout_AdaptivePoolParams{0, 1, 2, 3, 4};
static_assert(fg_layout_AdaptivePoolParams.planes == 0, "AdaptivePoolParams.planes: not field 0 of the Rust mirror");
static_assert(fg_layout_AdaptivePoolParams.H == 1, "AdaptivePoolParams.H: not field 1 of the Rust mirror");
static_assert(fg_layout_AdaptivePoolParams.W == 2, "AdaptivePoolParams.W: not field 2 of the Rust mirror");
static_assert(fg_layout_AdaptivePoolParams.OH == 3, "AdaptivePoolParams.OH: not field 3 of the Rust mirror");
static_assert(fg_layout_AdaptivePoolParams.OW == 4, "AdaptivePoolParams.OW: not field 4 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_gemm
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(GemmParams) == 20, "GemmParams: size differs from the Rust mirror");
static_assert(alignof(GemmParams) == 4, "GemmParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(GemmParams::M), int>::value, "GemmParams.M: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(GemmParams::N), int>::value, "GemmParams.N: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(GemmParams::K), int>::value, "GemmParams.K: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(GemmParams::a_vec), int>::value, "GemmParams.a_vec: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(GemmParams::b_vec), int>::value, "GemmParams.b_vec: type differs from the Rust mirror");
constexpr GemmParams fg_layout_GemmParams{0, 1, 2, 3, 4};
static_assert(fg_layout_GemmParams.M == 0, "GemmParams.M: not field 0 of the Rust mirror");
static_assert(fg_layout_GemmParams.N == 1, "GemmParams.N: not field 1 of the Rust mirror");
static_assert(fg_layout_GemmParams.K == 2, "GemmParams.K: not field 2 of the Rust mirror");
static_assert(fg_layout_GemmParams.a_vec == 3, "GemmParams.a_vec: not field 3 of the Rust mirror");
static_assert(fg_layout_GemmParams.b_vec == 4, "GemmParams.b_vec: not field 4 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_elementwise
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(MapParams) == 4, "MapParams: size differs from the Rust mirror");
static_assert(alignof(MapParams) == 4, "MapParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(MapParams::n), int>::value, "MapParams.n: type differs from the Rust mirror");
constexpr MapParams fg_layout_MapParams{0};
static_assert(fg_layout_MapParams.n == 0, "MapParams.n: not field 0 of the Rust mirror");
static_assert(sizeof(ScaleParams) == 8, "ScaleParams: size differs from the Rust mirror");
static_assert(alignof(ScaleParams) == 4, "ScaleParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ScaleParams::factor), float>::value, "ScaleParams.factor: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ScaleParams::n), int>::value, "ScaleParams.n: type differs from the Rust mirror");
constexpr ScaleParams fg_layout_ScaleParams{0.0f, 1};
static_assert(fg_layout_ScaleParams.factor == 0.0f, "ScaleParams.factor: not field 0 of the Rust mirror");
static_assert(fg_layout_ScaleParams.n == 1, "ScaleParams.n: not field 1 of the Rust mirror");
static_assert(sizeof(InvStdParams) == 8, "InvStdParams: size differs from the Rust mirror");
static_assert(alignof(InvStdParams) == 4, "InvStdParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(InvStdParams::eps), float>::value, "InvStdParams.eps: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(InvStdParams::n), int>::value, "InvStdParams.n: type differs from the Rust mirror");
constexpr InvStdParams fg_layout_InvStdParams{0.0f, 1};
static_assert(fg_layout_InvStdParams.eps == 0.0f, "InvStdParams.eps: not field 0 of the Rust mirror");
static_assert(fg_layout_InvStdParams.n == 1, "InvStdParams.n: not field 1 of the Rust mirror");
static_assert(sizeof(RowsParams) == 8, "RowsParams: size differs from the Rust mirror");
static_assert(alignof(RowsParams) == 4, "RowsParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(RowsParams::rows), int>::value, "RowsParams.rows: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(RowsParams::cols), int>::value, "RowsParams.cols: type differs from the Rust mirror");
constexpr RowsParams fg_layout_RowsParams{0, 1};
static_assert(fg_layout_RowsParams.rows == 0, "RowsParams.rows: not field 0 of the Rust mirror");
static_assert(fg_layout_RowsParams.cols == 1, "RowsParams.cols: not field 1 of the Rust mirror");
static_assert(sizeof(ChannelSumsParams) == 12, "ChannelSumsParams: size differs from the Rust mirror");
static_assert(alignof(ChannelSumsParams) == 4, "ChannelSumsParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ChannelSumsParams::N), int>::value, "ChannelSumsParams.N: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ChannelSumsParams::C), int>::value, "ChannelSumsParams.C: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ChannelSumsParams::S), int>::value, "ChannelSumsParams.S: type differs from the Rust mirror");
constexpr ChannelSumsParams fg_layout_ChannelSumsParams{0, 1, 2};
static_assert(fg_layout_ChannelSumsParams.N == 0, "ChannelSumsParams.N: not field 0 of the Rust mirror");
static_assert(fg_layout_ChannelSumsParams.C == 1, "ChannelSumsParams.C: not field 1 of the Rust mirror");
static_assert(fg_layout_ChannelSumsParams.S == 2, "ChannelSumsParams.S: not field 2 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_loss
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(LossParams) == 8, "LossParams: size differs from the Rust mirror");
static_assert(alignof(LossParams) == 4, "LossParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(LossParams::rows), int>::value, "LossParams.rows: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(LossParams::cols), int>::value, "LossParams.cols: type differs from the Rust mirror");
constexpr LossParams fg_layout_LossParams{0, 1};
static_assert(fg_layout_LossParams.rows == 0, "LossParams.rows: not field 0 of the Rust mirror");
static_assert(fg_layout_LossParams.cols == 1, "LossParams.cols: not field 1 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_sgd
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(SgdParams) == 32, "SgdParams: size differs from the Rust mirror");
static_assert(alignof(SgdParams) == 4, "SgdParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::lr), float>::value, "SgdParams.lr: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::momentum), float>::value, "SgdParams.momentum: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::dampening), float>::value, "SgdParams.dampening: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::weight_decay), float>::value, "SgdParams.weight_decay: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::has_momentum), int>::value, "SgdParams.has_momentum: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::initialize_buffer), int>::value, "SgdParams.initialize_buffer: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::nesterov), int>::value, "SgdParams.nesterov: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(SgdParams::n), int>::value, "SgdParams.n: type differs from the Rust mirror");
constexpr SgdParams fg_layout_SgdParams{0.0f, 1.0f, 2.0f, 3.0f, 4, 5, 6, 7};
static_assert(fg_layout_SgdParams.lr == 0.0f, "SgdParams.lr: not field 0 of the Rust mirror");
static_assert(fg_layout_SgdParams.momentum == 1.0f, "SgdParams.momentum: not field 1 of the Rust mirror");
static_assert(fg_layout_SgdParams.dampening == 2.0f, "SgdParams.dampening: not field 2 of the Rust mirror");
static_assert(fg_layout_SgdParams.weight_decay == 3.0f, "SgdParams.weight_decay: not field 3 of the Rust mirror");
static_assert(fg_layout_SgdParams.has_momentum == 4, "SgdParams.has_momentum: not field 4 of the Rust mirror");
static_assert(fg_layout_SgdParams.initialize_buffer == 5, "SgdParams.initialize_buffer: not field 5 of the Rust mirror");
static_assert(fg_layout_SgdParams.nesterov == 6, "SgdParams.nesterov: not field 6 of the Rust mirror");
static_assert(fg_layout_SgdParams.n == 7, "SgdParams.n: not field 7 of the Rust mirror");
#endif

#ifdef FG_KERNEL_FILE_general
// Layout checks of the kernel parameter structs against their Rust
// mirrors (src/backend/cuda/params.rs), generated.
template <class A, class B> struct fg_layout_same { static constexpr bool value = false; };
template <class A> struct fg_layout_same<A, A> { static constexpr bool value = true; };
static_assert(sizeof(StridedParams) == 208, "StridedParams: size differs from the Rust mirror");
static_assert(alignof(StridedParams) == 8, "StridedParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::shape), long long[8]>::value, "StridedParams.shape: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::a_stride), long long[8]>::value, "StridedParams.a_stride: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::b_stride), long long[8]>::value, "StridedParams.b_stride: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::ndim), int>::value, "StridedParams.ndim: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::op), int>::value, "StridedParams.op: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(StridedParams::n), int>::value, "StridedParams.n: type differs from the Rust mirror");
constexpr StridedParams fg_layout_StridedParams{{}, {}, {}, 3, 4, 5};
static_assert(fg_layout_StridedParams.ndim == 3, "StridedParams.ndim: not field 3 of the Rust mirror");
static_assert(fg_layout_StridedParams.op == 4, "StridedParams.op: not field 4 of the Rust mirror");
static_assert(fg_layout_StridedParams.n == 5, "StridedParams.n: not field 5 of the Rust mirror");
static_assert(sizeof(UnaryParams) == 12, "UnaryParams: size differs from the Rust mirror");
static_assert(alignof(UnaryParams) == 4, "UnaryParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(UnaryParams::op), int>::value, "UnaryParams.op: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(UnaryParams::p), float>::value, "UnaryParams.p: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(UnaryParams::n), int>::value, "UnaryParams.n: type differs from the Rust mirror");
constexpr UnaryParams fg_layout_UnaryParams{0, 1.0f, 2};
static_assert(fg_layout_UnaryParams.op == 0, "UnaryParams.op: not field 0 of the Rust mirror");
static_assert(fg_layout_UnaryParams.p == 1.0f, "UnaryParams.p: not field 1 of the Rust mirror");
static_assert(fg_layout_UnaryParams.n == 2, "UnaryParams.n: not field 2 of the Rust mirror");
static_assert(sizeof(ReduceRowsParams) == 12, "ReduceRowsParams: size differs from the Rust mirror");
static_assert(alignof(ReduceRowsParams) == 4, "ReduceRowsParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ReduceRowsParams::rows), int>::value, "ReduceRowsParams.rows: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ReduceRowsParams::cols), int>::value, "ReduceRowsParams.cols: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(ReduceRowsParams::op), int>::value, "ReduceRowsParams.op: type differs from the Rust mirror");
constexpr ReduceRowsParams fg_layout_ReduceRowsParams{0, 1, 2};
static_assert(fg_layout_ReduceRowsParams.rows == 0, "ReduceRowsParams.rows: not field 0 of the Rust mirror");
static_assert(fg_layout_ReduceRowsParams.cols == 1, "ReduceRowsParams.cols: not field 1 of the Rust mirror");
static_assert(fg_layout_ReduceRowsParams.op == 2, "ReduceRowsParams.op: not field 2 of the Rust mirror");
static_assert(sizeof(BatchedMatmulParams) == 24, "BatchedMatmulParams: size differs from the Rust mirror");
static_assert(alignof(BatchedMatmulParams) == 4, "BatchedMatmulParams: alignment differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::batch), int>::value, "BatchedMatmulParams.batch: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::m), int>::value, "BatchedMatmulParams.m: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::k), int>::value, "BatchedMatmulParams.k: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::n), int>::value, "BatchedMatmulParams.n: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::ta), int>::value, "BatchedMatmulParams.ta: type differs from the Rust mirror");
static_assert(fg_layout_same<decltype(BatchedMatmulParams::tb), int>::value, "BatchedMatmulParams.tb: type differs from the Rust mirror");
constexpr BatchedMatmulParams fg_layout_BatchedMatmulParams{0, 1, 2, 3, 4, 5};
static_assert(fg_layout_BatchedMatmulParams.batch == 0, "BatchedMatmulParams.batch: not field 0 of the Rust mirror");
static_assert(fg_layout_BatchedMatmulParams.m == 1, "BatchedMatmulParams.m: not field 1 of the Rust mirror");
static_assert(fg_layout_BatchedMatmulParams.k == 2, "BatchedMatmulParams.k: not field 2 of the Rust mirror");
static_assert(fg_layout_BatchedMatmulParams.n == 3, "BatchedMatmulParams.n: not field 3 of the Rust mirror");
static_assert(fg_layout_BatchedMatmulParams.ta == 4, "BatchedMatmulParams.ta: not field 4 of the Rust mirror");
static_assert(fg_layout_BatchedMatmulParams.tb == 5, "BatchedMatmulParams.tb: not field 5 of the Rust mirror");
#endif
