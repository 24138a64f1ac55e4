// RUN: autosp-opt %s --sp=1 -t python | filecheck %s

// fp32 math on fp32 values needs no cast; a bf16 value is widened where it is read and each
// result rounded back to bf16, as eager rounds each op. The program tracks nothing (TRACK is
// only in the measuring variant) and deletes each value after its last use.
// CHECK:      def fused_sigmoid_mul_0_kernel(
// CHECK:        t1 = 1.0 / (1.0 + tl.exp(-v0))
// CHECK-NEXT:   t2 = v0 * t1
// CHECK:      def fused_sigmoid_mul_1_kernel(
// CHECK:        t1 = (1.0 / (1.0 + tl.exp(-v0.to(tl.float32)))).to(tl.bfloat16)
// CHECK-NEXT:   t2 = (v0.to(tl.float32) * t1.to(tl.float32)).to(tl.bfloat16)
// CHECK-NOT:  TRACK
// CHECK:      def train_step(a, h):
// CHECK-NEXT:   m = fused_sigmoid_mul_0(a)
// CHECK-NEXT:   v = torch.ops.aten.view.default(m, [32])
// CHECK-NEXT:   del m
// CHECK-NOT:  TRACK
func.func @train_step(%a: tensor<4x8xf32> {autosp.kind = "input"}, %h: tensor<4x8xbf16> {autosp.kind = "input"}) -> (tensor<32xf32>, tensor<32xbf16>) {
  %s = aten.sigmoid.default %a : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %m = aten.mul.Tensor %a, %s : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %v = aten.view.default %m <{size = array<i64: 32>}> : (tensor<4x8xf32>) -> tensor<32xf32>
  %hs = aten.sigmoid.default %h : (tensor<4x8xbf16>) -> tensor<4x8xbf16>
  %hm = aten.mul.Tensor %h, %hs : (tensor<4x8xbf16>, tensor<4x8xbf16>) -> tensor<4x8xbf16>
  %hv = aten.view.default %hm <{size = array<i64: 32>}> : (tensor<4x8xbf16>) -> tensor<32xbf16>
  func.return %v, %hv : tensor<32xf32>, tensor<32xbf16>
}
