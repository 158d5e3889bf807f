"""Multi-adapter LoRA for a decode batch in Triton, the way Punica's BGMV and vLLM's LoRA kernels do it: each
token reads its own adapter's A and B where they lie (no gathered copies), and several output slices (q and v of a
fused QKV product) are served by one launch. Used by tools/gpu_profile_lora.py to measure the unmerged step's
overhead (the simulator's γ and δ) with a kernel built for the job rather than PyTorch's generic ops.

Two kernels per layer:
- shrink: u[k, s, t, :] = x[t, chunk k] · A[idx[t], s, :, chunk k]ᵀ, split over the hidden size (SPLIT_K chunks,
  partial sums written side by side, no atomics), grid (tokens, slices, SPLIT_K);
- expand: y[t, off_s + cols] += scale · (Σ_k u[k, s, t, :]) · B[idx[t], s, cols, :]ᵀ, grid (tokens, slices,
  column blocks), each program owning its output elements (again no atomics).
A token whose index is negative has no adapter: its loads and stores are masked off.

Layouts (one layer): A (adapters, slices, r, H), B (adapters, slices, N, r), any strides; x (T, H); y (T, ·).
`reference` is the same arithmetic in PyTorch, for the parity check.

With TRITON_INTERPRET=1 the kernels run on the CPU (slowly): that is how the parity check is run off the GPU.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _shrink(x_ptr, a_ptr, idx_ptr, u_ptr, H, sx_t, sa_n, sa_s, sa_r, sa_h, su_k, su_s, su_t,
            R: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr):
    t = tl.program_id(0)
    s = tl.program_id(1)
    k = tl.program_id(2)
    ad = tl.load(idx_ptr + t)
    ok = ad >= 0  # a token without an adapter: every load and store masked off (nothing read, nothing written)
    ad = tl.maximum(ad, 0)
    rows = tl.arange(0, R)
    acc = tl.zeros((R,), dtype=tl.float32)
    a_base = a_ptr + ad.to(tl.int64) * sa_n + s * sa_s
    start = k * CHUNK
    for k0 in range(0, CHUNK, BLOCK_K):
        cols = start + k0 + tl.arange(0, BLOCK_K)
        m = (cols < H) & ok
        xv = tl.load(x_ptr + t * sx_t + cols, mask=m, other=0.0).to(tl.float32)
        av = tl.load(a_base + rows[:, None] * sa_r + cols[None, :] * sa_h, mask=m[None, :], other=0.0)
        acc += tl.sum(av.to(tl.float32) * xv[None, :], axis=1)
    tl.store(u_ptr + k * su_k + s * su_s + t * su_t + rows, acc, mask=(rows < R) & ok)


@triton.jit
def _expand(u_ptr, b_ptr, idx_ptr, y_ptr, scale, N, sy_t, sb_n, sb_s, sb_c, sb_r, su_k, su_s, su_t, slice_stride,
            R: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    s = tl.program_id(1)
    c = tl.program_id(2)
    ad = tl.load(idx_ptr + t)
    ok = ad >= 0
    ad = tl.maximum(ad, 0)
    rows = tl.arange(0, R)
    u = tl.zeros((R,), dtype=tl.float32)
    for k in range(SPLIT_K):
        u += tl.load(u_ptr + k * su_k + s * su_s + t * su_t + rows, mask=(rows < R) & ok, other=0.0)
    cols = c * BLOCK_N + tl.arange(0, BLOCK_N)
    m = (cols < N) & ok
    bv = tl.load(b_ptr + ad.to(tl.int64) * sb_n + s * sb_s + cols[:, None] * sb_c + rows[None, :] * sb_r,
                 mask=m[:, None], other=0.0)
    d = tl.sum(bv.to(tl.float32) * u[None, :], axis=1) * scale
    yp = y_ptr + t * sy_t + s * slice_stride + cols
    y = tl.load(yp, mask=m, other=0.0)
    tl.store(yp, (y.to(tl.float32) + d).to(y.dtype), mask=m)


class BGMV:
    """y[:, slice s] += scale · (x · A[idx]ᵀ) · B[idx]ᵀ for every slice s, slices `slice_stride` columns apart."""

    def __init__(self, tokens, slices, rank, hidden, device, split_k=8, block_k=128, block_n=128):
        assert rank & (rank - 1) == 0 and rank >= 1, "rank must be a power of two"
        assert hidden % (split_k * block_k) == 0, "hidden must split into SPLIT_K chunks of BLOCK_K"
        self.T, self.S, self.R, self.H = tokens, slices, rank, hidden
        self.split_k, self.block_k, self.block_n = split_k, block_k, block_n
        self.u = torch.empty(split_k, slices, tokens, rank, device=device, dtype=torch.float32)

    def __call__(self, x, A, B, idx, y, slice_stride, scale):
        T, H = x.shape
        assert T == self.T and H == self.H and x.stride(1) == 1 and y.stride(1) == 1
        N = B.shape[2]
        u = self.u
        _shrink[(T, self.S, self.split_k)](
            x, A, idx, u, H, x.stride(0), A.stride(0), A.stride(1), A.stride(2), A.stride(3),
            u.stride(0), u.stride(1), u.stride(2), R=self.R, BLOCK_K=self.block_k, CHUNK=H // self.split_k)
        _expand[(T, self.S, triton.cdiv(N, self.block_n))](
            u, B, idx, y, scale, N, y.stride(0), B.stride(0), B.stride(1), B.stride(2), B.stride(3),
            u.stride(0), u.stride(1), u.stride(2), slice_stride, R=self.R, SPLIT_K=self.split_k, BLOCK_N=self.block_n)
        return y


def reference(x, A, B, idx, y, slice_stride, scale):
    """The same arithmetic in PyTorch (float32 accumulation), for the parity check."""
    out = y.float().clone()
    N = B.shape[2]
    for t in range(x.shape[0]):
        ad = int(idx[t])
        if ad < 0:
            continue
        for s in range(A.shape[1]):
            u = A[ad, s].float() @ x[t].float()
            out[t, s * slice_stride:s * slice_stride + N] += scale * (B[ad, s].float() @ u)
    return out.to(y.dtype)


if __name__ == "__main__":
    # Parity on small shapes (CPU with TRITON_INTERPRET=1, or the GPU): random adapters, a token with none.
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    T, S, R, H, n = 5, 2, 16, 256, 3
    x = torch.randn(T, H, device=dev, generator=g).to(dt)
    A = torch.randn(n, S, R, H, device=dev, generator=g).to(dt) * 0.1
    B = torch.randn(n, S, H, R, device=dev, generator=g).to(dt) * 0.1
    idx = torch.tensor([2, 0, -1, 2, 1], device=dev, dtype=torch.int32)
    y = torch.randn(T, 3 * H, device=dev, generator=g).to(dt)
    want = reference(x, A, B, idx, y.clone(), 2 * H, 2.0)
    got = BGMV(T, S, R, H, dev, split_k=2, block_k=64, block_n=64)(x, A, B, idx, y.clone(), 2 * H, 2.0)
    err = (got.float() - want.float()).abs().max().item()
    print("max |triton - reference|", err)
    assert err < (2e-2 if dt == torch.float16 else 1e-4), err
    assert torch.equal(got[2], y[2]), "a token without an adapter must be left alone"
