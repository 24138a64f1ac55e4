// RUN: autosp-opt %s -p "sp-propagate{sp=2},sp-partition" | filecheck %s

// A gated MLP in row chunks under sp=2: its rows follow the sequence shard ([1, 8, 16] ->
// [1, 4, 16] per rank), the weights stay whole, and the weight gradients are each rank's share
// of the sum: all-reduced before they are returned; the input gradient stays sharded.
func.func @train_step(%emb: tensor<32x16xf32> {autosp.kind = "parameter", autosp.name = "emb"}, %wg: tensor<64x16xf32> {autosp.kind = "parameter", autosp.name = "wg"}, %wu: tensor<64x16xf32> {autosp.kind = "parameter", autosp.name = "wu"}, %wd: tensor<16x64xf32> {autosp.kind = "parameter", autosp.name = "wd"}, %ids: tensor<1x8xi64> {autosp.kind = "input"}) -> (tensor<f32>, tensor<64x16xf32>, tensor<16x64xf32>) {
  %x = aten.embedding.default %emb, %ids <{padding_idx = -1 : i64, scale_grad_by_freq = false, sparse = false}> : (tensor<32x16xf32>, tensor<1x8xi64>) -> tensor<1x8x16xf32>
  %y = autosp.gated_mlp %x, %wg, %wu, %wd {activation = "silu", chunk = 3 : i64} : (tensor<1x8x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>, tensor<16x64xf32>) -> tensor<1x8x16xf32>
  %loss = aten.sum.default %y : (tensor<1x8x16xf32>) -> tensor<f32>
  %dx, %dg, %du, %dd = autosp.gated_mlp_grad %x, %x, %wg, %wu, %wd {activation = "silu", chunk = 3 : i64} : (tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>, tensor<16x64xf32>) -> (tensor<1x8x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>, tensor<16x64xf32>)
  func.return %loss, %dg, %dd : tensor<f32>, tensor<64x16xf32>, tensor<16x64xf32>
}

// CHECK: %[[Y:.*]] = autosp.gated_mlp %[[X:.*]], %wg, %wu, %wd {activation = "silu", chunk = 3 : i64} : (tensor<1x4x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>, tensor<16x64xf32>) -> tensor<1x4x16xf32>
// CHECK: autosp.gated_mlp_grad %[[X]], %[[X]], %wg, %wu, %wd {{.*}} -> (tensor<1x4x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>, tensor<16x64xf32>)
// CHECK: dist.all_reduce %dg {group = @sp, reduce = "sum"} : tensor<64x16xf32> -> tensor<64x16xf32>
// CHECK: dist.all_reduce %dd {group = @sp, reduce = "sum"} : tensor<16x64xf32> -> tensor<16x64xf32>
