"""Learned constitutive update: the crystal-plasticity return map replaced by a network, inside the global Newton loop.

The physics kernel (:class:`solver.constitutive.CrystalPlasticity`) solves, at
every quadrature point and every global Newton iteration, a nonlinear system for
the slip increments ``dgamma_a`` of a backward-Euler step (up to 12 local Newton
iterations with continuation). Here that local solve is replaced by one network
evaluation; everything around it is kept as physics, so the update has the same
structure and the same interface (NumPy in, NumPy out, all points at once)::

    Fe_tr = F Fp_n^-1,  Ce_tr = Fe_tr^T Fe_tr,  S_tr = C : (Ce_tr - I)/2,  tau_tr_a = (Ce_tr S_tr) : P_a
    dgamma_a = sgn(tau_tr_a) (xi_n_a / C44) s_a y_a,   y = net(|tau_tr| / xi_n, log10(dt gdot0))  (learned)
    Fp^-1 = Fp_n^-1 (I - sum_a dgamma_a P_a),  Fe = F Fp^-1,  P = Fe (C : Ee) Fp^-T           (kinematics)
    xi_a  = xi_n_a + h0 |1 - xi_n_a/xi_inf|^a sgn(.) sum_b h_ab |dgamma_b|                   (hardening, explicit)

``y_a >= 0`` is the slip increment in units of the elastic shear strain at
which the system's resistance is reached: beyond yield the backward-Euler slip
is fixed by the strain increment, not by the stiff power law (``n = 20``), so
this variable is well conditioned, and an error in ``y`` is a stress error in
units of ``xi``. ``s_a = q^n / (q^n + 0.8^n)``, ``q = |tau_tr_a| / xi_n_a``, switches
slip on with the power law's own exponent: far below yield (``q < 1/2``) the
update is the elastic trial, exactly; near and beyond yield it is 1. All tensors are lab-frame components of
the lab-aligned intermediate configuration (``P_a = g0^T (m_a (x) n_a) g0``);
``Fp`` is stored rescaled to ``det Fp = 1`` as the physics kernel does. The
tangent ``dP/dF`` comes from autograd (``torch.func.jacfwd`` under ``vmap``),
so it is exact for the learned update.

Training data are the physics kernel's own updates on random elastic trial
states (random deviatoric stretches in the crystal frame, random slip
resistances between ``xi_0`` and ``xi_inf``, time steps over two decades):
the map from the trial state to ``r`` is the same for every orientation in
crystal components, so one network serves the whole polycrystal.

Select it in a simulate config with ``solver: {constitutive: learned,
learned_model: DIR}`` (docs/coupling.md); train it with ``slipstream train
--learned-update MATERIAL --out DIR``.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import warnings

import numpy as np
import torch
from torch import nn

# torch.func's first use scripts a helper and warns that torch.jit.script is deprecated: not ours to act on
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from solver.errors import ConfigError, ModelError

from . import checkpoint

FORMAT = "slipstream.learned_update/1"

#: Where the switch-on of slip is centred, in units of the slip resistance: 1 at and beyond yield (the network
#: alone decides there, smoothly), below 1e-4 under half of it, so that the update is the elastic trial there.
ONSET = 0.8


class ReturnMapNet(nn.Module):
    """``y (ns) >= 0`` from ``|tau_tr| / xi_n (ns)`` and ``log10(dt gdot0)``: an MLP with a softplus output.

    Args:
        n_slip: slip systems; hidden: width; layers: hidden layers.
    """

    def __init__(self, n_slip: int = 12, hidden: int = 128, layers: int = 3):
        super().__init__()
        self.kwargs = {"n_slip": n_slip, "hidden": hidden, "layers": layers}
        dims = [n_slip + 1] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*mods)
        self.out = nn.Linear(hidden, n_slip)

    def forward(self, ratio: torch.Tensor, log_step: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.out(self.body(torch.cat([ratio, log_step], dim=-1))), beta=20.0)


class _Physics:
    """The material's tensors in torch (float64): cubic stiffness, Schmid tensors, hardening."""

    def __init__(self, material):
        from solver.lattice import slip_systems

        m, n = slip_systems(material.lattice)
        self.schmid = torch.from_numpy(np.einsum("ai,aj->aij", m, n))          # crystal frame (ns, 3, 3)
        self.C = torch.from_numpy(material.stiffness_tensor())                 # crystal frame
        self.H = torch.from_numpy(material.interaction_matrix())
        self.xi0 = torch.from_numpy(material.per_system(material.slip_resistance_initial))
        self.xi_inf = torch.from_numpy(material.per_system(material.slip_resistance_saturation))
        self.gdot0 = float(material.shear_rate_reference)
        self.G = float(material.C44)
        self.n = float(material.rate_exponent)
        self.h0 = float(material.hardening_modulus)
        self.a = float(material.hardening_exponent)


