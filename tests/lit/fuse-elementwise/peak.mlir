// RUN: autosp-opt %s -p fuse-elementwise | filecheck %s

// A kernel allocates all its outputs at once and frees its inputs at its end. Fusing %m and %n
// would hold %p, %q, %m and %n together (4 x 4 KiB over the arguments), above the program's
// peak of 3 x 4 KiB (unfused, %p dies at %m before %n is made): the run is split, nothing fuses.
// Next to it, %e and %f read only arguments and fuse (%e is not used later: not materialized).

// CHECK-NOT:  autosp.fused
// CHECK:      %m = aten.mul.Tensor %p, %p
// CHECK-NEXT: %n = aten.exp.default %q
// CHECK:      %f = autosp.fused(%a) {shape = array<i64: 4>}
// CHECK-NEXT: ^{{.*}}(%[[A:.*]]: tensor<4xf32>):
// CHECK-NEXT:   %e = aten.neg.default %[[A]]
// CHECK-NEXT:   %[[F:.*]] = aten.exp.default %e
// CHECK-NEXT:   autosp.yield %[[F]] : tensor<4xf32>
func.func @train_step(%x: tensor<1024xf32> {autosp.kind = "input"}, %a: tensor<4xf32> {autosp.kind = "input"}) -> (tensor<1024xf32>, tensor<1024xf32>, tensor<4xf32>) {
  %p = aten.cumsum.default %x <{dim = 0 : i64}> : (tensor<1024xf32>) -> tensor<1024xf32>
  %q = aten.cumsum.default %x <{dim = 0 : i64}> : (tensor<1024xf32>) -> tensor<1024xf32>
  %m = aten.mul.Tensor %p, %p : (tensor<1024xf32>, tensor<1024xf32>) -> tensor<1024xf32>
  %n = aten.exp.default %q : (tensor<1024xf32>) -> tensor<1024xf32>
  %e = aten.neg.default %a : (tensor<4xf32>) -> tensor<4xf32>
  %f = aten.exp.default %e : (tensor<4xf32>) -> tensor<4xf32>
  func.return %m, %n, %f : tensor<1024xf32>, tensor<1024xf32>, tensor<4xf32>
}
