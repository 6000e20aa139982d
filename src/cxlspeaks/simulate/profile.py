"""Excitation of a reflection along the wavelength: the crystal's shape transform, mosaicity and the spectrum.

Shape transform projected on the Ewald-sphere normal (Warren, "X-ray Diffraction", 1969, ch. 3; Kirian et al.
2010, Opt. Express 18:5713, for serial femtosecond crystallography; White et al. 2016, J. Appl. Cryst. 49:680 for
CrystFEL's partiality models). A crystal of N_a x N_b x N_c cells has the lattice transform
L(q) = prod_i sin^2(pi N_i x_i) / sin^2(pi x_i), x_i = (q - g) . a_i, whose integral over a reciprocal cell is
N_cells / V_cell = V_xtal / V_cell^2. The Ewald sphere at wavelength lambda passes at the signed distance
s = |g + z/lambda| - 1/lambda from g (s > 0: g outside the sphere; s grows with lambda); over the width of the
lobe the sphere is flat, so what the sphere collects at that wavelength is the *projection* of L on its normal
n (the unit vector along k_out = g + z/lambda): the integral of L over the plane at distance s. By the projection
(Fourier-slice) theorem that projection is the 1-D Fourier transform of the crystal's common-volume function
A(t n) = volume shared by the crystal and its copy shifted by t n (Patterson function of the shape). For a
parallelepiped with edges N_i a_i, A(t n) / V = prod_i (1 - c_i |t|)_+ with c_i = |n . a_i*| / N_i, so the
normalised profile (per unit s, 1/m^-1 = m, integral 1) is

    p(s) = 2 int_0^T Q(t) cos(2 pi s t) dt,   Q(t) = prod_i (1 - c_i t),   T = 1 / max c_i,

a cubic polynomial's cosine transform, evaluated here in closed form (series for small 2 pi s T). For a cube
aligned with n it is the familiar L sinc^2(pi L s); for every orientation its tails average to
e_1 / (2 pi^2 s^2) with e_1 = sum c_i (the projected area over the volume: Porod's law). The crystal here is the
one CrystFEL's pattern_sim draws: edges along a, b, c, each of length ``edge_m`` (N_i = edge / |a_i|,
continuous), so a cube for orthogonal cells. Beyond the second fringe (2 pi |s| T = 4 pi) the oscillating part
of the tails (period 1 / T in s) is faded out over one octave and its mean kept, so that a quadrature over the
wavelength needs no node per fringe; against a brute-force sum of the lattice transform, with every fringe,
photons and spot centres of partial reflections still agree to 1-3 % and 0.1 px (tests/test_partials.py).

Mosaicity (isotropic Gaussian spread of orientations, standard deviation eta per axis) moves g by eta (w x g),
whose component along n has standard deviation eta |g| cos(theta) (n . g-hat = sin theta); the profile is
convolved with that Gaussian, i.e. Q(t) is multiplied by exp(-2 pi^2 sigma^2 t^2) and transformed by
Gauss-Legendre quadrature (its tail by the endpoint expansion -f'(0)/w^2 + f'''(0)/w^4).

Spectrum: S(eps) per unit relative wavelength eps = lambda / lambda_0 - 1, normalised to 1: a tophat of full
width b, a Gaussian of FWHM b, or a measured table (piecewise linear). Integration over eps per reflection
(:func:`wavelength_nodes`): within 10 core widths w = e_1 / 2 of the core, 64 Gauss-Legendre nodes in
u = atan(s / w) (the core and its fringes); on either side 16 nodes in eps (the spectrum against the smooth
tails); a reflection whose band stays outside that window gets 16 nodes in eps over the band. The wavelength of
a node placed in s follows exactly: 1/lambda = (|g|^2 - s^2) / (2 (s - g_z)). Converged to < 1e-4 (600 nodes
change photons by less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Dimensionless 2 pi s T above which the fringes of the tails are faded into their mean (one octave).
FRINGE_FADE_START = 4 * math.pi
#: Gauss-Legendre nodes along the wavelength per reflection: in the core window, and on either side of it.
DEFAULT_NODES = 64
SIDE_NODES = 16
#: Half-width of the window (in core widths, the profile's e_1 / 2) in which the core nodes are placed; the
#: fringes have faded into their mean beyond it.
CORE_WIDTHS = 10.0
_SERIES_X = 1.5
_SERIES_TERMS = 14
_MOSAIC_NODES = 64


@dataclass(frozen=True)
class ShapeCoefficients:
    """Elementary symmetric sums of the c_i (1/m), arrays of one shape: e1 = sum c_i, e2 = sum c_i c_j,
    e3 = prod c_i, and T = 1 / max c_i (m), the extent of the common-volume function along n."""

    e1: np.ndarray
    e2: np.ndarray
    e3: np.ndarray
    t_max: np.ndarray
    c: np.ndarray | None = None          # (..., 3) the c_i themselves
    signed: np.ndarray | None = None     # (..., 3) n . a_i* |a_i| / edge (c_i with their sign)
    axis_scale: np.ndarray | None = None  # (3,) |a_i| / edge (1/cells along each axis)


def shape_coefficients(normals: np.ndarray, astar_bstar_cstar: np.ndarray, edge_m: float) -> ShapeCoefficients:
    """c_i = |n . a_i*| |a_i| / edge for unit normals ``normals`` (..., 3) and lab reciprocal axes (3 x 3,
    columns a*, b*, c*, 1/m): a crystal with edges of length ``edge_m`` along a, b, c."""
    astar = np.asarray(astar_bstar_cstar, dtype=float)
    real_lengths = np.linalg.norm(np.linalg.inv(astar).T, axis=0)                   # |a|, |b|, |c| (m)
    signed = (normals @ astar) * (real_lengths / edge_m)                           # (..., 3), 1/m
    c = np.abs(signed)
    c0, c1, c2 = c[..., 0], c[..., 1], c[..., 2]
    return ShapeCoefficients(c0 + c1 + c2, c0 * c1 + c0 * c2 + c1 * c2, c0 * c1 * c2,
                             1.0 / np.maximum(np.maximum(c0, c1), c2), c, signed, real_lengths / edge_m)


def _fade(x: np.ndarray) -> np.ndarray:
    """Smooth step from 1 (x <= FRINGE_FADE_START) to 0 (x >= 2 FRINGE_FADE_START)."""
    u = np.clip(np.abs(x) / FRINGE_FADE_START - 1.0, 0.0, 1.0)
    return 1.0 - u * u * (3.0 - 2.0 * u)


def profile_density(s: np.ndarray, shape: ShapeCoefficients, sigma_mosaic: np.ndarray | float = 0.0) -> np.ndarray:
    """Normalised excitation profile p(s) (m; integral over s in 1/m is 1) at excitation errors ``s`` (1/m).

    ``shape`` and ``sigma_mosaic`` (1/m, standard deviation of the mosaic Gaussian along n) broadcast with s.
    """
    s = np.asarray(s, dtype=float)
    t_max = np.broadcast_to(shape.t_max, s.shape)
    beta = [np.ones_like(s), -shape.e1 * t_max, shape.e2 * t_max ** 2, -shape.e3 * t_max ** 3]
    beta = [np.broadcast_to(b, s.shape) for b in beta]
    x = 2 * np.pi * s * t_max
    sigma = np.broadcast_to(np.asarray(sigma_mosaic, dtype=float), s.shape)
    if np.any(sigma > 0):
        return 2 * t_max * _mosaic_transform(x, beta, 2 * np.pi ** 2 * (sigma * t_max) ** 2)
    return 2 * t_max * _cubic_cosine_transform(x, beta)


def mosaic_lean(s: np.ndarray, shape: ShapeCoefficients, sigma_mosaic: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Mean displacement (1/m) along n_perp (the unit vector in the plane normal to g nearest n) of the mosaic
    blocks that the sphere excites at excitation error s: E[u | s] = (sigma^2 / cos theta) p'(s) / p(s) by
    Stein's lemma (u ~ N(0, (sigma / cos theta)^2) moves s by u cos theta); times sin theta it leans the spot
    along t = (sin theta n - g_hat) / cos theta, so that blocks turned into the sphere carry the partials.
    Returned here: sigma^2 p'(s) / p(s); p' from the sine transform of tau beta(tau) exp(-alpha tau^2)."""
    s = np.asarray(s, dtype=float)
    t_max = np.broadcast_to(shape.t_max, s.shape)
    sigma = np.broadcast_to(np.asarray(sigma_mosaic, dtype=float), s.shape)
    coeffs = [np.zeros_like(s), np.ones_like(s), -shape.e1 * t_max, shape.e2 * t_max ** 2, -shape.e3 * t_max ** 3]
    coeffs = [np.broadcast_to(cm, s.shape) for cm in coeffs]
    x = 2 * np.pi * s * t_max
    sine = _mosaic_transform(x, coeffs, 2 * np.pi ** 2 * (sigma * t_max) ** 2, sine=True)
    derivative = -4 * np.pi * t_max * t_max * sine                   # dp/ds
    with np.errstate(divide="ignore", invalid="ignore"):
        lean = sigma * sigma * derivative / profile
    return np.where(np.isfinite(lean), lean, 0.0)


