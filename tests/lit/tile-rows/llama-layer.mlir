// RUN: autosp-export --preset tiny-llama --seq 64 --layers 1 -o %t.mlir
// RUN: autosp-opt %t.mlir -p 'drop-aliases,dce,tile-rows{chunk_bytes=4096}' | filecheck %s
// RUN: autosp-opt %t.mlir -p 'drop-aliases,dce,tile-rows{chunk_bytes=4096}' -t python | filecheck %s --check-prefix=PY

// A tiny Llama layer (64 tokens, hidden 64, MLP 128): 4096 bytes hold 8 rows of its widest
// token-wise value (the MLP's 128 f32). Between the attention and the loss, the output
// projection, residual add, RMSNorm, gated MLP, residual add and final norm run as one region,
// 8 rows at a time, cutting the attention output by its rows (dim 2) and taking weights whole;
// the MLP's [rows, 128] values exist one chunk at a time. Row counts in views are -1 (any chunk).
// CHECK:      %view_tiled = autosp.tiled(%attention_r0, {{.*}}) {rows = 64 : i64, chunk = 8 : i64, slices = array<i64: 2, -1, 1, -1, -1, -1, -1, -1>, combines = array<i64: 0>, scratch = {{[0-9]+}} : i64} : (tensor<1x4x64x16xf32>, {{.*}}) -> tensor<64x64xf32> {
// CHECK:        aten.view.default %{{.*}} <{size = array<i64: 1, 4, -1, 16>}>
// CHECK:        aten.mm.default %{{.*}} : (tensor<8x64xf32>, tensor<64x128xf32>) -> tensor<8x128xf32>
// CHECK:        aten.sigmoid.default %{{.*}} : (tensor<1x8x128xf32>) -> tensor<1x8x128xf32>
// CHECK:        autosp.yield %{{.*}} : tensor<8x64xf32>
// CHECK-NEXT: }

// Its backward: the region recomputed per chunk and differentiated; the weight gradients (sums
// over the tokens, combine -1) accumulate over the chunks, the input gradients come back by rows.
// CHECK:      autosp.tiled({{.*}}) {rows = 64 : i64, chunk = 8 : i64, slices = {{.*}}, combines = array<i64: -1, {{.*}}-1{{.*}}>
// CHECK:        aten.sigmoid.default
// CHECK:        aten.mm.default %{{.*}} : (tensor<64x8xf32>, tensor<8x128xf32>) -> tensor<64x128xf32>
// No [64, 128] MLP value is left outside the regions.
// CHECK-NOT:  {{^    %.*}} = aten.{{.*}} -> tensor<1x64x128xf32>

// The program runs each region's function once per chunk of rows.
// PY:      def tiled_1(x0, x1, x2, x3, x4, x5, x6, x7):
// PY:      tiles.run(tiled_1, attention_r0, {{.*}}, slices=[2, -1, 1, -1, -1, -1, -1, -1], combines=[0], dtypes=[torch.float32], rows=64, chunk=8)
