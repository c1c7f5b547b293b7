"""Finite-strain crystal plasticity: phenomenological power law, implicit update, exact tangent.

Conventions (see docs/constitutive.md, docs/conventions.md):

* Total Lagrangian, ``F = Fe Fp``. The intermediate configuration is
  lab-aligned: ``Fp = I`` at the start, and the crystal in it keeps its initial
  orientation ``g0`` (passive, lab -> crystal, as in :mod:`solver.rotations`).
  The kernel evaluates everything in crystal-frame components of that
  configuration (``X_c = g0 X g0^T``), which is the same as rotating stiffness
  and Schmid tensors by ``g0`` but cheaper; results come back in the lab frame.
* Elasticity: ``S = C : Ee`` with ``Ee = (Fe^T Fe - I)/2`` and cubic ``C``.
* Resolved shear stress from the Mandel stress ``Mp = Ce S`` (``Ce = Fe^T Fe``),
  ``tau_a = Mp : (m_a (x) n_a)``, as DAMASK does.
* Flow: ``gdot_a = gdot0 |tau_a / xi_a|^n sgn(tau_a)``; ``Lp = sum_a gdot_a m_a (x) n_a``.
* Hardening, as DAMASK's phenopowerlaw code:
  ``xidot_a = h0 |1 - xi_a/xi_inf|^a sgn(1 - xi_a/xi_inf) sum_b h_ab |gdot_b|``
  (the saturation factor belongs to the hardened system ``a``).
* Backward Euler in ``Fp`` and ``xi`` over a step ``dt``, as DAMASK:
  ``Fp_new^-1 = Fp_n^-1 (I - sum_a dgamma_a m_a (x) n_a)`` with
  ``dgamma_a = dt gdot_a(tau_new, xi_new)`` and
  ``xi_new = xi_n + h0 f(xi_new) sum_b h_ab |dgamma_b|``. The stored ``Fp`` is
  rescaled to ``det Fp = 1`` (the returned stress uses the unscaled one, as DAMASK).
* Stress out: first Piola-Kirchhoff ``P = Fe S Fp^-T`` (``P_iJ``, lab frame);
  tangent ``dP_iJ / dF_kL`` as ``(n, 3, 3, 3, 3)`` in that index order.

Algorithm (docs/constitutive.md): per point, damped Newton on the slip increments
and slip resistances; the resistance block is diagonal and is eliminated, so an
iteration solves one ``ns x ns`` system. The flow rule is written in the rate
form for idle systems and in the stress form for active ones, which keeps it
nearly linear for ``n = 20``. Large trial stresses are reached by continuation
in the trial stretch with an Euler predictor (only the final solve is used, so
the update stays one backward-Euler step). A point that does not converge is
flagged (``converged = False``) and returns the elastic-trial stress, never NaN.
The tangent follows from the implicit function theorem at the converged state,
including the hardening coupling, so it is exact for the discrete update.
The kernel is compiled with numba (cached on disk, ``cache=True``).

References:
    F. Roters et al., DAMASK, Comput. Mater. Sci. 158 (2019) 420-478.
    S.R. Kalidindi, C.A. Bronkhorst, L. Anand, J. Mech. Phys. Solids 40 (1992) 537-569.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .errors import ConfigError
from .lattice import slip_systems
from .materials import Material

STATE_KEYS = ("plastic_deformation", "slip_resistance", "accumulated_slip", "slip")


@dataclass
class ConstitutiveResult:
    """Output of :meth:`CrystalPlasticity.update`.

    Attributes:
        stress: ``(n, 3, 3)`` first Piola-Kirchhoff stress ``P_iJ``, Pa.
        tangent: ``(n, 3, 3, 3, 3)`` ``dP_iJ/dF_kL``, Pa, or None.
        state: the state at the end of the step (new arrays).
        converged: ``(n,)`` bool, False where the local Newton failed.
        iterations: the largest number of local Newton iterations of a point
            (summed over its continuation steps).
    """

    stress: np.ndarray
    tangent: np.ndarray | None
    state: dict[str, np.ndarray]
    converged: np.ndarray
    iterations: int


class CrystalPlasticity:
    """Vectorised crystal-plasticity kernel over all quadrature points.

    Args:
        material: parameters (:class:`solver.materials.Material`).
        orientations: ``(n, 3, 3)`` initial passive orientation matrices ``g0``
            (lab -> crystal), one per point.
        tolerance: local Newton tolerance on the scaled residuals (the flow
            residual is ``n`` times a relative stress error for active systems).
        max_iterations: Newton iterations per local solve (a continuation step
            counts as one solve).
        warm_start: start each point from the last converged solution (same
            start state) or from the last slip increments scaled by ``dt``
            (new state); it only changes where Newton starts, not the answer
            (beyond the tolerance). False gives results that do not depend on
            earlier calls at all.

    Attributes:
        last_iterations: ``(n,)`` Newton iterations per point in the last call.
    """

    def __init__(self, material: Material, orientations: np.ndarray, *,
                 tolerance: float = 1e-10, max_iterations: int = 12, warm_start: bool = True):
        if not isinstance(material, Material):
            raise TypeError(f"material must be a solver.materials.Material, got {type(material).__name__}")
        g0 = np.array(orientations, dtype=float)
        if g0.shape == (3, 3):
            g0 = g0[None]
        if g0.ndim != 3 or g0.shape[1:] != (3, 3):
            raise ConfigError(f"orientations: expected shape (n, 3, 3), got {g0.shape}")
        if not np.all(np.isfinite(g0)):
            raise ConfigError("orientations: contain NaN or infinite values")
        err = np.abs(g0 @ np.swapaxes(g0, 1, 2) - np.eye(3)).max(axis=(1, 2), initial=0.0)
        bad = (err > 1e-6) | (_det3(g0) < 0)
        if np.any(bad):
            raise ConfigError(f"orientations: {int(bad.sum())} matrices are not proper rotations "
                              f"(first at index {int(np.argmax(bad))})")
        g0.setflags(write=False)
        self.material = material
        self.orientations = g0
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        self.warm_start = bool(warm_start)
        m, n = slip_systems(material.lattice)
        self._schmid = np.ascontiguousarray((m[:, :, None] * n[:, None, :]).reshape(-1, 9))
        self._h = np.ascontiguousarray(material.interaction_matrix())
        self._xi0 = material.per_system(material.slip_resistance_initial)
        self._xi_inf = material.per_system(material.slip_resistance_saturation)
        n_exp = material.rate_exponent
        n_int = int(n_exp) if n_exp == int(n_exp) and n_exp <= 64 else 0
        self._prm = np.array([material.C11, material.C12, material.C44, 0.0, n_exp, n_int,
                              material.hardening_modulus, material.hardening_exponent, self.tolerance])
        self._last = None            # warm start: (Fp_n, xi_n, dt, dgamma, xi, converged) of the last call
        self.last_iterations = np.zeros(0, dtype=np.int64)

    @property
    def n_points(self) -> int:
        """Number of quadrature points."""
        return self.orientations.shape[0]

    @property
    def n_slip(self) -> int:
        """Number of slip systems."""
        return self.material.n_slip

    def initial_state(self) -> dict[str, np.ndarray]:
        """Virgin state: ``Fp = I``, ``xi = xi_0`` per family, no slip.

        Returns:
            ``plastic_deformation`` (n, 3, 3), ``slip_resistance`` (n, ns) in Pa,
            ``accumulated_slip`` (n, ns) (sum of ``|dgamma|``), ``slip`` (n, ns) signed.
        """
        n, ns = self.n_points, self.n_slip
        return {"plastic_deformation": np.tile(np.eye(3), (n, 1, 1)),
                "slip_resistance": np.tile(self._xi0, (n, 1)),
                "accumulated_slip": np.zeros((n, ns)),
                "slip": np.zeros((n, ns))}

    def _check_state(self, state):
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        n, ns = self.n_points, self.n_slip
        for key, shape in (("plastic_deformation", (n, 3, 3)), ("slip_resistance", (n, ns)),
                           ("accumulated_slip", (n, ns)), ("slip", (n, ns))):
            if np.shape(state[key]) != shape:
                raise ValueError(f"state[{key!r}] has shape {np.shape(state[key])}, expected {shape}")

    def update(self, F: np.ndarray, state: dict[str, np.ndarray], dt: float,
               tangent: bool = True) -> ConstitutiveResult:
        """Implicit update from ``state`` (start of step) to deformation ``F`` after ``dt``.

        Args:
            F: ``(n, 3, 3)`` deformation gradient at the end of the step.
            state: state at the start of the step (not modified).
            dt: time step, s (> 0).
            tangent: whether to compute ``dP/dF``.

        Returns:
            :class:`ConstitutiveResult`; non-converged points keep their old
            state and return the elastic-trial stress and tangent.
        """
        F = np.ascontiguousarray(F, dtype=float)
        n, ns = self.n_points, self.n_slip
        if F.shape != (n, 3, 3):
            raise ValueError(f"F has shape {F.shape}, expected {(n, 3, 3)}")
        dt = float(dt)
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self._check_state(state)
        mat = self.material
        Fp_n = np.asarray(state["plastic_deformation"], dtype=float)
        xi_n = np.ascontiguousarray(state["slip_resistance"], dtype=float)
        g0 = self.orientations

        # points the kernel cannot handle get F = I and are flagged afterwards
        detF = _det3(F)
        bad = ~(np.isfinite(F).all(axis=(1, 2)) & (detF > 0))
        if np.any(bad):
            F = F.copy()
            F[bad] = np.eye(3)
        Fp_inv_n = _inv3(Fp_n)
        L = np.ascontiguousarray(Fp_inv_n @ np.swapaxes(g0, 1, 2))   # lab-aligned -> crystal comps

        guess_dg, guess_x, use_guess = self._guess(state, xi_n, dt)
        prm = self._prm.copy()
        prm[3] = dt * mat.shear_rate_reference
        dgamma = np.empty((n, ns))
        xi = np.empty((n, ns))
        A = np.empty((n, 3, 3))
        P = np.empty((n, 3, 3))
        dPdF = np.empty((n, 3, 3, 3, 3)) if tangent else np.empty((1, 3, 3, 3, 3))
        conv = np.zeros(n, dtype=np.bool_)
        iters = np.zeros(n, dtype=np.int64)
        _kernel(F, L, xi_n, guess_dg, guess_x, use_guess, self._schmid, self._h, self._xi_inf,
                prm, self.max_iterations, tangent, dgamma, xi, A, P, dPdF, conv, iters)
        conv &= ~bad
        self.last_iterations = iters
        if self.warm_start:
            self._last = (state["plastic_deformation"], state["slip_resistance"], dt,
                          np.where(conv[:, None], dgamma, 0.0), np.where(conv[:, None], xi, xi_n), conv)

        # new state; failed points keep the old one
        Fp_inv_new = L @ A @ g0
        Fp_new = _inv3(Fp_inv_new)
        Fp_new /= np.cbrt(_det3(Fp_new))[:, None, None]   # keep det Fp = 1 (as DAMASK)
        keep = ~conv
        Fp_new[keep] = Fp_n[keep]
        xi[keep] = xi_n[keep]
        dgamma[keep] = 0.0
        new_state = {"plastic_deformation": Fp_new,
                     "slip_resistance": xi,
                     "accumulated_slip": np.asarray(state["accumulated_slip"], dtype=float) + np.abs(dgamma),
                     "slip": np.asarray(state["slip"], dtype=float) + dgamma}
        return ConstitutiveResult(stress=P, tangent=dPdF if tangent else None, state=new_state,
                                  converged=conv, iterations=int(iters.max(initial=0)))

    def _guess(self, state, xi_n, dt):
        """Warm-start values per point: the last solution for the same start state, else
        the last slip increments (rescaled to ``dt``) on top of this state."""
        n, ns = self.n_points, self.n_slip
        none = (np.zeros((n, ns)), xi_n, np.zeros(n, dtype=np.bool_))
        if not self.warm_start or self._last is None:
            return none
        Fp_last, xi_last, dt_last, dg_last, x_last, conv_last = self._last
        if Fp_last.shape != (n, 3, 3):
            return none
        if Fp_last is state["plastic_deformation"] and xi_last is state["slip_resistance"]:
            return np.ascontiguousarray(dg_last), np.ascontiguousarray(x_last), conv_last.copy()
        ratio = dt / dt_last
        return (np.ascontiguousarray(dg_last * ratio),
                np.ascontiguousarray(xi_n + (x_last - np.asarray(xi_last)) * ratio),
                conv_last & np.any(dg_last != 0.0, axis=1))

    def lattice_orientation(self, F: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """Current passive orientation ``g = g0 Re^T``, ``(n, 3, 3)``.

        ``Re`` is the rotation of the polar decomposition of ``Fe = F Fp^-1``.
        """
        from .rotations import polar_rotation

        Fe = np.asarray(F, dtype=float) @ _inv3(np.asarray(state["plastic_deformation"], dtype=float))
        return self.orientations @ np.swapaxes(polar_rotation(Fe), -1, -2)

    def elastic_stiffness_lab(self) -> np.ndarray:
        """Initial stiffness in the lab frame per point, ``(n, 3, 3, 3, 3)`` (``dP/dF`` at ``F = I``)."""
        from .tensors import rotate_stiffness

        return rotate_stiffness(self.material.stiffness_tensor()[None], np.swapaxes(self.orientations, 1, 2))


# --- small dense helpers (NumPy, vectorised over points) -----------------------------------

def _det3(a: np.ndarray) -> np.ndarray:
    return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
            - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
            + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))


def _inv3(a: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 3, 3)`` matrices by the adjugate (faster than LAPACK for 3x3)."""
    c = np.empty_like(a)
    c[..., 0, 0] = a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1]
    c[..., 0, 1] = a[..., 0, 2] * a[..., 2, 1] - a[..., 0, 1] * a[..., 2, 2]
    c[..., 0, 2] = a[..., 0, 1] * a[..., 1, 2] - a[..., 0, 2] * a[..., 1, 1]
    c[..., 1, 0] = a[..., 1, 2] * a[..., 2, 0] - a[..., 1, 0] * a[..., 2, 2]
    c[..., 1, 1] = a[..., 0, 0] * a[..., 2, 2] - a[..., 0, 2] * a[..., 2, 0]
    c[..., 1, 2] = a[..., 0, 2] * a[..., 1, 0] - a[..., 0, 0] * a[..., 1, 2]
    c[..., 2, 0] = a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]
    c[..., 2, 1] = a[..., 0, 1] * a[..., 2, 0] - a[..., 0, 0] * a[..., 2, 1]
    c[..., 2, 2] = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    det = a[..., 0, 0] * c[..., 0, 0] + a[..., 0, 1] * c[..., 1, 0] + a[..., 0, 2] * c[..., 2, 0]
    return c / det[..., None, None]