def _cubic_cosine_transform(x: np.ndarray, beta: list[np.ndarray]) -> np.ndarray:
    """int_0^1 beta(tau) cos(x tau) d tau for the cubic beta with beta(1) = 0 (closed form; series near 0;
    beyond the fade, where no fringe is left, the smooth part alone)."""
    b0, b1, b2, b3 = (np.broadcast_to(b, x.shape) for b in beta)
    ax = np.maximum(np.abs(x), _SERIES_X)
    x2 = ax * ax
    out = -b1 / x2 + 6 * b3 / (x2 * x2)                          # smooth part (even in x)
    ringing = np.abs(x) < 2 * FRINGE_FADE_START
    big = ringing & (np.abs(x) >= _SERIES_X)
    if big.any():
        xb = x[big]
        c1, c2, c3 = b1[big], b2[big], b3[big]
        cos_x, sin_x = np.cos(xb), np.sin(xb)
        xb2 = xb * xb
        fringes = ((c1 + 2 * c2 + 3 * c3) * cos_x / xb2 - (2 * c2 + 6 * c3) * sin_x / (xb2 * xb)
                   - 6 * c3 * cos_x / (xb2 * xb2))
        out[big] += _fade(xb) * fringes
    small = np.abs(x) < _SERIES_X
    if small.any():
        xs = x[small]
        total = np.zeros_like(xs)
        term = np.ones_like(xs)                                   # (-1)^j x^(2j) / (2j)!
        coeffs = [b0[small], b1[small], b2[small], b3[small]]
        for j in range(_SERIES_TERMS):
            total += term * sum(coeffs[m] / (m + 2 * j + 1) for m in range(4))
            term = -term * xs * xs / ((2 * j + 1) * (2 * j + 2))
        out[small] = total
    return out


