// RUN: autosp-opt %s -p fuse-elementwise | filecheck %s

// RMSNorm then SiLU(x)·x over [2, 3, 8]: the row reduction (mean over the last dim, keepdim)
// and what is computed from it ([2, 3, 1] values) join the [2, 3, 8] chain. Only what is used
// after the run is materialized: the normalized %y (the view reads it) and %r (returned, as the
// backward would save it); %sq, %ms, %eps and the sigmoid stay inside the kernel. The view
// ends the run; the single op after it stays unfused.

// CHECK:      %r, %g = autosp.fused(%x, %w) {shape = array<i64: 2, 3, 8>} : (tensor<2x3x8xf32>, tensor<8xf32>) -> (tensor<2x3x1xf32>, tensor<2x3x8xf32>) {
// CHECK-NEXT: ^{{.*}}(%[[X:.*]]: tensor<2x3x8xf32>, %[[W:.*]]: tensor<8xf32>):
// CHECK-NEXT:   %sq = aten.pow.Tensor_Scalar %[[X]]
// CHECK-NEXT:   %ms = aten.mean.dim %sq <{dim = array<i64: -1>, keepdim = true}> : (tensor<2x3x8xf32>) -> tensor<2x3x1xf32>
// CHECK-NEXT:   %eps = aten.add.Scalar %ms
// CHECK-NEXT:   %[[R:.*]] = aten.rsqrt.default %eps
// CHECK-NEXT:   %n = aten.mul.Tensor %[[X]], %[[R]]
// CHECK-NEXT:   %y = aten.mul.Tensor %n, %[[W]]
// CHECK-NEXT:   %s = aten.sigmoid.default %y
// CHECK-NEXT:   %[[G:.*]] = aten.mul.Tensor %y, %s
// CHECK-NEXT:   autosp.yield %[[R]], %[[G]] : tensor<2x3x1xf32>, tensor<2x3x8xf32>
// CHECK-NEXT: }
// CHECK-NEXT: %v = aten.view.default %g
// CHECK-NEXT: %z = aten.neg.default %v
// CHECK-NEXT: func.return %z, %r
func.func @train_step(%x: tensor<2x3x8xf32> {autosp.kind = "input"}, %w: tensor<8xf32> {autosp.kind = "parameter", autosp.name = "w"}) -> (tensor<6x8xf32>, tensor<2x3x1xf32>) {
  %sq = aten.pow.Tensor_Scalar %x <{exponent = 2 : i64}> : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %ms = aten.mean.dim %sq <{dim = array<i64: -1>, keepdim = true}> : (tensor<2x3x8xf32>) -> tensor<2x3x1xf32>
  %eps = aten.add.Scalar %ms <{other = 1.0e-06 : f64, alpha = 1 : i64}> : (tensor<2x3x1xf32>) -> tensor<2x3x1xf32>
  %r = aten.rsqrt.default %eps : (tensor<2x3x1xf32>) -> tensor<2x3x1xf32>
  %n = aten.mul.Tensor %x, %r : (tensor<2x3x8xf32>, tensor<2x3x1xf32>) -> tensor<2x3x8xf32>
  %y = aten.mul.Tensor %n, %w : (tensor<2x3x8xf32>, tensor<8xf32>) -> tensor<2x3x8xf32>
  %s = aten.sigmoid.default %y : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %g = aten.mul.Tensor %y, %s : (tensor<2x3x8xf32>, tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %v = aten.view.default %g <{size = array<i64: 6, 8>}> : (tensor<2x3x8xf32>) -> tensor<6x8xf32>
  %z = aten.neg.default %v : (tensor<6x8xf32>) -> tensor<6x8xf32>
  func.return %z, %r : tensor<6x8xf32>, tensor<2x3x1xf32>
}
