"""The implementations timed by ``slamjax bench`` (:mod:`slamjax.tools.bench`): the library's
SLAM scan (plain, agent-blocked, dense mixing, row-major einsums), the batched NumPy peer, the
per-agent NumPy and PyTorch loops, the machine limits (bandwidth, GEMM peak) and the roofline
counts of one agent-step."""

from __future__ import annotations

import gc
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

import slamjax as sj
from slamjax import graphs as G
from slamjax.problems.quadratic import make_quadratic
from slamjax.tools._machine import best_time, current_rss_mib, peak_rss_mib, reset_peak_rss

ALPHA = BETA = 30.0
RHO = GAMMA = 1.0
K_CG = 10
IMPLS = ("slamjax", "slamjax_block", "slamjax_rowmajor", "slamjax_dense", "numpy_batched",
         "numpy_loop", "torch_loop")


def rowmajor_quadratic(problem):
    """The shipped quadratic with its products written agent-row-major: ``v·Hᵀ`` instead of
    ``H·v`` (einsum operand order only, same numbers). Under ``vmap`` the agent axis then stays
    the leading (row) axis of every GEMM output, so XLA needs no transposes around each of the
    K Hessian-vector products (``--rowmajor-hvp``)."""
    import dataclasses

    def g(x, y, data, batch):
        H, B = data.shared["H"], data.shared["B"]
        val = 0.5 * jnp.vdot(y, jnp.einsum("kj,kij->ki", y, H)) - jnp.vdot(
            y, jnp.einsum("j,kij->ki", x, B) + data.agents["b"])
        if batch is not None:
            val = val + jnp.vdot(batch["y"], y)
        return val

    def f(x, y, data, batch):
        val = 0.5 * jnp.vdot(x, x @ data.shared["P"]) + data.agents["p"] @ x + 0.5 * jnp.sum(
            (y - data.agents["t"]) ** 2)
        if batch is not None:
            val = val + jnp.vdot(batch["x"], x) + jnp.vdot(batch["y"], y)
        return val

    def hvp_yy(x, y, data, batch, v):
        return jnp.einsum("kj,kij->ki", v, data.shared["H"])

    def cross_xy(x, y, data, batch, v):
        return -jnp.einsum("ki,kij->j", v, data.shared["B"])

    return dataclasses.replace(problem, f=f, g=g, hvp_yy=hvp_yy, cross_xy=cross_xy,
                               name=problem.name + "-rowmajor")


