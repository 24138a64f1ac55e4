// RUN: autosp-opt %s -p memory-plan | filecheck %s

// Arguments 4x8 f32 (128 B) are held throughout. %m (128 B) and %n (128 B) are live together;
// the views of %m (%v, %p) share its storage and cost nothing; %m dies after %p's last use.
// Peak: 128 (arg) + 128 (%m) + 128 (%n) = 384 B at %n.
// CHECK: builtin.module attributes {autosp.peak_bytes = 384 : i64, autosp.peak_op = "aten.mul.Tensor (%n, op 3)"}
func.func @train_step(%a: tensor<4x8xf32> {autosp.kind = "input"}) -> tensor<f32> {
  %m = aten.mul.Tensor %a, %a : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %v = aten.view.default %m <{size = array<i64: 8, 4>}> : (tensor<4x8xf32>) -> tensor<8x4xf32>
  %p = aten.permute.default %v <{dims = array<i64: 1, 0>}> : (tensor<8x4xf32>) -> tensor<4x8xf32>
  %n = aten.mul.Tensor %p, %a : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %s = aten.sum.default %n : (tensor<4x8xf32>) -> tensor<f32>
  func.return %s : tensor<f32>
}
