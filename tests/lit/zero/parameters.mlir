// RUN: autosp-opt %s -p 'zero{level="parameters" world=4 rank=3 optimizer="adamw"}' | filecheck %s
// RUN: autosp-opt %s -p 'zero{level="parameters" world=4 rank=3}' -t python | filecheck %s --check-prefix=PY

// Two segments (cut at the attention): w0 and w1 are read before it (one bucket), w2 after it.
// Each parameter is this rank's Shard(0) rows (rank 3 of 4: 8 rows -> 2, 6 rows -> none).
// CHECK: autosp.zero = #autosp.zero<parameters world 4 dp 4 optimizer "adamw" state 224 unsharded 2560>
// CHECK: dist.group @world {size = 4 : i64, axis = "world"}
// CHECK: func.func @train_step(%w0_shard: tensor<2x8xf32> {{.*}}, %w1_shard: tensor<0x8xf32> {{.*}}, %w2_shard: tensor<2x6xf32>
// The first segment's bucket: one gather into a [4 ranks, 2x8 + 2x8 padded rows] buffer, waited
// for before its first forward use. The second bucket's gather starts right then, so it overlaps
// the first segment's compute, and is waited for before its own first use.
// CHECK-NEXT: %bucket0_forward = dist.gather_params_start %w0_shard, %w1_shard {group = @world, bucket = 0 : i64, phase = "forward", rows = array<i64: 8, 6>} : (tensor<2x8xf32>, tensor<0x8xf32>) -> tensor<4x32xf32>
// CHECK-NEXT: %w0, %w1 = dist.gather_params_wait %bucket0_forward {group = @world, bucket = 0 : i64, phase = "forward"} : (tensor<4x32xf32>) -> (tensor<8x8xf32>, tensor<6x8xf32>)
// CHECK-NEXT: %bucket1_forward = dist.gather_params_start %w2_shard {group = @world, bucket = 1 : i64, phase = "forward", rows = array<i64: 8>} : (tensor<2x6xf32>) -> tensor<4x12xf32>
// CHECK-NEXT: aten.permute.default %w0
// CHECK: autosp.attention
// CHECK: %w2 = dist.gather_params_wait %bucket1_forward {{.*}} -> tensor<8x6xf32>
// CHECK-NEXT: %t2 = aten.permute.default %w2
// CHECK: %loss = aten.sum.default
// Gathered again as the backward of its segment begins (not started in the forward: it would
// hold a second copy at the peak); the next bucket's starts then. The forward's transposed
// weight the backward reads is rebuilt on the new copy.
// CHECK: %bucket1_backward = dist.gather_params_start %w2_shard {group = @world, bucket = 1 : i64, phase = "backward", rows = array<i64: 8>}
// CHECK-NEXT: %w2_bwd = dist.gather_params_wait %bucket1_backward
// CHECK-NEXT: %bucket0_backward = dist.gather_params_start %w0_shard, %w1_shard {{.*}}phase = "backward"
// CHECK-NEXT: %[[T2:.*]] = aten.permute.default %w2_bwd
// Its gradient is reduce-scattered as soon as it is made, the mean over the 4 replicas.
// CHECK: %gw2 = aten.permute.default %gt2
// CHECK-NEXT: %grad_w2 = dist.reduce_scatter_grads %gw2 {group = @world, bucket = 1 : i64, divide = 4 : i64} : (tensor<8x6xf32>) -> tensor<2x6xf32>
// CHECK-NEXT: aten.permute.default %[[T2]]
// CHECK: %w0_bwd, %w1_bwd = dist.gather_params_wait %bucket0_backward
// CHECK-NEXT: autosp.attention_grad
// CHECK: aten.mm.default %gh1, %w1_bwd
// CHECK: %grad_w0, %grad_w1 = dist.reduce_scatter_grads %gw0, %gw1 {group = @world, bucket = 0 : i64, divide = 4 : i64} : (tensor<8x8xf32>, tensor<6x8xf32>) -> (tensor<2x8xf32>, tensor<0x8xf32>)
// CHECK-NEXT: func.return %loss, %grad_w0, %grad_w1, %grad_w2 : tensor<f32>, tensor<2x8xf32>, tensor<0x8xf32>, tensor<2x6xf32>

// The program frees each whole parameter after its last use in its window, and each buffer
// once its parameters are copied out.
// PY:      def train_step(w0_shard, w1_shard, w2_shard, x):
// PY-NEXT:   bucket0_forward = collectives.gather_params_start(w0_shard, w1_shard, rows=[8, 6], group=GROUPS['world'])
// PY-NEXT:   w0, w1 = collectives.gather_params_wait(bucket0_forward, shapes=[[8, 8], [6, 8]], group=GROUPS['world'])
// PY-NEXT:   del bucket0_forward
// PY-NEXT:   bucket1_forward = collectives.gather_params_start(w2_shard, rows=[8], group=GROUPS['world'])
// PY:        w2 = collectives.gather_params_wait(bucket1_forward, shapes=[[8, 6]], group=GROUPS['world'])
// PY-NEXT:   del bucket1_forward
// PY-NEXT:   t2 = torch.ops.aten.permute.default(w2, [1, 0])
// PY-NEXT:   del w2
// PY-NEXT:   h2 = torch.ops.aten.mm.default(ov, t2)
// PY-NEXT:   del t2
// PY:        w2_bwd = collectives.gather_params_wait(bucket1_backward, shapes=[[8, 6]], group=GROUPS['world'])
// PY:        grad_w2 = collectives.reduce_scatter_grads(gw2, divide=4, group=GROUPS['world'])
// PY-NEXT:   del gw2
// PY:        grad_w0, grad_w1 = collectives.reduce_scatter_grads(gw0, gw1, divide=4, group=GROUPS['world'])
// PY:        return (loss, grad_w0, grad_w1, grad_w2, )

