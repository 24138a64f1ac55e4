"""The mask recognizer: masks built from arange/compare ops become (causal, window)."""

import pytest
import torch

from autosp.frontends.mask import MaskNotUnderstood, classify

S = 12


class Builder(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, q):
        mask = self.make()
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum()


def mask_node(make):
    ep = torch.export.export(Builder(make), (torch.randn(1, 2, S, 4),))
    sdpa = next(n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    return sdpa.args[3]


def causal_le():
    i = torch.arange(S)
    return i[None, None, None, :] <= i[None, None, :, None]


def causal_tril():
    return torch.ones(S, S, dtype=torch.bool).tril()


def sliding(window=4):
    i = torch.arange(S)
    q, k = i[:, None], i[None, :]
    return (k <= q) & (k > q - window)


def additive_causal():
    return torch.where(causal_le(), 0.0, float("-inf"))


def all_true():
    return torch.ones(1, 1, S, S, dtype=torch.bool)


def causal_and_always_true():
    """BERT's decoder mask: causal and a padding test `i >= 0` that every index passes."""
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) & (i[:, None] >= 0)


def causal_and_float_ones():
    """HF's default attention_mask (float ones: no padding) cast to bool beside the causal test."""
    attention = torch.ones(1, S)
    return causal_le() & attention[:, None, None, :].bool()


def causal_read_at_positions():
    """A causal mask indexed with arange positions (BioGPT): the mask at those positions."""
    i = torch.arange(S)
    return torch.ones(S, S, dtype=torch.bool).tril()[i]


def causal_within_length():
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) & (i[None, :] < S)


@pytest.mark.parametrize(
    "make, causal, window",
    [(causal_le, True, 0), (causal_tril, True, 0), (sliding, True, 4), (additive_causal, True, 0), (all_true, False, 0),
     (causal_and_always_true, True, 0), (causal_within_length, True, 0),
     (causal_and_float_ones, True, 0), (causal_read_at_positions, True, 0)],
)
def test_recognized(make, causal, window):
    description = classify(mask_node(make))
    assert (description.causal, description.window) == (causal, window)


def anti_causal():
    i = torch.arange(S)
    return i[None, :] >= i[:, None]


def shifted_diagonal():
    i = torch.arange(S)
    return i[None, :] <= i[:, None] + 2


def disjunction():
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) | (i[None, :] == 0)


def never_true():
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) & (i[:, None] < 0)


def padding_like():
    """A bound on the key index alone that some keys fail (padding): not an index function AutoSP runs."""
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) & (i[None, :] < S - 3)


@pytest.mark.parametrize("make", [anti_causal, shifted_diagonal, disjunction, never_true, padding_like])
def test_refused(make):
    with pytest.raises(MaskNotUnderstood):
        classify(mask_node(make))


# --- packed sequences: documents ---------------------------------------------------------

POSITIONS = torch.cat([torch.arange(5), torch.arange(4), torch.arange(3)])[None].repeat(2, 1)


class PackedBuilder(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, q, positions):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=self.make(positions)).sum()


