// RUN: autosp-opt %s -p 'remat{budget="1GiB" given="rank 0" recompute=0,2 rerun=1}' | filecheck %s

// Two-level checkpointing: the layer input %h is rerun. Where the backward first needs it (to
// recompute %b), a private chain makes it again from what the backward holds (%x): the layer
// before (%a) is recomputed for the chain only, and dies there. Its own backward reads %a later
// and recomputes it again, next to that use, instead of holding the chain's copy until then.
// CHECK:      %g = aten.full.default
// CHECK-NEXT: %a_re = aten.sigmoid.default %x {autosp.recompute}
// CHECK-NEXT: %h_re = aten.mul.Tensor %a_re, %x {autosp.recompute}
// CHECK-NEXT: %b_re = aten.sigmoid.default %h_re {autosp.recompute}
// CHECK-NEXT: %dh = aten.sigmoid_backward.default %g, %b_re
// CHECK-NEXT: %da = aten.mul.Tensor %dh, %x
// CHECK-NEXT: %a_re_1 = aten.sigmoid.default %x {autosp.recompute}
// CHECK-NEXT: %dx = aten.sigmoid_backward.default %da, %a_re_1

func.func @train_step(%x: tensor<1x512x1024xf32> {autosp.kind = "input"}) -> (tensor<f32>, tensor<1x512x1024xf32>) {
  %a = aten.sigmoid.default %x : (tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  %h = aten.mul.Tensor %a, %x : (tensor<1x512x1024xf32>, tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  %b = aten.sigmoid.default %h : (tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  %loss = aten.sum.default %b : (tensor<1x512x1024xf32>) -> tensor<f32>
  %g = aten.full.default <{size = array<i64: 1, 512, 1024>, fill_value = 1 : i64, dtype = f32, pin_memory = false}> : () -> tensor<1x512x1024xf32>
  %dh = aten.sigmoid_backward.default %g, %b : (tensor<1x512x1024xf32>, tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  %da = aten.mul.Tensor %dh, %x : (tensor<1x512x1024xf32>, tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  %dx = aten.sigmoid_backward.default %da, %a : (tensor<1x512x1024xf32>, tensor<1x512x1024xf32>) -> tensor<1x512x1024xf32>
  func.return %loss, %dx : tensor<f32>, tensor<1x512x1024xf32>
}