func.func @train_step(%w0: tensor<8x8xf32> {autosp.kind = "parameter", autosp.name = "w0"}, %w1: tensor<6x8xf32> {autosp.kind = "parameter", autosp.name = "w1"}, %w2: tensor<8x6xf32> {autosp.kind = "parameter", autosp.name = "w2"}, %x: tensor<4x8xf32> {autosp.kind = "input"}) -> (tensor<f32> {autosp.kind = "loss"}, tensor<8x8xf32> {autosp.kind = "grad", autosp.grad_of = "w0"}, tensor<6x8xf32> {autosp.kind = "grad", autosp.grad_of = "w1"}, tensor<8x6xf32> {autosp.kind = "grad", autosp.grad_of = "w2"}) {
  %t0 = aten.permute.default %w0 <{dims = array<i64: 1, 0>}> : (tensor<8x8xf32>) -> tensor<8x8xf32>
  %x2 = aten.mm.default %x, %t0 : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %t1 = aten.permute.default %w1 <{dims = array<i64: 1, 0>}> : (tensor<6x8xf32>) -> tensor<8x6xf32>
  %h1 = aten.mm.default %x2, %t1 : (tensor<4x8xf32>, tensor<8x6xf32>) -> tensor<4x6xf32>
  %q = aten.view.default %h1 <{size = array<i64: 1, 1, 4, 6>}> : (tensor<4x6xf32>) -> tensor<1x1x4x6xf32>
  %o, %lse = autosp.attention %q, %q, %q {causal = true, window = 0 : i64, scale = 5.000000e-01 : f64} : (tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>) -> (tensor<1x1x4x6xf32>, tensor<1x1x4xf32>)
  %ov = aten.view.default %o <{size = array<i64: 4, 6>}> : (tensor<1x1x4x6xf32>) -> tensor<4x6xf32>
  %t2 = aten.permute.default %w2 <{dims = array<i64: 1, 0>}> : (tensor<8x6xf32>) -> tensor<6x8xf32>
  %h2 = aten.mm.default %ov, %t2 : (tensor<4x6xf32>, tensor<6x8xf32>) -> tensor<4x8xf32>
  %loss = aten.sum.default %h2 : (tensor<4x8xf32>) -> tensor<f32>
  // the backward
  %g = aten.full.default <{size = array<i64: 4, 8>, fill_value = 1 : i64, dtype = f32, pin_memory = false}> : () -> tensor<4x8xf32>
  %ovt = aten.permute.default %ov <{dims = array<i64: 1, 0>}> : (tensor<4x6xf32>) -> tensor<6x4xf32>
  %gt2 = aten.mm.default %ovt, %g : (tensor<6x4xf32>, tensor<4x8xf32>) -> tensor<6x8xf32>
  %gw2 = aten.permute.default %gt2 <{dims = array<i64: 1, 0>}> : (tensor<6x8xf32>) -> tensor<8x6xf32>
  %t2t = aten.permute.default %t2 <{dims = array<i64: 1, 0>}> : (tensor<6x8xf32>) -> tensor<8x6xf32>
  %gov = aten.mm.default %g, %t2t : (tensor<4x8xf32>, tensor<8x6xf32>) -> tensor<4x6xf32>
  %go = aten.view.default %gov <{size = array<i64: 1, 1, 4, 6>}> : (tensor<4x6xf32>) -> tensor<1x1x4x6xf32>
  %dq, %dk, %dv = autosp.attention_grad %go, %q, %q, %q, %o, %lse {causal = true, window = 0 : i64, scale = 5.000000e-01 : f64} : (tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4xf32>) -> (tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>)
  %s1 = aten.add.Tensor %dq, %dk <{alpha = 1 : i64}> : (tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>) -> tensor<1x1x4x6xf32>
  %s2 = aten.add.Tensor %s1, %dv <{alpha = 1 : i64}> : (tensor<1x1x4x6xf32>, tensor<1x1x4x6xf32>) -> tensor<1x1x4x6xf32>
  %gh1 = aten.view.default %s2 <{size = array<i64: 4, 6>}> : (tensor<1x1x4x6xf32>) -> tensor<4x6xf32>
  %x2t = aten.permute.default %x2 <{dims = array<i64: 1, 0>}> : (tensor<4x8xf32>) -> tensor<8x4xf32>
  %gt1 = aten.mm.default %x2t, %gh1 : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
  %gw1 = aten.permute.default %gt1 <{dims = array<i64: 1, 0>}> : (tensor<8x6xf32>) -> tensor<6x8xf32>
  %gx2 = aten.mm.default %gh1, %w1 : (tensor<4x6xf32>, tensor<6x8xf32>) -> tensor<4x8xf32>
  %xt = aten.permute.default %x <{dims = array<i64: 1, 0>}> : (tensor<4x8xf32>) -> tensor<8x4xf32>
  %gt0 = aten.mm.default %xt, %gx2 : (tensor<8x4xf32>, tensor<4x8xf32>) -> tensor<8x8xf32>
  %gw0 = aten.permute.default %gt0 <{dims = array<i64: 1, 0>}> : (tensor<8x8xf32>) -> tensor<8x8xf32>
  func.return %loss, %gw0, %gw1, %gw2 : tensor<f32>, tensor<8x8xf32>, tensor<6x8xf32>, tensor<8x6xf32>
}
