"""Empirical neural tangent kernel observables: the kernel's spectrum, its distance from init, the outputs' distance.

The *empirical NTK* of a member on probe inputs ``x_1..x_k`` is the Gram matrix of its output gradients with
respect to the trained parameters,

.. math::

    K_{ij} = \\sum_l \\partial_{w_l} f(x_i) \\cdot \\partial_{w_l} f(x_j) = (J J^\\top)_{ij},

(Jacot et al. 2018; neural-tangents' ``empirical_ntk_fn`` of the same ``apply``), for the first output component.
Frozen layers (:attr:`dynsim.models.MLP.frozen`) are not trained and do not enter. Under full-batch GD with one
learning rate for every layer (``c_l = 0``, every SGD table of :mod:`dynsim.param` except mean field, where all
``c_l = -1`` multiply it by ``n``), the training outputs move as ``df = -(lr / P) K (f - y)`` to first order, so
``K`` on the training inputs is the kernel that drives training. Its units are dynsim's: the trained parameters
are the ``w_l`` of :mod:`dynsim.param`, so in NTK parametrization the input layer's term is ``d`` times the one in
neural-tangents' convention (:func:`dynsim.theory.ntk_regime.two_layer_kernels` makes the map).

Method: the probes are the first ``k`` test inputs (fixed, shared by every member). Column ``j`` of ``K`` is
``J (J^T e_j)``: one vector-Jacobian product and one Jacobian-vector product through the network (the "implicit"
method of Novak et al. 2022, "Fast finite width neural tangent kernel"). Columns run ``chunk`` at a time in
``lax.map``, so memory holds ``chunk`` parameter-sized vectors, never the ``k x #params`` Jacobian.

Observables (registered): ``ntk_eigs`` (eigenvalues of ``K``, descending), ``ntk_distance``
(``||K_t - K_0||_F / ||K_0||_F``, ``K_0`` carried in the observable's state) and ``output_distance``
(``||f_t - f_0|| / ||y||`` on the probes: the outputs' movement in units of the target). Padded units carry no
gradient and contribute exactly zero to ``K``, so the values do not depend on the padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _registry as _obs

__all__ = ["PROBES", "CHUNK", "n_probes", "probe_inputs", "empirical_ntk", "ntk_observables"]

PROBES = 32  # probe inputs: the first PROBES test inputs (fewer if the test set is smaller)
CHUNK = 8  # kernel columns per vectorised VJP-JVP batch


def n_probes(prog, probes: int = PROBES) -> int:
    """Number of probe inputs of a program: ``min(probes, n_test)``."""
    return min(probes, prog.task.n_test)


def probe_inputs(ctx, probes: int = PROBES):
    """The probe inputs ``[d, k]`` and their targets ``[k]`` (first output component)."""
    k = n_probes(ctx.prog, probes)
    return ctx.data.x_test[:, :k], ctx.data.y_test[0, :k]


def _outputs(ctx, params, x):
    """The member's first output component on inputs ``x`` of shape ``[d, k]``."""
    return ctx.prog.model.apply(params, x, ctx.scales.mult, ctx.mask)[0]


def empirical_ntk(ctx, params, x, chunk: int = CHUNK) -> jax.Array:
    """The member's empirical NTK ``J J^T`` on inputs ``x`` of shape ``[d, k]``, shape ``[k, k]``.

    A plain function (jit/vmap it yourself). ``J`` is the Jacobian of the first output component with respect to
    the trained parameters; the result is symmetrised to remove the round-off asymmetry of the two passes.
    """

    def f(p):
        return _outputs(ctx, p, x)

    out, pullback = jax.vjp(f, params)

    def column(e):
        return jax.jvp(f, (params,), pullback(e))[1]

    kernel = jax.lax.map(column, jnp.eye(out.shape[0], dtype=out.dtype), batch_size=chunk)
    return 0.5 * (kernel + kernel.T)


def ntk_observables(suffix: str = "", *, probes: int = PROBES, chunk: int = CHUNK) -> tuple[_obs.Observable, ...]:
    """The observables ``ntk_eigs``, ``ntk_distance`` and ``output_distance`` (names with ``suffix`` appended).

    Args:
      suffix: appended to each name, to register variants with other probe counts.
      probes: number of probe inputs (the first ``probes`` test inputs).
      chunk: kernel columns computed together.
    """

    def kernel(ctx, params):
        return empirical_ntk(ctx, params, probe_inputs(ctx, probes)[0], chunk)

    def kernel_values(ctx, params, k0):
        k = kernel(ctx, params)
        return {"eigs": jnp.linalg.eigvalsh(k)[::-1], "distance": jnp.linalg.norm(k - k0) / jnp.linalg.norm(k0)}, k0

    shared = _obs.Shared(f"ntk:{probes}:{chunk}", kernel_values, init_extra=kernel)  # K_0, carried

    def init_outputs(ctx, params):
        return _outputs(ctx, params, probe_inputs(ctx, probes)[0])

    def output_distance(ctx, params, f0):
        x, y = probe_inputs(ctx, probes)
        return jnp.linalg.norm(_outputs(ctx, params, x) - f0) / jnp.linalg.norm(y), f0

    where = f"on the first {probes} test inputs"
    return (
        _obs.Observable(f"ntk_eigs{suffix}", None, f"eigenvalues (descending) of the empirical NTK J J^T {where}",
                        dims=(f"ntk_eig{suffix}",), shape=lambda prog: (n_probes(prog, probes),), shared=shared,
                        part="eigs"),
        _obs.Observable(f"ntk_distance{suffix}", None, f"relative Frobenius distance ||K_t - K_0|| / ||K_0|| of "
                        f"the empirical NTK from its value at init, {where}", shared=shared, part="distance"),
        _obs.Observable(f"output_distance{suffix}", output_distance, f"distance ||f_t - f_0|| / ||y|| of the "
                        f"outputs from their value at init, {where}", init_extra=init_outputs),
    )


OBSERVABLES = ntk_observables()