def _mosaic_transform(x: np.ndarray, coeffs: list[np.ndarray], alpha: np.ndarray, sine: bool = False) -> np.ndarray:
    """int_0^1 c(tau) exp(-alpha tau^2) cos(x tau) (or sin) d tau for the polynomial c (coefficients ``coeffs``)
    by Gauss-Legendre; far tails by the endpoint expansion (cosine: -f'(0)/x^2 + f'''(0)/x^4; sine:
    f(0)/x - f''(0)/x^3, f = c exp(-alpha tau^2)), used beyond 6 mosaic sigma and x tau_max = 20."""
    alpha = np.broadcast_to(alpha, x.shape)
    tau_max = np.minimum(1.0, np.sqrt(40.0 / np.maximum(alpha, 1e-300)))
    c = [np.broadcast_to(cm, x.shape) for cm in coeffs] + [np.zeros(x.shape)] * (4 - len(coeffs))
    xs = np.where(np.abs(x) < 1.0, 1.0, x)                 # (the expansion is used only for |x| > 10)
    if sine:
        out = c[0] / xs - (2 * c[2] - 2 * alpha * c[0]) / xs ** 3
    else:
        out = -c[1] / xs ** 2 + (6 * c[3] - 6 * alpha * c[1]) / xs ** 4
    # the expansion holds once the Gaussian core is negligible (|s| > 6 sigma, i.e. x^2 > 72 alpha) and the
    # quadrature tires (x tau_max > 20); blended over z = 1 .. 1.5 of the smaller of those two ratios
    z = np.minimum(np.abs(x) * tau_max / 20.0, np.abs(x) / np.sqrt(72.0 * np.maximum(alpha, 1e-300)))
    blend = np.clip((z - 1.0) / 0.5, 0.0, 1.0)
    blend = blend * blend * (3 - 2 * blend)
    near = blend < 1.0                                     # Gauss-Legendre only where it is needed
    if near.any():
        nodes, weights = np.polynomial.legendre.leggauss(_MOSAIC_NODES)
        tm = tau_max[near]
        tau = 0.5 * (nodes + 1.0)[:, None] * tm[None, :]                              # (M, n)
        poly = np.zeros_like(tau)
        for cm in reversed(c[:len(coeffs)]):
            poly = poly * tau + cm[near][None, :]
        trig = np.sin if sine else np.cos
        f = poly * np.exp(-alpha[near][None, :] * tau * tau) * trig(x[near][None, :] * tau)
        quad = (0.5 * weights[:, None] * f).sum(axis=0) * tm
        out = np.array(out, dtype=float)
        out[near] = (1 - blend[near]) * quad + blend[near] * out[near]
    return out