def packed_mask_node(make):
    ep = torch.export.export(PackedBuilder(make), (torch.randn(2, 2, S, 4), POSITIONS))
    sdpa = next(n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    return sdpa.args[3]


def hf_documents(positions):
    """transformers' find_packed_sequence_indices."""
    first = positions[:, :1] - 1
    return (torch.diff(positions, prepend=first, dim=-1) != 1).cumsum(-1)


def hf_packed(positions):
    """transformers 5's packed causal mask: causal over positions, and one document."""
    docs = hf_documents(positions)
    b = torch.arange(2)[:, None, None, None]
    i = torch.arange(S)[None, None, :, None]
    j = torch.arange(S)[None, None, None, :]
    return (positions[b, j] <= positions[b, i]) & (docs[b, i] == docs[b, j])


def doc_ids_causal(doc):
    i = torch.arange(S)
    return (doc[:, None, :, None] == doc[:, None, None, :]) & (i[None, :] <= i[:, None])


def doc_ids_only(doc):
    return doc[:, None, :, None] == doc[:, None, None, :]


def doc_ids_window(doc):
    return doc_ids_causal(doc) & sliding(3)


@pytest.mark.parametrize(
    "make, causal, window, source",
    [(hf_packed, True, 0, "cumsum"), (doc_ids_causal, True, 0, "positions"), (doc_ids_only, False, 0, "positions"),
     (doc_ids_window, True, 3, "positions")],
)
def test_documents_recognized(make, causal, window, source):
    description = classify(packed_mask_node(make))
    assert (description.causal, description.window) == (causal, window)
    assert description.documents is not None and description.documents.name == source


def positions_without_documents(positions):
    """Causal over positions alone is not causal over indices (positions may repeat)."""
    b = torch.arange(2)[:, None, None, None]
    i = torch.arange(S)[None, None, :, None]
    j = torch.arange(S)[None, None, None, :]
    return positions[b, j] <= positions[b, i]


def positions_with_foreign_documents(positions):
    """A same-document test whose numbering is not derived from the compared positions."""
    b = torch.arange(2)[:, None, None, None]
    i = torch.arange(S)[None, None, :, None]
    j = torch.arange(S)[None, None, None, :]
    docs = positions // 4
    return (positions[b, j] <= positions[b, i]) & (docs[b, i] == docs[b, j])


def diff_without_prepend(positions):
    docs = torch.nn.functional.pad((torch.diff(positions, dim=-1) != 1).cumsum(-1), (1, 0))
    b = torch.arange(2)[:, None, None, None]
    i = torch.arange(S)[None, None, :, None]
    j = torch.arange(S)[None, None, None, :]
    return (positions[b, j] <= positions[b, i]) & (docs[b, i] == docs[b, j])


@pytest.mark.parametrize("make", [positions_without_documents, positions_with_foreign_documents, diff_without_prepend])
def test_documents_refused(make):
    with pytest.raises(MaskNotUnderstood):
        classify(packed_mask_node(make))


def test_shifted_documents_refused():
    class Shifted(torch.nn.Module):
        def forward(self, q, doc):
            mask = doc[:, None, :-1, None] == doc[:, None, None, 1:]
            return torch.nn.functional.scaled_dot_product_attention(q[:, :, 1:], q[:, :, 1:], q[:, :, 1:], attn_mask=mask).sum()

    ep = torch.export.export(Shifted(), (torch.randn(2, 2, S + 1, 4), torch.zeros(2, S + 1, dtype=torch.long)))
    sdpa = next(n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    with pytest.raises(MaskNotUnderstood):
        classify(sdpa.args[3])


def test_one_row_of_documents_for_every_batch_entry():
    class RowZero(torch.nn.Module):
        def forward(self, q, doc):
            mask = doc[0][None, None, :, None] == doc[0][None, None, None, :]
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum()

    ep = torch.export.export(RowZero(), (torch.randn(2, 2, S, 4), POSITIONS))
    sdpa = next(n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    description = classify(sdpa.args[3])
    assert description.documents.name == "doc" and description.documents_row == 0


class DocumentAttention(torch.nn.Module):
    """Embedding, one attention layer under a document mask built by hand, a scalar loss."""

    def __init__(self, row_zero: bool):
        super().__init__()
        self.row_zero = row_zero
        self.embed = torch.nn.Embedding(32, 16)
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, ids, doc):
        b, s = ids.shape
        q, k, v = self.qkv(self.embed(ids)).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4)
        doc = doc[:1].expand(b, s) if self.row_zero else doc
        i = torch.arange(s)
        mask = (doc[:, None, :, None] == doc[:, None, None, :]) & (i[None, :] <= i[:, None])
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.square().mean()


@pytest.mark.parametrize("row_zero", [False, True], ids=["row-per-entry", "row-zero-for-all"])
def test_document_mask_compiles_to_eager_numbers(row_zero, tmp_cache):
    """Hand-built document masks through the whole compiler: the kernels get the right rows."""
    import copy

    import autosp
    from tests.conftest import relative_error

    torch.manual_seed(0)
    module = DocumentAttention(row_zero)
    reference = copy.deepcopy(module)
    ids = torch.randint(0, 32, (2, S))
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [3] * 3])
    step = autosp.compile(torch.export.export(module, (ids, doc)))
    loss = step(ids, doc)
    eager = reference(ids, doc)
    eager.backward()
    assert relative_error(loss, eager.detach()) < 1e-5
    for p, r in zip(module.parameters(), reference.parameters()):
        assert relative_error(p.grad, r.grad) < 1e-5
