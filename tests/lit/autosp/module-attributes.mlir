// What the passes tell each other about the module is typed, and prints and parses back.
// RUN: autosp-opt %s --split-input-file --verify-diagnostics | filecheck %s

// CHECK: builtin.module attributes {autosp.partition = #autosp.partition<sp 4 seq_len 4096>, autosp.remat = #autosp.remat<"per-layer checkpointing" budget 1024 without 2048 cost_model "mi300x" seconds 0.25>}
builtin.module attributes {autosp.partition = #autosp.partition<sp 4 seq_len 4096>, autosp.remat = #autosp.remat<"per-layer checkpointing" budget 1024 without 2048 cost_model "mi300x" seconds 0.25>} {
}

// -----

// CHECK: partition: sp=8 must be >= 1 and at most seq_len=4
builtin.module attributes {autosp.partition = #autosp.partition<sp 8 seq_len 4>} {
}

// -----

// CHECK: builtin.module attributes {autosp.zero = #autosp.zero<gradients world 8 dp 2 optimizer "adamw-master" state 3072 unsharded 8192>}
builtin.module attributes {autosp.zero = #autosp.zero<gradients world 8 dp 2 optimizer "adamw-master" state 3072 unsharded 8192>} {
}

// -----

// CHECK: zero: level must be one of none, optimizer, gradients, parameters
builtin.module attributes {autosp.zero = #autosp.zero<everything world 8 dp 2 optimizer "adamw" state 0 unsharded 0>} {
}

// -----

// CHECK: zero: world 6 must be a multiple of dp 4 >= 1, state >= 0
builtin.module attributes {autosp.zero = #autosp.zero<parameters world 6 dp 4 optimizer "adamw" state 0 unsharded 0>} {
}
