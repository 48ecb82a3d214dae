"""Per-agent CNN gradients under vmap: ``PatchConv`` (patches @ kernel) against flax's
``nn.Conv`` (``lax.conv``), side by side in one run.

    python experiments/bench_conv.py           # writes results/bench_conv.json

The pursuit critic of :mod:`slamjax.rl.cnn` (3 x 15 x 15 input, 3 x 3 convolutions with 4
and 8 channels, pool between them) with the agents' parameters stacked: ``vmap`` over seeds
of ``vmap`` over agents, a minibatch of 50 states each — the shape of one critic step of the
pursuit reproduction (4 agents x 10 seeds).  Under ``vmap`` over the parameters XLA turns
``lax.conv`` into a grouped convolution; the patch form is a batched matrix product.  Prints
agent-samples per second of the forward pass and of the gradient, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from _common import machine_info, write_json  # noqa: E402
from slamjax.rl.cnn import CNN_FEATURES, PatchConv  # noqa: E402
from slamjax.rl.nets import init_agents  # noqa: E402


class _Critic(nn.Module):
    """The pursuit critic's layout with either convolution."""

    patches: bool
    features: tuple = CNN_FEATURES

    @nn.compact
    def __call__(self, s):
        conv = PatchConv if self.patches else (lambda f, name: nn.Conv(f, (3, 3), padding="SAME",
                                                                        name=name))
        h = jnp.moveaxis(s, -3, -1)
        h = nn.relu(conv(self.features[0], name="conv1")(h))
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
        h = nn.relu(conv(self.features[1], name="conv2")(h))
        return nn.Dense(1, name="out")(h.reshape(h.shape[0], -1))[..., 0]


def _fns(patches: bool, seeds: int, agents: int):
    net = _Critic(patches)
    params = jax.vmap(lambda k: init_agents(net, k, agents, jnp.zeros((1, 3, 15, 15))))(
        jax.random.split(jax.random.key(0), seeds))
    apply = lambda p, x: jax.vmap(net.apply, in_axes=(0, None))(p, x)  # noqa: E731
    fwd = jax.jit(jax.vmap(apply))
    grad = jax.jit(jax.vmap(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2))))
    return params, fwd, grad


def _rate(fn, params, x, reps):
    jax.block_until_ready(fn(params, x))
    t = time.perf_counter()
    for _ in range(reps):
        out = fn(params, x)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_conv.json"))
    args = p.parse_args(argv)
    for name in ("seeds", "agents", "batch", "reps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    x = jax.random.normal(jax.random.key(1), (args.seeds, args.batch, 3, 15, 15))
    n = args.seeds * args.agents * args.batch
    fns = {"patch": _fns(True, args.seeds, args.agents), "lax_conv": _fns(False, args.seeds,
                                                                         args.agents)}
    best = {k: {"forward": float("inf"), "gradient": float("inf")} for k in fns}
    for _ in range(args.rounds):  # interleaved: both sides see the same machine state
        for k, (params, fwd, grad) in fns.items():
            best[k]["forward"] = min(best[k]["forward"], _rate(fwd, params, x, args.reps))
            best[k]["gradient"] = min(best[k]["gradient"], _rate(grad, params, x, args.reps))
    rates = {k: {m: n / t for m, t in v.items()} for k, v in best.items()}
    ratio = {m: rates["patch"][m] / rates["lax_conv"][m] for m in ("forward", "gradient")}
    for k, v in rates.items():
        print(f"{k:>9}: forward {v['forward']:>9.0f}, gradient {v['gradient']:>9.0f} "
              "agent-samples/s")
    print(f"PatchConv / lax.conv: forward {ratio['forward']:.1f}x, gradient "
          f"{ratio['gradient']:.1f}x")
    path = write_json(Path(args.out), {"command": " ".join(sys.argv), "args": vars(args),
                                       "agent_samples_per_s": rates, "ratio": ratio,
                                       "machine": machine_info(extra_packages=())})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