def _sym_ce(Fe):
    return Fe.transpose(-1, -2) @ Fe


def _update_points(net: ReturnMapNet, phys: _Physics, F, Fp_inv_n, xi_n, C, P, dt: float):
    """The learned update for a batch: ``(P, dgamma, Fp_inv_new)``; all arguments lab-frame tensors.

    F, Fp_inv_n ``(..., 3, 3)``; xi_n ``(..., ns)``; C ``(..., 3, 3, 3, 3)``; P ``(..., ns, 3, 3)``.
    """
    eye = torch.eye(3, dtype=F.dtype)
    Fe_tr = F @ Fp_inv_n
    Ce_tr = _sym_ce(Fe_tr)
    S_tr = torch.einsum("...ijkl,...kl->...ij", C, 0.5 * (Ce_tr - eye))
    tau_tr = torch.einsum("...ij,...aij->...a", Ce_tr @ S_tr, P)
    step = dt * phys.gdot0
    ratio = tau_tr.abs() / xi_n
    log_step = torch.full(ratio.shape[:-1] + (1,), math.log10(step), dtype=ratio.dtype)
    onset = torch.sigmoid(phys.n * torch.log(ratio.clamp_min(1e-30) / ONSET))
    dgamma = torch.sign(tau_tr) * (xi_n / phys.G) * onset * net(ratio, log_step)
    Fp_inv = Fp_inv_n @ (eye - torch.einsum("...a,...aij->...ij", dgamma, P))
    Fe = F @ Fp_inv
    S = torch.einsum("...ijkl,...kl->...ij", C, 0.5 * (_sym_ce(Fe) - eye))
    return Fe @ S @ Fp_inv.transpose(-1, -2), dgamma, Fp_inv


class LearnedCrystalPlasticity:
    """A constitutive kernel with :class:`solver.constitutive.CrystalPlasticity`'s interface, learned return map.

    Args:
        model_dir: a directory written by :func:`train_learned_update`.
        material: the :class:`solver.materials.Material` (must be the one the model was trained for).
        orientations: ``(n, 3, 3)`` initial passive orientations ``g0``.

    Raises:
        ModelError: not a learned-update directory, or trained for another material.
    """

    def __init__(self, model_dir, material, orientations):
        self.net, self.meta = load_learned_update(model_dir)
        mine = {k: v for k, v in material.as_dict().items() if k not in ("reference", "units", "name")}
        theirs = {k: v for k, v in self.meta["material"].items() if k not in ("reference", "units", "name")}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ModelError(f"{model_dir}: trained for material {self.meta['material'].get('name')!r}, which "
                             f"differs from {material.name!r} in {', '.join(diff)}")
        self.net = self.net.double().eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.material = material
        self.orientations = np.asarray(orientations, dtype=float)
        self.phys = _Physics(material)
        g0 = torch.from_numpy(self.orientations)
        gt = g0.transpose(-1, -2)
        # lab components: P_a = g0^T P_c g0, C_ijkl = g0_ai g0_bj g0_ck g0_dl C_abcd
        self._P = torch.einsum("nia,sab,nbj->nsij", gt, self.phys.schmid, g0)
        self._C = torch.einsum("nai,nbj,nck,ndl,abcd->nijkl", g0, g0, g0, g0, self.phys.C)
        self.last_iterations = np.zeros(self.n_points, dtype=np.int64)

    @property
    def n_points(self) -> int:
        return self.orientations.shape[0]

    @property
    def n_slip(self) -> int:
        return self.material.n_slip

    def initial_state(self) -> dict[str, np.ndarray]:
        """As :meth:`solver.constitutive.CrystalPlasticity.initial_state`."""
        n, ns = self.n_points, self.n_slip
        return {"plastic_deformation": np.tile(np.eye(3), (n, 1, 1)),
                "slip_resistance": np.tile(self.phys.xi0.numpy(), (n, 1)),
                "accumulated_slip": np.zeros((n, ns)), "slip": np.zeros((n, ns))}

    def update(self, F: np.ndarray, state: dict, dt: float, tangent: bool = True):
        """The learned update (module docstring); returns a :class:`solver.constitutive.ConstitutiveResult`."""
        from solver.constitutive import ConstitutiveResult

        dt = float(dt)
        Ft = torch.from_numpy(np.ascontiguousarray(F, dtype=float))
        Fp_n = np.asarray(state["plastic_deformation"], dtype=float)
        Fp_inv_n = torch.linalg.inv(torch.from_numpy(Fp_n))
        xi_n = torch.from_numpy(np.asarray(state["slip_resistance"], dtype=float))
        with torch.no_grad():
            P, dgamma, Fp_inv = _update_points(self.net, self.phys, Ft, Fp_inv_n, xi_n, self._C, self._P, dt)
        A = None
        if tangent:
            def one(f, fpi, xi, c, p):
                return _update_points(self.net, self.phys, f, fpi, xi, c, p, dt)[0]

            # forward mode: 9 input directions (F) against 9 outputs; about twice as fast as reverse here
            A = torch.func.vmap(torch.func.jacfwd(one))(Ft, Fp_inv_n, xi_n, self._C, self._P).numpy()
        P, dgamma = P.numpy(), dgamma.numpy()
        ok = np.isfinite(P).all(axis=(1, 2)) & np.isfinite(dgamma).all(axis=1) & (np.linalg.det(F) > 0)
        Fp_new = np.linalg.inv(Fp_inv.numpy())
        Fp_new /= np.cbrt(np.linalg.det(Fp_new))[:, None, None]  # det Fp = 1, as the physics kernel stores it
        xi = self._harden(xi_n.numpy(), dgamma)
        keep = ~ok
        Fp_new[keep], xi[keep], dgamma[keep] = Fp_n[keep], xi_n.numpy()[keep], 0.0
        new_state = {"plastic_deformation": Fp_new, "slip_resistance": xi,
                     "accumulated_slip": np.asarray(state["accumulated_slip"], dtype=float) + np.abs(dgamma),
                     "slip": np.asarray(state["slip"], dtype=float) + dgamma}
        return ConstitutiveResult(stress=P, tangent=A, state=new_state, converged=ok, iterations=0)

    def _harden(self, xi_n: np.ndarray, dgamma: np.ndarray) -> np.ndarray:
        ph = self.phys
        u = 1.0 - xi_n / ph.xi_inf.numpy()
        return xi_n + ph.h0 * np.abs(u) ** ph.a * np.sign(u) * (np.abs(dgamma) @ ph.H.numpy().T)

    def lattice_orientation(self, F: np.ndarray, state: dict) -> np.ndarray:
        """Current passive orientation ``g0 Re^T`` (as the physics kernel)."""
        from solver.rotations import polar_rotation

        Fe = np.asarray(F, dtype=float) @ np.linalg.inv(np.asarray(state["plastic_deformation"], dtype=float))
        return self.orientations @ np.swapaxes(polar_rotation(Fe), -1, -2)


