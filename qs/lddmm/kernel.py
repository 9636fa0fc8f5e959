"""The fluid kernel ``K = L^{-p}``, ``L = -alpha Lap - beta grad div + gamma Id``.

Applied in the Fourier domain on a periodic grid (the caller pads the working
grid; see :func:`padded_shape`). The symbols are those of the discrete
operators, as in PyCA's ``FluidKernelFFT`` which the original Quicksilver code
uses: for frequency index ``k_d`` of ``n_d`` along axis ``d`` with spacing
``h_d`` (mm),

* ``c_d = (2 - 2 cos(2 pi k_d / n_d)) / h_d^2``  (minus the 3-point second difference),
* ``s_d = sin(2 pi k_d / n_d) / h_d``             (the central first difference, over i),
* ``L_dd = alpha sum_e c_e + gamma + beta c_d``,  ``L_de = beta s_d s_e`` (d != e).

``K(omega) = L(omega)^{-p}`` is a symmetric positive definite 3x3 matrix per
frequency; its 6 distinct entries are precomputed once (float64, then stored
in the working dtype). ``v = K m`` is then 3 real FFTs, 9 multiply-adds per
frequency and 3 inverse FFTs.

Units (the decision): spacing enters in **mm**, so ``alpha`` and ``beta`` are
in mm^2 and the kernel is the same physical smoother at every working spacing
(anisotropic voxels included). With the defaults alpha = beta = 0.01 mm^2,
gamma = 0.001 and p = 2 the Green's function of ``L^2`` decays like
``exp(-r / l)``, ``l = sqrt(alpha / gamma) = 3.2 mm``; the measured
half-width of ``K``'s impulse response is 2.9, 3.4 and 3.9 mm at 1, 2 and 3 mm
spacing (tested). At 1 mm this is the original code's operator (it works in
voxel units at 1 mm); at 2 mm the velocity is still smooth over about two
voxels, which gives diffeomorphic, accurate registrations (det J > 0, tests
and ``benchmarks/lddmm.py``). Because the discrete ``K`` approximates one
continuous operator, the momentum is a density: the same physical ``m``
gives the same ``v`` on any grid, and the energy of :mod:`.gradient`
(normalised by the voxel count) is nearly resolution independent.

The original code applies ``L`` once (PyCA's default ``lpow = 1``; its
``CAvmMatching`` never sets it); ``power = 2`` (the default here, as this
project specifies) gives a smoother kernel but a much weaker penalty on
smooth velocities (``gamma^2`` instead of ``gamma`` at low frequencies), so
with sigma = 0.2 the regularity term is below 1% of the matching term at
convergence and the optimizer's smooth gradient flow does most of the
regularising. ``power`` is a parameter.

Several widths (``scales``, a multi-scale kernel as in Risser et al. 2011):
``K = (1/n) sum_s L_s^{-p}`` with ``L_s`` the operator of ``alpha s^2, beta
s^2, gamma``, i.e. the kernel scaled in width by ``s`` (``l = s sqrt(alpha /
gamma)``) and the same gain ``gamma^{-p}`` at zero frequency; the narrower
ones pass the fine detail a single wide kernel smooths away. ``scales = (1,)``
is the single kernel above; ``L^p`` is then the inverse of the summed symbol.
"""

from __future__ import annotations

import math

import torch

DEFAULTS = {"alpha": 0.01, "beta": 0.01, "gamma": 0.001, "power": 2}
#: the widths of a single kernel (:class:`FluidKernel`'s ``scales``)
SINGLE_SCALE = (1.0,)


