// RUN: autosp-opt %s -p "sp-propagate{sp=2},sp-partition" | filecheck %s

func.func @train_step(%w: tensor<16x8xf32> {autosp.kind = "parameter", autosp.name = "w"}, %ids: tensor<1x8xi64> {autosp.kind = "input"}) -> (tensor<f32>, tensor<8x8xf32>) {
  %e = aten.embedding.default %w, %ids <{padding_idx = -1 : i64, scale_grad_by_freq = false, sparse = false}> : (tensor<16x8xf32>, tensor<1x8xi64>) -> tensor<1x8x8xf32>
  %v = aten.view.default %e <{size = array<i64: 1, 8, 2, 4>}> : (tensor<1x8x8xf32>) -> tensor<1x8x2x4xf32>
  %q = aten.permute.default %v <{dims = array<i64: 0, 2, 1, 3>}> : (tensor<1x8x2x4xf32>) -> tensor<1x2x8x4xf32>
  %o, %lse = autosp.attention %q, %q, %q {causal = true, window = 0 : i64, scale = 5.000000e-01 : f64} : (tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>) -> (tensor<1x2x8x4xf32>, tensor<1x2x8xf32>)
  %pos = aten.arange.start_step <{start = 0 : i64, end = 8 : i64, step = 1 : i64}> : () -> tensor<8xi64>
  %posf = aten._to_copy.default %pos <{dtype = f32, non_blocking = false}> : (tensor<8xi64>) -> tensor<8xf32>
  %pv = aten.view.default %posf <{size = array<i64: 1, 1, 8, 1>}> : (tensor<8xf32>) -> tensor<1x1x8x1xf32>
  %m = aten.mul.Tensor %o, %pv : (tensor<1x2x8x4xf32>, tensor<1x1x8x1xf32>) -> tensor<1x2x8x4xf32>
  %loss = aten.sum.default %m : (tensor<1x2x8x4xf32>) -> tensor<f32>
  %e2 = aten.view.default %e <{size = array<i64: 8, 8>}> : (tensor<1x8x8xf32>) -> tensor<8x8xf32>
  %et = aten.permute.default %e2 <{dims = array<i64: 1, 0>}> : (tensor<8x8xf32>) -> tensor<8x8xf32>
  %gw = aten.mm.default %et, %e2 : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
  func.return %loss, %gw : tensor<f32>, tensor<8x8xf32>
}

// The replicated token input is sliced locally (no communication): [1, 8] -> [1, 4].
// The SP group, declared once: the collectives name it and take their size from it.
// CHECK: dist.group @sp {size = 2 : i64, axis = "sequence"}
// CHECK: %[[IDS:.*]] = autosp.local_shard %ids {group = @sp, dim = 1 : i64} : tensor<1x8xi64> -> tensor<1x4xi64>
// CHECK: aten.embedding.default %w, %[[IDS]] {{.*}} -> tensor<1x4x8xf32>
// View sizes are rewritten for the local shard.
// CHECK: aten.view.default %{{.*}} <{size = array<i64: 1, 4, 2, 4>}> : (tensor<1x4x8xf32>) -> tensor<1x4x2x4xf32>
// CHECK: %[[Q:.*]] = aten.permute.default {{.*}} -> tensor<1x2x4x4xf32>
// Sequence-sharded -> head-sharded: split the heads (dim 1), concatenate the sequence (dim 2).
// CHECK: %[[QH:.*]] = dist.all_to_all %[[Q]] {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x2x4x4xf32> -> tensor<1x1x8x4xf32>
// CHECK-NOT: dist.all_to_all %[[Q]]
// CHECK: %[[O:.*]], %{{.*}} = autosp.attention %[[QH]], %[[QH]], %[[QH]] {{.*}} : (tensor<1x1x8x4xf32>, tensor<1x1x8x4xf32>, tensor<1x1x8x4xf32>) -> (tensor<1x1x8x4xf32>, tensor<1x1x8xf32>)
// CHECK: %[[OS:.*]] = dist.all_to_all %[[O]] {group = @sp, split_dim = 2 : i64, concat_dim = 1 : i64} : tensor<1x1x8x4xf32> -> tensor<1x2x4x4xf32>
// Global positions: the arange covers the whole sequence, each rank takes its block.
// CHECK: %[[POS:.*]] = aten.arange.start_step <{start = 0 : i64, end = 8 : i64, step = 1 : i64}>
// CHECK: %[[PV:.*]] = aten.view.default {{.*}} -> tensor<1x1x8x1xf32>
// CHECK: %[[PVS:.*]] = autosp.local_shard %[[PV]] {group = @sp, dim = 2 : i64} : tensor<1x1x8x1xf32> -> tensor<1x1x4x1xf32>
// CHECK: aten.mul.Tensor %[[OS]], %[[PVS]]
// CHECK: %[[LOSS:.*]] = aten.sum.default
// CHECK: %[[GW:.*]] = aten.mm.default {{.*}} : (tensor<8x4xf32>, tensor<4x8xf32>) -> tensor<8x8xf32>
// The loss numerator and the parameter gradient are partial sums: all-reduced before return.
// CHECK: %[[LR:.*]] = dist.all_reduce %[[LOSS]] {group = @sp, reduce = "sum"} : tensor<f32> -> tensor<f32>
// CHECK: %[[GR:.*]] = dist.all_reduce %[[GW]] {group = @sp, reduce = "sum"} : tensor<8x8xf32> -> tensor<8x8xf32>
// CHECK: func.return %[[LR]], %[[GR]]
