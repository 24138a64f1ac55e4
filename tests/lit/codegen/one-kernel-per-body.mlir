// RUN: autosp-opt %s --sp=1 -t python | filecheck %s

// The same chain on two inputs (as in every layer) is one generated kernel, named by what it
// computes, called twice; its reference function is written with positional names.
// CHECK:     def fused_sigmoid_mul_neg_0_kernel(in0, out0,
// CHECK:     def fused_sigmoid_mul_neg_0_reference(x0):
// CHECK-NEXT:    t0 = torch.ops.aten.sigmoid.default(x0)
// CHECK:     def fused_sigmoid_mul_neg_0(in0):
// CHECK-NOT: @triton.jit
// CHECK:     def train_step(
// CHECK:     = fused_sigmoid_mul_neg_0(a)
// CHECK:     = fused_sigmoid_mul_neg_0(b)
func.func @train_step(%a: tensor<4x8xf32> {autosp.kind = "input"}, %b: tensor<4x8xf32> {autosp.kind = "input"}) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %s1 = aten.sigmoid.default %a : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %m1 = aten.mul.Tensor %a, %s1 : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %n1 = aten.neg.default %m1 : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %v = aten.view.default %n1 <{size = array<i64: 32>}> : (tensor<4x8xf32>) -> tensor<32xf32>
  %w = aten.view.default %v <{size = array<i64: 4, 8>}> : (tensor<32xf32>) -> tensor<4x8xf32>
  %s2 = aten.sigmoid.default %b : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %m2 = aten.mul.Tensor %b, %s2 : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %n2 = aten.neg.default %m2 : (tensor<4x8xf32>) -> tensor<4x8xf32>
  func.return %w, %n2 : tensor<4x8xf32>, tensor<4x8xf32>
}
