// Partitioning twice would shard an already local program again: refused, naming the sp it has.
// RUN: autosp-opt %s --sp=2 | not autosp-opt --sp=4 2>&1 | filecheck %s --check-prefix=OPT
// RUN: autosp-opt %s --sp=2 | not autosp-opt -p "sp-propagate{sp=2}" 2>&1 | filecheck %s --check-prefix=PASS
// RUN: autosp-opt %s --sp=2 | filecheck %s --check-prefix=FIRST

// FIRST: builtin.module attributes {autosp.partition = #autosp.partition<sp 2 seq_len 8>}
// OPT: autosp-opt: error: the input is already partitioned for sp=2; --sp=4 needs the unpartitioned IR (autosp-export's output)
// PASS: autosp-opt: error: sp-propagate: the module is already partitioned for sp=2; run sp=2 on the unpartitioned IR (autosp-export's output)

func.func @train_step(%w: tensor<16x8xf32> {autosp.kind = "parameter", autosp.name = "w"}, %ids: tensor<1x8xi64> {autosp.kind = "input"}) -> (tensor<f32>) {
  %e = aten.embedding.default %w, %ids <{padding_idx = -1 : i64, scale_grad_by_freq = false, sparse = false}> : (tensor<16x8xf32>, tensor<1x8xi64>) -> tensor<1x8x8xf32>
  %loss = aten.sum.default %e : (tensor<1x8x8xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
