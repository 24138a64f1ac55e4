// RUN: autosp-opt %s --split-input-file --verify-diagnostics --parsing-diagnostics | filecheck %s

func.func @heads(%q: tensor<1x6x16x64xf32>, %k: tensor<1x4x16x64xf32>) {
  %o, %lse = autosp.attention %q, %k, %k {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x6x16x64xf32>, tensor<1x4x16x64xf32>, tensor<1x4x16x64xf32>) -> (tensor<1x6x16x64xf32>, tensor<1x6x16xf32>)
  func.return
}
// CHECK: 6 query heads is not a multiple of 4 key/value heads

// -----

func.func @window_without_causal(%q: tensor<1x4x16x64xf32>) {
  %o, %lse = autosp.attention %q, %q, %q {causal = false, window = 8 : i64, scale = 0.125 : f64} : (tensor<1x4x16x64xf32>, tensor<1x4x16x64xf32>, tensor<1x4x16x64xf32>) -> (tensor<1x4x16x64xf32>, tensor<1x4x16xf32>)
  func.return
}
// CHECK: a sliding window needs causal = true

// -----

func.func @lse_shape(%q: tensor<1x4x16x64xf32>) {
  %o, %lse = autosp.attention %q, %q, %q {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x4x16x64xf32>, tensor<1x4x16x64xf32>, tensor<1x4x16x64xf32>) -> (tensor<1x4x16x64xf32>, tensor<1x4x16xbf16>)
  func.return
}
// CHECK: lse must be f32 [1, 4, 16]

// -----

func.func @bad_layout() attributes {l = #autosp.layout<sharded 1>} {
  func.return
}
// CHECK: layout kind must be one of replicated, shard, heads, partial

// -----

func.func @documents_shape(%q: tensor<2x4x16x64xf32>, %docs: tensor<1x16xi64>) {
  %o, %lse = autosp.attention %q, %q, %q documents %docs {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<2x4x16x64xf32>, tensor<2x4x16x64xf32>, tensor<2x4x16x64xf32>, tensor<1x16xi64>) -> (tensor<2x4x16x64xf32>, tensor<2x4x16xf32>)
  func.return
}
// CHECK: documents must be integers [B, S] = [2, 16] with Sq = Sk, got tensor<1x16xi64> for Sq = 16

// -----

func.func @mlp_weights(%x: tensor<16x64xf32>, %wg: tensor<256x64xf32>, %wu: tensor<128x64xf32>, %wd: tensor<64x256xf32>) {
  %out = autosp.gated_mlp %x, %wg, %wu, %wd {activation = "silu", chunk = 8 : i64} : (tensor<16x64xf32>, tensor<256x64xf32>, tensor<128x64xf32>, tensor<64x256xf32>) -> tensor<16x64xf32>
  func.return
}
// CHECK: needs x [..., H], w_gate/w_up [I, H], w_down [O, I]; got (16, 64), (256, 64), (128, 64), (64, 256)

// -----

func.func @mlp_activation(%x: tensor<16x64xf32>, %wg: tensor<256x64xf32>, %wd: tensor<64x256xf32>) {
  %out = autosp.gated_mlp %x, %wg, %wg, %wd {activation = "relu", chunk = 8 : i64} : (tensor<16x64xf32>, tensor<256x64xf32>, tensor<256x64xf32>, tensor<64x256xf32>) -> tensor<16x64xf32>
  func.return
}
// CHECK: activation must be one of silu, gelu, gelu_tanh

// -----

func.func @replicas_on_a_shard() attributes {l = #autosp.layout<shard 1 replicas 2>} {
  func.return
}
// CHECK: replicas must be >= 1, and only heads layouts have more than 1
