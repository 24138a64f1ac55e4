// RUN: autosp-opt %s -p fuse-elementwise | filecheck %s

// RoPE on q [1, 2, 4, 8]: q·cos + rotate_half(q)·sin, rotate_half = cat(-q[..., 4:], q[..., :4]).
// The slices and the concatenation move values along the last dim, which the kernel does by
// reading q at shifted columns: the whole chain is one kernel, only %out is materialized.
// CHECK:      %out = autosp.fused(%q, %cos, %sin) {shape = array<i64: 1, 2, 4, 8>} : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32> {
// CHECK:        aten.slice.Tensor {{.*}} -> tensor<1x2x4x4xf32>
// CHECK:        aten.slice.Tensor {{.*}} -> tensor<1x2x4x4xf32>
// CHECK:        aten.neg.default {{.*}} : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32>
// CHECK:        aten.cat.default {{.*}} -> tensor<1x2x4x8xf32>
// CHECK:        autosp.yield %{{.*}} : tensor<1x2x4x8xf32>
// CHECK-NEXT: }
//
// Its gradient: dq·cos + the rotated gradient written back with slice_scatter into zeros.
// CHECK:      %dq = autosp.fused(%g, %sin, %cos) {shape = array<i64: 1, 2, 4, 8>} : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32> {
// CHECK:        aten.full.default
// CHECK:        aten.slice_scatter.default {{.*}} <{dim = 3 : i64, start = 4 : i64
// CHECK:        aten.slice_scatter.default {{.*}} <{dim = 3 : i64, start = 0 : i64, end = 4 : i64
// CHECK:        autosp.yield %{{.*}} : tensor<1x2x4x8xf32>
// CHECK-NEXT: }
// CHECK-NEXT: func.return %view, %dq
func.func @train_step(%q: tensor<1x2x4x8xf32> {autosp.kind = "input"}, %cos: tensor<1x1x4x8xf32> {autosp.kind = "input"}, %sin: tensor<1x1x4x8xf32> {autosp.kind = "input"}, %g: tensor<1x2x4x8xf32> {autosp.kind = "input"}) -> (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) {
  %qc = aten.mul.Tensor %q, %cos : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32>
  %lo = aten.slice.Tensor %q <{dim = 3 : i64, start = 0 : i64, end = 4 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x4xf32>
  %hi = aten.slice.Tensor %q <{dim = 3 : i64, start = 4 : i64, end = 9223372036854775807 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x4xf32>
  %nhi = aten.neg.default %hi : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32>
  %rot = aten.cat.default [%nhi, %lo] <{dim = -1 : i64}> : (tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32>) -> tensor<1x2x4x8xf32>
  %rs = aten.mul.Tensor %rot, %sin : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32>
  %out = aten.add.Tensor %qc, %rs <{alpha = 1 : i64}> : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %view = aten.view.default %out <{size = array<i64: 1, 2, 4, 8>}> : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %gs = aten.mul.Tensor %g, %sin : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32>
  %g0 = aten.slice.Tensor %gs <{dim = 3 : i64, start = 0 : i64, end = 4 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x4xf32>
  %g1 = aten.slice.Tensor %gs <{dim = 3 : i64, start = 4 : i64, end = 8 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x4xf32>
  %ng0 = aten.neg.default %g0 : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32>
  %z0 = aten.full.default <{size = array<i64: 1, 2, 4, 8>, fill_value = 0 : i64, dtype = f32, pin_memory = false}> : () -> tensor<1x2x4x8xf32>
  %s0 = aten.slice_scatter.default %z0, %ng0 <{dim = 3 : i64, start = 4 : i64, end = 9223372036854775807 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>, tensor<1x2x4x4xf32>) -> tensor<1x2x4x8xf32>
  %z1 = aten.full.default <{size = array<i64: 1, 2, 4, 8>, fill_value = 0 : i64, dtype = f32, pin_memory = false}> : () -> tensor<1x2x4x8xf32>
  %s1 = aten.slice_scatter.default %z1, %g1 <{dim = 3 : i64, start = 0 : i64, end = 4 : i64, step = 1 : i64}> : (tensor<1x2x4x8xf32>, tensor<1x2x4x4xf32>) -> tensor<1x2x4x8xf32>
  %sum = aten.add.Tensor %s0, %s1 <{alpha = 1 : i64}> : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %gc = aten.mul.Tensor %g, %cos : (tensor<1x2x4x8xf32>, tensor<1x1x4x8xf32>) -> tensor<1x2x4x8xf32>
  %dq = aten.add.Tensor %sum, %gc <{alpha = 1 : i64}> : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  func.return %view, %dq : tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>
}
