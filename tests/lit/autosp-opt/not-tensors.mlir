// The compile pipeline plans tensor programs: other types are one error line naming the value.
// RUN: not autosp-opt %s --sp=1 2>&1 | filecheck %s
// CHECK: autosp-opt: error: value %a has type i32: AutoSP plans programs of tensors only (the IR autosp-export writes)
// CHECK-NOT: Traceback

func.func @train_step(%a: i32) -> i32 {
  %0 = arith.addi %a, %a : i32
  func.return %0 : i32
}
