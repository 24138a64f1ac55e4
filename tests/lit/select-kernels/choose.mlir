// RUN: autosp-opt %s -p 'select-kernels{target="cuda:sm90"}' | filecheck %s --check-prefix=H100
// RUN: autosp-opt %s -p 'select-kernels{target="cuda:sm90" lean=true}' | filecheck %s --check-prefix=LEAN
// RUN: autosp-opt %s -p 'select-kernels{target="cpu"}' | filecheck %s --check-prefix=CPU

// Causal bf16 GQA (8 query heads over 2 kv heads), head dim 64: cuDNN on Hopper, Triton under
// `lean` (its backward holds one fp32 per row, not an fp32 dQ), torch's CPU flash kernel on CPU.
// The gradient always takes its forward's kernel. (Other targets and exclusions:
// tests/unit/test_kernel_choice.py.)
// H100-LABEL: func.func @causal_gqa
// H100: autosp.attention {{.*}}kernel = "cudnn"
// H100: autosp.attention_grad {{.*}}kernel = "cudnn"
// LEAN-LABEL: func.func @causal_gqa
// LEAN: autosp.attention {{.*}}kernel = "triton"
// LEAN: autosp.attention_grad {{.*}}kernel = "triton"
// CPU-LABEL: func.func @causal_gqa
// CPU: autosp.attention {{.*}}kernel = "cpu-flash"
// CPU: autosp.attention_grad {{.*}}kernel = "cpu-flash"
func.func @causal_gqa(%q: tensor<1x8x256x64xbf16>, %k: tensor<1x2x256x64xbf16>, %v: tensor<1x2x256x64xbf16>, %do: tensor<1x8x256x64xbf16>) {
  %o, %lse = autosp.attention %q, %k, %v {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x8x256x64xbf16>, tensor<1x2x256x64xbf16>, tensor<1x2x256x64xbf16>) -> (tensor<1x8x256x64xbf16>, tensor<1x8x256xf32>)
  %dq, %dk, %dv = autosp.attention_grad %do, %q, %k, %v, %o, %lse {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x8x256x64xbf16>, tensor<1x8x256x64xbf16>, tensor<1x2x256x64xbf16>, tensor<1x2x256x64xbf16>, tensor<1x8x256x64xbf16>, tensor<1x8x256xf32>) -> (tensor<1x8x256x64xbf16>, tensor<1x2x256x64xbf16>, tensor<1x2x256x64xbf16>)
  func.return
}

// A sliding window: torch's cuDNN attention takes none, FlashAttention does.
// H100-LABEL: func.func @window
// H100: autosp.attention {{.*}}kernel = "flash"
// CPU-LABEL: func.func @window
// CPU: autosp.attention {{.*}}kernel = "cpu-flash"
func.func @window(%q: tensor<1x8x256x64xbf16>, %k: tensor<1x2x256x64xbf16>, %v: tensor<1x2x256x64xbf16>) {
  %o, %lse = autosp.attention %q, %k, %v {causal = true, window = 32 : i64, scale = 0.125 : f64} : (tensor<1x8x256x64xbf16>, tensor<1x2x256x64xbf16>, tensor<1x2x256x64xbf16>) -> (tensor<1x8x256x64xbf16>, tensor<1x8x256xf32>)
  func.return
}

// Packed documents: FlashAttention's variable-length sequences for one row, Triton for two.
// H100-LABEL: func.func @documents
// H100: autosp.attention {{.*}}kernel = "flash"
// H100: autosp.attention {{.*}}kernel = "triton"
func.func @documents(%q: tensor<1x4x128x64xbf16>, %k: tensor<1x4x128x64xbf16>, %docs: tensor<1x128xi64>, %q2: tensor<2x4x128x64xbf16>, %docs2: tensor<2x128xi64>) {
  %o, %lse = autosp.attention %q, %k, %k documents %docs {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x4x128x64xbf16>, tensor<1x4x128x64xbf16>, tensor<1x4x128x64xbf16>, tensor<1x128xi64>) -> (tensor<1x4x128x64xbf16>, tensor<1x4x128xf32>)
  %o2, %lse2 = autosp.attention %q2, %q2, %q2 documents %docs2 {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<2x4x128x64xbf16>, tensor<2x4x128x64xbf16>, tensor<2x4x128x64xbf16>, tensor<2x128xi64>) -> (tensor<2x4x128x64xbf16>, tensor<2x4x128xf32>)
  func.return
}

// fp32 runs on Triton's IEEE dots on a GPU (torch's GPU kernels are 16-bit only); fp64 on the
// blockwise reference everywhere but the CPU; head dim 256 is past cuDNN's 128.
// H100-LABEL: func.func @dtypes
// H100: autosp.attention {{.*}}kernel = "triton"
// H100: autosp.attention {{.*}}kernel = "blockwise"
// H100: autosp.attention {{.*}}kernel = "flash"
// CPU-LABEL: func.func @dtypes
// CPU: autosp.attention {{.*}}kernel = "cpu-flash"
// CPU: autosp.attention {{.*}}kernel = "cpu-flash"
func.func @dtypes(%q: tensor<1x4x64x64xf32>, %d: tensor<1x4x64x64xf64>, %w: tensor<1x4x64x256xbf16>) {
  %o, %lse = autosp.attention %q, %q, %q {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x4x64x64xf32>, tensor<1x4x64x64xf32>, tensor<1x4x64x64xf32>) -> (tensor<1x4x64x64xf32>, tensor<1x4x64xf32>)
  %o2, %lse2 = autosp.attention %d, %d, %d {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x4x64x64xf64>, tensor<1x4x64x64xf64>, tensor<1x4x64x64xf64>) -> (tensor<1x4x64x64xf64>, tensor<1x4x64xf64>)
  %o3, %lse3 = autosp.attention %w, %w, %w {causal = true, window = 0 : i64, scale = 0.0625 : f64} : (tensor<1x4x64x256xbf16>, tensor<1x4x64x256xbf16>, tensor<1x4x64x256xbf16>) -> (tensor<1x4x64x256xbf16>, tensor<1x4x64xf32>)
  func.return
}

// The LM head + loss: Triton rows on GPUs, PyTorch rows on CPU.
// H100-LABEL: func.func @loss
// H100: autosp.linear_cross_entropy {{.*}}kernel = "triton"
// CPU-LABEL: func.func @loss
// CPU: autosp.linear_cross_entropy {{.*}}kernel = "reference"
func.func @loss(%h: tensor<64x32xbf16>, %w: tensor<100x32xbf16>, %y: tensor<64xi64>) {
  %l, %dh, %dw = autosp.linear_cross_entropy %h, %w, %y {ignore_index = -100 : i64, chunk = 16 : i64} : (tensor<64x32xbf16>, tensor<100x32xbf16>, tensor<64xi64>) -> (tensor<f32>, tensor<64x32xbf16>, tensor<100x32xf32>)
  func.return
}