# --- the per-point kernel (numba) ------------------------------------------------------------
# One point at a time, crystal-frame components of the intermediate configuration. Work
# arrays are allocated once per chunk of points and addressed by the indices below.

_jit = numba.njit(cache=True, error_model="numpy")

# 3x3 work matrices
_A, _B, _CE, _S, _M, _E, _DCE, _DS, _DM, _X, _Y, _Z, _DA, _SIG, _DSIG, _LSL, _G, _CTR, _D, _CLAM = range(20)
_QV = 20            # 6 more: G dSigma_v L^T for the symmetric unit stretches v
_NMAT = 26
_VI = (0, 1, 2, 1, 0, 0)
_VJ = (0, 1, 2, 2, 2, 1)
# per-system work vectors
(_TAU, _R, _Q, _HP, _QP, _F, _FP, _C, _JGX, _JXX, _DIR, _DX, _DGT, _XT, _DG0, _X0, _DGR, _XR,
 _RHS, _LO, _HI, _QS, _DG, _XI) = range(24)
_NVEC = 24
# per-system work matrices
_K, _W, _T = range(3)
# scalar parameters
_C11, _C12, _C44, _KDT, _NEXP, _NINT, _H0, _AEXP, _TOL = range(9)

# Newton and continuation settings (see docs/constitutive.md)
_C_SWITCH = 0.1     # rate/stress form switch, fraction of the slip that relaxes the trial stress
_STEP_CAP = 0.05    # largest change of a slip increment per Newton iteration
_S_RISE = 0.5       # largest rise of |tau/xi| per iteration past the switch level (in its units)
_LAM_DIRECT = 5.0   # solve directly when the trial |tau/xi| stays below this
_LAM_FIRST = 1.5    # first continuation target: trial |tau/xi| about this
_LAM_GROWTH = 4.0   # continuation step growth after a success
_MAX_STEPS = 60     # continuation steps
_CHUNK = 256        # points per block of work arrays (and per thread if made parallel)


