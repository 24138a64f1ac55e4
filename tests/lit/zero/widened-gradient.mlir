// RUN: autosp-opt %s -p 'zero{level="parameters" world=4 rank=1}' | filecheck %s
// RUN: autosp-opt %s -p 'zero{level="optimizer" world=4 rank=1}' | filecheck %s --check-prefix=ZERO1

// bf16 parameters on sp=2 x dp=2. The head's gradient is accumulated in f32 (as the fused loss
// does), summed over the SP group, then cast: the SP all-reduce and the cast go; the f32 partial
// is reduce-scattered over the world in f32 (the cast's rounding happens once, on the summed
// shard) and the shard is cast. w1's bf16 gradient goes in the bucket's bf16 collective.
// CHECK-NOT:  dist.all_reduce %head32
// CHECK:      %w1g = aten.mm.default
// CHECK-NEXT: %grad_head_f32 = dist.reduce_scatter_grads %head32 {group = @world, bucket = 0 : i64, divide = 2 : i64} : (tensor<16x4xf32>) -> tensor<4x4xf32>
// CHECK-NEXT: %grad_head = aten._to_copy.default %grad_head_f32 <{dtype = bf16, non_blocking = false}> : (tensor<4x4xf32>) -> tensor<4x4xbf16>
// CHECK-NEXT: %grad_w1 = dist.reduce_scatter_grads %w1g {group = @world, bucket = 0 : i64, divide = 2 : i64} : (tensor<8x4xbf16>) -> tensor<2x4xbf16>
// CHECK-NEXT: func.return %loss, %grad_head, %grad_w1

// ZeRO-1 holds whole gradients to the end of the step: it keeps them narrow (the cast before
// the collective), so the f32 sum over the SP group stays.
// ZERO1:      %head32_r = dist.all_reduce %head32 {group = @sp, reduce = "sum"}
// ZERO1:      %headg = aten._to_copy.default %head32_r
// ZERO1:      dist.reduce_scatter_grads {{.*}} : (tensor<16x4xbf16>, tensor<8x4xbf16>) -> (tensor<4x4xbf16>, tensor<2x4xbf16>)

builtin.module attributes {autosp.partition = #autosp.partition<sp 2 seq_len 8>} {
  dist.group @sp {size = 2 : i64, axis = "sequence"}
  func.func @train_step(%head: tensor<16x4xbf16> {autosp.kind = "parameter", autosp.name = "head"}, %w1: tensor<8x4xbf16> {autosp.kind = "parameter", autosp.name = "w1"}, %x: tensor<4x4xbf16> {autosp.kind = "input"}) -> (tensor<f32> {autosp.kind = "loss"}, tensor<16x4xbf16> {autosp.kind = "grad", autosp.grad_of = "head"}, tensor<8x4xbf16> {autosp.kind = "grad", autosp.grad_of = "w1"}) {
    %t1 = aten.permute.default %w1 <{dims = array<i64: 1, 0>}> : (tensor<8x4xbf16>) -> tensor<4x8xbf16>
    %h = aten.mm.default %x, %t1 : (tensor<4x4xbf16>, tensor<4x8xbf16>) -> tensor<4x8xbf16>
    %ht = aten.permute.default %head <{dims = array<i64: 1, 0>}> : (tensor<16x4xbf16>) -> tensor<4x16xbf16>
    %y = aten.mm.default %x, %ht : (tensor<4x4xbf16>, tensor<4x16xbf16>) -> tensor<4x16xbf16>
    %s = aten.sum.default %y <{dtype = f32}> : (tensor<4x16xbf16>) -> tensor<f32>
    %hs = aten.sum.default %h <{dtype = f32}> : (tensor<4x8xbf16>) -> tensor<f32>
    %part = aten.add.Tensor %s, %hs <{alpha = 1 : i64}> : (tensor<f32>, tensor<f32>) -> tensor<f32>
    %loss = dist.all_reduce %part {group = @sp, reduce = "sum"} : tensor<f32> -> tensor<f32>
    // the backward
    %g16 = aten.full.default <{size = array<i64: 16, 4>, fill_value = 1 : i64, dtype = f32, pin_memory = false}> : () -> tensor<16x4xf32>
    %xf = aten._to_copy.default %x <{dtype = f32, non_blocking = false}> : (tensor<4x4xbf16>) -> tensor<4x4xf32>
    %head32 = aten.mul.Tensor %g16, %g16 : (tensor<16x4xf32>, tensor<16x4xf32>) -> tensor<16x4xf32>
    %head32_r = dist.all_reduce %head32 {group = @sp, reduce = "sum"} : tensor<16x4xf32> -> tensor<16x4xf32>
    %headg = aten._to_copy.default %head32_r <{dtype = bf16, non_blocking = false}> : (tensor<16x4xf32>) -> tensor<16x4xbf16>
    %g8 = aten.full.default <{size = array<i64: 8, 4>, fill_value = 1 : i64, dtype = bf16, pin_memory = false}> : () -> tensor<8x4xbf16>
    %w1g = aten.mm.default %g8, %x : (tensor<8x4xbf16>, tensor<4x4xbf16>) -> tensor<8x4xbf16>
    %w1g_r = dist.all_reduce %w1g {group = @sp, reduce = "sum"} : tensor<8x4xbf16> -> tensor<8x4xbf16>
    func.return %loss, %headg, %w1g_r : tensor<f32>, tensor<16x4xbf16>, tensor<8x4xbf16>
  }
}
