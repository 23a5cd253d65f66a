"""The cross-attend's CPU kernels (perceptio/layers/chunked.py, the folded projections of
MultiHeadAttention): the same function as attention written out, under every transform."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from perceptio.layers import kernels
from perceptio.layers.attention import MultiHeadAttention, attend, collect_attention, uses_chunked, uses_plain_bf16
from perceptio.layers.blocks import CrossAttention
from perceptio.layers.chunked import chunked_attention, key_chunk, reference_attention

from helpers import randomize


@pytest.fixture
def sdpa_only():
    """Every attention computed as written (no chunked kernel, no folding) inside the block."""

    class Switch:
        def __enter__(self):
            kernels.set_attention_kernel("sdpa")

        def __exit__(self, *exc):
            kernels.set_attention_kernel("auto")

    kernels.set_attention_kernel("auto")
    yield Switch()
    kernels.set_attention_kernel(None)


def written_out(q, k, v, key_mask=None, scale=None):
    """softmax(q k^T / sqrt(D)) v in float64, masked keys at -inf: [B, H, Tq, Dv]."""
    logits = (q.double() @ k.double().transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return logits.softmax(-1) @ v.double()


def qkv(b, h, tq, tk, d, dv, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in
            ((b, h, tq, d), (b, h, tk, d), (b, h, tk, dv))]


@pytest.mark.parametrize("b,h,tq,tk,d,dv,chunk", [
    (1, 1, 8, 300, 5, 5, 64),     # several chunks, the last one short
    (2, 3, 4, 129, 6, 10, 32),    # heads, value width != key width
    (1, 2, 16, 40, 8, 8, None),   # one chunk (the default for a small input)
])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_attention_equals_attention_written_out_forward_and_backward(b, h, tq, tk, d, dv, chunk, masked):
    q, k, v = qkv(b, h, tq, tk, d, dv)
    key_mask = None
    if masked:
        key_mask = torch.rand(b, tk, generator=torch.Generator().manual_seed(1)) > 0.4
        key_mask[:, : min(tk, 100)] = False  # whole first chunks masked for every query
        key_mask[:, -1] = True
    out = chunked_attention(q, k, v, key_mask, chunk=chunk)
    ref = written_out(q, k, v, key_mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    ref_grads = torch.autograd.grad(ref, (q, k, v), go.double())
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_chunked_attention_skips_the_gradients_nobody_asked_for():
    q, k, v = qkv(1, 1, 4, 50, 3, 3)
    k, v = k.detach(), v.detach()
    out = chunked_attention(q, k, v, chunk=16)
    (gq,) = torch.autograd.grad(out.sum(), q)
    (rq,) = torch.autograd.grad(written_out(q, k, v).sum(), q)
    torch.testing.assert_close(gq.double(), rq.double(), rtol=1e-4, atol=1e-5)


def test_chunked_attention_double_backward_and_gradgradcheck():
    q, k, v = qkv(1, 2, 3, 20, 4, 4, dtype=torch.float64)
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, :5] = False
    fn = lambda q, k, v: chunked_attention(q, k, v, mask, chunk=8)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_chunked_attention_under_vmap_and_func_grad_equals_a_loop():
    q, k, v = (t.detach() for t in qkv(3, 1, 4, 70, 5, 6))
    batched = vmap(lambda q, k, v: chunked_attention(q[None], k[None], v[None], chunk=32)[0])(q, k, v)
    loop = torch.stack([chunked_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], chunk=32)[0] for i in range(3)])
    torch.testing.assert_close(batched, loop)
    g = grad(lambda q: chunked_attention(q, k, v, chunk=32).square().sum())(q)
    (r,) = torch.autograd.grad(written_out(q.requires_grad_(), k, v).square().sum(), q)
    torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-5)


def test_reference_attention_is_the_math_path():
    q, k, v = (t.detach()[0] for t in qkv(1, 2, 5, 9, 4, 3))
    torch.testing.assert_close(reference_attention(q, k, v, None, 0.5), F.scaled_dot_product_attention(q, k, v, scale=0.5))


def test_key_chunk_keeps_the_score_block_bounded():
    assert key_chunk(512) * 512 <= 1 << 20 and key_chunk(512) % 64 == 0
    assert key_chunk(10**6) == 512  # never below MIN_CHUNK
    assert key_chunk(1) == 1 << 20


def test_attend_uses_the_chunked_kernel_only_where_it_applies(sdpa_only):
    q, k, v = (t.detach() for t in qkv(1, 2, 4, 64, 8, 8))
    assert uses_chunked(q, k, v)
    assert not uses_chunked(k, q, q)  # more queries than keys: SDPA
    assert not uses_chunked(k, q, q[..., :3])  # ... also with its math kernel for a small map
    long = torch.zeros(1, 1, 1024, 8)
    assert uses_chunked(long, long[:, :, :512], long[:, :, :512, :3])  # ... but not for a large one
    assert not uses_chunked(q, k, v, dropout_p=0.1)
    assert not uses_chunked(q, k, v, torch.ones(1, 1, 4, 64, dtype=torch.bool))  # a full mask: SDPA
    assert uses_chunked(q.bfloat16(), k.bfloat16(), v.bfloat16())  # (after uses_plain_bf16: small maps)
    assert uses_plain_bf16(q.bfloat16(), k.bfloat16()) and not uses_plain_bf16(q, k)
    assert not uses_chunked(q.half(), k.half(), v.half())
    with sdpa_only:
        assert not uses_chunked(q, k, v)
    key_mask = torch.rand(1, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    out = attend(q, k, v, key_mask[:, None, None, :])
    with sdpa_only:
        ref = attend(q, k, v, key_mask[:, None, None, :])
    torch.testing.assert_close(out, ref)


def one_head(c=6, qk=6, v=6, q_in=5, seed=0):
    torch.manual_seed(seed)
    return randomize(MultiHeadAttention(q_in, c, 1, qk, v, 7))


def test_folds_follow_the_multiply_add_count():
    mha = one_head(c=6, qk=6, v=6)
    assert mha.folds(4, 100) == (True, True)  # few queries, many keys
    assert mha.folds(100, 4) == (False, False)  # more queries than keys: never
    wide = one_head(c=64, qk=4, v=4)
    assert wide.folds(8, 1000) == (False, False)  # inputs much wider than qk and v: projecting is cheaper
    assert randomize(MultiHeadAttention(5, 6, 2, 6, 6)).folds(4, 100) == (False, False)  # heads: never


@pytest.mark.parametrize("affine", [False, True])
def test_folded_one_head_attention_equals_the_projections_as_written(sdpa_only, affine):
    mha = one_head()
    g = torch.Generator().manual_seed(3)
    x_q = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    x_kv = torch.randn(2, 90, 6, generator=g, requires_grad=True)
    key_mask = torch.rand(2, 90, generator=g) > 0.3
    key_mask[1] = False  # a row with no key at all: zeros, as the reference
    scale = torch.randn(6, generator=g, requires_grad=True) if affine else None
    shift = torch.randn(6, generator=g, requires_grad=True) if affine else None
    inputs = [x_q, x_kv] + ([scale, shift] if affine else [])

    def run():
        out = mha(x_q, x_kv, key_mask, None, scale, shift)
        return out, torch.autograd.grad(out.square().sum(), inputs + list(mha.parameters()))

    assert mha.folds(4, 90) == (True, True)
    out, grads = run()
    with sdpa_only:
        ref, ref_grads = run()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out[1].abs().max() == ref[1].abs().max()  # the wiped row: the output bias only
    for name, g_, r in zip(["x_q", "x_kv", "scale", "shift"][: len(inputs)] + [n for n, _ in mha.named_parameters()],
                           grads, ref_grads):
        torch.testing.assert_close(g_, r, rtol=1e-4, atol=1e-5, msg=name)


def test_cross_attend_block_folds_its_norm_for_inputs_without_gradients(sdpa_only):
    torch.manual_seed(0)
    block = randomize(CrossAttention(16, 12, num_heads=1))
    latents = torch.randn(1, 8, 16, requires_grad=True)
    pixels = torch.randn(1, 200, 12)  # no gradient wanted: the folded path needs no [Tk, C] backward
    assert all(block.attention.folds(8, 200))

    def run():
        out = block(latents, pixels)
        return out, torch.autograd.grad(out.square().sum(), [latents, *block.parameters()])

    out, grads = run()
    with sdpa_only:
        ref, ref_grads = run()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, _), g_, r in zip([("latents", None), *block.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(g_, r, rtol=1e-4, atol=1e-5, msg=name)


def test_attention_maps_are_those_of_the_projections_as_written():
    mha = one_head()
    x_q, x_kv = torch.randn(1, 3, 5), torch.randn(1, 40, 6)
    out = mha(x_q, x_kv)
    with collect_attention(mha) as maps:
        recorded = mha(x_q, x_kv)
    torch.testing.assert_close(out, recorded, rtol=1e-5, atol=1e-6)
    k = mha.k(x_kv)
    probs = ((mha.q(x_q) @ k.transpose(1, 2)) / 6**0.5).softmax(-1)
    torch.testing.assert_close(maps.by_module()[""][0][:, 0], probs)


def test_many_queries_are_taken_in_bounded_blocks():
    q, k, v = qkv(1, 1, 600, 50, 4, 3)
    out = chunked_attention(q, k, v, chunk=512)  # 2048 queries per block: 1 block; chunk 8192: blocks of 128
    blocked = chunked_attention(q, k, v, chunk=8192)
    torch.testing.assert_close(out, blocked)
    torch.testing.assert_close(out.double(), written_out(q, k, v), rtol=1e-5, atol=1e-6)
    gk, gk_blocked = (torch.autograd.grad(o.square().sum(), k)[0] for o in (out, blocked))
    torch.testing.assert_close(gk, gk_blocked, rtol=1e-5, atol=1e-6)


def test_bf16_products_keep_fp32_statistics_and_match_sdpa_under_autocast():
    q, k, v = qkv(1, 2, 16, 3000, 8, 8)
    ref = written_out(q, k, v)
    out = chunked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk=512)
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-2
    with torch.autocast("cpu", torch.bfloat16):
        assert uses_plain_bf16(q, k)  # a small map: bmm, softmax, bmm in bf16
        auto = attend(q, k, v)
    assert auto.dtype == torch.bfloat16
    assert (auto.double() - ref).abs().max() / ref.abs().max() < 2e-2
    grads = torch.autograd.grad(auto.float().square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert (g.double() - r).abs().max() / r.abs().max() < 5e-2


def test_folded_cross_attend_under_torch_compile_equals_eager():
    torch.manual_seed(0)
    block = randomize(CrossAttention(16, 12, num_heads=1))
    latents = torch.randn(1, 8, 16, requires_grad=True)
    pixels = torch.randn(1, 300, 12)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out, ref = compiled(latents, pixels), block(latents, pixels)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g,), (r,) = (torch.autograd.grad(o.square().sum(), [latents]) for o in (out, ref))
    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
