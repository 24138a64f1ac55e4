// RUN: autosp-opt %s | autosp-opt | filecheck %s
// RUN: autosp-opt %s --print-op-generic | autosp-opt --print-op-generic | filecheck %s --check-prefix=GENERIC

// Operand groups follow the schema: single, list ([...]), absent optional (none).
func.func @ops(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>, %c: tensor<4x16xf32>, %w: tensor<8xf32>) -> tensor<4x16xf32> {
  // CHECK: %{{.*}} = aten.mm.default %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
  %0 = aten.mm.default %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
  // CHECK: aten.add.Tensor %{{.*}}, %c <{alpha = 1 : i64}>
  %1 = aten.add.Tensor %0, %c <{alpha = 1 : i64}> : (tensor<4x16xf32>, tensor<4x16xf32>) -> tensor<4x16xf32>
  // CHECK: aten.cat.default [%{{.*}}, %{{.*}}] <{dim = 0 : i64}> : (tensor<4x16xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
  %2 = aten.cat.default [%1, %1] <{dim = 0 : i64}> : (tensor<4x16xf32>, tensor<4x16xf32>) -> tensor<8x16xf32>
  // CHECK: aten.native_layer_norm.default %a, %w, none <{normalized_shape = array<i64: 8>, eps = 1.000000e-05 : f64}>
  %3, %4, %5 = aten.native_layer_norm.default %a, %w, none <{normalized_shape = array<i64: 8>, eps = 1.000000e-05 : f64}> : (tensor<4x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<4x1xf32>, tensor<4x1xf32>)
  // CHECK: aten._to_copy.default %{{.*}} <{dtype = bf16, non_blocking = false}>
  %6 = aten._to_copy.default %3 <{dtype = bf16, non_blocking = false}> : (tensor<4x8xf32>) -> tensor<4x8xbf16>
  // CHECK: aten.op "aten::index.Tensor"(%a, %{{.*}}) <[0 : index, [unit, 1 : index]]>
  %idx = aten.arange.default <{end = 2 : i64}> : () -> tensor<2xi64>
  %7 = aten.op "aten::index.Tensor"(%a, %idx) <[0 : index, [unit, 1 : index]]> : (tensor<4x8xf32>, tensor<2xi64>) -> tensor<4x2xf32>
  func.return %1 : tensor<4x16xf32>
}

// GENERIC: "aten.mm.default"(%a, %b) : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
// GENERIC: "aten.native_layer_norm.default"(%a, %w) <{normalized_shape = array<i64: 8>, eps = 1.000000e-05 : f64, operandSegmentSizes = array<i32: 1, 1, 0>}>
// GENERIC: "aten.op"(%a, %{{.*}}) <{target = "aten::index.Tensor", args = [0 : index, [unit, 1 : index]]}>
