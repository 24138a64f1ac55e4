// RUN: autosp-opt %s -p "sp-propagate{sp=2}" | filecheck %s

// The token input is replicated; its embedding is the seed of sequence sharding. Values built
// from replicated inputs alone (positions) stay replicated until they meet a sharded value.
func.func @train_step(%w: tensor<16x8xf32> {autosp.kind = "parameter", autosp.name = "w"}, %ids: tensor<1x8xi64> {autosp.kind = "input"}) -> (tensor<f32>, tensor<8x8xf32>) {
  // CHECK: aten.embedding.default {{.*}}autosp.in_layouts = [#autosp.layout<replicated>, #autosp.layout<shard 1>], autosp.layouts = [#autosp.layout<shard 1>]
  %e = aten.embedding.default %w, %ids <{padding_idx = -1 : i64, scale_grad_by_freq = false, sparse = false}> : (tensor<16x8xf32>, tensor<1x8xi64>) -> tensor<1x8x8xf32>
  // CHECK: aten.view.default {{.*}}autosp.layouts = [#autosp.layout<shard 1>]
  %v = aten.view.default %e <{size = array<i64: 1, 8, 2, 4>}> : (tensor<1x8x8xf32>) -> tensor<1x8x2x4xf32>
  // CHECK: aten.permute.default {{.*}}autosp.layouts = [#autosp.layout<shard 2>]
  %q = aten.permute.default %v <{dims = array<i64: 0, 2, 1, 3>}> : (tensor<1x8x2x4xf32>) -> tensor<1x2x8x4xf32>
  // Ulysses: head-sharded inputs, sequence-sharded output (computed head-sharded).
  // CHECK: autosp.attention {{.*}}autosp.in_layouts = [#autosp.layout<heads 1>, #autosp.layout<heads 1>, #autosp.layout<heads 1>], autosp.layouts = [#autosp.layout<shard 2>, #autosp.layout<heads 1>], autosp.computed = [#autosp.layout<heads 1>, #autosp.layout<heads 1>]
  %o, %lse = autosp.attention %q, %q, %q {causal = true, window = 0 : i64, scale = 5.000000e-01 : f64} : (tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>) -> (tensor<1x2x8x4xf32>, tensor<1x2x8xf32>)
  // CHECK: aten.arange.start_step {{.*}}autosp.layouts = [#autosp.layout<replicated>]
  %pos = aten.arange.start_step <{start = 0 : i64, end = 8 : i64, step = 1 : i64}> : () -> tensor<8xi64>
  %posf = aten._to_copy.default %pos <{dtype = f32, non_blocking = false}> : (tensor<8xi64>) -> tensor<8xf32>
  %pv = aten.view.default %posf <{size = array<i64: 1, 1, 8, 1>}> : (tensor<8xf32>) -> tensor<1x1x8x1xf32>
  // The replicated positions join a sequence-sharded value: they are needed as shard 2.
  // CHECK: aten.mul.Tensor {{.*}}autosp.in_layouts = [#autosp.layout<shard 2>, #autosp.layout<shard 2>], autosp.layouts = [#autosp.layout<shard 2>]
  %m = aten.mul.Tensor %o, %pv : (tensor<1x2x8x4xf32>, tensor<1x1x8x1xf32>) -> tensor<1x2x8x4xf32>
  // CHECK: aten.sum.default {{.*}}autosp.layouts = [#autosp.layout<partial>]
  %loss = aten.sum.default %m : (tensor<1x2x8x4xf32>) -> tensor<f32>
  %e2 = aten.view.default %e <{size = array<i64: 8, 8>}> : (tensor<1x8x8xf32>) -> tensor<8x8xf32>
  %et = aten.permute.default %e2 <{dims = array<i64: 1, 0>}> : (tensor<8x8xf32>) -> tensor<8x8xf32>
  // A contraction over the sharded sequence is a partial sum (a parameter gradient).
  // CHECK: aten.mm.default {{.*}}autosp.in_layouts = [#autosp.layout<shard 1>, #autosp.layout<shard 0>], autosp.layouts = [#autosp.layout<partial>]
  %gw = aten.mm.default %et, %e2 : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
  // CHECK: func.return {{.*}}autosp.in_layouts = [#autosp.layout<replicated>, #autosp.layout<replicated>]
  func.return %loss, %gw : tensor<f32>, tensor<8x8xf32>
}
