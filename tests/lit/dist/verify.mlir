// RUN: autosp-opt %s --split-input-file --verify-diagnostics | filecheck %s

// 6 heads over 4 ranks: a rank's part is 1 or 2 heads, never 3.
dist.group @sp {size = 4 : i64, axis = "sequence"}
func.func @parts(%x: tensor<1x6x16x64xf32>) {
  %0 = dist.all_to_all %x {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x6x16x64xf32> -> tensor<1x3x64x64xf32>
  func.return
}
// CHECK: dist.all_to_all: result shape [1, 3, 64, 64], expected one of

// -----

dist.group @sp {size = 2 : i64, axis = "sequence"}
func.func @wrong_shape(%x: tensor<8x4xf32>) {
  %0 = dist.all_gather %x {group = @sp, dim = 0 : i64} : tensor<8x4xf32> -> tensor<8x8xf32>
  func.return
}
// CHECK: result shape [8, 8], expected one of [[15, 4], [16, 4], [17, 4]]

// -----

dist.group @sp {size = 2 : i64, axis = "sequence"}
func.func @reduce(%x: tensor<8xf32>) {
  %0 = dist.all_reduce %x {group = @sp, reduce = "mean"} : tensor<8xf32> -> tensor<8xf32>
  func.return
}
// CHECK: reduce must be one of ('sum', 'max', 'min')

// -----

// A collective must name a group the module declares.
func.func @undeclared(%x: tensor<8x4xf32>) {
  %0 = dist.all_reduce %x {group = @dp, reduce = "sum"} : tensor<8x4xf32> -> tensor<8x4xf32>
  func.return
}
// CHECK: dist.all_reduce: @dp is not a dist.group of the module

// -----

// A bucket member's shard is its Shard(0) rows over the group (torch.chunk: 6 rows over 4 -> 2, 2, 2, 0).
dist.group @world {size = 4 : i64, axis = "world"}
func.func @shard_rows(%a: tensor<3x8xf32>) {
  %0 = dist.gather_params_start %a {group = @world, bucket = 0 : i64, phase = "forward", rows = array<i64: 6>} : (tensor<3x8xf32>) -> tensor<4x16xf32>
  func.return
}
// CHECK: dist.gather_params_start: [3, 8] is not a dim-0 shard of [6, 8] over 4 ranks (row counts [0, 2])

// -----

// The buffer holds every rank's padded segment: 2 rows of 8 each.
dist.group @world {size = 4 : i64, axis = "world"}
func.func @buffer(%a: tensor<2x8xf32>) {
  %0 = dist.gather_params_start %a {group = @world, bucket = 0 : i64, phase = "forward", rows = array<i64: 6>} : (tensor<2x8xf32>) -> tensor<4x12xf32>
  func.return
}
// CHECK: the buffer must be [4, 16] of the shards' element type

// -----

dist.group @world {size = 2 : i64, axis = "world"}
func.func @wait(%a: tensor<2x8xf32>) {
  %0 = dist.gather_params_start %a {group = @world, bucket = 0 : i64, phase = "forward", rows = array<i64: 4>} : (tensor<2x8xf32>) -> tensor<2x16xf32>
  %1 = dist.gather_params_wait %0 {group = @world, bucket = 1 : i64, phase = "forward"} : (tensor<2x16xf32>) -> tensor<4x8xf32>
  func.return
}
// CHECK: dist.gather_params_wait: bucket, phase and group must be its start's

// -----

dist.group @world {size = 2 : i64, axis = "world"}
func.func @one_dtype(%a: tensor<4x8xf32>, %b: tensor<4xbf16>) {
  %0, %1 = dist.reduce_scatter_grads %a, %b {group = @world, bucket = 0 : i64, divide = 1 : i64} : (tensor<4x8xf32>, tensor<4xbf16>) -> (tensor<2x8xf32>, tensor<2xbf16>)
  func.return
}
// CHECK: a bucket holds one element type

// -----

// A 0-dim member is replicated: its shard is itself.
dist.group @world {size = 2 : i64, axis = "world"}
func.func @scalar(%a: tensor<f32>) {
  %0 = dist.gather_params_start %a {group = @world, bucket = 0 : i64, phase = "backward", rows = array<i64: 1>} : (tensor<f32>) -> tensor<2x1xf32>
  %1 = dist.gather_params_start %a {group = @world, bucket = 0 : i64, phase = "sideways", rows = array<i64: 1>} : (tensor<f32>) -> tensor<2x1xf32>
  func.return
}
// CHECK: phase must be forward or backward
