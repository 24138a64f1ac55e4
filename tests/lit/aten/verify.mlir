// RUN: autosp-opt %s --split-input-file --verify-diagnostics | filecheck %s

func.func @catch_all_refs(%a: tensor<4xf32>) {
  %0 = aten.op "aten::foo.default"(%a) <[0 : index, 1 : index]> : (tensor<4xf32>) -> tensor<4xf32>
  func.return
}
// CHECK: aten.op aten::foo.default: args reference operands [0, 1], but it has 1

// -----

func.func @missing_property(%a: tensor<4xf32>) {
  %0 = aten.sum.dim_IntList %a : (tensor<4xf32>) -> tensor<f32>
  func.return
}
// CHECK: keepdim