# ----------------------------------------------------------------------------------------
# machine limits: bandwidth and GEMM peak
# ----------------------------------------------------------------------------------------
def measure_machine(repeats: int, d_list) -> dict:
    """Memory bandwidth (a 256 MiB copy, JAX and NumPy), peak fp32 GEMM flop/s (2048², and
    the (n, d)·(d, d) shape of the workload for each d in ``d_list``), best of ``repeats``."""
    out = {}
    nbytes = 256 * 2**20
    x = jnp.ones((nbytes // 4,), jnp.float32)
    # one read + one write stream; donated, so the output reuses the input's pages (no page
    # faults of a fresh 256 MiB buffer in the timing)
    copy = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    x = copy(x)
    jax.block_until_ready(x)
    best = math.inf
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        x = copy(x)
        jax.block_until_ready(x)
        best = min(best, time.perf_counter() - t0)
    out["bandwidth_jax_GBps"] = 2 * nbytes / best / 1e9
    xn = np.ones(nbytes // 4, np.float32)
    yn = np.empty_like(xn)
    t = best_time(lambda: np.copyto(yn, xn), max(3, repeats))
    out["bandwidth_numpy_copy_GBps"] = 2 * nbytes / t / 1e9
    del x
    xn = yn = None  # noqa: F841  (free the 256 MiB buffers)
    gc.collect()
    # peak GEMM
    N = 2048
    a = jax.random.normal(jax.random.key(0), (N, N), jnp.float32)
    mm = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(mm(a, a))
    t = best_time(lambda: jax.block_until_ready(mm(a, a)), max(3, repeats))
    out["gemm_2048_jax_GFLOPs"] = 2 * N**3 / t / 1e9
    an = np.asarray(a)
    t = best_time(lambda: an @ an, max(3, repeats))
    out["gemm_2048_numpy_GFLOPs"] = 2 * N**3 / t / 1e9
    # the workload's shape: (n, d) @ (d, d)
    for d in d_list:
        n = max(4096, 2**22 // d)
        v = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
        h = jax.random.normal(jax.random.key(2), (d, d), jnp.float32)
        t = best_time(lambda: jax.block_until_ready(mm(v, h)), max(3, repeats))
        out[f"gemm_nxd_d{d}_jax_GFLOPs"] = 2 * n * d * d / t / 1e9
    out["peak_GFLOPs"] = max(out["gemm_2048_jax_GFLOPs"], out["gemm_2048_numpy_GFLOPs"])
    out["bandwidth_GBps"] = max(out["bandwidth_jax_GBps"], out["bandwidth_numpy_copy_GBps"])
    return out


def flops_per_agent_step(d: int, K: int = K_CG) -> int:
    """Matrix–vector flops of one agent-step (m = 1): H y and B x for h_g, K CG products
    H p, P x for ∇_x f and Bᵀ v for the cross term — 2d² each. O(d) vector work (CG updates,
    Laplacian, primal/dual steps) is left out; it is < 15 % at d = 100."""
    return 2 * d * d * (K + 4)


def bytes_per_agent_step(d: int, shared_hessian: bool = True, m: int = 1) -> int:
    """Compulsory DRAM traffic of one agent-step in float32: read x, y, u_x, u_y and the
    agent's data b, p, t; write x, y, u_x, u_y (neighbour rows assumed cached). With
    per-agent Hessians add H_i and B_i (read once per step)."""
    b = 4 * (8 * d + 3 * d * m)
    if not shared_hessian:
        b += 4 * 2 * m * d * d
    return b


# ----------------------------------------------------------------------------------------
# workload
# ----------------------------------------------------------------------------------------
def small_world_edges(n: int, k: int = 4, p: float = 0.1, seed: int = 0) -> np.ndarray:
    """Newman–Watts small world exactly as :func:`slamjax.graphs.small_world` samples it."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    lattice = np.concatenate([np.stack([i, (i + s) % n], axis=1) for s in range(1, k // 2 + 1)])
    mask = rng.random(len(lattice)) < p
    shortcuts = np.stack([lattice[mask, 0], rng.integers(0, n, size=int(mask.sum()))], axis=1)
    return np.concatenate([lattice, shortcuts])


def build_graph(kind: str, n: int):
    """The benchmark's graph: ``"ring"``, or ``"sw"`` (small world k = 4, p = 0.1; above
    n = 4096 with a Gershgorin-type λ_max bound instead of Lanczos)."""
    if kind == "ring":
        return G.ring(n)
    if n <= 4096:
        return G.small_world(n, 4, 0.1, seed=0)
    # same graph; λ_max(L) by the Gershgorin-type bound max_(i,j)∈E (deg_i + deg_j) instead of
    # Lanczos (tens of seconds at n = 10⁶); it is only used for the stability warning.
    e = small_world_edges(n)
    e = e[e[:, 0] != e[:, 1]]
    deg = np.bincount(e.ravel(), minlength=n)
    bound = float(np.max(deg[e[:, 0]] + deg[e[:, 1]]))
    return G.from_edges(e, n, kind="small_world", lam_max=bound)


def host_arrays(data, x0, y0):
    """The quadratic's arrays on the host for the NumPy peers: H, B, P, b, p, t, x0, y0
    (shared Hessian, m = 1)."""
    H = np.asarray(data.shared["H"][0])
    B = np.asarray(data.shared["B"][0])
    P = np.asarray(data.shared["P"])
    b = np.asarray(data.agents["b"][:, 0])
    p = np.asarray(data.agents["p"])
    t = np.asarray(data.agents["t"][:, 0])
    return H, B, P, b, p, t, np.array(x0), np.array(y0[:, 0])


def csr_laplacian(graph) -> sp.csr_matrix:
    """The graph Laplacian of ``graph`` as a float32 ``scipy.sparse`` CSR matrix."""
    s = np.asarray(graph.senders)
    r = np.asarray(graph.receivers)
    n = graph.n
    deg = np.asarray(graph.degree).astype(np.float32)
    rows = np.concatenate([s, np.arange(n)])
    cols = np.concatenate([r, np.arange(n)])
    vals = np.concatenate([-np.ones(len(s), np.float32), deg])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)


# --- (c) batched NumPy + scipy.sparse ----------------------------------------------------
class NumpyBatched:
    """Eq. (5) on stacked arrays: BLAS GEMMs, CSR Laplacian, L·v carried between steps."""

    def __init__(self, graph, data, x0, y0):
        self.H, self.B, self.P, self.b, self.p, self.t, x, y = host_arrays(data, x0, y0)
        self.BT = np.ascontiguousarray(self.B.T)
        self.L = csr_laplacian(graph)
        self.reset(x, y)

    def reset(self, x, y):
        self.x, self.y = x.copy(), y.copy()
        self.ux, self.uy = np.zeros_like(x), np.zeros_like(y)
        self.Lx, self.Ly = self.L @ self.x, self.L @ self.y

    def cg(self, rhs):
        H = self.H
        v = np.zeros_like(rhs)
        r = rhs.copy()
        q = rhs.copy()
        rs = np.einsum("ij,ij->i", r, r)[:, None]
        for _ in range(K_CG):
            hq = q @ H
            den = np.einsum("ij,ij->i", q, hq)[:, None]
            a = np.divide(rs, den, out=np.zeros_like(rs), where=den > 0)
            v += a * q
            r -= a * hq
            rs_new = np.einsum("ij,ij->i", r, r)[:, None]
            bcoef = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
            q = r + bcoef * q
            rs = rs_new
        return v

    def step(self):
        x, y = self.x, self.y
        hg = y @ self.H - (x @ self.BT + self.b)            # H symmetric
        y1 = y - (1.0 / BETA) * (hg + GAMMA * self.uy + RHO * GAMMA * self.Ly)
        self.Ly = self.L @ y1
        self.uy += (RHO / GAMMA) * self.Ly
        v = self.cg(y1 - self.t)
        hf = x @ self.P + self.p + v @ self.B               # P symmetric; −(−Bᵀv)
        x1 = x - (1.0 / ALPHA) * (hf + GAMMA * self.ux + RHO * GAMMA * self.Lx)
        self.Lx = self.L @ x1
        self.ux += (RHO / GAMMA) * self.Lx
        self.x, self.y = x1, y1


# --- (b) per-agent loops (published-code style) ------------------------------------------
class NumpyLoop:
    """Each agent computes its own gradients, CG solve and neighbour sums in Python."""

    def __init__(self, graph, data, x0, y0):
        self.H, self.B, self.P, self.b, self.p, self.t, x, y = host_arrays(data, x0, y0)
        s = np.asarray(graph.senders)
        r = np.asarray(graph.receivers)
        ptr = np.searchsorted(s, np.arange(graph.n + 1))
        self.nbrs = [r[ptr[i]:ptr[i + 1]].tolist() for i in range(graph.n)]
        self.n = graph.n
        self.reset(x, y)

    def reset(self, x, y):
        self.x = [row.copy() for row in x]
        self.y = [row.copy() for row in y]
        self.ux = [np.zeros_like(row) for row in x]
        self.uy = [np.zeros_like(row) for row in y]

    def lap(self, v, i):
        out = len(self.nbrs[i]) * v[i]
        for j in self.nbrs[i]:
            out = out - v[j]
        return out

    def cg(self, rhs):
        # works for NumPy arrays and torch tensors alike (no in-place updates, so no copies)
        v = 0 * rhs
        r = rhs
        q = rhs
        rs = float(r @ r)
        for _ in range(K_CG):
            hq = self.H @ q
            den = float(q @ hq)
            a = rs / den if den > 0 else 0.0
            v = v + a * q
            r = r - a * hq
            rs_new = float(r @ r)
            q = r + (rs_new / rs if rs > 0 else 0.0) * q
            rs = rs_new
        return v

    def step(self):
        n, x, y = self.n, self.x, self.y
        y1 = []
        for i in range(n):
            hg = self.H @ y[i] - (self.B @ x[i] + self.b[i])
            y1.append(y[i] - (1.0 / BETA) * (hg + GAMMA * self.uy[i]
                                              + RHO * GAMMA * self.lap(y, i)))
        for i in range(n):
            self.uy[i] = self.uy[i] + (RHO / GAMMA) * self.lap(y1, i)
        x1 = []
        for i in range(n):
            v = self.cg(y1[i] - self.t[i])
            hf = self.P @ x[i] + self.p[i] + self.B.T @ v
            x1.append(x[i] - (1.0 / ALPHA) * (hf + GAMMA * self.ux[i]
                                               + RHO * GAMMA * self.lap(x, i)))
        for i in range(n):
            self.ux[i] = self.ux[i] + (RHO / GAMMA) * self.lap(x1, i)
        self.x, self.y = x1, y1

    def state_x(self):
        return np.stack(self.x)


class TorchLoop(NumpyLoop):
    """The per-agent loop with torch tensors (CPU, no autograd)."""

    def __init__(self, graph, data, x0, y0):
        import torch

        self.torch = torch
        super().__init__(graph, data, x0, y0)
        T = lambda a: torch.from_numpy(np.array(a, copy=True))  # noqa: E731
        self.H, self.B, self.P = T(self.H), T(self.B), T(self.P)
        self.BT = self.B.T.contiguous()
        self.b, self.p, self.t = T(self.b), T(self.p), T(self.t)

    def reset(self, x, y):
        torch = getattr(self, "torch", None)
        if torch is None:
            import torch
        self.x = [torch.from_numpy(row.copy()) for row in x]
        self.y = [torch.from_numpy(row.copy()) for row in y]
        self.ux = [torch.zeros_like(row) for row in self.x]
        self.uy = [torch.zeros_like(row) for row in self.y]

    def step(self):
        with self.torch.no_grad():
            super().step()

    def state_x(self):
        return self.torch.stack(self.x).numpy()


# --- (a)/(d) slamjax ---------------------------------------------------------------------
def slamjax_runner(graph, d, n, steps, block=None, rowmajor=False):
    """``steps`` iterations of the library's SLAM :class:`~slamjax.Algorithm` with
    ``slamjax.iterate`` inside one ``jit`` (the algorithm — graph arrays as leaves — is an
    argument of the compiled program, the state is donated). Returns (call(state) -> state,
    fresh_state() -> initial SLAMState, compile seconds, XLA buffer MiB)."""
    problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    if rowmajor:
        problem = _ROWMAJOR.setdefault(problem, rowmajor_quadratic(problem))
    alg = sj.slam(problem, graph, sj.SLAMConfig("slam", sj.CG(K_CG), agent_block=block))
    params = sj.SLAMParams.create(ALPHA, BETA, RHO, GAMMA)
    key = jax.random.key(0)

    def run(alg, state, params, data, key):
        return sj.iterate(alg, params, data, state, key, steps)

    def fresh_state():  # new buffers every time (the compiled call donates its state)
        return alg.init(x0 + 0, y0 + 0, data)

    fn = jax.jit(run, donate_argnums=1)
    t0 = time.perf_counter()
    compiled = fn.lower(alg, fresh_state(), params, data, key).compile()
    compile_s = time.perf_counter() - t0
    mem = None
    try:
        ma = compiled.memory_analysis()
        mem = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes) / 2**20
    except Exception:  # pragma: no cover - backend without memory analysis
        pass

    def call(state):
        return compiled(alg, state, params, data, key)

    return call, fresh_state, compile_s, mem


class Timed:
    """A prepared (compiled, warmed-up) implementation: ``once()`` times one call."""

    def __init__(self, once, agent_steps_per_call, meta):
        self.once = once
        self.agent_steps_per_call = agent_steps_per_call
        self.meta = meta
        self.best = math.inf

    def time_once(self):
        self.best = min(self.best, self.once())

    def result(self):
        return {"agent_steps_per_s": self.agent_steps_per_call / self.best, **self.meta}


_ROWMAJOR: dict = {}


def prepare_slamjax(graph, d, n, block, target_s, max_steps=20000, rowmajor=False) -> Timed:
    """Compile slamjax's scan for ≈ ``target_s`` per call, warm it up, return its timer."""
    rss0 = current_rss_mib()
    reset_peak_rss()
    # a short probe call sizes the scan so that one call takes ≈ target_s
    probe_steps = 2
    call, fresh_state, _, _ = slamjax_runner(graph, d, n, probe_steps, block, rowmajor)
    jax.block_until_ready(call(fresh_state()))
    s0 = fresh_state()
    jax.block_until_ready(s0)
    t = best_time(lambda: jax.block_until_ready(call(s0)), 1)
    steps = int(min(max(2, target_s / max(t / probe_steps, 1e-7)), max_steps))
    del call
    gc.collect()
    call, fresh_state, compile_s, mem = slamjax_runner(graph, d, n, steps, block, rowmajor)
    state = call(fresh_state())  # warm-up (the first call's extra cost is compile_s)
    jax.block_until_ready(state)
    finite = bool(jnp.all(jnp.isfinite(state.x)))
    del state

    def once():
        s0 = fresh_state()
        jax.block_until_ready(s0)
        t0 = time.perf_counter()
        jax.block_until_ready(call(s0))
        return time.perf_counter() - t0

    once()
    peak = peak_rss_mib()
    return Timed(once, n * steps, {
        "steps_per_call": steps, "compile_s": compile_s, "xla_buffers_MiB": mem,
        "peak_rss_MiB": peak, "rss_increase_MiB": None if rss0 is None else peak - rss0,
        "finite": finite, "block": block})


def prepare_host(cls, graph, d, n, max_time) -> Timed:
    """A host implementation ``cls`` (NumPy or torch) on ``graph`` at dimension ``d``,
    warmed up, with as many steps per timed call as fit in ``max_time`` seconds."""
    rss0 = current_rss_mib()
    reset_peak_rss()
    _, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    impl = cls(graph, data, x0, y0)
    t0 = time.perf_counter()
    impl.step()  # warm-up, and sizes the measurement
    t1 = time.perf_counter() - t0
    steps = int(max(1, min(200, max_time / max(t1, 1e-9))))

    def once():
        t0 = time.perf_counter()
        for _ in range(steps):
            impl.step()
        return time.perf_counter() - t0

    peak = peak_rss_mib()
    return Timed(once, n * steps, {
        "steps_per_call": steps, "compile_s": 0.0, "peak_rss_MiB": peak,
        "rss_increase_MiB": None if rss0 is None else peak - rss0})


def agreement_check(d: int = 10, n: int = 64, steps: int = 5, rowmajor: bool = False) -> dict:
    """All implementations compute the same iterates (max |Δx| / max |x| after ``steps``)."""
    g = build_graph("sw", n)
    problem, data, x0, y0 = make_quadratic(n, d, d, 1, seed=0)
    params = sj.SLAMParams.create(ALPHA, BETA, RHO, GAMMA)

    def solve(prob, graph, block=None):
        alg = sj.slam(prob, graph, sj.SLAMConfig("slam", sj.CG(K_CG), agent_block=block))
        return sj.solve(alg, params, data, x0, y0, jax.random.key(0), steps)

    ref = solve(problem, g)
    xr = np.asarray(ref.x)
    out = {}
    impls = [("numpy_batched", NumpyBatched), ("numpy_loop", NumpyLoop)]
    try:
        import torch  # noqa: F401

        impls.append(("torch_loop", TorchLoop))
    except ImportError:
        pass
    for name, cls in impls:
        impl = cls(g, data, x0, y0)
        for _ in range(steps):
            impl.step()
        xi = impl.state_x() if hasattr(impl, "state_x") else impl.x
        out[name] = float(np.max(np.abs(np.asarray(xi) - xr)) / np.max(np.abs(xr)))
    dense = solve(problem, G.with_mixing(g, "dense"))
    out["slamjax_dense"] = float(np.max(np.abs(np.asarray(dense.x) - xr)) / np.max(np.abs(xr)))
    blocked = solve(problem, g, block=16)
    out["slamjax_block"] = float(np.max(np.abs(np.asarray(blocked.x) - xr)) /
                                 np.max(np.abs(xr)))
    if rowmajor:
        rm = solve(rowmajor_quadratic(problem), g)
        out["slamjax_rowmajor"] = float(np.max(np.abs(np.asarray(rm.x) - xr)) /
                                        np.max(np.abs(xr)))
    return out


def default_block(d: int) -> int:
    """The agent block of ``slamjax_block`` at dimension ``d``: 2¹⁷/d rounded to a power
    of two."""
    return 2 ** int(round(math.log2(max(1, 2**17 // d))))
