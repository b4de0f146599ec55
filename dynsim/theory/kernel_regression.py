"""Learning curves of ridge regression, random-feature ridge regression and gradient descent from a spectrum.

Setting and conventions shared by every function here. Features (or a kernel's eigenfunctions) ``x_k`` have
population variance ``eigenvalues[k] = lambda_k`` and are uncorrelated; the target is
``y = sum_k beta*_k x_k + eps`` with ``target_coefs[k] = beta*_k`` and noise variance ``noise_var = sigma^2``.
Ridge regression on ``P = n_train`` samples is

.. math::

    \\hat\\beta = \\arg\\min_\\beta \\frac1P \\lVert y - X\\beta\\rVert^2 + \\text{ridge}\\,\\lVert\\beta\\rVert^2,

and the *excess risk* is :math:`\\sum_k \\lambda_k (\\hat\\beta_k - \\beta^*_k)^2`, the test error above the noise
floor. The deterministic equivalents below are the limits of its average when ``P`` and the number of relevant
features grow together; at ``P`` in the hundreds they agree with a single draw to a few percent (finite-size
fluctuations are ``O(1/sqrt(P))``). A kernel method is the same problem in the kernel's eigenbasis (Mercer
eigenvalues ``lambda_k`` of the kernel against the data distribution, ``beta*_k`` the target's coefficients).

All functions are NumPy and broadcast over ``n_train``, ``ridge`` and the like; spectra are along the last axis.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "effective_ridge",
    "excess_risk",
    "learning_curve",
    "rf_effective_ridge",
    "rf_excess_risk",
    "gd_loss_curve",
    "gradient_flow_loss_curve",
    "gd_decay",
    "kernel_gd_predictions",
    "kernel_flow_predictions",
    "power_law_spectrum",
    "resolution_limited_exponent",
    "variance_limited_exponent",
    "variance_limited_coefficient",
]

_BISECTION_STEPS = 200  # halvings of a log-bracket spanning < 2^11 decades: far below float64 resolution


def _bisect_log(increasing, lo, hi):
    """Root of an increasing function by bisection in ``log`` between positive arrays ``lo < hi``."""
    lo, hi = np.log(lo), np.log(hi)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = increasing(np.exp(mid)) > 0
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    return np.exp(0.5 * (lo + hi))


def _df(eigenvalues, kappa, power=1):
    """Degrees of freedom :math:`\\mathrm{df}_p(\\kappa) = \\sum_k \\lambda_k^p / (\\lambda_k + \\kappa)^p`."""
    lam = eigenvalues
    return np.sum((lam / (lam + kappa[..., None])) ** power, axis=-1)


def _positive(eigenvalues):
    lam = np.asarray(eigenvalues, dtype=float)
    if lam.ndim != 1 or lam.size == 0 or not np.all(lam > 0):
        raise ValueError("eigenvalues must be a non-empty 1-D array of positive numbers.")
    return lam


def effective_ridge(eigenvalues, n_train, ridge):
    """The renormalised ridge :math:`\\kappa` of ridge regression with ``n_train`` samples.

    .. math::

        \\kappa = \\text{ridge} + \\frac{\\kappa}{P}\\sum_k \\frac{\\lambda_k}{\\lambda_k + \\kappa},
        \\quad\\text{i.e.}\\quad \\kappa\\Big(1 - \\frac{\\mathrm{df}_1(\\kappa)}{P}\\Big) = \\text{ridge}.

    For ``ridge = 0`` this is the positive root of :math:`\\mathrm{df}_1(\\kappa) = P` when ``P`` is below the
    number of features, and ``0`` otherwise (under-parametrised least squares). Bordelon, Canatar & Pehlevan (2020),
    "Spectrum dependent learning curves in kernel regression and wide neural networks"; Simon et al. (2021),
    "The eigenlearning framework" (their :math:`\\kappa`, with ridge ``delta = P * ridge`` in their units).

    Args:
        eigenvalues: positive ``lambda_k``, shape ``[M]``.
        n_train: ``P``, broadcastable.
        ridge: ``>= 0``, broadcastable with ``n_train``.

    Returns:
        ``kappa``, shape ``broadcast(n_train, ridge)``.
    """
    lam = _positive(eigenvalues)
    p, ridge = np.broadcast_arrays(np.asarray(n_train, dtype=float), np.asarray(ridge, dtype=float))
    if np.any(ridge < 0) or np.any(p <= 0):
        raise ValueError("ridge must be >= 0 and n_train > 0.")
    # kappa (1 - df1(kappa) / P) increases for kappa above the interpolation point kappa0 (df1(kappa0) = P, or 0
    # when P >= M); the root lies in [kappa0, ridge + sum(lam) / P], since df1(kappa) <= sum(lam) / kappa.
    floor = lam.min() * 1e-30
    kappa0 = np.where(p < lam.size, _bisect_log(lambda k: p - _df(lam, k), np.full(p.shape, floor),
                                                np.full(p.shape, lam.sum() + floor)), 0.0)
    hi = ridge + lam.sum() / p + floor
    kappa = _bisect_log(lambda k: k * (1 - _df(lam, k) / p) - ridge, np.maximum(kappa0, floor), hi)
    return np.where(ridge > 0, kappa, kappa0)


def excess_risk(eigenvalues, target_coefs, n_train, ridge, noise_var=0.0):
    """Deterministic-equivalent excess test risk of ridge regression (kernel or linear).

    .. math::

        E = \\frac{1}{1 - \\gamma}\\Big[\\kappa^2 \\sum_k \\frac{\\lambda_k \\beta^{*2}_k}{(\\lambda_k + \\kappa)^2}
            + \\sigma^2 \\gamma\\Big],\\qquad
        \\gamma = \\frac1P \\sum_k \\frac{\\lambda_k^2}{(\\lambda_k + \\kappa)^2},

    with :math:`\\kappa` from :func:`effective_ridge`. This is eq. (4) of Canatar, Bordelon & Pehlevan (2021),
    "Spectral bias and task-model alignment explain generalization in kernel regression and infinitely wide neural
    networks" (Nat. Commun.), and the eigenlearning result of Simon et al. (2021); Atanasov, Zavatone-Veth &
    Pehlevan (2024), "Scaling and renormalization in high-dimensional regression", eq. (39), derive it for
    Gaussian features.

    Regime: ``P`` and the number of features with non-negligible ``lambda_k`` large (Gaussian or
    Gaussian-equivalent features); exact in expectation only in that limit, relative error ``O(1/P)`` on the mean
    and ``O(1/sqrt(P))`` fluctuations of a single draw. ``ridge = 0`` with ``P`` equal to the number of features
    diverges (interpolation peak).

    Args:
        eigenvalues: ``lambda_k > 0``, shape ``[M]``.
        target_coefs: ``beta*_k``, shape ``[M]``.
        n_train: ``P``, broadcastable.
        ridge: ``>= 0``, broadcastable.
        noise_var: label-noise variance ``sigma^2 >= 0``.

    Returns:
        ``E``, shape ``broadcast(n_train, ridge)``.
    """
    lam = _positive(eigenvalues)
    beta2 = np.asarray(target_coefs, dtype=float) ** 2
    kappa = effective_ridge(lam, n_train, ridge)
    p = np.broadcast_to(np.asarray(n_train, dtype=float), kappa.shape)
    gamma = _df(lam, kappa, 2) / p
    bias = kappa**2 * np.sum(lam * beta2 / (lam + kappa[..., None]) ** 2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (bias + noise_var * gamma) / (1 - gamma)


def learning_curve(eigenvalues, target_coefs, n_trains, ridge, noise_var=0.0):
    """:func:`excess_risk` along a list of sample sizes ``n_trains``; returns an array of the same length.

    Formula, references and regime are those of :func:`excess_risk`, evaluated at each ``P``.
    """
    return excess_risk(eigenvalues, target_coefs, np.asarray(n_trains, dtype=float), ridge, noise_var)


def rf_effective_ridge(eigenvalues, n_features, n_train, ridge, proj_var=None):
    """Renormalised ridge of linear random-feature ridge regression (the feature-level :math:`\\kappa_2`).

    With ``c_k = proj_var * lambda_k`` and :math:`d(\\kappa_2) = \\sum_k c_k / (c_k + \\kappa_2)`,

    .. math::

        N \\kappa_2 \\Big(1 - \\frac{d}{N}\\Big)\\Big(1 - \\frac{d}{P}\\Big) = \\text{ridge},

    symmetric in ``N <-> P`` only at ``ridge = 0`` (the prefactor ``N`` breaks it otherwise), where it is the root
    of :math:`d = \\min(N, P)` (``0`` when that exceeds the number of latent features). See :func:`rf_excess_risk`
    for the model and references.
    """
    lam = _positive(eigenvalues)
    s2 = 1.0 / lam.size if proj_var is None else float(proj_var)
    c = s2 * lam
    n, p, ridge = np.broadcast_arrays(np.asarray(n_features, dtype=float), np.asarray(n_train, dtype=float),
                                      np.asarray(ridge, dtype=float))
    if np.any(ridge < 0) or np.any(n <= 0) or np.any(p <= 0):
        raise ValueError("ridge must be >= 0 and n_features, n_train > 0.")
    m = np.minimum(n, p)
    floor = c.min() * 1e-30
    kappa0 = np.where(m < lam.size, _bisect_log(lambda k: m - _df(c, k), np.full(m.shape, floor),
                                                np.full(m.shape, c.sum() + floor)), 0.0)
    # Above kappa0 both factors are positive and increasing; at 10 (ridge / N + sum c) the left side is > ridge.
    hi = 10 * (ridge / n + c.sum()) + floor
    kappa2 = _bisect_log(lambda k: n * k * (1 - _df(c, k) / n) * (1 - _df(c, k) / p) - ridge,
                         np.maximum(kappa0, floor), hi)
    return np.where(ridge > 0, kappa2, kappa0)


def rf_excess_risk(eigenvalues, target_coefs, n_features, n_train, ridge, noise_var=0.0, proj_var=None):
    """Deterministic-equivalent excess risk of linear random-feature ridge regression at finite ``N`` and ``P``.

    Model: latent ``x`` with covariance ``diag(lambda)`` (``M`` entries), features ``phi = F^T x`` with
    ``F`` of shape ``[M, N]`` and i.i.d. ``N(0, proj_var)`` entries (default ``1 / M``), ridge regression of
    ``y = beta* . x + eps`` on ``phi`` with ``P`` samples (conventions in the module docstring). With
    ``c_k = proj_var lambda_k``, ``w_k^2 = lambda_k beta*_k^2``, :math:`\\kappa_2` from :func:`rf_effective_ridge`,
    :math:`d = \\sum_k c_k/(c_k + \\kappa_2)` and :math:`z = \\kappa_2 (1 - d/N)`:

    .. math::

        \\gamma_N = \\frac1N \\sum_k \\frac{c_k^2}{(c_k+\\kappa_2)^2},\\qquad
        B = \\sum_k \\frac{\\kappa_2 w_k^2}{c_k + \\kappa_2}
            - \\frac{z}{1-\\gamma_N}\\sum_k \\frac{c_k w_k^2}{(c_k+\\kappa_2)^2},

        \\gamma = \\frac1P\\Big[d - \\frac{z}{1-\\gamma_N}\\sum_k \\frac{c_k}{(c_k+\\kappa_2)^2}\\Big],\\qquad
        E = \\frac{B + \\sigma^2\\gamma}{1 - \\gamma}.

    Derivation: given ``F`` the features are Gaussian, so :func:`excess_risk` applies in feature space with the
    part of the target outside their span acting as extra noise; that combines into
    ``E = (B_F + sigma^2 gamma_F) / (1 - gamma_F)`` with ``B_F`` the infinite-data risk at ridge :math:`\\kappa`.
    The traces over ``F`` are those of a sample covariance of ``N`` draws, whose deterministic equivalent (same
    self-consistent equation with ``N`` in place of ``P``) and its derivative give ``B`` and ``gamma``. The result is
    the linear random-feature theory of Atanasov, Zavatone-Veth & Pehlevan (2024), "Scaling and renormalization in
    high-dimensional regression", Sec. 6, and Bach (2024), "High-dimensional analysis of double descent for linear
    regression with random projections" (SIAM J. Math. Data Sci.); the symmetry of :math:`\\kappa_2` under
    ``N <-> P`` at ``ridge = 0`` is the duality of Maloney, Roberts & Sully (2022), "A solvable model of neural
    scaling laws". ``N -> infinity`` recovers :func:`excess_risk` with ridge ``ridge / (N proj_var)``.

    Regime: linear features (for ReLU or erf features use the Gaussian-equivalent linearisation, not provided);
    ``N``, ``P`` and the number of relevant latent directions large; ``O(1/sqrt(min(N, P)))`` fluctuations per draw.

    Args:
        eigenvalues: latent covariance ``lambda_k > 0``, shape ``[M]``.
        target_coefs: ``beta*_k``, shape ``[M]``.
        n_features: ``N``, broadcastable.
        n_train: ``P``, broadcastable.
        ridge: ``>= 0``, broadcastable.
        noise_var: ``sigma^2``.
        proj_var: variance of the entries of ``F``; ``None`` means ``1 / M``.

    Returns:
        ``E``, shape ``broadcast(n_features, n_train, ridge)``.
    """
    lam = _positive(eigenvalues)
    s2 = 1.0 / lam.size if proj_var is None else float(proj_var)
    c, w2 = s2 * lam, lam * np.asarray(target_coefs, dtype=float) ** 2
    kappa2 = rf_effective_ridge(lam, n_features, n_train, ridge, s2)
    n = np.broadcast_to(np.asarray(n_features, dtype=float), kappa2.shape)
    p = np.broadcast_to(np.asarray(n_train, dtype=float), kappa2.shape)
    k = kappa2[..., None]
    d = np.sum(c / (c + k), axis=-1)
    z = kappa2 * (1 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = z / (1 - np.sum(c**2 / (c + k) ** 2, axis=-1) / n)
        bias = np.sum(k * w2 / (c + k), axis=-1) - slope * np.sum(c * w2 / (c + k) ** 2, axis=-1)
        gamma = (d - slope * np.sum(c / (c + k) ** 2, axis=-1)) / p
        return (bias + noise_var * gamma) / (1 - gamma)


def gd_loss_curve(eigenvalues, coefs, lr, steps, floor=0.0):
    """Exact loss of full-batch gradient descent on a quadratic (a linear or linearised model under MSE).

    .. math::

        L_t = L_\\infty + \\frac12 \\sum_k \\lambda_k c_k^2 (1 - \\eta\\lambda_k)^{2t},\\qquad t = 0, \\dots, T,

    for :math:`L(\\theta) = \\frac{1}{2P}\\lVert y - X\\theta\\rVert^2` (the engine's ``0.5 * mean`` squared error)
    when ``eigenvalues`` are those of the *empirical* feature covariance :math:`X^T X / P` (the Hessian, or the
    NTK Gram matrix divided by ``P`` for a linearised network), ``coefs`` are :math:`\\theta^* - \\theta_0` in its
    eigenbasis and ``floor`` is the least-squares residual :math:`L_\\infty`. Each mode contracts by
    :math:`1 - \\eta\\lambda_k` per step, so the formula is exact for any ``lr``, including divergence above
    ``2 / lambda_max``. With the *population* covariance it is the population loss of GD on infinite data.
    Reference: the spectral analysis of GD on least squares (e.g. Nocedal & Wright, "Numerical Optimization", 2006,
    §3.3 on steepest descent for quadratics); neural-tangents' ``predict.gradient_descent_mse`` (Lee et al. 2019,
    "Wide neural networks of any depth evolve as linear models", Eq. 9) evaluates the same expression for
    linearised networks. Regime: exact for a quadratic loss; for a network, its linearisation (lazy training).

    Returns:
        ``[steps + 1]`` losses.
    """
    lam = np.asarray(eigenvalues, dtype=float)
    t = np.arange(steps + 1)[:, None]
    return floor + 0.5 * np.sum(lam * np.asarray(coefs, dtype=float) ** 2 * (1 - lr * lam) ** (2 * t), axis=-1)


def gradient_flow_loss_curve(eigenvalues, coefs, times, floor=0.0):
    """Gradient flow :math:`\\dot\\theta = -\\nabla L`: ``L(t) = floor + 0.5 sum_k lambda_k c_k^2 exp(-2 lambda_k t)``.

    The ``lr -> 0`` limit of :func:`gd_loss_curve` at ``t = lr * steps``, same conventions, references and regime
    (Lee et al. 2019, Eq. 9 in continuous time). Returns ``[len(times)]``.
    """
    lam = np.asarray(eigenvalues, dtype=float)
    t = np.asarray(times, dtype=float)[..., None]
    return floor + 0.5 * np.sum(lam * np.asarray(coefs, dtype=float) ** 2 * np.exp(-2 * lam * t), axis=-1)


def power_law_spectrum(n_latent: int, alpha: float, beta: float):
    """Eigenvalues ``j^(-2 alpha)`` and target coefficients ``j^(-beta)``, ``j = 1 .. n_latent``.

    The power-law data model of Bahri et al. (2024), "Explaining neural scaling laws" (their ``lambda_j ~ j^-(1+a)``
    with ``1 + a = 2 alpha`` here) and of Maloney, Roberts & Sully (2022). It is a definition, not a law; the laws
    that use it (:func:`resolution_limited_exponent`) hold for ``alpha > 1/2`` and ``2 alpha + 2 beta > 1``.
    """
    j = np.arange(1, n_latent + 1, dtype=float)
    return j ** (-2.0 * alpha), j ** (-beta)


def resolution_limited_exponent(alpha, beta, resource="n_train"):
    """Exponent ``a`` of ``E ~ P^-a`` (``resource="n_train"``, at ``N >> P``) or ``E ~ N^-a`` (``"width"``, at
    ``P >> N``) for the power-law model, ridgeless.

    With :func:`power_law_spectrum` (``lambda_j = j^-2alpha``, ``beta*_j = j^-beta``) the effective ridge is
    :math:`\\kappa \\sim n^{-2\\alpha}` (``df1 = n`` counts the modes above it, ``n = min(N, P)``). Modes above the
    cut-off are missed and leave :math:`\\lambda_j \\beta_j^2`, summing to :math:`n^{1 - 2\\alpha - 2\\beta}`.
    Modes below it are learned imperfectly: with ``P`` samples (:func:`excess_risk`) each leaves
    :math:`\\kappa^2 \\beta_j^2 / \\lambda_j`, with ``N`` random features (:func:`rf_excess_risk` at
    ``P -> inf``, where ``B = sum_k kappa lambda_k beta_k^2 / (lambda_k + kappa)``) each leaves
    :math:`\\kappa \\beta_j^2`. Summing,

    .. math::

        a_P = \\min(2\\alpha + 2\\beta - 1,\\ 4\\alpha),\\qquad a_N = \\min(2\\alpha + 2\\beta - 1,\\ 2\\alpha),

    equal (the ``N <-> P`` duality of the exponent) when ``beta <= 1/2``. Where the learned modes' residual sum
    converges it no longer decays with the cut-off's position and the exponent saturates: in ``N`` at ``2 alpha``
    once ``beta > 1/2``, in ``P`` at ``4 alpha`` only once ``beta > alpha + 1/2`` (between the two the exponents
    differ, ``2 alpha`` in ``N`` and ``2 alpha + 2 beta - 1`` in ``P``), with a logarithmic correction at each
    boundary. Bahri et al. (2024), "Explaining neural scaling laws"
    (PNAS), resolution-limited regime; Maloney, Roberts & Sully (2022); Spigler, Geiger & Wyart (2020) and Bordelon
    et al. (2020) for kernel regression.

    Regime: ``alpha > 1/2`` (a summable spectrum; at ``alpha = 1/2`` logarithms of ``M`` enter),
    ``2 alpha + 2 beta > 1`` (finite target variance), ``1 << N, P << M`` (the number of latent features), ridge
    small against :math:`\\kappa`, no label noise (noise adds a term that does not decay in the ridgeless
    interpolating regime).
    """
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    saturation = {"n_train": 4 * alpha, "width": 2 * alpha}
    if resource not in saturation:
        raise ValueError(f"resource must be 'n_train' or 'width', got {resource!r}.")
    return np.minimum(2 * alpha + 2 * beta - 1, saturation[resource])


def variance_limited_exponent():
    """Exponent ``1`` of ``E(N) - E(inf) ~ 1/N`` at fixed ``P`` and of ``E(P) - E(inf) ~ 1/P`` at fixed ``N``.

    When the other resource is held fixed, the loss is a smooth function of ``1/N`` (or ``1/P``) around the limit,
    whose first Taylor term gives exponent 1 (Bahri et al. 2021/2024, "Explaining neural scaling laws",
    variance-limited regime). Regime: ``N >> P`` (respectively ``P >> N``) and away from the interpolation peak
    ``N = P`` of ridgeless regression.
    """
    return 1.0


def variance_limited_coefficient(eigenvalues, target_coefs, fixed, ridge, noise_var=0.0, *, vary="n_features",
                                 proj_var=None):
    """Coefficient ``C`` of ``E = E_inf + C / n + O(1/n^2)`` from :func:`rf_excess_risk`, ``n`` the varied count.

    ``vary="n_features"`` holds ``P = fixed`` and sends ``N`` to infinity; ``vary="n_train"`` holds ``N = fixed``
    and sends ``P`` to infinity. The coefficient is the limit of ``n (E(n) - E_inf)``, evaluated by Richardson
    extrapolation from ``n = 1e6 * fixed`` and twice that (error ``O(1e-6)`` relative). For ``ridge = 0``,
    ``vary="n_train"`` and ``N`` below the latent dimension it equals ``N (sigma^2 + E_inf)``: the classical
    ``N / P`` variance of least squares with the unexplained part of the target as noise.

    Reference: the ``1/n`` expansion of the deterministic equivalent, Bahri et al. (2024), variance-limited regime;
    Atanasov, Zavatone-Veth & Pehlevan (2024), "Scaling and renormalization in high-dimensional regression".
    Regime: that of :func:`rf_excess_risk`, with the varied count far above the fixed one and away from ``N = P``.

    Returns:
        ``(E_inf, C)``.
    """
    fixed = float(fixed)
    n1, n2 = 1e6 * fixed, 2e6 * fixed

    def risk(n):
        args = (n, fixed) if vary == "n_features" else (fixed, n)
        return float(rf_excess_risk(eigenvalues, target_coefs, *args, ridge, noise_var, proj_var))

    if vary not in ("n_features", "n_train"):
        raise ValueError(f"vary must be 'n_features' or 'n_train', got {vary!r}.")
    e1, e2 = risk(n1), risk(n2)
    coef = n2 * (e1 - e2)  # E(n1) - E(n2) = C (1/n1 - 1/n2) = C / n2 for n2 = 2 n1
    return e2 - coef / n2, coef


def _kernel_dynamics(k_train, k_test_train, y_train, f0_train, f0_test, decay):
    """Outputs under a linear residual dynamics ``r -> g(Theta / P) r`` on the training set; see the callers."""
    k_train, k_test_train = np.asarray(k_train, dtype=float), np.asarray(k_test_train, dtype=float)
    p = k_train.shape[0]
    f0_train = np.zeros(p) if f0_train is None else np.asarray(f0_train, dtype=float)
    f0_test = np.zeros(k_test_train.shape[0]) if f0_test is None else np.asarray(f0_test, dtype=float)
    e, u = np.linalg.eigh(k_train / p)
    r0 = u.T @ (f0_train - np.asarray(y_train, dtype=float))
    remaining, integrated = decay(np.maximum(e, 0.0))  # [T, P] each: residual factor, and (1 - factor) / e
    f_train = np.asarray(y_train, dtype=float) + (remaining * r0) @ u.T
    f_test = f0_test - (integrated * r0) @ (k_test_train @ u).T / p
    return f_train, f_test


def gd_decay(e, lr, steps):
    """Per-mode factors of full-batch gradient descent on a quadratic with curvatures ``e``, after ``t`` steps.

    .. math::

        \\text{remaining} = (1 - \\eta e)^t,\\qquad
        \\text{integrated} = \\eta \\sum_{s < t} (1 - \\eta e)^s = \\frac{1 - (1 - \\eta e)^t}{e},

    with the limit ``eta t`` of ``integrated`` at ``e = 0``. ``1 - (1 - eta e)^t`` is evaluated as
    ``-expm1(t log1p(-eta e))`` where ``eta e < 1``, so modes with ``eta e`` far below one keep their digits
    instead of cancelling against 1; where GD overshoots (``eta e >= 1``) it is computed directly. Exact algebra,
    no regime beyond ``e >= 0``.

    Args:
        e: curvatures ``[K]`` (eigenvalues of ``Theta / P`` for :func:`kernel_gd_predictions`), non-negative.
        lr: learning rate ``eta``.
        steps: step counts ``t``, ``[T]``.

    Returns:
        ``(remaining [T, K], integrated [T, K])``.
    """
    e = np.asarray(e, dtype=float)
    a = lr * e
    t = np.asarray(steps, dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        remaining = (1 - a) ** t
        decayed = np.where(a < 1, -np.expm1(t * np.log1p(-a)), 1 - remaining)
        integrated = np.where(e > 0, decayed / np.where(e > 0, e, 1.0), lr * t)
    return remaining, integrated


def kernel_gd_predictions(k_train, k_test_train, y_train, lr, steps, f0_train=None, f0_test=None):
    """Outputs of a linearised model (kernel ``Theta``) after full-batch gradient descent on the engine's loss.

    For :math:`L = \\frac{1}{2P}\\sum_i (f(x_i) - y_i)^2` and a model linear in its parameters with tangent kernel
    :math:`\\Theta` (the NTK of a linearised network, or :math:`\\Phi\\Phi^T` of a linear model), the training
    residual evolves as :math:`r_{t+1} = (I - \\eta\\Theta/P) r_t` and, with
    :math:`\\Theta/P = U \\mathrm{diag}(e) U^T`,

    .. math::

        f_t(X) = y + U (1 - \\eta e)^t U^T r_0,\\qquad
        f_t(X_*) = f_0(X_*) - \\Theta_{*X} U \\,\\mathrm{diag}\\Big(\\frac{1 - (1 - \\eta e)^t}{e}\\Big) U^T
        \\frac{r_0}{P},

    exactly, for any learning rate (a zero eigenvalue contributes :math:`\\eta t`). Lee et al. (2019), "Wide neural
    networks of any depth evolve as linear models under gradient descent", eq. (10)-(11) (their discrete-time
    form, with the loss normalised by ``P`` here); neural-tangents' ``predict.gradient_descent_mse``.

    Regime: exact for linear and linearised models; for a finite network in NTK parametrization, the network's
    outputs follow it up to ``O(1/sqrt(width))`` while ``lr < 2 P / lambda_max(Theta)`` (the lazy regime).

    Args:
        k_train: ``Theta(X, X)``, ``[P, P]``.
        k_test_train: ``Theta(X_*, X)``, ``[Q, P]``.
        y_train: targets ``[P]``.
        lr: learning rate.
        steps: steps at which to return outputs, ``[T]`` non-negative integers.
        f0_train, f0_test: outputs at initialisation (default 0, the centred or infinite-ensemble mean predictor).

    Returns:
        ``(f_train [T, P], f_test [T, Q])``.
    """
    return _kernel_dynamics(k_train, k_test_train, y_train, f0_train, f0_test, lambda e: gd_decay(e, lr, steps))


def kernel_flow_predictions(k_train, k_test_train, y_train, times, f0_train=None, f0_test=None):
    """Gradient-flow limit of :func:`kernel_gd_predictions` at ``times = lr * steps``.

    .. math::

        f_t(X) = y + U e^{-e t} U^T r_0,\\qquad
        f_t(X_*) = f_0(X_*) - \\Theta_{*X} U\\,\\mathrm{diag}\\Big(\\frac{1 - e^{-e t}}{e}\\Big) U^T \\frac{r_0}{P};

    as ``t -> inf`` the test outputs become kernel (ridgeless) regression with :math:`\\Theta`. Same conventions,
    reference and regime as :func:`kernel_gd_predictions`.
    """
    t = np.asarray(times, dtype=float)[:, None]

    def decay(e):
        remaining = np.exp(-e * t)
        with np.errstate(divide="ignore", invalid="ignore"):
            integrated = np.where(e > 0, -np.expm1(-e * t) / np.where(e > 0, e, 1.0), t)
        return remaining, integrated

    return _kernel_dynamics(k_train, k_test_train, y_train, f0_train, f0_test, decay)