def fft_friendly(n: int) -> int:
    """Smallest integer >= n whose prime factors are all in {2, 3, 5}."""
    n = max(int(n), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def padded_shape(shape, pad: int = 0) -> tuple[int, ...]:
    """FFT-friendly periodic grid holding ``shape`` plus ``pad`` voxels per axis.

    The field sits at the start of the padded grid; the extra voxels (at least
    ``pad``) lie between its last and first slice, where the periodic kernel
    wraps around. The last size is kept even (half-spectrum of ``rfftn``).
    """
    out = []
    for i, n in enumerate(shape):
        p = fft_friendly(int(n) + int(pad))
        if i == len(shape) - 1 and p % 2:
            p = fft_friendly(p + 1)
        out.append(p)
    return tuple(out)


def zero_pad(f: torch.Tensor, padded) -> torch.Tensor:
    """Field ``(C, I, J, K)`` on the image grid -> the periodic grid ``padded`` (:func:`padded_shape`), zero outside.

    The image sits at the start of the padded grid; a field already of that shape is returned as is.
    """
    padded = tuple(int(n) for n in padded)
    if tuple(f.shape[1:]) == padded:
        return f
    out = f.new_zeros((f.shape[0], *padded))
    out[:, : f.shape[1], : f.shape[2], : f.shape[3]] = f
    return out


def _axis_symbols(n: int, h: float, dim: int, axis: int):
    """(c, s) symbols along one axis, shaped to broadcast over the half spectrum."""
    last = axis == dim - 1
    k = torch.arange(n // 2 + 1 if last else n, dtype=torch.float64)
    theta = 2.0 * math.pi * k / n
    c = (2.0 - 2.0 * torch.cos(theta)) / (h * h)
    s = torch.sin(theta) / h
    shape = [1] * dim
    shape[axis] = -1
    return c.reshape(shape), s.reshape(shape)


class FluidKernel:
    """``K = L^{-power}`` on a periodic grid of ``shape`` with ``spacing`` (mm): the settings and the operators.

    ``scales``: the widths of a multi-scale kernel (module docstring), relative to ``sqrt(alpha / gamma)``.

    ``apply(m)`` returns ``K m`` (momentum to velocity, mm per unit time);
    ``apply_operator(v)`` returns ``L^power v``; ``lowpass(v, cutoff_mm)`` the
    kernel-shaped low-pass of a velocity. Fields are ``(3, I, J, K)`` (or
    ``(N, 3, I, J, K)``) on this periodic grid with component ``c`` along voxel
    axis ``c``. ``K`` is self-adjoint for the plain sum over voxels.
    """

    def __init__(self, shape, spacing, *, alpha=DEFAULTS["alpha"], beta=DEFAULTS["beta"],
                 gamma=DEFAULTS["gamma"], power=DEFAULTS["power"], scales=SINGLE_SCALE, dtype=torch.float32,
                 device="cpu"):
        shape = tuple(int(n) for n in shape)
        spacing = tuple(float(h) for h in spacing)
        if len(shape) != 3 or len(spacing) != 3:
            raise ValueError(f"FluidKernel: shape and spacing must have 3 entries, got {shape}, {spacing}")
        if min(spacing) <= 0:
            raise ValueError(f"FluidKernel: spacing must be positive, got {spacing}")
        if alpha < 0 or beta < 0 or gamma <= 0:
            raise ValueError(f"FluidKernel: need alpha >= 0, beta >= 0, gamma > 0; got {alpha}, {beta}, {gamma}")
        if int(power) != power or power < 1:
            raise ValueError(f"FluidKernel: power must be a positive integer, got {power}")
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"FluidKernel: scales must be positive widths, got {list(scales)}")
        self.scales = scales
        self.shape, self.spacing = shape, spacing
        self.alpha, self.beta, self.gamma, self.power = float(alpha), float(beta), float(gamma), int(power)
        self.dtype, self.device = dtype, torch.device(device)
        self._K = self._symbol(inverse=True)
        self._L = None  # built on first use
        self._lowpass = {}  # cutoff (mm) -> filter, built on first use

    @property
    def params(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "power": self.power,
                "scales": list(self.scales)}

    def _symbol(self, inverse: bool):
        """The 6 entries (00, 11, 22, 01, 02, 12) of ``L^{-p}`` (or ``L^p``), re/im interleaved.

        Computed in float64, a few slices of the first axis at a time (small
        transients), and stored as ``(6, I, J, 2*Kh)`` in the working dtype.
        """
        c, s = zip(*(_axis_symbols(n, h, 3, a) for a, (n, h) in enumerate(zip(self.shape, self.spacing))))
        n0, n1, nh = self.shape[0], self.shape[1], self.shape[2] // 2 + 1
        sym = torch.empty((6, n0, n1, 2 * nh), dtype=self.dtype, device=self.device)
        step = max(1, (1 << 20) // (n1 * nh))
        for i0 in range(0, n0, step):
            sl = slice(i0, min(i0 + step, n0))
            c0, s0 = c[0][sl], s[0][sl]
            if self.scales == SINGLE_SCALE:
                out = _power(self._operator(c0, s0, c, s, 1.0), self.power, inverse)
            else:  # the mean of the scales' kernels; the operator is its inverse
                parts = [_power(self._operator(c0, s0, c, s, w * w), self.power, True) for w in self.scales]
                out = [sum(p[i] for p in parts) / len(parts) for i in range(6)]
                out = out if inverse else _inverse(out)
            sym[:, sl] = torch.stack(out).repeat_interleave(2, dim=-1).to(dtype=self.dtype, device=self.device)
        return sym

    def _operator(self, c0, s0, c, s, scale2: float):
        """The 6 entries of ``L`` with ``alpha, beta`` times ``scale2`` (broadcast over a slab of frequencies)."""
        alpha, beta = self.alpha * scale2, self.beta * scale2
        lam = alpha * (c0 + c[1] + c[2]) + self.gamma
        a, b, cc = lam + beta * c0, lam + beta * c[1], lam + beta * c[2]
        d, e, f = beta * s0 * s[1], beta * s0 * s[2], beta * s[1] * s[2]
        return list(torch.broadcast_tensors(a, b, cc, d, e, f))

    def _check(self, x):
        if x.shape[-4:] != (3, *self.shape):
            raise ValueError(f"FluidKernel: expected a field (..., 3, {self.shape}), got {tuple(x.shape)}")

    def apply(self, m: torch.Tensor, *, multiply=None) -> torch.Tensor:
        """``K m`` (momentum to velocity).

        ``multiply``: the function ``(symbol, spectrum) -> spectrum`` that does
        the per-frequency product (default :func:`symbol_multiply`; the
        shooting passes its compiled copy of it).
        """
        self._check(m)
        return irfft3((multiply or symbol_multiply)(self._K, rfft3(m)), self.shape)

    def apply_operator(self, v: torch.Tensor) -> torch.Tensor:
        """``L^power v`` (velocity to momentum), the inverse of :meth:`apply`."""
        self._check(v)
        if self._L is None:
            self._L = self._symbol(inverse=False)
        return irfft3(symbol_multiply(self._L, rfft3(v)), self.shape)

    def lowpass(self, v: torch.Tensor, cutoff_mm: float) -> torch.Tensor:
        """``v`` filtered by ``1 / (1 + l(w) / l(w_c))``: mm in, mm out.

        ``l(w) = (alpha |w|^2 + gamma)^power`` is the kernel's isotropic part
        (the discrete Laplacian's symbol for ``|w|^2``; ``beta`` and ``scales`` play no part: the widest
        kernel's shape)
        and ``w_c = 2 pi / cutoff_mm``: the Tikhonov projection onto fields of
        the kernel's smoothness, which halves the spectrum at the wavelength
        ``cutoff_mm`` (:func:`qs.fields.lowpass_velocity`). The filter is
        computed in float64 once per cutoff and stored in the working dtype.
        """
        self._check(v)
        key = float(cutoff_mm)
        if key not in self._lowpass:
            lap = sum(_axis_symbols(n, h, 3, a)[0] for a, (n, h) in enumerate(zip(self.shape, self.spacing)))
            wc = 2.0 * math.pi / key
            symbol = (self.alpha * lap + self.gamma) ** self.power
            filt = 1.0 / (1.0 + symbol / (self.alpha * wc * wc + self.gamma) ** self.power)
            self._lowpass[key] = filt.to(self.dtype).to(self.device)
        return irfft3(rfft3(v) * self._lowpass[key], self.shape)


# Above this many voxels per component, transforming the components one at a
# time is faster (measured with MKL on 2 cores: 1.6x at 160x192x160, slower at 80x96x80).
PER_COMPONENT_FFT_VOXELS = 1 << 21


def rfft3(x: torch.Tensor) -> torch.Tensor:
    """Real FFT over the last three axes of ``(..., 3, I, J, K)`` (half spectrum on the last axis)."""
    if x.shape[-3:].numel() < PER_COMPONENT_FFT_VOXELS or x.requires_grad or x.dim() != 4:
        return torch.fft.rfftn(x, dim=(-3, -2, -1))
    out = torch.empty((*x.shape[:-1], x.shape[-1] // 2 + 1), dtype=torch.complex64 if x.dtype == torch.float32
                      else torch.complex128, device=x.device)
    for c in range(x.shape[0]):
        torch.fft.rfftn(x[c], out=out[c])
    return out


def irfft3(X: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`rfft3` for real fields of spatial ``shape``."""
    shape = tuple(shape)
    n = shape[0] * shape[1] * shape[2]
    if n < PER_COMPONENT_FFT_VOXELS or X.requires_grad or X.dim() != 4:
        return torch.fft.irfftn(X, s=shape, dim=(-3, -2, -1))
    out = torch.empty((X.shape[0], *shape), dtype=X.real.dtype, device=X.device)
    for c in range(X.shape[0]):
        torch.fft.irfftn(X[c], s=shape, out=out[c])
    return out


_ROWS = ((0, 3, 4), (3, 1, 5), (4, 5, 2))


def symbol_multiply(sym: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``Y_i = sum_j S_ij X_j`` per frequency.

    ``sym`` is ``(6, I, J, 2*Kh)``: the entries (00, 11, 22, 01, 02, 12) of
    the symbol, each value repeated for the real and imaginary part, so that
    the product is plain real element-wise work on the interleaved spectrum
    ``X`` (``(3, I, J, Kh)`` complex). Functional (autograd and
    ``torch.compile`` friendly).
    """
    shp = X.shape
    Xr = torch.view_as_real(X).reshape(*shp[:-1], 2 * shp[-1])
    X0, X1, X2 = Xr.unbind(-4)
    rows = [sym[r[0]] * X0 + sym[r[1]] * X1 + sym[r[2]] * X2 for r in _ROWS]
    return torch.view_as_complex(torch.stack(rows, dim=-4).reshape(*shp, 2))


def _inverse(m):
    """Inverse of the symmetric 3x3 matrices ``[[a d e] [d b f] [e f cc]]`` (entries 00, 11, 22, 01, 02, 12) by
    their adjugate."""
    a, b, cc, d, e, f = m
    A00, A11, A22 = b * cc - f * f, a * cc - e * e, a * b - d * d
    A01, A02, A12 = e * f - d * cc, d * f - b * e, d * e - a * f
    det = a * A00 + d * A01 + e * A02
    return [A00 / det, A11 / det, A22 / det, A01 / det, A02 / det, A12 / det]


def _power(m, power: int, inverse: bool):
    """``m^power`` or ``m^-power`` of the symmetric matrices ``m`` (6 entries)."""
    base = _inverse(m) if inverse else m
    out = base
    for _ in range(power - 1):
        out = _symmul(out, base)
    return out


def _symmul(p, q):
    """Product of two symmetric 3x3 matrices that commute (powers of one matrix)."""
    p00, p11, p22, p01, p02, p12 = p
    q00, q11, q22, q01, q02, q12 = q
    return [
        p00 * q00 + p01 * q01 + p02 * q02,
        p01 * q01 + p11 * q11 + p12 * q12,
        p02 * q02 + p12 * q12 + p22 * q22,
        p00 * q01 + p01 * q11 + p02 * q12,
        p00 * q02 + p01 * q12 + p02 * q22,
        p01 * q02 + p11 * q12 + p12 * q22,
    ]