@_jit
def _cubic(C11, C12, C44, E, out):
    """out = C : E for cubic C in the crystal frame, E symmetric."""
    tr = C12 * (E[0, 0] + E[1, 1] + E[2, 2])
    d = C11 - C12
    g = 2.0 * C44
    out[0, 0] = d * E[0, 0] + tr
    out[1, 1] = d * E[1, 1] + tr
    out[2, 2] = d * E[2, 2] + tr
    out[0, 1] = out[1, 0] = g * E[0, 1]
    out[0, 2] = out[2, 0] = g * E[0, 2]
    out[1, 2] = out[2, 1] = g * E[1, 2]


@_jit
def _mm(a, b, out):
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]


@_jit
def _mtm(a, b, out):
    """out = a^T b"""
    for i in range(3):
        for j in range(3):
            out[i, j] = a[0, i] * b[0, j] + a[1, i] * b[1, j] + a[2, i] * b[2, j]


@_jit
def _mmt(a, b, out):
    """out = a b^T"""
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[j, 0] + a[i, 1] * b[j, 1] + a[i, 2] * b[j, 2]


@_jit
def _contract(Pf, a, X):
    """Pf[a] : X for a flattened Schmid tensor."""
    return (Pf[a, 0] * X[0, 0] + Pf[a, 1] * X[0, 1] + Pf[a, 2] * X[0, 2]
            + Pf[a, 3] * X[1, 0] + Pf[a, 4] * X[1, 1] + Pf[a, 5] * X[1, 2]
            + Pf[a, 6] * X[2, 0] + Pf[a, 7] * X[2, 1] + Pf[a, 8] * X[2, 2])


