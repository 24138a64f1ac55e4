// RUN: autosp-opt %s -p "sp-propagate{sp=2},sp-partition" | filecheck %s

// Packed documents under Ulysses: attention runs on the whole sequence for half of the heads, so
// each rank reads every token's document number: the replicated [1, 8] operand stays whole.
func.func @train_step(%w: tensor<16x8xf32> {autosp.kind = "parameter", autosp.name = "w"}, %ids: tensor<1x8xi64> {autosp.kind = "input"}, %docs: tensor<1x8xi64> {autosp.kind = "input"}) -> (tensor<f32>) {
  %e = aten.embedding.default %w, %ids <{padding_idx = -1 : i64, scale_grad_by_freq = false, sparse = false}> : (tensor<16x8xf32>, tensor<1x8xi64>) -> tensor<1x8x8xf32>
  %v = aten.view.default %e <{size = array<i64: 1, 8, 2, 4>}> : (tensor<1x8x8xf32>) -> tensor<1x8x2x4xf32>
  %q = aten.permute.default %v <{dims = array<i64: 0, 2, 1, 3>}> : (tensor<1x8x2x4xf32>) -> tensor<1x2x8x4xf32>
  %o, %lse = autosp.attention %q, %q, %q documents %docs {causal = true, window = 0 : i64, scale = 5.000000e-01 : f64} : (tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>, tensor<1x8xi64>) -> (tensor<1x2x8x4xf32>, tensor<1x2x8xf32>)
  %loss = aten.sum.default %o : (tensor<1x2x8x4xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}

// CHECK-NOT: autosp.local_shard %docs
// CHECK: %[[QH:.*]] = dist.all_to_all %{{.*}} {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x2x4x4xf32> -> tensor<1x1x8x4xf32>
// CHECK-NOT: dist.{{.*}} %docs
// CHECK: autosp.attention %[[QH]], %[[QH]], %[[QH]] documents %docs {{.*}} : (tensor<1x1x8x4xf32>, tensor<1x1x8x4xf32>, tensor<1x1x8x4xf32>, tensor<1x8xi64>) -> (tensor<1x1x8x4xf32>, tensor<1x1x8xf32>)
