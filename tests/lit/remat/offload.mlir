// RUN: autosp-opt %s -p 'remat{budget="1GiB" host_budget="1GiB" given="rank 0" offload=0}' | filecheck %s
// RUN: autosp-opt %s -p 'remat{budget="6.5MiB" host_budget="16MiB" cost_model="h100"}' | filecheck %s --check-prefix=SOLVED
// RUN: not autosp-opt %s -p 'remat{budget="6.5MiB" cost_model="h100"}' 2>&1 | filecheck %s --check-prefix=NOHOST
// RUN: autosp-opt %s -p 'remat{budget="6.5MiB" host_budget="16MiB" cost_model="h100"}' -t python | filecheck %s --check-prefix=PY

// An offloaded value is copied to the host pool as it is made, its device memory is free once
// that copy is waited for (after its last forward use), and it is copied back before the
// backward reads it: the backward reads the copy.
// CHECK:      %s = dist.all_reduce %x
// CHECK-NEXT: %s_host = host.offload_start %s {offset = 0 : i64} : tensor<1x1024x4x64xf32> -> tensor<1x1024x4x64xf32, #host.memory>
// CHECK-NEXT: %h = dist.all_to_all %s
// CHECK-NEXT: host.offload_wait %s, %s_host : tensor<1x1024x4x64xf32>, tensor<1x1024x4x64xf32, #host.memory>
// CHECK:      %loss = aten.sum.default %big
// CHECK:      %s_dev = host.prefetch_start %s_host : tensor<1x1024x4x64xf32, #host.memory> -> tensor<1x1024x4x64xf32>
// CHECK:      %s_back = host.prefetch_wait %s_dev : tensor<1x1024x4x64xf32> -> tensor<1x1024x4x64xf32>
// CHECK-NEXT: %dx = aten.mul.Tensor %ds, %s_back

// Under 6.5 MiB the all-reduce's result (a reduction: never recomputed) cannot be kept through
// the concatenation: with a host budget the solver offloads it (and recomputes the all-to-all).
// SOLVED:      %s_host = host.offload_start %s
// SOLVED:      %s_back = host.prefetch_wait %s_dev
// SOLVED-NEXT: %h_re = dist.all_to_all %s_back {autosp.recompute
// SOLVED:      %dx = aten.mul.Tensor %ds, %s_back

// Without a host budget nothing fits.
// NOHOST: autosp-opt: error: remat: the step needs

// The program copies through the runtime's host pool, sized to the offloads.
// PY:      HOST_POOL_BYTES = 1048576
// PY:      offload.offload_start({{.*}}, offset=0, pool=HOST)
// PY:      offload.offload_wait(
// PY:      offload.prefetch_start({{.*}}, pool=HOST)
// PY:      offload.prefetch_wait(

builtin.module attributes {autosp.partition = #autosp.partition<sp 2 seq_len 2048>} {
  dist.group @sp {size = 2 : i64, axis = "sequence"}
  func.func @train_step(%x: tensor<1x1024x4x64xf32> {autosp.kind = "input"}) -> (tensor<f32>, tensor<1x1024x4x64xf32>) {
    %s = dist.all_reduce %x {group = @sp, reduce = "sum"} : tensor<1x1024x4x64xf32> -> tensor<1x1024x4x64xf32>
    %h = dist.all_to_all %s {group = @sp, split_dim = 2 : i64, concat_dim = 1 : i64} : tensor<1x1024x4x64xf32> -> tensor<1x2048x2x64xf32>
    %m = aten.mul.Tensor %h, %h : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<1x2048x2x64xf32>
    %big = aten.cat.default [%m, %m, %m, %m] <{dim = 0 : i64}> : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<4x2048x2x64xf32>
    %loss = aten.sum.default %big : (tensor<4x2048x2x64xf32>) -> tensor<f32>
    %g = aten.full.default <{size = array<i64: 1, 2048, 2, 64>, fill_value = 4 : i64, dtype = f32, pin_memory = false}> : () -> tensor<1x2048x2x64xf32>
    %dh = aten.mul.Tensor %g, %h : (tensor<1x2048x2x64xf32>, tensor<1x2048x2x64xf32>) -> tensor<1x2048x2x64xf32>
    %ds = dist.all_to_all %dh {group = @sp, split_dim = 1 : i64, concat_dim = 2 : i64} : tensor<1x2048x2x64xf32> -> tensor<1x1024x4x64xf32>
    %dx = aten.mul.Tensor %ds, %s : (tensor<1x1024x4x64xf32>, tensor<1x1024x4x64xf32>) -> tensor<1x1024x4x64xf32>
    func.return %loss, %dx : tensor<f32>, tensor<1x1024x4x64xf32>
  }
}