def _quadratic_sine_transform(x: np.ndarray, rho: list[np.ndarray]) -> np.ndarray:
    """int_0^1 rho(tau) sin(x tau) d tau for a quadratic rho (closed form, series near 0, fringes faded)."""
    r0, r1, r2 = (np.broadcast_to(r, x.shape) for r in rho)
    xs_safe = np.where(np.abs(x) < _SERIES_X, _SERIES_X, x)
    out = r0 / xs_safe - 2 * r2 / xs_safe ** 3                   # smooth part (odd in x)
    big = (np.abs(x) < 2 * FRINGE_FADE_START) & (np.abs(x) >= _SERIES_X)
    if big.any():
        xb = x[big]
        c0, c1, c2 = r0[big], r1[big], r2[big]
        cos_x, sin_x = np.cos(xb), np.sin(xb)
        fringes = -(c0 + c1 + c2) * cos_x / xb + (c1 + 2 * c2) * sin_x / xb ** 2 + 2 * c2 * cos_x / xb ** 3
        out[big] += _fade(xb) * fringes
    small = np.abs(x) < _SERIES_X
    if small.any():
        xs = x[small]
        total = np.zeros_like(xs)
        term = xs.copy()                                          # (-1)^j x^(2j+1) / (2j+1)!
        coeffs = [r0[small], r1[small], r2[small]]
        for j in range(_SERIES_TERMS):
            total += term * sum(coeffs[m] / (m + 2 * j + 2) for m in range(3))
            term = -term * xs * xs / ((2 * j + 2) * (2 * j + 3))
        out[small] = total
    return out


