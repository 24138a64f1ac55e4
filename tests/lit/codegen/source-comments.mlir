// RUN: autosp-opt %s --sp=1 -t python | filecheck %s
// RUN: autosp-opt %s --sp=1 --print-debuginfo | filecheck %s --check-prefix=IR

// Each block of the program is headed by the model module its ops came from (the ops'
// locations, as the importer sets them from the forward's nn_module_stack): one comment per
// change of module, a fused kernel named by its first located op, no comment for an op
// without a location, and a recomputed op says so.
// CHECK:      def train_step(a, w):
// CHECK-NEXT:   # model.layers.0.mlp.up_proj (Linear)
// CHECK-NEXT:   mm = torch.ops.aten.mm.default(a, w)
// CHECK-NEXT:   # model.layers.0.mlp.act_fn (SiLUActivation)
// CHECK-NEXT:   m = fused_sigmoid_mul_0(mm)
// CHECK-NEXT:   del mm
// CHECK-NEXT:   v = torch.ops.aten.view.default(m, [32])
// CHECK-NEXT:   del m
// CHECK-NEXT:   # recomputed: model.layers.0.mlp.up_proj (Linear)
// CHECK-NEXT:   r = torch.ops.aten.mm.default(a, w)
// CHECK-NEXT:   # backward of model.layers.0.mlp.up_proj (Linear)
// CHECK-NEXT:   g = torch.ops.aten.neg.default(r)

// The locations survive the passes (the fused op keeps its inner ops').
// IR: aten.mm.default %a, %w : {{.*}} -> tensor<4x8xf32> loc("model.layers.0.mlp.up_proj (Linear)"("modeling.py":7:0)){{$}}
// IR: aten.sigmoid.default {{.*}} loc("model.layers.0.mlp.act_fn (SiLUActivation)")
func.func @train_step(%a: tensor<4x8xf32> {autosp.kind = "input"}, %w: tensor<8x8xf32> {autosp.kind = "parameter", autosp.name = "w"}) -> (tensor<32xf32>, tensor<4x8xf32>) {
  %mm = aten.mm.default %a, %w : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32> loc("model.layers.0.mlp.up_proj (Linear)"("modeling.py":7:0))
  %s = aten.sigmoid.default %mm : (tensor<4x8xf32>) -> tensor<4x8xf32> loc("model.layers.0.mlp.act_fn (SiLUActivation)")
  %m = aten.mul.Tensor %mm, %s : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> loc("model.layers.0.mlp.act_fn (SiLUActivation)")
  %v = aten.view.default %m <{size = array<i64: 32>}> : (tensor<4x8xf32>) -> tensor<32xf32>
  %r = aten.mm.default %a, %w {autosp.recompute} : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32> loc("model.layers.0.mlp.up_proj (Linear)")
  %g = aten.neg.default %r : (tensor<4x8xf32>) -> tensor<4x8xf32> loc("backward of model.layers.0.mlp.up_proj (Linear)")
  func.return %v, %g : tensor<32xf32>, tensor<4x8xf32>
}
