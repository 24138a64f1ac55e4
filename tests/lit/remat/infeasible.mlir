// RUN: not autosp-opt %s -p 'remat{budget="12MiB"}' 2>&1 | filecheck %s
// RUN: not autosp-opt %s --remat --memory-budget=12MiB 2>&1 | filecheck %s

// Even recomputing everything recomputable, the attention backward needs its inputs, the output,
// their gradients and its scratch at once: 20 MiB. One line, no traceback.
// CHECK: autosp-opt: error: remat: the step needs 20.00 MiB per rank (sp=1) even with everything recomputable recomputed; budget 12.00 MiB; raise the budget
// CHECK-NOT: Traceback

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