def slice_offset(s: np.ndarray, normals: np.ndarray, astar_bstar_cstar: np.ndarray, shape: ShapeCoefficients,
                 profile: np.ndarray, sigma_mosaic: np.ndarray | float = 0.0) -> np.ndarray:
    """Centroid of the lattice transform on the plane at distance s from g, relative to the foot point (1/m,
    (..., 3), perpendicular to n).

    The first moment of the slice is -(i / 2 pi) int dt exp(-2 pi i s t) grad_perp A(t n) (Fourier transform of
    q_perp L); for the parallelepiped grad A(t n) / V = -sign(t) sum_i d_i prod_(j != i) (1 - c_j |t|) with
    d_i = sign(n . a_i*) a_i* |a_i| / edge, so the offset is sum_i (d_i - c_i n) J_i / (pi p(s)),
    J_i = int_0^T prod_(j != i) (1 - c_j t) sin(2 pi s t) dt. Zero for a cube face-on; in the far tails it tends
    to s sum_i (d_i - c_i n) / e_1: the truncation rods of the faces cross the sphere beside the foot point.
    ``shape`` from :func:`shape_coefficients` and ``profile`` from :func:`profile_density`, for the same normals.
    """
    astar = np.asarray(astar_bstar_cstar, dtype=float)
    c, t_max = shape.c, shape.t_max
    x = 2 * np.pi * s * t_max
    sigma = np.broadcast_to(np.asarray(sigma_mosaic, dtype=float), s.shape)
    alpha = 2 * np.pi ** 2 * (sigma * t_max) ** 2
    mosaic = bool(np.any(sigma > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = t_max / (np.pi * profile)
    weights = np.empty(s.shape + (3,))                            # J_i / (pi p), per axis
    if not mosaic and np.all(np.abs(x) >= 2 * FRINGE_FADE_START):   # all faded: J_i = T (1/x - 2 rho_2 / x^3)
        inv_x = 1.0 / x
        inv_x3 = inv_x ** 3
        tt = t_max * t_max
        for i in range(3):
            j, k = [m for m in range(3) if m != i]
            weights[..., i] = (inv_x - 2 * c[..., j] * c[..., k] * tt * inv_x3) * scale
        offset = ((weights * np.sign(shape.signed) * shape.axis_scale) @ astar.T
                  - (weights * c).sum(axis=-1)[..., None] * normals)
        return np.where(np.isfinite(offset), offset, 0.0)
    for i in range(3):
        j, k = [m for m in range(3) if m != i]
        rho = [np.ones_like(s), -(c[..., j] + c[..., k]) * t_max, c[..., j] * c[..., k] * t_max ** 2]
        if mosaic:
            transform = _mosaic_transform(x, rho, alpha, sine=True)
        else:
            transform = _quadratic_sine_transform(x, rho)
        weights[..., i] = transform * scale
    # sum_i w_i (d_i - c_i n) = (w sign(n . a_i*) |a_i| / edge) A*^T - (sum_i w_i c_i) n
    offset = ((weights * np.sign(shape.signed) * shape.axis_scale) @ astar.T
              - (weights * c).sum(axis=-1)[..., None] * normals)
    return np.where(np.isfinite(offset), offset, 0.0)


def core_width(shape: ShapeCoefficients, sigma_mosaic: np.ndarray | float = 0.0) -> np.ndarray:
    """Width scale of the profile's core (1/m): sqrt((e1 / 2)^2 + (2 sigma)^2), used to place nodes."""
    return np.sqrt((0.5 * shape.e1) ** 2 + (2.0 * np.asarray(sigma_mosaic)) ** 2)


# ---------------------------------------------------------------------- wavelength nodes
def excitation_error(g: np.ndarray, k: np.ndarray) -> np.ndarray:
    """s = |g + k z| - k (1/m): distance of g (N, 3) from the Ewald sphere of radius k = 1/lambda (broadcast)."""
    gx2 = g[..., 0] ** 2 + g[..., 1] ** 2
    gz = g[..., 2]
    return np.sqrt(gx2 + (gz + k) ** 2) - k


def wavenumber_at(s: np.ndarray, g2: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """The k = 1/lambda (1/m) whose Ewald sphere passes at distance s from g: (|g|^2 - s^2) / (2 (s - g_z))."""
    return (g2 - s * s) / (2 * (s - gz))


def eps_of_s(s: np.ndarray, g2: np.ndarray, gz: np.ndarray, lam0_m: float) -> np.ndarray:
    """Relative wavelength at which the Ewald sphere passes at distance s from g (inverse of s(eps))."""
    return 1.0 / (wavenumber_at(s, g2, gz) * lam0_m) - 1.0


def wavelength_nodes(g: np.ndarray, lam0_m: float, spectrum, width: np.ndarray,
                     n_core: int = DEFAULT_NODES, n_side: int = SIDE_NODES, core_widths: float = CORE_WIDTHS,
                     s_cell: np.ndarray | None = None):
    """Quadrature nodes over the support of ``spectrum`` (:class:`~cxlspeaks.simulate.beam.Spectrum`) for each
    reflection (rows of g, (N, 3), 1/m).

    The support is cut where the excitation error is +-``core_widths`` core widths: inside, ``n_core``
    Gauss-Legendre nodes in u = atan(s / width) resolve the profile's core and near tails; on either side
    ``n_side`` Gauss-Legendre nodes in eps resolve the spectrum against the smooth far tails. With
    ``n_core = 0`` one piece of ``n_side`` nodes spans the whole support (a reflection excited by its far tails
    alone): in eps, or for a tophat in 1/s, in which the tail's ds / s^2 is flat. Returns (s, k, eps, weight_s,
    deps_ds), each (N, K): excitation error (1/m), wavenumber (1/m), relative wavelength, the quadrature weight in s (1/m) and d eps / ds (m): weight_s * deps_ds is the
    weight in eps, and sum_k weight_s f(s_k) ~ int f ds over the support. ``s_cell`` (N,): the support is cut
    to |s| <= s_cell (the reflection's own reciprocal cell).
    """
    g2 = np.einsum("ij,ij->i", g, g)[:, None]
    gz = g[:, 2][:, None]
    s_lo = excitation_error(g, 1.0 / (lam0_m * (1 + spectrum.lo)))[:, None]
    s_hi = excitation_error(g, 1.0 / (lam0_m * (1 + spectrum.hi)))[:, None]
    lo = np.full((len(g), 1), spectrum.lo)
    hi = np.full((len(g), 1), spectrum.hi)
    if s_cell is not None:
        cell = s_cell[:, None]
        lo = np.where(s_lo < -cell, eps_of_s(-cell, g2, gz, lam0_m), lo)
        hi = np.where(s_hi > cell, eps_of_s(cell, g2, gz, lam0_m), hi)
        s_lo, s_hi = np.maximum(s_lo, -cell), np.minimum(s_hi, cell)
    if n_core == 0:
        if spectrum.kind == "tophat" and np.all(s_lo * s_hi > 0):
            pieces = [_inverse_s_piece(g2, gz, lam0_m, s_lo, s_hi, n_side)]
        else:
            pieces = [_eps_piece(g, lam0_m, lo, hi, n_side)]
    else:
        w = width[:, None]
        s_a = np.clip(-core_widths * w, s_lo, s_hi)
        s_b = np.clip(core_widths * w, s_lo, s_hi)
        eps_a = np.where(s_a == s_lo, lo, eps_of_s(s_a, g2, gz, lam0_m))
        eps_b = np.where(s_b == s_hi, hi, eps_of_s(s_b, g2, gz, lam0_m))
        x, wq = np.polynomial.legendre.leggauss(n_core)
        u_a, u_b = np.arctan(s_a / w), np.arctan(s_b / w)
        half = 0.5 * (u_b - u_a)
        u = 0.5 * (u_a + u_b) + half * x[None, :]
        s = w * np.tan(u)
        k = wavenumber_at(s, g2, gz)
        sg = s - gz
        deps_ds = (sg * sg + g2 - gz * gz) / (2 * sg * sg) / (k * k * lam0_m)
        core = (s, k, 1.0 / (k * lam0_m) - 1.0, half * wq[None, :] * w / np.cos(u) ** 2, deps_ds)
        pieces = [_eps_piece(g, lam0_m, lo, eps_a, n_side), core, _eps_piece(g, lam0_m, eps_b, hi, n_side)]
    return tuple(np.concatenate([p[i] for p in pieces], axis=1) for i in range(5))


def _inverse_s_piece(g2, gz, lam0_m: float, s_a: np.ndarray, s_b: np.ndarray, n: int):
    """Gauss-Legendre nodes in v = 1/s between s_a and s_b (same sign), as (s, k, eps, weight_s, deps_ds)."""
    x, wq = np.polynomial.legendre.leggauss(n)
    v_a, v_b = 1.0 / s_a, 1.0 / s_b
    half = 0.5 * (v_b - v_a)
    v = 0.5 * (v_a + v_b) + half * x[None, :]
    s = 1.0 / v
    k = wavenumber_at(s, g2, gz)
    sg = s - gz
    deps_ds = (sg * sg + g2 - gz * gz) / (2 * sg * sg) / (k * k * lam0_m)
    return s, k, 1.0 / (k * lam0_m) - 1.0, np.abs(half) * wq[None, :] * s * s, deps_ds


def _eps_piece(g: np.ndarray, lam0_m: float, eps_a: np.ndarray, eps_b: np.ndarray, n: int):
    """Gauss-Legendre nodes in eps on [eps_a, eps_b] ((N, 1) each), as (s, k, eps, weight_s, deps_ds)."""
    x, wq = np.polynomial.legendre.leggauss(n)
    half = 0.5 * (eps_b - eps_a)
    eps = 0.5 * (eps_a + eps_b) + half * x[None, :]
    k = 1.0 / (lam0_m * (1 + eps))
    s = excitation_error(g[:, None, :], k)
    norm = np.sqrt(g[:, None, 0] ** 2 + g[:, None, 1] ** 2 + (g[:, None, 2] + k) ** 2)
    ds_deps = (1.0 - (g[:, None, 2] + k) / norm) / (lam0_m * (1 + eps) ** 2)
    ds_deps = np.maximum(ds_deps, 1e-300)
    return s, k, eps, half * wq[None, :] * ds_deps, 1.0 / ds_deps
