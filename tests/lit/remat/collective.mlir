// RUN: autosp-opt %s -p 'remat{budget="1GiB" given="rank 0" recompute=0,1}' | filecheck %s
// RUN: autosp-opt %s -p 'remat{budget="6.5MiB"}' | filecheck %s --check-prefix=SOLVED
// RUN: not autosp-opt %s -p 'remat{budget="1GiB" given="rank 0" recompute=6}' 2>&1 | filecheck %s --check-prefix=WRONG

// A plan made on another rank's program (rank 0's), applied by op index: the sigmoid and the
// all-to-all that moves its result from sequence to head shards are cloned into the backward,
// the collective included (it only moves data: replayed, it gives the same bits), right before
// the first backward op that reads them; the forward's copies die after the forward.
// CHECK:      autosp.remat = #autosp.remat<"rank 0" budget 1073741824
// CHECK:      %h = dist.all_to_all %s {group = @sp, split_dim = 2 : i64, concat_dim = 1 : i64}
// CHECK:      %loss = aten.sum.default %big
// CHECK-NEXT: %g = aten.full.default
// CHECK-NEXT: %s_re = aten.sigmoid.default %x {autosp.recompute}
// CHECK-NEXT: %h_re = dist.all_to_all %s_re {autosp.recompute, group = @sp, split_dim = 2 : i64, concat_dim = 1 : i64} : tensor<1x1024x4x64xf32> -> tensor<1x2048x2x64xf32>
// CHECK-NEXT: %dh = aten.mul.Tensor %g, %h_re
// CHECK:      %dx = aten.sigmoid_backward.default %ds, %s_re

// Under 6.5 MiB the solver itself recomputes the all-to-all (keeping the 1 MiB head-sharded
// value through the 4 MiB concatenation does not fit; at 7 MiB only the sigmoid is recomputed).
// SOLVED:     %loss = aten.sum.default %big
// SOLVED:     dist.all_to_all {{.*}}autosp.recompute
// SOLVED:     %dh = aten.mul.Tensor %g, %h_re

// A plan that names an op which is not a recomputable forward op of this program is refused.
// WRONG: autosp-opt: error: remat: the given plan recomputes op 6, which is not a recomputable forward op of this program (the plan was made for another program)

builtin.module attributes {autosp.partition = #autosp.partition<sp 2 seq_len 2048>} {
  dist.group @sp {size = 2 : i64, axis = "sequence"}
  func.func @train_step(%x: tensor<1x1024x4x64xf32> {autosp.kind = "input"}) -> (tensor<f32>, tensor<1x1024x4x64xf32>) {
    %s = aten.sigmoid.default %x : (tensor<1x1024x4x64xf32>) -> tensor<1x1024x4x64xf32>
    %h = dist.all_to_all %s {group = @sp, split_dim = 2 : i64, concat_dim = 1 : i64} : tensor<1x1024x4x64xf32> -> tensor<1x2048x2x64xf32>
    %m = aten.mul.Tensor %h, %h : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<1x2048x2x64xf32>
    %big = aten.cat.default [%m, %m, %m, %m] <{dim = 0 : i64}> : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<4x2048x2x64xf32>
    %loss = aten.sum.default %big : (tensor<4x2048x2x64xf32>) -> tensor<f32>
    %g = aten.full.default <{size = array<i64: 1, 2048, 2, 64>, fill_value = 4 : i64, dtype = f32, pin_memory = false}> : () -> tensor<1x2048x2x64xf32>
    %dh = aten.mul.Tensor %g, %h : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<1x2048x2x64xf32>
    %ds = dist.all_to_all %dh {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x2048x2x64xf32> -> tensor<1x1024x4x64xf32>
    %dx = aten.sigmoid_backward.default %ds, %s : (tensor<1x1024x4x64xf32>, tensor<1x1024x4x64xf32>) -> tensor<1x1024x4x64xf32>
    func.return %loss, %dx : tensor<f32>, tensor<1x1024x4x64xf32>
  }
}
