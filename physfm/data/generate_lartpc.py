"""A fast, physical toy simulator of LArTPC events writing the PILArNet-M layout.

Events are particle bombs as PILArNet's MPV/MPR generators make them: 1-2 vertices inside a
(2.304 m)^3 liquid-argon cube, each with a muon or an electron plus pions, photons / pi0s and
protons at flat kinetic energies, and a few "rain" muons crossing the volume. Per particle:

* **tracks** (mu, pi, p) are stepped every ``step_cm`` along their CSDA range: Bethe-Bloch mean
  dE/dx (with the density effect), restricted to energy transfers below ``delta_cut_mev`` and
  fluctuated per step with a Moyal (Landau-like) law; the Bragg rise follows from dE/dx(T) near
  the stopping end. Multiple Coulomb scattering by the Highland formula. Pions and protons
  interact hadronically (interaction length ``hadron_lambda_cm``): a kink with a continuing
  pion, secondary protons and de-excitation photons;
* **delta rays**: knock-on electrons with T from the 1/T^2 spectrum above ``delta_cut_mev`` up to
  the kinematic maximum, emitted from the track at the kinematic angle;
* **Michel electrons** at stopping mu+ (and pi+ -> mu+), and at ``mu_minus_decay`` of stopping mu-
  (the rest are captured), with the Michel spectrum x^2 (3 - 2x) up to 52.8 MeV, 2.2 us later;
* **electrons** lose energy continuously (collision stopping power) and by bremsstrahlung
  (Bethe-Heitler spectrum in the complete-screening limit, photons above ``brems_min_mev``), and
  scatter (Highland);
* **photons** convert to e+e- after an exponential length 9/7 X0 above ``pair_min_mev``, Compton
  scatter (Klein-Nishina) below it, and are absorbed (one point) below ``photon_cut_mev``; this
  gives gappy, displaced, branching showers; pi0 -> gamma gamma gives two;
* **low-energy deposits**: isolated photons of 0.3-3 MeV near each vertex (neutron captures,
  nuclear de-excitations) that Compton scatter into blips.

Labels follow Supera's rules: electrons are never track; a Compton electron with more than
``compton_min_voxels`` voxels is shower, otherwise low-energy deposit; a delta ray with fewer than
``delta_min_voxels`` voxels is merged into its parent track (track label, parent's ids); when
classes share a voxel the priority is track > Michel > shower > delta > low-energy deposit.
Deposits are voxelised at 3 mm and summed. Instance (group) ids are particles for tracks, deltas
and Michels and the primary particle for a shower; interaction ids are the vertex (or the rain
muon). Everything is deterministic from the seed. See ``docs/lartpc.md``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physfm.data import lartpc

# --------------------------------------------------------------------------- constants (MeV, cm, ns)
ME = 0.51099895
MMU, MPI, MP, MPI0 = 105.6584, 139.5704, 938.2721, 134.9768
K_BB = 0.307075  # MeV cm^2 / mol
RHO = 1.3954  # g/cm^3, liquid argon
Z_OVER_A = 18.0 / 39.948
I_EXC = 188.0e-6  # MeV, mean excitation energy
X0 = 14.0  # cm, radiation length
C_CM_NS = 29.9792458
TAU_MU = 2196.98  # ns
MICHEL_EDGE = 52.83  # MeV, (m_mu^2 + m_e^2) / (2 m_mu)
W_ION = 23.6e-6  # MeV per ion pair
RECOMBINATION = 0.7
# Sternheimer density-effect parameters of liquid argon
DENS_C, DENS_X0, DENS_X1, DENS_A, DENS_K = 5.2146, 0.2, 3.0, 0.19559, 3.0
SIDE_CM = lartpc.N_VOXELS * lartpc.VOXEL_CM

PDG = {"mu-": 13, "mu+": -13, "e-": 11, "e+": -11, "pi+": 211, "pi-": -211, "p": 2212, "gamma": 22}
MASS = {13: MMU, 211: MPI, 2212: MP, 11: ME, 22: 0.0}


@dataclass
class LArTPCGenConfig:
    """Settings of ``physfm generate lartpc`` (config section ``data.generate``; the other generators' keys aside)."""

    n_events: int = 20000  # events to simulate (shared with the IceCube generator's key)
    seed: int = 1
    events_per_file: int = 1000  # events per lartpc_NNN.h5
    cluster_columns: int = 5  # 5: PILArNet-M v1 cluster table; 6: v2, with the PDG code


@dataclass(frozen=True)
class LArConfig:
    """Parameters of the simulation (defaults tuned to PILArNet-M's class shares; docs/lartpc.md)."""

    vertices: tuple[int, int] = (1, 2)  # per event, uniform
    rain_muons: tuple[int, int] = (0, 2)  # crossing muons per event, uniform
    vertex_margin_cm: float = 30.0  # vertices at least this far inside the cube
    n_pions: tuple[int, int] = (0, 2)  # per vertex, uniform (charged, sign at random)
    n_photons: tuple[int, int] = (0, 2)  # photons or pi0s per vertex
    n_protons: tuple[int, int] = (0, 3)
    lepton_t: tuple[float, float] = (50.0, 800.0)  # MeV, flat
    pion_t: tuple[float, float] = (30.0, 500.0)
    photon_t: tuple[float, float] = (50.0, 800.0)
    proton_t: tuple[float, float] = (20.0, 300.0)
    rain_t: tuple[float, float] = (100.0, 3000.0)
    electron_fraction: float = 0.5  # of vertex leptons
    pi0_fraction: float = 0.5  # of vertex photons that are pi0s
    blips_per_vertex: float = 130.0  # isolated 0.3-3 MeV photons per vertex (Poisson)
    blip_radius_cm: float = 80.0
    step_cm: float = 0.05  # track steps (a sixth of a voxel: voxel energies follow the chords)
    electron_step_cm: float = 0.1
    electron_substeps: int = 4  # an electron step's energy is deposited in this many pieces
    mcs_step_cm: float = 0.3  # tracks scatter once per this path length
    delta_cut_mev: float = 1.0  # explicit delta rays above this kinetic energy
    delta_min_voxels: int = 20  # smaller delta rays are merged into their track
    compton_min_voxels: int = 10  # larger Compton electrons are shower, smaller low-energy
    mu_minus_decay: float = 0.26  # stopping mu- that decay (the rest are captured)
    hadron_lambda_cm: float = 85.7  # nuclear interaction length of argon
    pair_min_mev: float = 15.0  # photons above this pair-convert, below it Compton scatter
    photon_cut_mev: float = 1.0  # photons below this are absorbed in one point
    brems_min_mev: float = 1.0  # bremsstrahlung photons below this are not made
    min_voxel_mev: float = 0.01  # voxels with less energy are dropped (readout threshold)
    cluster_columns: int = 5  # 5: PILArNet-M v1 layout; 6: v2, with the PDG code


# --------------------------------------------------------------------------- energy loss tables
def _density_effect(bg: np.ndarray) -> np.ndarray:
    x = np.log10(np.maximum(bg, 1e-12))
    d = 2 * np.log(10) * x - DENS_C
    mid = (x >= DENS_X0) & (x < DENS_X1)
    d = np.where(mid, d + DENS_A * (DENS_X1 - x) ** DENS_K, d)
    return np.where(x < DENS_X0, 0.0, d)


def _kinematics(t: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beta^2, gamma, momentum) of kinetic energy ``t``."""
    gamma = 1.0 + t / mass
    beta2 = np.maximum(1.0 - 1.0 / gamma**2, 1e-12)
    return beta2, gamma, np.sqrt(t * (t + 2 * mass))


def t_max(t: np.ndarray, mass: float) -> np.ndarray:
    """Largest energy a heavy particle of kinetic energy ``t`` gives a free electron."""
    beta2, gamma, _ = _kinematics(t, mass)
    r = ME / mass
    return 2 * ME * beta2 * gamma**2 / (1 + 2 * gamma * r + r * r)


def dedx_heavy(t: np.ndarray, mass: float, cut: float | None = None) -> np.ndarray:
    """Bethe-Bloch mean dE/dx (MeV/cm) in argon; with ``cut`` restricted to transfers below it."""
    t = np.asarray(t, dtype=np.float64)
    beta2, gamma, _ = _kinematics(t, mass)
    tm = t_max(t, mass)
    bg = np.sqrt(beta2) * gamma
    pre = K_BB * Z_OVER_A * RHO / beta2
    if cut is None:
        bracket = 0.5 * np.log(2 * ME * bg**2 * tm / I_EXC**2) - beta2 - _density_effect(bg) / 2
    else:
        tu = np.minimum(tm, cut)
        bracket = 0.5 * np.log(2 * ME * bg**2 * tu / I_EXC**2) - beta2 / 2 * (1 + tu / tm) - _density_effect(bg) / 2
    return np.maximum(pre * bracket, 0.05)


def dedx_electron(t: np.ndarray) -> np.ndarray:
    """Collision stopping power of electrons (MeV/cm) in argon (ICRU 37 / Rohrlich-Carlson)."""
    t = np.maximum(np.asarray(t, dtype=np.float64), 1e-3)
    tau = t / ME
    beta2, gamma, _ = _kinematics(t, ME)
    bg = np.sqrt(beta2) * gamma
    f = 1 - beta2 + (tau**2 / 8 - (2 * tau + 1) * np.log(2)) / (tau + 1) ** 2
    val = np.log(tau**2 * (tau + 2) / (2 * (I_EXC / ME) ** 2)) + f - _density_effect(bg)
    return np.maximum(0.5 * K_BB * Z_OVER_A * RHO / beta2 * val, 0.5)


@dataclass
class RangeTable:
    """CSDA range R(T) of one particle species and its inverse, on a log grid."""

    t: np.ndarray
    r: np.ndarray

    @staticmethod
    def build(dedx: Any, t_lo: float = 1e-3, t_hi: float = 2e4, n: int = 4000) -> RangeTable:
        t = np.geomspace(t_lo, t_hi, n)
        inv = 1.0 / dedx(t)
        r = np.concatenate([[t_lo * inv[0]], t_lo * inv[0] + np.cumsum(np.diff(t) * 0.5 * (inv[1:] + inv[:-1]))])
        return RangeTable(t, r)

    def range_of(self, t: Any) -> Any:
        return np.interp(t, self.t, self.r)

    def energy_at(self, r: Any) -> Any:
        return np.interp(r, self.r, self.t, left=0.0)


_TABLES: dict[int, RangeTable] = {}


def range_table(pdg: int) -> RangeTable:
    """The (cached) range table of a species (|PDG code|)."""
    key = abs(pdg)
    if key not in _TABLES:
        if key == 11:
            _TABLES[key] = RangeTable.build(dedx_electron)
        else:
            mass = MASS[key]
            _TABLES[key] = RangeTable.build(lambda t: dedx_heavy(t, mass))
    return _TABLES[key]


# --------------------------------------------------------------------------- geometry helpers
def _unit(v: np.ndarray) -> np.ndarray:
    if v.ndim == 1:
        return v / math.sqrt(float(v[0]) ** 2 + float(v[1]) ** 2 + float(v[2]) ** 2)
    return v / np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]


def isotropic(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Unit vectors uniform on the sphere: one ``(3,)`` or ``(n, 3)``."""
    if n is None:
        u, v = rng.random(2)
        cz, phi = 2 * u - 1, 2 * math.pi * v
        sz = math.sqrt(1 - cz * cz)
        return np.array([sz * math.cos(phi), sz * math.sin(phi), cz])
    cz = rng.uniform(-1, 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    sz = np.sqrt(1 - cz**2)
    return np.stack([sz * np.cos(phi), sz * np.sin(phi), cz], axis=-1)


def _frame(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to the unit vector ``d`` and to each other (scalar arithmetic: fast)."""
    x, y, z = float(d[0]), float(d[1]), float(d[2])
    if abs(z) < 0.9:  # d x (0, 0, 1)
        a, b, c = y, -x, 0.0
    else:  # d x (1, 0, 0)
        a, b, c = 0.0, z, -y
    n = math.sqrt(a * a + b * b + c * c)
    a, b, c = a / n, b / n, c / n
    return np.array([a, b, c]), np.array([y * c - z * b, z * a - x * c, x * b - y * a])


def rotate(d: np.ndarray, cos_theta: float, phi: float) -> np.ndarray:
    """``d`` turned by polar angle ``theta`` (given as its cosine) at azimuth ``phi``."""
    e1, e2 = _frame(d)
    s = np.sqrt(max(0.0, 1 - cos_theta**2))
    return _unit(cos_theta * d + s * (np.cos(phi) * e1 + np.sin(phi) * e2))


def inside(pos: np.ndarray) -> np.ndarray:
    return np.all((pos >= 0) & (pos < SIDE_CM), axis=-1)


def highland(t: np.ndarray, mass: float, ds: float) -> np.ndarray:
    """Highland's RMS plane scattering angle over ``ds`` for kinetic energy ``t`` (unit charge)."""
    beta2, _, p = _kinematics(t, mass)
    x = ds / X0
    return 13.6 / (np.sqrt(beta2) * p) * np.sqrt(x) * (1 + 0.038 * np.log(x / beta2))


def frames(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`_frame` for ``(n, 3)`` unit vectors."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    low = np.abs(z) < 0.9
    zero = np.zeros_like(x)
    e1 = np.where(low[:, None], np.stack([y, -x, zero], 1), np.stack([zero, z, -y], 1))
    e1 = _unit(e1)
    return e1, np.cross(d, e1)


def rotate_many(d: np.ndarray, cos_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Vectorised :func:`rotate`."""
    e1, e2 = frames(d)
    s = np.sqrt(np.maximum(0.0, 1 - cos_theta**2))[:, None]
    return _unit(cos_theta[:, None] * d + s * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2))


def scattered_paths(
    rng: np.random.Generator, start: np.ndarray, d0: np.ndarray, theta0: np.ndarray, ds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Step midpoints and directions ``(B, n, 3)`` of ``B`` paths scattering by ``theta0`` ``(B, n)`` per step.

    Each step turns the direction by two Gaussian plane angles about the particle's own transverse
    axes; the orientations are the running product of these rotations (a log-depth prefix scan, so
    there is no loop over steps). ``start``, ``d0``: ``(B, 3)``; ``ds``: ``(B,)`` step lengths.
    """
    n_b, n = theta0.shape
    a, b = rng.normal(size=(2, n_b, n)) * np.minimum(theta0, 0.6)
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    rot = np.zeros((n_b, n, 3, 3))  # Rx(a) @ Ry(b), in the particle's frame
    rot[..., 0, 0], rot[..., 0, 2] = cb, sb
    rot[..., 1, 0], rot[..., 1, 1], rot[..., 1, 2] = sa * sb, ca, -sa * cb
    rot[..., 2, 0], rot[..., 2, 1], rot[..., 2, 2] = -ca * sb, sa, ca * cb
    shift = 1
    while shift < n:
        rot[:, shift:] = rot[:, :-shift] @ rot[:, shift:]
        shift *= 2
    if n_b == 1:  # scalar arithmetic is faster for one path
        e1, e2 = _frame(d0[0])
        frame0 = np.column_stack([e1, e2, d0[0]])[None]
    else:
        e1, e2 = frames(d0)
        frame0 = np.stack([e1, e2, d0], axis=2)  # columns
    dirs = np.einsum("bij,bnj->bni", frame0, rot[..., :, 2])
    step = dirs * ds[:, None, None]
    ends = start[:, None, :] + np.cumsum(step, axis=1)
    return ends - 0.5 * step, dirs


def scattered_path(
    rng: np.random.Generator, start: np.ndarray, d0: np.ndarray, theta0: np.ndarray, ds: float
) -> tuple[np.ndarray, np.ndarray]:
    """One path of :func:`scattered_paths`: midpoints and directions ``(n, 3)``."""
    mid, dirs = scattered_paths(rng, start[None], d0[None], theta0[None], np.array([ds]))
    return mid[0], dirs[0]


def split_steps(mid: np.ndarray, dirs: np.ndarray, ds: Any, m: int) -> np.ndarray:
    """Midpoints of ``m`` equal pieces of each straight step: ``(..., n, 3)`` -> ``(..., n * m, 3)``.

    ``ds``: the step length, a number or one per path (``mid.shape[:-2]``). Depositing a step's
    energy in pieces makes voxel energies follow the path length in each voxel.
    """
    frac = (np.arange(m) + 0.5) / m - 0.5
    ds = np.asarray(ds, dtype=np.float64).reshape(*mid.shape[:-2], 1, 1, 1) if np.ndim(ds) else ds
    out = mid[..., None, :] + frac[:, None] * ds * dirs[..., None, :]
    return out.reshape(*mid.shape[:-2], mid.shape[-2] * m, 3)


# --------------------------------------------------------------------------- deposits
@dataclass
class Deposits:
    """Energy deposits of one event (before voxelisation), with their labels and ids."""

    pos: list[np.ndarray] = field(default_factory=list)
    energy: list[np.ndarray] = field(default_factory=list)
    dx: list[np.ndarray] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)  # (n, 5): semantic, fragment, group, interaction, pid

    def add(self, pos: np.ndarray, e: np.ndarray, dx: np.ndarray, t: np.ndarray, ids: Sequence[int]) -> None:
        if len(e) == 0:
            return
        self.pos.append(np.asarray(pos, dtype=np.float64).reshape(-1, 3))
        self.energy.append(np.asarray(e, dtype=np.float64))
        self.dx.append(np.broadcast_to(np.asarray(dx, dtype=np.float64), e.shape).copy())
        self.time.append(np.broadcast_to(np.asarray(t, dtype=np.float64), e.shape).copy())
        self.labels.append(np.tile(np.asarray(ids, dtype=np.int64), (len(e), 1)))

    def add_rows(self, pos: np.ndarray, e: np.ndarray, dx: np.ndarray, t: np.ndarray, labels: np.ndarray) -> None:
        """Deposits with a label row each (``labels`` ``(n, 5)``)."""
        if len(e):
            self.pos.append(pos)
            self.energy.append(e)
            self.dx.append(np.broadcast_to(dx, e.shape).astype(np.float64))
            self.time.append(t)
            self.labels.append(labels.astype(np.int64))

    def arrays(self) -> tuple[np.ndarray, ...]:
        if not self.energy:
            return np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 5), np.int64)
        return (
            np.concatenate(self.pos),
            np.concatenate(self.energy),
            np.concatenate(self.dx),
            np.concatenate(self.time),
            np.concatenate(self.labels),
        )


@dataclass
class Walk:
    """One electron's steps: midpoints and the energy deposited per step, and their times."""

    pos: np.ndarray  # (n, 3)
    energy: np.ndarray  # (n,)
    time: np.ndarray  # (n,)


def _truncate_at_exit(pos: np.ndarray) -> int:
    """Number of leading steps inside the cube."""
    out = ~inside(pos)
    return int(np.argmax(out)) if out.any() else len(pos)


def _moyal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Moyal-distributed numbers (a Landau-like law with mean gamma_E + ln 2)."""
    return -np.log(np.maximum(rng.normal(size=n) ** 2, 1e-300))


class Simulator:
    """Simulates events of one random stream; see the module docstring for the physics."""

    def __init__(self, rng: np.random.Generator, config: LArConfig) -> None:
        self.rng, self.cfg = rng, config
        self.dep = Deposits()
        self._next_id = 0
        self._soft: list[tuple[float, ...]] = []  # photons of the Compton regime, transported together
        self._quiet: list[np.ndarray] = []  # Compton electrons and delta rays, walked together

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    # ------------------------------------------------------------------ heavy charged tracks
    def _path(
        self, pos: np.ndarray, d: np.ndarray, length: float, energy_at: Any, mass: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Midpoints, directions and path lengths of fine steps (``step_cm``) along a scattered path.

        The scattering is drawn per coarse step (``mcs_step_cm``, Highland at the coarse step's
        energy); each coarse step is a straight chord cut into fine steps for the deposits.
        """
        cfg = self.cfg
        n_c = max(1, int(np.ceil(length / cfg.mcs_step_cm)))
        ds_c = length / n_c
        s_c = (np.arange(n_c) + 0.5) * ds_c
        t_c = np.maximum(energy_at(s_c), 1e-3)
        mid_c, dirs_c = scattered_path(self.rng, pos, d, highland(t_c, mass, ds_c), ds_c)
        m = max(1, int(round(ds_c / cfg.step_cm)))
        ds = ds_c / m
        frac = (np.arange(m) + 0.5) / m - 0.5  # fine midpoints relative to the coarse midpoint
        mid = (mid_c[:, None, :] + frac[None, :, None] * ds_c * dirs_c[:, None, :]).reshape(-1, 3)
        dirs = np.repeat(dirs_c, m, axis=0)
        s = (np.arange(n_c * m) + 0.5) * ds
        return mid, dirs, s, ds

    def track(self, pos: np.ndarray, d: np.ndarray, t: float, pdg: int, inter: int, t0: float = 0.0) -> None:
        """A muon, pion or proton from ``pos`` along ``d`` with kinetic energy ``t``; its daughters."""
        cfg, rng = self.cfg, self.rng
        mass = MASS[abs(pdg)]
        table = range_table(pdg)
        r0 = float(table.range_of(t))
        hadron = abs(pdg) in (211, 2212)
        l_int = rng.exponential(cfg.hadron_lambda_cm) if hadron else np.inf
        length = min(r0, l_int, 2 * SIDE_CM)  # longer paths leave the cube anyway
        mid, dirs, s, ds = self._path(pos, d, length, lambda s_: table.energy_at(r0 - s_), mass)
        n = len(s)
        tk = np.maximum(table.energy_at(r0 - s), 1e-3)
        keep = _truncate_at_exit(mid)
        exited = keep < n
        mid, dirs, tk, s = mid[:keep], dirs[:keep], tk[:keep], s[:keep]
        beta2 = _kinematics(tk, mass)[0]
        xi = 0.5 * K_BB * Z_OVER_A * RHO * ds / beta2
        mean = dedx_heavy(tk, mass, cut=cfg.delta_cut_mev) * ds
        de = np.clip(mean + xi * (_moyal(rng, keep) - 1.27), 0.0, None)
        de = np.minimum(de, np.maximum(tk, 0.0))
        times = t0 + s / (np.sqrt(beta2) * C_CM_NS)
        me = self.new_id()
        ids = (lartpc.TRACK, me, me, inter, pdg)
        self.dep.add(mid, de, ds, times, ids)
        self._deltas(mid, dirs, tk, times, mass, ds, ids)
        if exited or keep == 0 or length < min(r0, l_int):
            return
        end, d_end = mid[-1] + 0.5 * ds * dirs[-1], dirs[-1]
        if l_int < r0:
            self._hadronic(end, d_end, float(tk[-1]), pdg, inter, float(times[-1]))
        else:
            self._stopped(end, pdg, inter, float(times[-1]))

    def _deltas(
        self,
        mid: np.ndarray,
        dirs: np.ndarray,
        tk: np.ndarray,
        times: np.ndarray,
        mass: float,
        ds: float,
        parent: tuple,
    ) -> None:
        """Knock-on electrons along a track, from the 1/T^2 spectrum above the cut, at the kinematic
        angle; walked with the other quiet electrons at the end of the event (:meth:`quiet_electrons`)."""
        cfg, rng = self.cfg, self.rng
        cut = cfg.delta_cut_mev
        tm = t_max(tk, mass)
        beta2 = _kinematics(tk, mass)[0]
        rate = 0.5 * K_BB * Z_OVER_A * RHO * ds / beta2 * np.where(tm > cut, 1 / cut - 1 / np.maximum(tm, cut), 0.0)
        k = np.repeat(np.arange(len(tk)), rng.poisson(rate))
        if not len(k):
            return
        te = 1.0 / (1 / cut - rng.random(len(k)) * (1 / cut - 1 / tm[k]))
        pe, pmax = _kinematics(te, ME)[2], _kinematics(tm[k], ME)[2]
        cos_t = np.clip(te / pe * pmax / tm[k], -1, 1)
        d_e = rotate_many(dirs[k], cos_t, rng.uniform(0, 2 * np.pi, len(k)))
        _, frag, _, inter, pdg = parent
        n = len(k)
        self._quiet.append(
            np.column_stack(
                [
                    mid[k],
                    d_e,
                    te,
                    np.full(n, inter),
                    np.full(n, -1),
                    times[k],
                    np.full(n, 1),
                    np.full(n, frag),
                    np.full(n, pdg),
                ]
            )
        )

    def _stopped(self, end: np.ndarray, pdg: int, inter: int, t: float) -> None:
        """Decay or capture at rest: Michel electrons from mu+ (pi+ -> mu+) and some mu-."""
        rng = self.rng
        if pdg == PDG["pi+"]:
            self.track(end, isotropic(rng), 4.12, PDG["mu+"], inter, t + rng.exponential(26.0))
        elif pdg == PDG["mu+"] or (pdg == PDG["mu-"] and rng.random() < self.cfg.mu_minus_decay):
            self.michel(end, inter, t + rng.exponential(TAU_MU))
        elif pdg in (PDG["mu-"], PDG["pi-"]):  # nuclear capture: de-excitation photons
            for _ in range(rng.poisson(1.5)):
                self.photon(end, isotropic(rng), rng.uniform(0.5, 5.0), inter, None, t)

    def _hadronic(self, pos: np.ndarray, d: np.ndarray, t: float, pdg: int, inter: int, t0: float) -> None:
        """An inelastic interaction in flight: a kink (pion continues), secondary protons, photons."""
        rng = self.rng
        left = t
        if abs(pdg) == 211 and rng.random() < 0.6:
            tc = left * rng.uniform(0.3, 0.8)
            left -= tc
            self.track(pos, rotate(d, rng.uniform(0.3, 0.95), rng.uniform(0, 2 * np.pi)), tc, pdg, inter, t0)
        for _ in range(rng.integers(0, 3)):
            tp = left * rng.uniform(0.1, 0.5)
            if tp < 5.0:
                break
            left -= tp
            self.track(pos, rotate(d, rng.uniform(-0.2, 0.95), rng.uniform(0, 2 * np.pi)), tp, PDG["p"], inter, t0)
        for _ in range(rng.poisson(1.0)):
            self.photon(pos, isotropic(rng), rng.uniform(0.5, 4.0), inter, None, t0)

    # ------------------------------------------------------------------ electrons and photons
    def electron_walk(self, pos: np.ndarray, d: np.ndarray, t: float, t0: float, photons: list) -> Walk:
        """An electron's ionisation path; its bremsstrahlung photons (``(pos, dir, E, time)``) go to ``photons``.

        Emissions are found first, in residual-range coordinates: the next one is where the
        cumulative hazard (complete-screening spectrum above ``brems_min_mev``, per X0) since the
        last reaches an exponential draw; an emission of energy k makes the residual range jump
        from R(T) to R(T - k). The spatial path is then walked once with the resulting energies.
        """
        cfg, rng = self.cfg, self.rng
        table = range_table(11)
        hazard = self._brems_hazard()
        r = float(table.range_of(t))
        s_done, seg_s, seg_r, emissions = 0.0, [0.0], [r], []
        while r > 0:
            h_left = float(np.interp(r, table.r, hazard)) - rng.exponential()
            if h_left <= 0:
                break
            r_e = float(np.interp(h_left, hazard, table.r))
            s_done += r - r_e
            t_e = float(table.energy_at(r_e))
            k = self._brems_energy(t_e)
            emissions.append((s_done, t_e, k))
            r = float(table.range_of(t_e - k)) if t_e - k > 1e-3 else 0.0
            seg_s.append(s_done)
            seg_r.append(r)
        length = s_done + r
        n = max(1, int(np.ceil(length / cfg.electron_step_cm)))
        ds = length / n
        s = (np.arange(n) + 0.5) * ds
        seg = np.searchsorted(np.array(seg_s), s, side="right") - 1
        tk = np.maximum(table.energy_at(np.maximum(np.array(seg_r)[seg] - (s - np.array(seg_s)[seg]), 0.0)), 1e-3)
        mid, dirs = scattered_path(rng, pos, d, highland(tk, ME, ds), ds)
        keep = _truncate_at_exit(mid)
        times = t0 + s[:keep] / C_CM_NS
        m = cfg.electron_substeps
        de = np.repeat(np.minimum(dedx_electron(tk[:keep]) * ds, tk[:keep]) / m, m)
        for s_e, t_e, k in emissions:
            step = min(int(s_e / ds), n - 1)
            if step >= keep:
                break  # the electron has left the cube
            p_e, d_e = mid[step] + (s_e - s[step]) * dirs[step], dirs[step]
            cos_t = np.cos(min(ME / max(t_e, ME), 1.0))
            photons.append((p_e, rotate(d_e, cos_t, rng.uniform(0, 2 * np.pi)), k, t0 + s_e / C_CM_NS))
        return Walk(split_steps(mid[:keep], dirs[:keep], ds, m), de, np.repeat(times, m))

    def _brems_hazard(self) -> np.ndarray:
        """Cumulative bremsstrahlung hazard of an electron at each residual range of its table."""
        key = self.cfg.brems_min_mev
        if getattr(self, "_hazard_key", None) != key:
            table = range_table(11)
            y = key / np.maximum(table.t, key)
            rate = np.where(table.t > key, 4 / 3 * np.log(1 / y) - 4 / 3 * (1 - y) + (1 - y**2) / 2, 0.0) / X0
            self._hazard = np.concatenate([[0.0], np.cumsum(np.diff(table.r) * 0.5 * (rate[1:] + rate[:-1]))])
            self._hazard_key = key
        return self._hazard

    def _brems_energy(self, t: float) -> float:
        """Photon energy from the complete-screening Bethe-Heitler spectrum on [kmin, t]."""
        kmin = self.cfg.brems_min_mev
        while True:
            k = kmin * (t / kmin) ** self.rng.random()
            y = k / t
            if self.rng.random() * 4 / 3 < 4 / 3 - 4 / 3 * y + y * y:
                return k

    def electron(
        self, pos: np.ndarray, d: np.ndarray, t: float, inter: int, kind: int, group: int | None, t0: float
    ) -> None:
        """A shower or Michel electron (``kind``) and its bremsstrahlung photons.

        Electrons are never track; Compton electrons and delta rays are walked by :meth:`quiet_electrons`.
        """
        photons: list = []
        walk = self.electron_walk(pos, d, t, t0, photons)
        frag = self.new_id()
        group = frag if group is None else group
        if kind == lartpc.MICHEL:
            ids = (lartpc.MICHEL, frag, frag, inter, 11)
        else:
            ids = (lartpc.SHOWER, frag, group, inter, 11)
        self.dep.add(walk.pos, walk.energy, self.cfg.electron_step_cm / self.cfg.electron_substeps, walk.time, ids)
        shower_group = group if kind != lartpc.MICHEL else None
        for p_pos, p_dir, k, pt in photons:
            self.photon(p_pos, p_dir, k, inter, shower_group, pt)

    def photon(self, pos: np.ndarray, d: np.ndarray, e: float, inter: int, group: int | None, t0: float) -> None:
        """A photon: above ``pair_min_mev`` it converts to e+e- after an exponential 9/7 X0 (if it is
        still inside); below, it is queued for :meth:`soft_photons` (Compton scattering).

        ``group`` is the shower it belongs to (None: an isolated photon, which starts its own group
        when it converts or gives a shower-sized Compton electron).
        """
        cfg, rng = self.cfg, self.rng
        if e <= cfg.pair_min_mev:  # Compton regime: transported with all others at the end of the event
            self._soft.append((*pos, *d, e, inter, -1 if group is None else group, t0))
            return
        step = rng.exponential(9.0 / 7.0 * X0)
        pos = pos + step * d
        t0 = t0 + step / C_CM_NS
        if not inside(pos):
            return
        g = self.new_id() if group is None else group
        x = _pair_fraction(rng)
        for te in (x * e - ME, (1 - x) * e - ME):
            if te > 0:
                de = rotate(d, np.cos(min(ME / e, 1.0)), rng.uniform(0, 2 * np.pi))
                self.electron(pos, de, te, inter, lartpc.SHOWER, g, t0)
        for _ in range(2):  # positron annihilation at rest (approximated at the conversion point)
            self.photon(pos, isotropic(rng), ME, inter, g, t0)

    def soft_photons(self) -> None:
        """Every photon of the Compton regime, transported together: Compton scatters (Klein-Nishina)
        until the photon leaves or falls below ``photon_cut_mev`` (absorbed in one point).

        Their Compton electrons join the quiet electrons (:meth:`quiet_electrons`: ionisation only,
        below ``pair_min_mev`` bremsstrahlung is left out).
        """
        cfg, rng = self.cfg, self.rng
        if not self._soft:
            return
        rows = np.array(self._soft, dtype=np.float64)
        self._soft = []
        pos, d, e, inter, group, t = rows[:, 0:3], rows[:, 3:6], rows[:, 6], rows[:, 7], rows[:, 8], rows[:, 9]
        while len(e):
            step = rng.exponential(compton_length(e))
            pos, t = pos + step[:, None] * d, t + step / C_CM_NS
            ok = inside(pos)
            pos, d, e, inter, group, t = pos[ok], d[ok], e[ok], inter[ok], group[ok], t[ok]
            low = e < cfg.photon_cut_mev
            labels = np.tile([lartpc.LOW_ENERGY, -1, -1, -1, 22], (int(low.sum()), 1))
            self.dep.add_rows(pos[low], e[low], np.zeros(int(low.sum())), t[low], labels)
            pos, d, e, inter, group, t = pos[~low], d[~low], e[~low], inter[~low], group[~low], t[~low]
            e_out, cos_t = klein_nishina(rng, e)
            phi = rng.uniform(0, 2 * np.pi, len(e))
            out = rotate_many(d, cos_t, phi)
            p_e = e[:, None] * d - e_out[:, None] * out
            n = len(e)
            zero = np.zeros(n)
            self._quiet.append(np.column_stack([pos, _unit(p_e), e - e_out, inter, group, t, zero, zero, zero]))
            d, e = out, e_out

    def quiet_electrons(self) -> None:
        """Compton electrons and delta rays, walked together (ionisation and scattering only).

        Rows ``(n, 13)``: position, direction, T, interaction, group (-1: none), time, rule, parent
        fragment, parent PDG code. Rule 0 (Compton): more than ``compton_min_voxels`` voxels is
        shower (the photon's shower, or a group of its own), otherwise low-energy deposit. Rule 1
        (delta ray): at least ``delta_min_voxels`` voxels is delta, otherwise merged into the parent
        track (its label and ids).
        """
        if not self._quiet:
            return
        rows = np.concatenate(self._quiet)
        self._quiet = []
        rows = rows[rows[:, 6] > 1e-3]
        if not len(rows):
            return
        table = range_table(11)
        r0 = table.range_of(rows[:, 6])
        n_steps = np.maximum(1, np.ceil(r0 / self.cfg.electron_step_cm)).astype(np.int64)
        # electrons of similar length together (padding stays small), in a fixed order
        bucket = np.ceil(np.log2(n_steps)).astype(np.int64)
        for k in np.unique(bucket):
            idx = np.flatnonzero(bucket == k)
            self._quiet_batch(rows[idx], r0[idx], n_steps[idx], table)

    def _quiet_batch(self, rows: np.ndarray, r0: np.ndarray, n_steps: np.ndarray, table: RangeTable) -> None:
        cfg, rng = self.cfg, self.rng
        n_max = int(n_steps.max())
        ds = r0 / n_steps
        s = (np.arange(n_max)[None, :] + 0.5) * ds[:, None]
        valid = np.arange(n_max)[None, :] < n_steps[:, None]
        tk = np.maximum(table.energy_at(np.maximum(r0[:, None] - s, 0.0)), 1e-3)
        mid, dirs = scattered_paths(rng, rows[:, 0:3], rows[:, 3:6], highland(tk, ME, ds[:, None]), ds)
        m = cfg.electron_substeps
        mid = split_steps(mid, dirs, ds, m)
        valid, tk, s = (np.repeat(a, m, axis=1) for a in (valid, tk, s))
        valid &= inside(mid)
        de = np.minimum(dedx_electron(tk) * ds[:, None], tk) / m
        which = np.broadcast_to(np.arange(len(rows))[:, None], valid.shape)[valid]
        pos, de, times = mid[valid], de[valid], (rows[:, 9:10] + s / C_CM_NS)[valid]
        vox = np.floor(pos / lartpc.VOXEL_CM).astype(np.int64)
        key = ((vox[:, 0] * lartpc.N_VOXELS + vox[:, 1]) * lartpc.N_VOXELS + vox[:, 2]) * len(rows) + which
        n_vox = np.bincount(np.unique(key) % len(rows), minlength=len(rows))
        delta = rows[:, 10] == 1
        merged = delta & (n_vox < cfg.delta_min_voxels)
        own = (delta & ~merged) | (~delta & (n_vox > cfg.compton_min_voxels))  # a new fragment each
        frag = np.where(own, self._next_id + np.cumsum(own) - 1, -1)
        self._next_id += int(own.sum())
        inter, group, parent = rows[:, 7].astype(np.int64), rows[:, 8].astype(np.int64), rows[:, 11].astype(np.int64)
        semantic = np.select([merged, delta, own], [lartpc.TRACK, lartpc.DELTA, lartpc.SHOWER], lartpc.LOW_ENERGY)
        labels = np.column_stack(
            [
                semantic,
                np.where(merged, parent, frag),
                np.select([merged, delta, own & (group >= 0)], [parent, frag, group], frag),
                np.where(merged | own, inter, -1),
                np.where(merged, rows[:, 12].astype(np.int64), 11),
            ]
        )
        self.dep.add_rows(pos, de, ds[which] / m, times, labels[which])

    def michel(self, pos: np.ndarray, inter: int, t: float) -> None:
        self.electron(pos, isotropic(self.rng), michel_energy(self.rng) - ME, inter, lartpc.MICHEL, None, t)

    # ------------------------------------------------------------------ event content
    def primary(self, pos: np.ndarray, name: str, t: float, inter: int) -> None:
        rng = self.rng
        d = isotropic(rng)
        if name in ("e-", "e+"):
            self.electron(pos, d, t, inter, lartpc.SHOWER, None, 0.0)
        elif name == "gamma":
            self.photon_primary(pos, d, t, inter)
        elif name == "pi0":
            for e_g, d_g in pi0_photons(rng, t, d):
                self.photon_primary(pos, d_g, e_g, inter)
        else:
            self.track(pos, d, t, PDG[name], inter)

    def photon_primary(self, pos: np.ndarray, d: np.ndarray, e: float, inter: int) -> None:
        self.photon(pos, d, e, inter, self.new_id(), 0.0)

    def vertex(self, inter: int) -> None:
        cfg, rng = self.cfg, self.rng
        m = cfg.vertex_margin_cm
        pos = rng.uniform(m, SIDE_CM - m, 3)
        lepton = ("e-" if rng.random() < 0.5 else "e+") if rng.random() < cfg.electron_fraction else None
        if lepton is None:
            lepton = "mu-" if rng.random() < 0.5 else "mu+"
        self.primary(pos, lepton, rng.uniform(*cfg.lepton_t), inter)
        for _ in range(rng.integers(cfg.n_pions[0], cfg.n_pions[1] + 1)):
            self.primary(pos, "pi+" if rng.random() < 0.5 else "pi-", rng.uniform(*cfg.pion_t), inter)
        for _ in range(rng.integers(cfg.n_photons[0], cfg.n_photons[1] + 1)):
            self.primary(pos, "pi0" if rng.random() < cfg.pi0_fraction else "gamma", rng.uniform(*cfg.photon_t), inter)
        for _ in range(rng.integers(cfg.n_protons[0], cfg.n_protons[1] + 1)):
            self.primary(pos, "p", rng.uniform(*cfg.proton_t), inter)
        for _ in range(rng.poisson(cfg.blips_per_vertex)):
            where = pos + isotropic(rng) * cfg.blip_radius_cm * rng.random() ** (1 / 3)
            if inside(where):
                self.photon(where, isotropic(rng), rng.uniform(0.3, 3.0), inter, None, 0.0)

    def rain_muon(self, inter: int) -> None:
        """A muon entering through a face of the cube, towards its inside."""
        rng = self.rng
        face, sign = rng.integers(3), rng.integers(2)
        pos = rng.uniform(0, SIDE_CM, 3)
        pos[face] = 1e-3 if sign == 0 else SIDE_CM - 1e-3
        d = isotropic(rng)
        inward = 1.0 if sign == 0 else -1.0
        d[face] = inward * abs(d[face])
        self.track(
            pos, _unit(d), rng.uniform(*self.cfg.rain_t), PDG["mu-"] if rng.random() < 0.5 else PDG["mu+"], inter
        )

    def event(self) -> tuple[np.ndarray, np.ndarray]:
        """One event: ``(points (N, 8), clusters (M, 5|6))`` in the PILArNet-M layout."""
        self.dep, self._next_id, self._soft, self._quiet = Deposits(), 0, [], []
        cfg, rng = self.cfg, self.rng
        n_vtx = int(rng.integers(cfg.vertices[0], cfg.vertices[1] + 1))
        for k in range(n_vtx):
            self.vertex(k)
        for j in range(int(rng.integers(cfg.rain_muons[0], cfg.rain_muons[1] + 1))):
            self.rain_muon(n_vtx + j)
        self.soft_photons()
        self.quiet_electrons()
        return voxelize(*self.dep.arrays(), cfg)


# --------------------------------------------------------------------------- sampling helpers
#: Photon mass attenuation coefficients of argon (NIST XCOM), cm^2/g, at these energies (MeV).
_XCOM_E = np.array([0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
_XCOM_MU = np.array([0.1626, 0.0977, 0.0803, 0.0575, 0.0407, 0.0338, 0.0285, 0.0249, 0.0249])


def compton_length(e: np.ndarray) -> np.ndarray:
    """Photon attenuation length in argon (cm) below the pair regime (interpolated in log E)."""
    return 1.0 / (np.interp(np.log(e), np.log(_XCOM_E), _XCOM_MU) * RHO)


def _pair_fraction(rng: np.random.Generator) -> float:
    """Energy fraction of the electron in pair production (Bethe-Heitler, complete screening)."""
    while True:
        x = rng.random()
        if rng.random() < 1 - 4 / 3 * x * (1 - x):
            return x


def klein_nishina(rng: np.random.Generator, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scattered photon energies and cos(theta) of Compton scatters (Klein-Nishina, by rejection)."""
    k = e / ME
    cos_t = np.empty_like(e)
    todo = np.arange(len(e))
    while len(todo):
        c = rng.uniform(-1, 1, len(todo))
        ratio = 1.0 / (1.0 + k[todo] * (1 - c))
        ok = rng.random(len(todo)) * 2 < ratio**2 * (ratio + 1 / ratio - (1 - c**2))
        cos_t[todo[ok]] = c[ok]
        todo = todo[~ok]
    return e / (1.0 + k * (1 - cos_t)), cos_t


def michel_energy(rng: np.random.Generator) -> float:
    """Total energy of a Michel electron, x^2 (3 - 2x) spectrum with x = E / 52.83 MeV."""
    while True:
        x = rng.random()
        if rng.random() < x * x * (3 - 2 * x):
            return max(x * MICHEL_EDGE, ME * 1.001)


def pi0_photons(rng: np.random.Generator, t: float, d: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """The two photons of pi0 -> gamma gamma (isotropic in the rest frame) in the lab."""
    e = t + MPI0
    p = np.sqrt(e * e - MPI0 * MPI0)
    beta, gamma = p / e, e / MPI0
    u = isotropic(rng)
    out = []
    for sign in (1.0, -1.0):
        k = sign * u * MPI0 / 2
        along = k @ d
        e_lab = gamma * (MPI0 / 2 + beta * along)
        p_along = gamma * (along + beta * MPI0 / 2)
        perp = k - along * d
        out.append((float(e_lab), _unit(p_along * d + perp)))
    return out


# --------------------------------------------------------------------------- voxelisation and labels
def voxelize(
    pos: np.ndarray, energy: np.ndarray, dx: np.ndarray, time: np.ndarray, labels: np.ndarray, cfg: LArConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Sum deposits per 3 mm voxel; label each voxel by the overlap priority; order by cluster.

    Returns ``points (N, 8)`` (voxel indices, voxel energy, energy deposit, earliest time, number of
    electrons, path length) and ``clusters (M, 5|6)`` with row 0 the low-energy-deposit cluster.
    """
    ok = inside(pos) & (energy > 0)
    pos, energy, dx, time, labels = pos[ok], energy[ok], dx[ok], time[ok], labels[ok]
    vox = np.floor(pos / lartpc.VOXEL_CM).astype(np.int64)
    key = (vox[:, 0] * lartpc.N_VOXELS + vox[:, 1]) * lartpc.N_VOXELS + vox[:, 2]
    uniq, inv = np.unique(key, return_inverse=True)
    e_sum = np.bincount(inv, energy, len(uniq))
    dx_sum = np.bincount(inv, dx, len(uniq))
    t_min = np.full(len(uniq), np.inf)
    np.minimum.at(t_min, inv, time)
    rank = np.argsort(np.array(lartpc.OVERLAP_PRIORITY))[labels[:, 0]]  # 0 = highest priority
    # the winning deposit of a voxel: best class, then the most energy within it
    order = np.lexsort((-energy, rank, inv))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    winner = labels[order[first]]  # one row per voxel, in voxel order
    keep = e_sum >= cfg.min_voxel_mev
    uniq, e_sum, dx_sum, t_min, winner = uniq[keep], e_sum[keep], dx_sum[keep], t_min[keep], winner[keep]
    is_le = winner[:, 0] == lartpc.LOW_ENERGY
    winner[is_le, 1:] = -1
    # clusters: the low-energy one first, then one per fragment in order of fragment id
    cl_key = np.where(is_le, -1, winner[:, 1])
    clusters, cl_of = np.unique(cl_key, return_inverse=True)
    order = np.argsort(cl_of, kind="stable")
    counts = np.bincount(cl_of, minlength=len(clusters))
    rows = winner[order[np.concatenate([[0], np.cumsum(counts)[:-1]])]] if len(order) else np.zeros((0, 5), int)
    table = np.column_stack([counts, rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 0], rows[:, 4]]).astype(np.float64)
    if len(clusters) == 0 or clusters[0] != -1:  # row 0 is always the low-energy cluster, maybe empty
        table = np.vstack([[0, -1, -1, -1, lartpc.LOW_ENERGY, -1], table])
    u = uniq[order]
    xyz = np.column_stack([u // lartpc.N_VOXELS**2, (u // lartpc.N_VOXELS) % lartpc.N_VOXELS, u % lartpc.N_VOXELS])
    e = e_sum[order]
    points = np.column_stack([xyz, e, e, t_min[order], np.round(e / W_ION * RECOMBINATION), dx_sum[order]]).astype(
        np.float64
    )
    return points, table[:, : cfg.cluster_columns]


# --------------------------------------------------------------------------- files
def simulate(
    n_events: int, seed: int | Sequence[int], config: LArConfig | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_events`` events as ``(points, clusters)`` pairs, deterministic for ``seed`` and ``config``."""
    sim = Simulator(np.random.default_rng(seed), config or LArConfig())
    return [sim.event() for _ in range(n_events)]


def _write_file(args: tuple[Path, int, int, int, dict[str, Any]]) -> tuple[Path, int]:
    path, index, n, seed, cfg_dict = args
    cfg = LArConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    events = simulate(n, seed=[seed, index], config=cfg)
    lartpc.write_pilarnet(path, [p for p, _ in events], [c for _, c in events], index=True)
    return path, sum(len(p) for p, _ in events)


FILE_NAME = "lartpc_{index:03d}.h5"


def generate_lartpc(
    out_dir: str | Path,
    n_events: int,
    seed: int,
    *,
    events_per_file: int = 1000,
    workers: int = 1,
    config: LArConfig | None = None,
    progress: bool = True,
) -> list[Path]:
    """Simulate ``n_events`` into ``out_dir/lartpc_NNN.h5`` (PILArNet-M layout, with ``_points.npy``).

    Each file has its own random stream from ``(seed, file index)``, so the output does not depend
    on ``workers``.
    """
    from tqdm.auto import tqdm

    if n_events < 1 or events_per_file < 1 or workers < 1:
        raise ValueError(
            f"n_events, events_per_file and workers must be >= 1, got {n_events}, {events_per_file}, {workers}"
        )
    cfg = config or LArConfig()
    if cfg.cluster_columns not in lartpc.CLUSTER_WIDTHS:
        raise ValueError(f"cluster_columns must be 5 or 6, got {cfg.cluster_columns}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_files = -(-n_events // events_per_file)
    jobs = [
        (out / FILE_NAME.format(index=i), i, min(events_per_file, n_events - i * events_per_file), seed, asdict(cfg))
        for i in range(n_files)
    ]
    bar = tqdm(total=n_events, unit="ev", desc="generate lartpc", disable=not progress)
    paths = []
    if workers == 1 or n_files == 1:
        results = map(_write_file, jobs)
        for (path, _), job in zip(results, jobs, strict=True):
            paths.append(path)
            bar.update(job[2])
    else:
        with mp.get_context("spawn").Pool(min(workers, n_files)) as pool:
            for (path, _), job in zip(pool.imap(_write_file, jobs), jobs, strict=True):
                paths.append(path)
                bar.update(job[2])
    bar.close()
    return paths
