// RUN: autosp-opt %s -p 'remat{budget="23MiB"},memory-plan' | filecheck %s
// RUN: autosp-opt %s -p 'remat{budget="25MiB"}' | filecheck %s --check-prefix=FITS

// Without remat the peak is 24.0 MiB at the loss (%s, %o, %m and the 16 MiB %big are live).
// Keeping %s or %o costs the same 2 MiB there, but re-running the sigmoid (bandwidth-bound, 4 MiB
// moved) is far cheaper than re-running attention (O(S^2 D) FLOPs), so the pass recomputes the
// sigmoid in the backward just before its first use, and keeps the attention output and LSE.

// CHECK:      builtin.module attributes {autosp.remat = #autosp.remat<"ilp" budget 24117248 without 25167876 cost_model "h100" seconds {{.*}}>
// CHECK-SAME:   autosp.peak_bytes = 23070724 : i64
// CHECK:      %s = aten.sigmoid.default %x :
// CHECK:      %o, %lse = autosp.attention %s, %s, %s {
// CHECK:      %g = aten.full_like.default %m
// CHECK-NEXT: %s_re = aten.sigmoid.default %x {autosp.recompute}
// CHECK-NEXT: %do = aten.mul.Tensor %g, %s_re
// CHECK-NEXT: %ds1 = aten.mul.Tensor %g, %o :
// CHECK-NEXT: autosp.attention_grad %do, %s_re, %s_re, %s_re, %o, %lse {
// CHECK-NOT:  autosp.recompute
// CHECK:      %dx = aten.sigmoid_backward.default %a3, %s_re

// When the step fits, nothing is recomputed.
// FITS:     #autosp.remat<"none (fits without recompute)" budget
// FITS-NOT: {autosp.recompute}

func.func @train_step(%x: tensor<1x1x512x1024xf32> {autosp.kind = "input"}) -> (tensor<f32>, tensor<1x1x512x1024xf32>) {
  %s = aten.sigmoid.default %x : (tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %o, %lse = autosp.attention %s, %s, %s {causal = true, window = 0 : i64, scale = 3.125000e-02 : f64} : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> (tensor<1x1x512x1024xf32>, tensor<1x1x512xf32>)
  %m = aten.mul.Tensor %o, %s : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %big = aten.cat.default [%m, %m, %m, %m, %m, %m, %m, %m] <{dim = 0 : i64}> : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<8x1x512x1024xf32>
  %loss = aten.sum.default %big : (tensor<8x1x512x1024xf32>) -> tensor<f32>
  %g = aten.full_like.default %m <{fill_value = 8 : i64, pin_memory = false, memory_format = "preserve_format"}> : (tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %do = aten.mul.Tensor %g, %s : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %ds1 = aten.mul.Tensor %g, %o : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %dq, %dk, %dv = autosp.attention_grad %do, %s, %s, %s, %o, %lse {causal = true, window = 0 : i64, scale = 3.125000e-02 : f64} : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512xf32>) -> (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>)
  %a1 = aten.add.Tensor %dq, %dk <{alpha = 1 : i64}> : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %a2 = aten.add.Tensor %a1, %dv <{alpha = 1 : i64}> : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %a3 = aten.add.Tensor %a2, %ds1 <{alpha = 1 : i64}> : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  %dx = aten.sigmoid_backward.default %a3, %s : (tensor<1x1x512x1024xf32>, tensor<1x1x512x1024xf32>) -> tensor<1x1x512x1024xf32>
  func.return %loss, %dx : tensor<f32>, tensor<1x1x512x1024xf32>
}