@_jit
def _pow(u, e, ei):
    """u^e for u >= 0; square-and-multiply when e is the integer ei > 0 (much cheaper)."""
    if ei > 0:
        out = 1.0
        base = u
        while ei:
            if ei & 1:
                out *= base
            base *= base
            ei >>= 1
        return out
    return u ** e


@_jit
def _stress(Ce_tr, dg, Pf, prm, mt, v):
    """Stress at slip increments dg: A, B = Ce_tr A, Ce = A^T B, E, S = C:E, M = Ce S, tau."""
    ns = dg.shape[0]
    A = mt[_A]
    for i in range(3):
        for j in range(3):
            acc = 1.0 if i == j else 0.0
            ij = 3 * i + j
            for a in range(ns):
                acc -= dg[a] * Pf[a, ij]
            A[i, j] = acc
    _mm(Ce_tr, A, mt[_B])
    _mtm(A, mt[_B], mt[_CE])
    E = mt[_E]
    Ce = mt[_CE]
    for i in range(3):
        for j in range(3):
            E[i, j] = 0.5 * (Ce[i, j] - (1.0 if i == j else 0.0))
    _cubic(prm[_C11], prm[_C12], prm[_C44], E, mt[_S])
    _mm(Ce, mt[_S], mt[_M])
    tau = v[_TAU]
    for a in range(ns):
        tau[a] = _contract(Pf, a, mt[_M])


