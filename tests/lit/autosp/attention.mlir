// RUN: autosp-opt %s | autosp-opt | filecheck %s

// GQA: 8 query heads over 2 kv heads; lse is f32 [B, Hq, S].
func.func @attn(%q: tensor<1x8x16x64xbf16>, %k: tensor<1x2x16x64xbf16>, %v: tensor<1x2x16x64xbf16>, %do: tensor<1x8x16x64xbf16>) {
  // CHECK: %[[O:.*]], %[[L:.*]] = autosp.attention %q, %k, %v {causal = true, window = 0 : i64, scale = 1.250000e-01 : f64} : (tensor<1x8x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x2x16x64xbf16>) -> (tensor<1x8x16x64xbf16>, tensor<1x8x16xf32>)
  %o, %lse = autosp.attention %q, %k, %v {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<1x8x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x2x16x64xbf16>) -> (tensor<1x8x16x64xbf16>, tensor<1x8x16xf32>)
  // CHECK: autosp.attention_grad %do, %q, %k, %v, %[[O]], %[[L]] {causal = true, window = 4 : i64
  // CHECK-SAME: -> (tensor<1x8x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x2x16x64xbf16>)
  %dq, %dk, %dv = autosp.attention_grad %do, %q, %k, %v, %o, %lse {causal = true, window = 4 : i64, scale = 0.125 : f64} : (tensor<1x8x16x64xbf16>, tensor<1x8x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x8x16x64xbf16>, tensor<1x8x16xf32>) -> (tensor<1x8x16x64xbf16>, tensor<1x2x16x64xbf16>, tensor<1x2x16x64xbf16>)
  func.return
}

// CHECK: func.func @layouts() attributes {r = #autosp.layout<replicated>, s = #autosp.layout<shard 1>, p = #autosp.layout<partial>}
func.func @layouts() attributes {r = #autosp.layout<replicated>, s = #autosp.layout<shard 1>, p = #autosp.layout<partial>} {
  func.return
}
