// RUN: autosp-opt %s | autosp-opt | filecheck %s

// Packed sequences: document numbers [B, S] follow the tensors, forward and backward.
func.func @packed(%q: tensor<2x4x16x64xbf16>, %k: tensor<2x2x16x64xbf16>, %do: tensor<2x4x16x64xbf16>, %docs: tensor<2x16xi64>) {
  // CHECK: %[[O:.*]], %[[L:.*]] = autosp.attention %q, %k, %k documents %docs {causal = true, window = 0 : i64, scale = 1.250000e-01 : f64} : (tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x16xi64>) -> (tensor<2x4x16x64xbf16>, tensor<2x4x16xf32>)
  %o, %lse = autosp.attention %q, %k, %k documents %docs {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x16xi64>) -> (tensor<2x4x16x64xbf16>, tensor<2x4x16xf32>)
  // CHECK: autosp.attention_grad %do, %q, %k, %k, %[[O]], %[[L]] documents %docs {causal = true
  %dq, %dk, %dv = autosp.attention_grad %do, %q, %k, %k, %o, %lse documents %docs {causal = true, window = 0 : i64, scale = 0.125 : f64} : (tensor<2x4x16x64xbf16>, tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x4x16x64xbf16>, tensor<2x4x16xf32>, tensor<2x16xi64>) -> (tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16>)
  func.return
}