@_jit
def _residual(Ce_tr, dg, x, xi_n, Pf, H, xi_inf, prm, uc, sc, mt, v):
    """Scaled flow residual r and hardening residual q at (dg, x); returns sum r^2 + q^2.

    r_a = Q(dg_a/(k uc)) - h(tau_a/(x_a sc)) with h(s) = sgn(s)|s|^n for |s| <= 1 and
    sgn(s)(1 + n(|s| - 1)) beyond, Q(u) = h(sgn(u)|u|^(1/n)), uc = sc^n: the rate form for
    idle systems, n times the stress form for active ones (nearly linear in dg).
    q_a = (x_a - xi_n,a - h0 f(x_a) sum_b h_ab dg_b sgn(tau_b)) / xi_inf,a.
    """
    ns = dg.shape[0]
    _stress(Ce_tr, dg, Pf, prm, mt, v)
    n = prm[_NEXP]
    ni = int(prm[_NINT])
    k = prm[_KDT]
    h0 = prm[_H0]
    a_exp = prm[_AEXP]
    tau = v[_TAU]
    r = v[_R]
    q = v[_Q]
    merit = 0.0
    for a in range(ns):
        # stress branch
        s = tau[a] / (x[a] * sc)
        u = abs(s)
        sg = 1.0 if s > 0 else (-1.0 if s < 0 else 0.0)
        if u <= 1.0:
            p = _pow(u, n - 1.0, ni - 1) if ni > 0 else u ** (n - 1.0)
            hs = sg * p * u
            dhs = n * p
        else:
            hs = sg * (1.0 + n * (u - 1.0))
            dhs = n
        # rate branch
        w = dg[a] / (k * uc)
        aw = abs(w)
        if aw <= 1.0:
            qu = w
            dqu = 1.0
        else:
            root = np.exp(np.log(aw) / n)
            qu = (1.0 if w > 0 else -1.0) * (1.0 + n * (root - 1.0))
            dqu = root / aw
        v[_HP, a] = dhs / sc
        v[_QP, a] = dqu / (k * uc)
        r[a] = qu - hs
        # hardening: |dg_b| written as dg_b sgn(tau_b), equal at the solution and smooth
        # where idle systems cross zero during the iterations
        c = 0.0
        if h0 != 0.0:
            for b in range(ns):
                if tau[b] > 0:
                    c += H[a, b] * dg[b]
                elif tau[b] < 0:
                    c -= H[a, b] * dg[b]
            wx = 1.0 - x[a] / xi_inf[a]
            awx = abs(wx)
            if awx > 0.0:
                p = awx ** (a_exp - 1.0)
                v[_F, a] = (1.0 if wx > 0 else -1.0) * p * awx
                v[_FP, a] = -(a_exp / xi_inf[a]) * p
            else:
                v[_F, a] = 0.0
                v[_FP, a] = -1.0 / xi_inf[a] if a_exp == 1.0 else (0.0 if a_exp > 1.0 else -np.inf)
        else:
            v[_F, a] = 0.0
            v[_FP, a] = 0.0
        v[_C, a] = c
        q[a] = (x[a] - xi_n[a] - h0 * v[_F, a] * c) * v[_QS, a]
        merit += r[a] * r[a] + q[a] * q[a]
    return merit


@_jit
def _jacobian(x, Pf, H, prm, mt, v, mm):
    """Schur complement K = dr/ddg - diag(jgx/jxx) dq/ddg of the (dg, xi) Newton system.

    Uses the work arrays of the last _residual call. Also fills T[a, b] = dtau_a/ddg_b,
    W = dq/ddg, jgx = dr/dxi and jxx = dq/dxi (both diagonal).
    """
    ns = x.shape[0]
    C11, C12, C44 = prm[_C11], prm[_C12], prm[_C44]
    h0 = prm[_H0]
    B, Ce, S = mt[_B], mt[_CE], mt[_S]
    dCe, dS, dM, E = mt[_DCE], mt[_DS], mt[_DM], mt[_E]
    K, W, T = mm[_K], mm[_W], mm[_T]
    tau = v[_TAU]
    for b in range(ns):
        # dCe/ddg_b = -(P_b^T B + B^T P_b) with P_b = Pf[b] as 3x3
        for i in range(3):
            for j in range(3):
                acc = 0.0
                for l in range(3):
                    acc += Pf[b, 3 * l + i] * B[l, j]
                dM[i, j] = acc
        for i in range(3):
            for j in range(3):
                dCe[i, j] = -(dM[i, j] + dM[j, i])
                E[i, j] = 0.5 * dCe[i, j]
        _cubic(C11, C12, C44, E, dS)
        for i in range(3):
            for j in range(3):
                dM[i, j] = (dCe[i, 0] * S[0, j] + dCe[i, 1] * S[1, j] + dCe[i, 2] * S[2, j]
                            + Ce[i, 0] * dS[0, j] + Ce[i, 1] * dS[1, j] + Ce[i, 2] * dS[2, j])
        for a in range(ns):
            T[a, b] = _contract(Pf, a, dM)
    for a in range(ns):
        jgx = v[_HP, a] * tau[a] / (x[a] * x[a])
        hc = h0 * v[_C, a]
        jxx = ((1.0 - hc * v[_FP, a]) if hc != 0.0 else 1.0) * v[_QS, a]
        v[_JGX, a] = jgx
        v[_JXX, a] = jxx
        ratio = jgx / jxx       # 0 where jxx is infinite (at saturation with a < 1)
        wa = -h0 * v[_F, a] * v[_QS, a]
        hpa = v[_HP, a] / x[a]
        for b in range(ns):
            sb = 1.0 if tau[b] > 0 else (-1.0 if tau[b] < 0 else 0.0)
            W[a, b] = wa * H[a, b] * sb
            K[a, b] = -hpa * T[a, b] - ratio * W[a, b]
        K[a, a] += v[_QP, a]