# ------------------------------------------------------------------------- data and training

def generate_updates(material, n: int, rng: np.random.Generator, chunk: int = 2000) -> dict[str, np.ndarray]:
    """Physics-kernel updates of random trial states in the crystal frame (``g0 = I``, ``Fp_n = I``).

    Returns:
        ``ratio`` ``|tau_tr| / xi_n``, ``onset`` and ``y`` (the target: ``|dgamma| C44 / (xi_n onset)``), ``(n, ns)``;
        ``log_step`` ``(n, 1)``; ``F``, ``xi_n``, ``dt`` and the physics stress ``P`` for checks.
    """
    from solver.constitutive import CrystalPlasticity

    phys = _Physics(material)
    ns = material.n_slip
    out: dict[str, list] = {k: [] for k in ("ratio", "y", "onset", "log_step", "F", "xi_n", "dt", "P")}
    eye = torch.eye(3, dtype=torch.float64)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        dt = float(10 ** rng.uniform(-1.5, 0.5))
        xi_n = phys.xi0.numpy() + rng.uniform(0, 1, (m, 1)) ** 2 * (phys.xi_inf - phys.xi0).numpy() * \
            rng.uniform(0.7, 1.0, (m, ns))
        D = rng.normal(size=(m, 3, 3))
        D = 0.5 * (D + np.swapaxes(D, 1, 2))
        D -= np.trace(D, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
        D += 0.1 * rng.normal(size=(m, 1, 1)) * np.eye(3)  # some pressure
        D /= np.linalg.norm(D, axis=(1, 2))[:, None, None]
        # amplitude: the most loaded system at 0.2 - 2.5 x its resistance (elastic estimate)
        unit = torch.from_numpy(np.eye(3) + 1e-4 * D)
        Ce = _sym_ce(unit)
        S = torch.einsum("ijkl,nkl->nij", phys.C, 0.5 * (Ce - eye))
        tau = torch.einsum("nij,aij->na", Ce @ S, phys.schmid).numpy()
        peak = np.max(np.abs(tau) / xi_n, axis=1)
        target = rng.uniform(0.2, 2.5, m)
        R = _random_rotations(rng, m)  # objectivity: the update sees only Ce
        F = R @ (np.eye(3) + (1e-4 * target / peak)[:, None, None] * D)
        kernel = CrystalPlasticity(material, np.tile(np.eye(3), (m, 1, 1)), warm_start=False)
        state = {"plastic_deformation": np.tile(np.eye(3), (m, 1, 1)), "slip_resistance": xi_n,
                 "accumulated_slip": np.zeros((m, ns)), "slip": np.zeros((m, ns))}
        res = kernel.update(F, state, dt, tangent=False)
        ok = res.converged
        Ft = torch.from_numpy(F[ok])
        Ce = _sym_ce(Ft)
        S = torch.einsum("ijkl,nkl->nij", phys.C, 0.5 * (Ce - eye))
        tau = torch.einsum("nij,aij->na", Ce @ S, phys.schmid).numpy()
        ratio = np.abs(tau) / xi_n[ok]
        step = dt * phys.gdot0
        out["ratio"].append(ratio)
        onset = 1.0 / (1.0 + np.exp(-phys.n * np.log(np.maximum(ratio, 1e-30) / ONSET)))
        out["y"].append(np.abs(res.state["slip"][ok]) * phys.G / xi_n[ok] / np.maximum(onset, 1e-3))
        out["onset"].append(onset)
        out["log_step"].append(np.full((ok.sum(), 1), math.log10(step)))
        out["F"].append(F[ok])
        out["xi_n"].append(xi_n[ok])
        out["dt"].append(np.full(ok.sum(), dt))
        out["P"].append(res.stress[ok])
        done += m
    return {k: np.concatenate(v) for k, v in out.items()}


def _random_rotations(rng, m):
    q = rng.normal(size=(m, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                     np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                     np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def train_learned_update(material_name: str, out: str | Path, *, samples: int = 80000, epochs: int = 40,
                         hidden: int = 128, layers: int = 3, seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Fit :class:`ReturnMapNet` to physics-kernel updates of ``material_name``; writes ``out/``.

    Raises:
        ConfigError: unknown material or bad sizes; ModelError: ``out`` holds a model already.
    """
    from solver.materials import material_from_config

    for key, v in (("samples", samples), ("epochs", epochs), ("hidden", hidden), ("layers", layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"learned update: {key} must be a positive integer, got {v!r}")
    material = material_from_config({"preset": material_name} if isinstance(material_name, str) else material_name)
    out = Path(out)
    if (out / "model.json").exists():
        raise ModelError(f"{out}: holds a trained model already; choose another --out")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = generate_updates(material, samples, rng)
    n = data["y"].shape[0]
    n_val = max(n // 10, 1)
    x = torch.from_numpy(data["ratio"]).float()
    s = torch.from_numpy(data["log_step"]).float()
    y = torch.from_numpy(data["y"]).float()
    w = torch.from_numpy(data["onset"]).float()  # the error that reaches the stress is onset x (y - y_true)
    say(f"learned update: {n} physics updates of {material.name} in {time.perf_counter() - t0:.0f} s; training")
    net = ReturnMapNet(material.n_slip, hidden, layers)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-5)
    batch, history = 512, []
    total = epochs * math.ceil((n - n_val) / batch)
    it = 0
    for epoch in range(epochs):
        perm = torch.randperm(n - n_val) + n_val
        for k in range(0, n - n_val, batch):
            idx = perm[k:k + batch]
            for g in opt.param_groups:
                g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * it / total))
            loss = (w[idx] * (net(x[idx], s[idx]) - y[idx])).square().mean()  # a stress error in units of xi
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
        with torch.no_grad():
            val = float((w[:n_val] * (net(x[:n_val], s[:n_val]) - y[:n_val])).square().mean().sqrt())
        history.append({"epoch": epoch + 1, "validation_rmse_y": val})
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            say(f"learned update epoch {epoch + 1}/{epochs}: validation RMSE of y {val:.2e} (slip in units of xi/C44)")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model": {"class": "ReturnMapNet", "kwargs": net.kwargs},
            "material": material.as_dict(), "samples": n, "history": history, "seed": seed,
            "train_seconds": time.perf_counter() - t0, "versions": checkpoint.versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    checkpoint.save(out / "learned_update.pt", {"model": meta["model"], "state_dict": net.state_dict(),
                                                "config": {"samples": samples, "epochs": epochs, "seed": seed},
                                                "store": {"material": material.as_dict()}})
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    say(f"learned update: done in {meta['train_seconds']:.0f} s; model in {out}/")
    return meta


def load_learned_update(model_dir) -> tuple[ReturnMapNet, dict]:
    """The network and ``model.json`` of a learned-update directory.

    Raises:
        ModelError: missing, of another format, or weights that do not fit.
    """
    model_dir = Path(model_dir)
    meta = checkpoint.read_model_json(model_dir, FORMAT, "a learned constitutive update")
    ckpt = checkpoint.load(model_dir / "learned_update.pt")
    net = ReturnMapNet(**ckpt["model"]["kwargs"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{model_dir}: weights do not fit ({str(exc).splitlines()[0]})") from None
    return net, meta
