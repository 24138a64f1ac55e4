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