@_jit
def _lu_factor(K, piv):
    """In-place LU with partial pivoting; False if singular or not finite."""
    ns = K.shape[0]
    for j in range(ns):
        p = j
        big = abs(K[j, j])
        for i in range(j + 1, ns):
            t = abs(K[i, j])
            if t > big:
                big = t
                p = i
        piv[j] = p
        if not (big > 0.0) or big == np.inf:
            return False
        if p != j:
            for l in range(ns):
                t = K[j, l]
                K[j, l] = K[p, l]
                K[p, l] = t
        inv = 1.0 / K[j, j]
        for i in range(j + 1, ns):
            fac = K[i, j] * inv
            K[i, j] = fac
            for l in range(j + 1, ns):
                K[i, l] -= fac * K[j, l]
    return True


@_jit
def _lu_solve(K, piv, b):
    """Solve K x = b in place with the factors of _lu_factor."""
    ns = K.shape[0]
    for j in range(ns):
        p = piv[j]
        if p != j:
            t = b[j]
            b[j] = b[p]
            b[p] = t
    for i in range(ns):
        acc = b[i]
        for l in range(i):
            acc -= K[i, l] * b[l]
        b[i] = acc
    for i in range(ns - 1, -1, -1):
        acc = b[i]
        for l in range(i + 1, ns):
            acc -= K[i, l] * b[l]
        b[i] = acc / K[i, i]


@_jit
def _newton(Ce_tr, dg, x, xi_n, Pf, H, xi_inf, prm, uc, sc, max_iter, mt, v, mm, piv):
    """Damped Newton on (dg, x) in place; returns (converged, iterations).

    On return the work arrays hold the residual evaluation at (dg, x).
    """
    ns = dg.shape[0]
    tol = prm[_TOL]
    lo, hi = v[_LO], v[_HI]
    d, dx, dg_t, x_t = v[_DIR], v[_DX], v[_DGT], v[_XT]
    K, W, T = mm[_K], mm[_W], mm[_T]
    merit = _residual(Ce_tr, dg, x, xi_n, Pf, H, xi_inf, prm, uc, sc, mt, v)
    it = 0
    while True:
        err = 0.0
        for a in range(ns):
            err = max(err, abs(v[_R, a]), abs(v[_Q, a]))
        if err < tol:
            return True, it
        if it >= max_iter or not np.isfinite(merit):
            return False, it
        it += 1
        _jacobian(x, Pf, H, prm, mt, v, mm)
        for a in range(ns):
            d[a] = -v[_R, a] + v[_JGX, a] / v[_JXX, a] * v[_Q, a]
        if not _lu_factor(K, piv):
            return False, it
        _lu_solve(K, piv, d)
        big = 0.0
        for a in range(ns):
            acc = -v[_Q, a]
            for b in range(ns):
                acc -= W[a, b] * d[b]
            dx[a] = acc / v[_JXX, a]
            big = max(big, abs(d[a]))
        scale = _STEP_CAP / big if big > _STEP_CAP else 1.0
        # the flow rule is flat below the switch level, so a linear step can throw idle
        # systems far past it: bound the predicted |tau/xi| rise per iteration
        for a in range(ns):
            dtau = 0.0
            for b in range(ns):
                dtau += T[a, b] * d[b]
            s0 = v[_TAU, a] / x[a]
            ds = dtau / x[a] - v[_TAU, a] * dx[a] / (x[a] * x[a])
            s_lim = max(abs(s0), sc) + _S_RISE * sc
            if abs(s0 + scale * ds) > s_lim:
                t = (s_lim - s0) / ds if ds > 0 else (-s_lim - s0) / ds
                scale = min(scale, max(t, 0.0))
        # backtracking line search on the merit function
        alpha = scale
        for _ in range(10):
            for a in range(ns):
                dg_t[a] = dg[a] + alpha * d[a]
                xt = x[a] + alpha * dx[a]
                # the root lies in [xi_n, xi_inf]: stay inside, never on the bound
                if xt > hi[a]:
                    xt = 0.5 * (x[a] + hi[a])
                elif xt < lo[a]:
                    xt = 0.5 * (x[a] + lo[a])
                x_t[a] = xt
            merit_t = _residual(Ce_tr, dg_t, x_t, xi_n, Pf, H, xi_inf, prm, uc, sc, mt, v)
            if np.isfinite(merit_t) and merit_t <= (1.0 - 1e-4 * alpha) * merit:
                break
            alpha *= 0.5
        for a in range(ns):
            dg[a] = dg_t[a]
            x[a] = x_t[a]
        merit = merit_t


@_jit
def _dtau_fixed_slip(dCe_tr, Pf, prm, mt, out):
    """out_a = dtau_a for a change dCe_tr of the trial stretch at fixed slip; leaves dCe in mt."""
    A, Ce, S = mt[_A], mt[_CE], mt[_S]
    X, Y, dCe, E, dS = mt[_X], mt[_Y], mt[_DCE], mt[_E], mt[_DS]
    _mm(dCe_tr, A, X)
    _mtm(A, X, dCe)
    for i in range(3):
        for j in range(3):
            E[i, j] = 0.5 * dCe[i, j]
    _cubic(prm[_C11], prm[_C12], prm[_C44], E, dS)
    _mm(dCe, S, X)
    _mm(Ce, dS, Y)
    for i in range(3):
        for j in range(3):
            X[i, j] += Y[i, j]
    for a in range(out.shape[0]):
        out[a] = _contract(Pf, a, X)


