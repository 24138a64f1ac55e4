// RUN: autosp-opt %s -p drop-aliases | filecheck %s

// alias/detach are the identity under value semantics; clone is kept (codegen needs its layout).
func.func @f(%a: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>) {
  %0 = aten.alias.default %a : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %1 = aten.detach.default %0 : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %2 = aten.mul.Tensor %1, %1 : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %3 = aten.clone.default %2 : (tensor<4x8xf32>) -> tensor<4x8xf32>
  func.return %2, %3 : tensor<4x8xf32>, tensor<4x8xf32>
}
// CHECK-NOT: aten.alias
// CHECK-NOT: aten.detach
// CHECK: %[[M:.*]] = aten.mul.Tensor %a, %a
// CHECK-NEXT: %[[C:.*]] = aten.clone.default %[[M]]
// CHECK-NEXT: func.return %[[M]], %[[C]]
