// RUN: autosp-opt %s | autosp-opt | filecheck %s
// RUN: autosp-opt %s -p dce | filecheck %s --check-prefix=DCE

// Ulysses: sequence-sharded [B, H, S/4, D] -> head-sharded [B, H/4, S, D].
dist.group @sp {size = 4 : i64, axis = "sequence"}
func.func @c(%x: tensor<1x8x16x64xf32>, %g: tensor<64x64xf32>) {
  // CHECK: dist.all_to_all %x {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x8x16x64xf32> -> tensor<1x2x64x64xf32>
  %0 = dist.all_to_all %x {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x8x16x64xf32> -> tensor<1x2x64x64xf32>
  // CHECK: dist.all_reduce %g {group = @sp, reduce = "sum"} : tensor<64x64xf32> -> tensor<64x64xf32>
  %1 = dist.all_reduce %g {group = @sp, reduce = "sum"} : tensor<64x64xf32> -> tensor<64x64xf32>
  // CHECK: dist.all_gather %x {group = @sp, dim = 2 : i64} : tensor<1x8x16x64xf32> -> tensor<1x8x64x64xf32>
  %2 = dist.all_gather %x {group = @sp, dim = 2 : i64} : tensor<1x8x16x64xf32> -> tensor<1x8x64x64xf32>
  // CHECK: dist.reduce_scatter %x {group = @sp, reduce = "sum", dim = 1 : i64} : tensor<1x8x16x64xf32> -> tensor<1x2x16x64xf32>
  %3 = dist.reduce_scatter %x {group = @sp, reduce = "sum", dim = 1 : i64} : tensor<1x8x16x64xf32> -> tensor<1x2x16x64xf32>
  func.return
}

// Unused collectives are not dead: every rank must still run them, in order.
// DCE: dist.all_to_all
// DCE-NEXT: dist.all_reduce
// DCE-NEXT: dist.all_gather
// DCE-NEXT: dist.reduce_scatter
