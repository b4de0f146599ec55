"""Width-scaling predictions of parametrizations."""

from __future__ import annotations

__all__ = ["lr_exponent"]


def lr_exponent(param: str, optimizer: str = "sgd") -> float:
    """Predicted exponent ``e`` of the optimal learning rate, ``lr*(n) ∝ n^e``, for a network of width ``n``.

    .. math::

        \\mathrm{SP}:\\ e = -1,\\qquad \\mu\\mathrm{P},\\ \\mathrm{NTK},\\ \\mathrm{MF}:\\ e = 0.

    Reasons, per parametrization (widths ``n -> inf`` at fixed depth, data and steps):

    - **muP / mean field** (Yang & Hu 2021; Yang et al. 2022, "Tensor Programs V"): every layer's features move by
      ``Theta(1)`` per step at ``lr = Theta(1)`` in the parametrization's units, for SGD and for Adam with the
      per-layer exponents of :func:`dynsim.param.mup`, so the loss as a function of ``lr`` converges as
      ``n -> inf`` and its argmin stops moving: ``e = 0``.
    - **NTK**: the tangent kernel converges to a finite limit (Jacot et al. 2018), so the largest stable
      learning rate ``2 / lambda_max(NTK)`` and the whole loss-vs-lr curve converge: ``e = 0``. With Adam the
      exponents ``c = (1/2, 1, 1/2)`` keep each update's effect on the output ``Theta(1)``, again ``e = 0``.
    - **SP, SGD**: with fan-in init and no multipliers, the output layer's contribution to the NTK is
      ``sum_i phi(h_i)^2 = Theta(n)``, so ``lambda_max`` grows linearly and the optimum, which sits a fixed fraction
      below the stability edge ``2 / lambda_max`` in the full-batch regime, scales as ``1/n``: ``e = -1``.
    - **SP, Adam**: Adam's update has ``Theta(lr)`` entries regardless of gradient scale; a hidden or output
      pre-activation sums ``n`` such correlated changes, so it moves by ``Theta(n * lr)`` and stability needs
      ``lr = O(1/n)``: ``e = -1`` (Yang et al. 2022, section 3).

    At finite width the ``Theta(1)`` first-layer terms bend these curves: for SP with SGD,
    ``lambda_max ≈ A n + B`` gives a local slope of ``-A n / (A n + B)``, which approaches -1 from above.

    Regime: widths large against the input dimension and depth, a fixed number of training steps and a fixed
    dataset as ``n`` grows, and an optimum set by stability or by the features' speed (not by a budget of steps
    too short to train at any rate).

    Args:
      param: ``"sp"``, ``"ntk"``, ``"mup"`` or ``"mean_field"``.
      optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
    Returns:
      The exponent ``e``.
    """
    if optimizer not in ("sgd", "adam", "adamw"):
        raise ValueError(f"unknown optimizer {optimizer!r}.")
    table = {"sp": -1.0, "ntk": 0.0, "mup": 0.0, "mean_field": 0.0}
    try:
        return table[param]
    except KeyError:
        raise ValueError(f"unknown parametrization {param!r}.") from None