@_jit
def _solve_point(Ce_tr, xi_n, xi_inf, Pf, H, prm, max_iter, guess_dg, guess_x, use_guess,
                 mt, v, mm, piv):
    """Solve one point into v[_DG], v[_XI]; returns (converged, iterations)."""
    ns = xi_n.shape[0]
    n = prm[_NEXP]
    dg, x = v[_DG], v[_XI]
    D, Ce_lam = mt[_D], mt[_CLAM]
    for a in range(ns):
        dg[a] = 0.0
        x[a] = xi_n[a]
        v[_LO, a] = min(xi_n[a], xi_inf[a])
        v[_HI, a] = max(xi_n[a], xi_inf[a])
        v[_QS, a] = 1.0 / xi_inf[a]
    for i in range(3):
        for j in range(3):
            D[i, j] = Ce_tr[i, j] - (1.0 if i == j else 0.0)
    _stress(Ce_tr, dg, Pf, prm, mt, v)
    s_max = 0.0
    t_max = 0.0
    for a in range(ns):
        s_max = max(s_max, abs(v[_TAU, a]) / xi_n[a])
        t_max = max(t_max, abs(v[_TAU, a]))
    # rate/stress form switch at _C_SWITCH times the slip that would relax the largest
    # trial resolved stress
    uc = max(_C_SWITCH * t_max / prm[_C44] / prm[_KDT], 1e-12)
    sc = np.exp(np.log(uc) / n)

    it = 0
    if use_guess:
        for a in range(ns):
            dg[a] = guess_dg[a]
            x[a] = min(max(guess_x[a], v[_LO, a]), v[_HI, a])
        ok, it = _newton(Ce_tr, dg, x, xi_n, Pf, H, xi_inf, prm, uc, sc, max_iter, mt, v, mm, piv)
        if ok:
            return True, it

    # Continuation in the trial stretch, Ce(lam) = I + lam (Ce_trial - I): lam = 0 is stress
    # free (dg = 0, xi = xi_n exactly); each solve starts from the last one plus its
    # tangent dy/dlam (Euler predictor). Only the lam = 1 solution is used: this solves the
    # one backward-Euler step, it is not a sub-stepping in time.
    lam_done = 0.0
    dlam = 1.0 if s_max < _LAM_DIRECT else min(1.0, _LAM_FIRST / s_max)
    have_rate = False
    for a in range(ns):
        v[_DG0, a] = 0.0
        v[_X0, a] = xi_n[a]
    for _ in range(_MAX_STEPS):
        lam = min(1.0, lam_done + dlam)
        step = lam - lam_done
        for i in range(3):
            for j in range(3):
                Ce_lam[i, j] = (1.0 if i == j else 0.0) + lam * D[i, j]
        for a in range(ns):
            if have_rate:
                dg[a] = v[_DG0, a] + step * v[_DGR, a]
                x[a] = min(max(v[_X0, a] + step * v[_XR, a], v[_LO, a]), v[_HI, a])
            else:
                dg[a] = v[_DG0, a]
                x[a] = v[_X0, a]
        ok, it_sub = _newton(Ce_lam, dg, x, xi_n, Pf, H, xi_inf, prm, uc, sc, max_iter, mt, v, mm, piv)
        it += it_sub
        if not ok:
            dlam = 0.25 * step
            if dlam < 1e-6:
                return False, it
            continue
        lam_done = lam
        if lam_done >= 1.0:
            return True, it
        for a in range(ns):
            v[_DG0, a] = dg[a]
            v[_X0, a] = x[a]
        # Euler predictor dy/dlam = -J^-1 dr/dlam at the converged point
        _jacobian(x, Pf, H, prm, mt, v, mm)
        have_rate = _lu_factor(mm[_K], piv)
        if have_rate:
            rate = v[_DGR]
            _dtau_fixed_slip(D, Pf, prm, mt, rate)
            for a in range(ns):
                rate[a] *= v[_HP, a] / x[a]
            _lu_solve(mm[_K], piv, rate)
            for a in range(ns):
                acc = 0.0
                for b in range(ns):
                    acc -= mm[_W, a, b] * rate[b]
                v[_XR, a] = acc / v[_JXX, a]
        dlam = min(_LAM_GROWTH * step, 1.0 - lam_done)
    return False, it


