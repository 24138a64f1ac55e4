// What the passes tell each other about the module is typed, and prints and parses back.
// RUN: autosp-opt %s --split-input-file --verify-diagnostics | filecheck %s

// CHECK: builtin.module attributes {autosp.partition = #autosp.partition<sp 4 seq_len 4096>, autosp.remat = #autosp.remat<"per-layer checkpointing" budget 1024 without 2048 cost_model "mi300x" seconds 0.25>}
builtin.module attributes {autosp.partition = #autosp.partition<sp 4 seq_len 4096>, autosp.remat = #autosp.remat<"per-layer checkpointing" budget 1024 without 2048 cost_model "mi300x" seconds 0.25>} {
}

// -----

// CHECK: partition: sp=8 must be >= 1 and at most seq_len=4
builtin.module attributes {autosp.partition = #autosp.partition<sp 8 seq_len 4>} {
}
