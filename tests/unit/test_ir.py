"""IR: text round-trips of a whole training step, custom and generic; verifiers."""

import io

import pytest
import torch
from xdsl.dialects.builtin import TensorType
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from autosp.frontends import import_program
from autosp.frontends.presets import export_preset
from autosp.ir import autosp_context
from autosp.ir.aten import aten_op_class
from tests.conftest import tiny_causal_lm


@pytest.fixture(scope="module")
def llama_module():
    module = tiny_causal_lm("Llama")
    ids = torch.randint(0, 96, (1, 32))
    return import_program(torch.export.export(module, (ids, ids.clone())))


def print_module(module, generic=False) -> str:
    out = io.StringIO()
    Printer(out, print_generic_format=generic).print_op(module)
    return out.getvalue()


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_two_layer_llama_round_trips(llama_module, generic):
    text = print_module(llama_module, generic)
    reparsed = Parser(autosp_context(), text).parse_module()
    reparsed.verify()
    assert print_module(reparsed, generic) == text


def test_parameters_are_named_arguments_and_grads_named_results(llama_module):
    text = print_module(llama_module)
    assert 'autosp.name = "model.model.layers.1.self_attn.q_proj.weight"' in text
    assert 'autosp.grad_of = "model.lm_head.weight"' in text
    assert "dense_resource" not in text and "dense<" not in text  # no weights in the IR


def test_attention_is_one_op_each_way_and_gqa_native(llama_module):
    names = [op.name for op in llama_module.walk()]
    assert names.count("autosp.attention") == 2
    assert names.count("autosp.attention_grad") == 2
    assert "aten.scaled_dot_product_attention.default" not in names
    for op in llama_module.walk():
        if op.name == "autosp.attention":
            assert op.key.type.get_shape()[1] == 2  # 2 kv heads, not expanded to 4
            assert bool(op.causal.value.data)


def test_no_sequence_squared_value_at_4096():
    ep = export_preset("llama-3.2-1b", seq=4096, layers=1, fake=True)
    module = import_program(ep)
    for op in module.walk():
        for result in op.results:
            if isinstance(result.type, TensorType):
                assert list(result.type.get_shape()).count(4096) < 2, (op.name, result.type)


def test_generated_aten_classes_follow_the_schema():
    cls = aten_op_class("aten.native_layer_norm.default")
    assert [s.name for s in cls.ARGS if s.kind.endswith("tensor")] == ["input", "weight", "bias"]
    assert aten_op_class("aten.add_.Tensor") is None  # in-place overloads are not ops
    assert aten_op_class("aten.no_such_op.default") is None


def test_attention_verifier_rejects_bad_head_counts():
    from autosp.ir.autosp import AttentionOp
    from xdsl.dialects.builtin import Float32Type
    from xdsl.utils.test_value import create_ssa_value

    q = create_ssa_value(TensorType(Float32Type(), [1, 6, 8, 4]))
    kv = create_ssa_value(TensorType(Float32Type(), [1, 4, 8, 4]))
    op = AttentionOp(q, kv, kv, causal=True, window=0, scale=0.5)
    with pytest.raises(VerifyException, match="not a multiple"):
        op.verify()
