// RUN: not autosp-opt %s -p no-such-pass 2>&1 | filecheck %s --check-prefix=PASS
// RUN: not autosp-opt %s --sp=8 2>&1 | filecheck %s --check-prefix=SP
// RUN: not autosp-opt %s --remat --memory-budget=12parsecs 2>&1 | filecheck %s --check-prefix=REMAT
// RUN: sed 's/%a, %a :/%a :/' %s | not autosp-opt 2>&1 | filecheck %s --check-prefix=PARSE

// PASS: autosp-opt: error: Unrecognized passes: ['no-such-pass']
// SP: autosp-opt: error: sp-propagate: no token input (an integer input of rank > 1) to shard along the sequence
// REMAT: autosp-opt: error: memory budget '12parsecs' is not a size; give bytes or a number with a unit (e.g. 70GiB, 512MiB, 80GB) or 'auto'
// PARSE: autosp-opt: error: stdin:{{[0-9]+}}:{{[0-9]+}}: Expected ','
// PARSE-NOT: Traceback

func.func @train_step(%a: tensor<4x4xf32>) -> tensor<4x4xf32> {
  %0 = aten.mm.default %a, %a : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32>
  func.return %0 : tensor<4x4xf32>
}