@_jit
def _finish_point(p, F, L, xi_n, Pf, H, xi_inf, prm, ok, want_tangent, mt, v, mm, piv,
                  P_out, T_out):
    """Stress and (optionally) tangent at the solution in v[_DG], v[_XI] (or the trial if not ok)."""
    ns = xi_n.shape[0]
    G, Ce_tr, Sig, LSL = mt[_G], mt[_CTR], mt[_SIG], mt[_LSL]
    A, B, S = mt[_A], mt[_B], mt[_S]
    X, Y, Z, dA, dSig, dS, dCe, E = mt[_X], mt[_Y], mt[_Z], mt[_DA], mt[_DSIG], mt[_DS], mt[_DCE], mt[_E]
    dg, x = v[_DG], v[_XI]
    if not ok:
        # elastic trial: finite stress and tangent for a point the caller will cut back
        for a in range(ns):
            dg[a] = 0.0
            x[a] = xi_n[a]
    _residual(Ce_tr, dg, x, xi_n, Pf, H, xi_inf, prm, 1.0, 1.0, mt, v)
    Lp = L[p]
    # P = G Sigma L^T with Sigma = A S A^T (crystal components)
    _mm(A, S, X)
    _mmt(X, A, Sig)
    _mm(G, Sig, X)
    _mmt(X, Lp, P_out[p])
    if not want_tangent:
        return
    factored = False
    if ok:
        # any of the equivalent residual scalings gives the same implicit derivative
        _jacobian(x, Pf, H, prm, mt, v, mm)
        factored = _lu_factor(mm[_K], piv)
    rhs = v[_RHS]
    _mm(Lp, Sig, X)
    _mmt(X, Lp, LSL)
    # dSigma is linear in the symmetric dCe_trial: chain through the 6 unit stretches
    for vv in range(6):
        for i in range(3):
            for j in range(3):
                Z[i, j] = 0.0
        Z[_VI[vv], _VJ[vv]] = 1.0
        Z[_VJ[vv], _VI[vv]] = 1.0
        _dtau_fixed_slip(Z, Pf, prm, mt, rhs)     # leaves dCe = A^T dCe_tr A
        if factored:
            for a in range(ns):
                rhs[a] *= v[_HP, a] / x[a]       # -dr/dCe_tr
            _lu_solve(mm[_K], piv, rhs)          # d dgamma
        else:
            for a in range(ns):
                rhs[a] = 0.0
        # dA = -sum ddg P ; dCe_total = dA^T B + B^T dA + dCe
        for i in range(3):
            for j in range(3):
                acc = 0.0
                ij = 3 * i + j
                for a in range(ns):
                    acc -= rhs[a] * Pf[a, ij]
                dA[i, j] = acc
        _mtm(dA, B, X)
        for i in range(3):
            for j in range(3):
                E[i, j] = 0.5 * (X[i, j] + X[j, i] + dCe[i, j])
        _cubic(prm[_C11], prm[_C12], prm[_C44], E, dS)
        # dSigma = dA S A^T + A dS A^T + A S dA^T
        _mm(dA, S, X)
        _mmt(X, A, Z)
        _mm(A, dS, X)
        _mmt(X, A, Y)
        for i in range(3):
            for j in range(3):
                dSig[i, j] = Z[i, j] + Y[i, j] + Z[j, i]
        _mm(G, dSig, X)
        _mmt(X, Lp, mt[_QV + vv])
    # dF = e_k (x) e_l gives dCe_tr = X + X^T, X_ij = G_ki L_lj; dP = e_k (x) (L Sigma L^T)_l + G dSigma L^T
    for kk in range(3):
        for ll in range(3):
            for i in range(3):
                for j in range(3):
                    acc = LSL[ll, j] if i == kk else 0.0
                    for vv in range(6):
                        a_, b_ = _VI[vv], _VJ[vv]
                        cv = G[kk, a_] * Lp[ll, b_] + G[kk, b_] * Lp[ll, a_]   # dCe_tr[a_, b_]
                        acc += cv * mt[_QV + vv, i, j]
                    T_out[p, i, j, kk, ll] = acc


# serial: under MPI each rank owns a core (parallel=True works too, but compiles slower)
@_jit
def _kernel(F, L, xi_n_all, guess_dg, guess_x, use_guess, Pf, H, xi_inf, prm, max_iter,
            want_tangent, dg_out, xi_out, A_out, P_out, T_out, conv_out, iter_out):
    npts = F.shape[0]
    ns = Pf.shape[0]
    nchunks = (npts + _CHUNK - 1) // _CHUNK
    for ch in numba.prange(nchunks):
        mt = np.empty((_NMAT, 3, 3))
        v = np.empty((_NVEC, ns))
        mm = np.empty((3, ns, ns))
        piv = np.empty(ns, dtype=np.int64)
        for p in range(ch * _CHUNK, min(npts, (ch + 1) * _CHUNK)):
            G, Ce_tr = mt[_G], mt[_CTR]
            _mm(F[p], L[p], G)          # Fe_trial, crystal components on the right
            _mtm(G, G, Ce_tr)
            ok, it = _solve_point(Ce_tr, xi_n_all[p], xi_inf, Pf, H, prm, max_iter,
                                  guess_dg[p], guess_x[p], use_guess[p], mt, v, mm, piv)
            _finish_point(p, F, L, xi_n_all[p], Pf, H, xi_inf, prm, ok, want_tangent,
                          mt, v, mm, piv, P_out, T_out)
            for a in range(ns):
                dg_out[p, a] = v[_DG, a]
                xi_out[p, a] = v[_XI, a]
            for i in range(3):
                for j in range(3):
                    A_out[p, i, j] = mt[_A, i, j]
            conv_out[p] = ok
            iter_out[p] = it
