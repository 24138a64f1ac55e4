// The program of parameters.mlir at the lower levels (rank 0 of 4: 8 rows -> 2, 6 rows -> 2).
// RUN: autosp-opt %S/parameters.mlir -p 'zero{level="optimizer" world=4 rank=0}' | filecheck %s --check-prefix=ZERO1
// RUN: autosp-opt %S/parameters.mlir -p 'zero{level="gradients" world=4 rank=0}' | filecheck %s --check-prefix=ZERO2
// RUN: autosp-opt %S/parameters.mlir -p 'zero{level="none" optimizer="sgd-momentum"}' | filecheck %s --check-prefix=NONE

// ZeRO-1: whole parameters gathered once (the backward reads the forward's copies), whole
// gradients held to the end of the backward, then reduce-scattered bucket by bucket.
// ZERO1:      dist.gather_params_start %w0_shard, %w1_shard {group = @world, bucket = 0 : i64, phase = "forward", rows = array<i64: 8, 6>} : (tensor<2x8xf32>, tensor<2x8xf32>)
// ZERO1:      %w0, %w1 = dist.gather_params_wait
// ZERO1:      %w2 = dist.gather_params_wait {{.*}}phase = "forward"
// ZERO1-NOT:  phase = "backward"
// ZERO1:      %t2t = aten.permute.default %t2
// ZERO1-NOT:  dist.reduce_scatter_grads
// ZERO1:      %gw0 = aten.permute.default %gt0
// ZERO1-NEXT: %grad_w0, %grad_w1 = dist.reduce_scatter_grads %gw0, %gw1 {group = @world, bucket = 0 : i64, divide = 4 : i64}
// ZERO1-NEXT: %grad_w2 = dist.reduce_scatter_grads %gw2 {group = @world, bucket = 1 : i64, divide = 4 : i64}
// ZERO1-NEXT: func.return

// ZeRO-2: the same gathers; each bucket's gradients reduce-scattered as soon as they are made.
// ZERO2-NOT:  phase = "backward"
// ZERO2:      %gw2 = aten.permute.default %gt2
// ZERO2-NEXT: %grad_w2 = dist.reduce_scatter_grads %gw2
// ZERO2:      %gw0 = aten.permute.default %gt0
// ZERO2-NEXT: %grad_w0, %grad_w1 = dist.reduce_scatter_grads %gw0, %gw1
// ZERO2-NEXT: func.return

// Nothing sharded: the optimizer's state (one momentum buffer per element: 160 fp32) recorded.
// NONE:     autosp.zero = #autosp.zero<none world 1 dp 1 optimizer "sgd-momentum" state 640 unsharded 1920>
// NONE-NOT: dist.
// RUN: autosp-opt %S/parameters.mlir -p 'zero{level="parameters" world=4 rank=0 prefetch=false}' | filecheck %s --check-prefix=NOPREFETCH

// Without prefetch each gather starts where it is waited for (one buffer less held).
// NOPREFETCH:      %bucket0_forward = dist.gather_params_start
// NOPREFETCH-NEXT: dist.gather_params_wait %bucket0_forward
// NOPREFETCH-NEXT: aten.permute.default %w0
// NOPREFETCH:      %bucket1_forward = dist.gather_params_start
// NOPREFETCH-NEXT: %w2 = dist.gather_params_wait %bucket1_forward
