// RUN: autosp-opt %s | autosp-opt | filecheck %s

// A gated MLP in row chunks over x [2, 16, 64] (I = 256), and its gradient.
func.func @mlp(%x: tensor<2x16x64xbf16>, %wg: tensor<256x64xbf16>, %wu: tensor<256x64xbf16>, %wd: tensor<64x256xbf16>, %g: tensor<2x16x64xbf16>) {
  // CHECK: %out = autosp.gated_mlp %x, %wg, %wu, %wd {activation = "silu", chunk = 8 : i64} : (tensor<2x16x64xbf16>, tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64x256xbf16>) -> tensor<2x16x64xbf16>
  %out = autosp.gated_mlp %x, %wg, %wu, %wd {activation = "silu", chunk = 8 : i64} : (tensor<2x16x64xbf16>, tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64x256xbf16>) -> tensor<2x16x64xbf16>
  // CHECK: autosp.gated_mlp_grad %g, %x, %wg, %wu, %wd {activation = "gelu_tanh", chunk = 8 : i64}
  // CHECK-SAME: -> (tensor<2x16x64xbf16>, tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64x256xbf16>)
  %dx, %dg, %du, %dd = autosp.gated_mlp_grad %g, %x, %wg, %wu, %wd {activation = "gelu_tanh", chunk = 8 : i64} : (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>, tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64x256xbf16>) -> (tensor<2x16x64xbf16>, tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64x256xbf16>)
  func.return
}
