"""A fast, simplified IceCube-86 event simulator writing the Kaggle layout.

Events are through-going muon tracks and neutrino-induced cascades with isotropic directions,
seen by the real IceCube-86 in-ice DOMs (positions and relative efficiencies from graphnet's
geometry table) in depth-dependent South Pole ice (absorption and scattering lengths from
graphnet's ice table). Per event and DOM:

1. **geometry** - for a track, the direct Cherenkov photon (41 deg in ice) leaves the track at the
   point whose cone reaches the DOM: arrival time ``t_geo = t0 + (l - rho/tan(th))/c + rho/sin(th) * n_g/c``
   (``l`` along the track, ``rho`` perpendicular distance, group index ``n_g``); for a cascade
   ``t_geo = t0 + d * n_g/c``;
2. **light yield** - expected photoelectrons ``mu = Y_track * (dE/dx)/a * rde * acc * exp(-d/lambda_p) / rho``
   for tracks (``dE/dx = a + b E``) and ``mu = Y_casc * E * rde * acc * f(eta) * exp(-d/lambda_p) / d^2``
   for cascades (``f`` peaked at the Cherenkov angle), ``d`` the photon path, ``lambda_p =
   sqrt(lambda_abs * lambda_scat / 3)`` at the DOM's depth, ``acc`` a mild preference for light
   arriving from below (the PMT looks down);
3. **charges** - the number of photoelectrons is Poisson(``mu``); each has a Gaussian amplitude
   (1 +- 0.3 pe);
4. **times** - each photoelectron is delayed from ``t_geo`` by a draw from the Pandel
   distribution (a Gamma law with shape ``d/lambda`` and rate ``1/tau + c_ice/lambda_abs``, with
   ``lambda`` scaled from the local scattering length) plus Gaussian PMT jitter;
5. **pulses** - photoelectrons of one DOM closer than ``merge_ns`` in time form one pulse (time of
   the first, summed charge rounded to 0.025 pe as in the Kaggle data); dark-noise pulses
   (``noise_rate_hz`` per DOM) are added uniformly over the readout window;
6. **auxiliary** - a pulse is non-auxiliary (HLC-like) when another DOM within +-2 on the same string
   has a pulse within +-1 us; otherwise auxiliary (SLC-like, the flag Kaggle provides);
7. **trigger** - an event is kept when at least ``min_hlc_doms`` DOMs have non-auxiliary pulses
   (like IceCube's SMT8); others are discarded and replaced.

All of it is vectorised with numpy over blocks of events x 5083 DOMs. See ``docs/icecube.md`` for
the model's parameters, what it leaves out, and how fast it runs.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physfm.data import icecube

C_VACUUM = 0.299792458  # m/ns


@dataclass
class IceCubeGenConfig:
    """Settings of ``physfm generate icecube`` (config section ``data.generate``; jet keys aside)."""

    n_events: int = 20000  # triggered events
    seed: int = 1
    events_per_batch: int = 5000  # events per train/batch_<k>.parquet
    track_fraction: float = 0.5  # muon tracks; the rest are cascades
    noise_rate_hz: float = 500.0  # dark-noise rate per DOM


@dataclass(frozen=True)
class SimConfig:
    """Parameters of the simulation (defaults give Kaggle-like events; see docs/icecube.md)."""

    track_fraction: float = 0.5  # through-going muons; the rest are contained cascades
    track_energy: tuple[float, float] = (1e2, 1e5)  # GeV, muon energy in the detector
    cascade_energy: tuple[float, float] = (1e3, 1e5)  # GeV, deposited
    spectral_index: float = 2.0  # dN/dE ~ E^-index
    impact_radius: float = 700.0  # m, tracks cross a disk of this radius around the centre
    cascade_radius: float = 500.0  # m, cascade vertices uniform in this cylinder...
    cascade_half_height: float = 500.0  # m ...of this half-height
    cherenkov_deg: float = 41.0  # Cherenkov angle in ice
    n_group: float = 1.35  # group refractive index (photon speed c/n_g)
    track_yield: float = 40.0  # pe*m at 1 m from a minimum-ionising muon, before attenuation
    cascade_yield: float = 40.0  # pe*m^2 per GeV, before attenuation
    muon_a: float = 0.24  # GeV/m, continuous energy loss
    muon_b: float = 3.3e-4  # 1/m, radiative energy loss
    pandel_tau: float = 557.0  # ns
    pandel_scale: float = 1.4  # Pandel lambda = scale * local effective scattering length
    jitter_ns: float = 2.0  # PMT transit-time spread (Gaussian sigma)
    max_samples: int = 16  # photoelectron times drawn per DOM at most (weights carry the rest)
    merge_ns: float = 10.0  # photoelectrons closer than this form one pulse
    noise_rate_hz: float = 500.0  # dark-noise rate per DOM (scaled by rde)
    window_ns: tuple[float, float] = (6000.0, 17000.0)  # readout window
    first_light_ns: float = 10000.0  # physics light starts here (+ up to 100 ns)
    hlc_span: int = 2  # neighbours on the string that count for a local coincidence
    hlc_ns: float = 1000.0  # local-coincidence time window
    min_hlc_doms: int = 8  # trigger condition
    block: int = 256  # candidate events simulated together (memory ~ block * 5083 * 200 B)


@dataclass
class SimEvents:
    """Simulated events: pulses in time order per event, truth, and per-pulse noise truth."""

    offsets: np.ndarray  # (n+1,) int64
    sensor_id: np.ndarray  # (rows,) int16
    time: np.ndarray  # (rows,) int64, ns
    charge: np.ndarray  # (rows,) float64, pe
    auxiliary: np.ndarray  # (rows,) bool
    noise: np.ndarray  # (rows,) bool: the pulse's first photoelectron is dark noise
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # azimuth, zenith, energy, is_track, pos_*, t0

    def __len__(self) -> int:
        return len(self.offsets) - 1


# --------------------------------------------------------------------------- detector model
@dataclass
class Detector:
    sensor_id: np.ndarray
    string: np.ndarray
    dom: np.ndarray
    pos: np.ndarray  # (m, 3)
    rde: np.ndarray
    lambda_abs: np.ndarray  # at each DOM's depth
    lambda_scat: np.ndarray

    @staticmethod
    def load() -> Detector:
        g = icecube.load_ic86_geometry()
        ice = icecube.load_ice_properties()
        depth = icecube.Z_ORIGIN_DEPTH - g["z"]
        return Detector(
            sensor_id=g["sensor_id"],
            string=g["string"],
            dom=g["dom_number"],
            pos=np.column_stack([g["x"], g["y"], g["z"]]),
            rde=g["rde"],
            lambda_abs=np.interp(depth, ice["depth"], ice["absorption_len"]),
            lambda_scat=np.interp(depth, ice["depth"], ice["scattering_len"]),
        )

    @property
    def lambda_prop(self) -> np.ndarray:
        """Diffusive attenuation (propagation) length sqrt(lambda_abs * lambda_scat / 3)."""
        return np.sqrt(self.lambda_abs * self.lambda_scat / 3.0)


def _power_law(rng: np.random.Generator, n: int, lo: float, hi: float, index: float) -> np.ndarray:
    u = rng.random(n)
    if abs(index - 1.0) < 1e-9:
        return lo * (hi / lo) ** u
    g = 1.0 - index
    return (lo**g + u * (hi**g - lo**g)) ** (1.0 / g)


def _perp_basis(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to each row of ``v`` and to each other."""
    helper = np.where(np.abs(v[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(v, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1, np.cross(v, e1)


def _reach(amplitude: np.ndarray, lam: float, power: int, eps: float = 3e-3) -> np.ndarray:
    """Distance ``r`` where ``amplitude * exp(-r / lam) / r**power`` falls to ``eps`` (bisection)."""
    lo, hi = np.full(len(amplitude), 1.0), np.full(len(amplitude), 1e4)
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        above = amplitude * np.exp(-mid / lam) / mid**power > eps
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return hi


def _cascade_profile_norm(cos_c: float, width: float = 0.2, floor: float = 0.2) -> float:
    c = np.linspace(-1, 1, 4001)
    return float(np.mean(floor + np.exp(-0.5 * ((c - cos_c) / width) ** 2)))


# --------------------------------------------------------------------------- one block of candidates
def _simulate_block(rng: np.random.Generator, n: int, det: Detector, cfg: SimConfig) -> SimEvents:
    """Simulate ``n`` candidate events (before the trigger)."""
    m = len(det.sensor_id)
    th = np.deg2rad(cfg.cherenkov_deg)
    c_ice = C_VACUUM / cfg.n_group
    is_track = rng.random(n) < cfg.track_fraction
    cosz = rng.uniform(-1, 1, n)
    zenith, azimuth = np.arccos(cosz), rng.uniform(0, 2 * np.pi, n)
    v = -icecube.direction(azimuth, zenith)  # travel direction
    energy = np.where(
        is_track,
        _power_law(rng, n, *cfg.track_energy, cfg.spectral_index),
        _power_law(rng, n, *cfg.cascade_energy, cfg.spectral_index),
    )
    # reference point: track's closest approach to the centre / cascade vertex; t = 0 there
    e1, e2 = _perp_basis(v)
    r, phi = cfg.impact_radius * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    track_pt = r[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    rc, phic = cfg.cascade_radius * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    casc_pt = np.column_stack(
        [rc * np.cos(phic), rc * np.sin(phic), rng.uniform(-cfg.cascade_half_height, cfg.cascade_half_height, n)]
    )
    ref = np.where(is_track[:, None], track_pt, casc_pt)

    # ---- candidate (event, DOM) pairs: within reach of detectable light (the matrices are n x m)
    dedx = cfg.muon_a + cfg.muon_b * energy
    cos_c = np.cos(th)
    profile_norm = _cascade_profile_norm(cos_c)
    best = det.rde.max() * 1.4  # best efficiency x acceptance
    lam_best = det.lambda_prop.max()
    reach = np.where(
        is_track,
        _reach(cfg.track_yield * dedx / cfg.muon_a * best, lam_best * np.sin(th), 1),
        _reach(cfg.cascade_yield * energy * best * 1.2 / profile_norm, lam_best, 2),
    )
    P = det.pos
    lon = v @ P.T - (ref * v).sum(axis=1)[:, None]  # (n, m)
    dist2 = (ref * ref).sum(axis=1)[:, None] - 2.0 * (ref @ P.T) + (P * P).sum(axis=1)
    near2 = np.where(is_track[:, None], np.maximum(dist2 - lon**2, 0.0), dist2) < (reach**2)[:, None]
    ev, dm = np.nonzero(near2)  # event-major order
    lon, dist2 = lon[ev, dm], np.maximum(dist2[ev, dm], 0.0)

    # ---- geometry and expected light per pair
    D = P[dm] - ref[ev]
    trk = is_track[ev]
    rho = np.maximum(np.sqrt(np.maximum(dist2 - lon**2, 0.0)), 1.0)
    dist = np.maximum(np.sqrt(dist2), 1.0)
    # track: the photon leaves the track at lon - rho/tan(th) and travels rho/sin(th)
    emit = lon - rho / np.tan(th)
    path = np.where(trk, rho / np.sin(th), dist)
    t_geo = np.where(trk, emit / C_VACUUM + path / c_ice, dist / c_ice)
    uz = np.where(trk, D[:, 2] - emit * v[ev, 2], D[:, 2]) / path
    atten = np.exp(-path / det.lambda_prop[dm]) * det.rde[dm] * (1.0 + 0.4 * uz)  # PMT looks down
    cos_eta = lon / dist
    profile = (0.2 + np.exp(-0.5 * ((cos_eta - cos_c) / 0.2) ** 2)) / profile_norm
    mu = np.where(
        trk,
        cfg.track_yield * (dedx / cfg.muon_a)[ev] * atten / rho,
        cfg.cascade_yield * energy[ev] * profile * atten / dist**2,
    )
    k = rng.poisson(mu)
    hit = k > 0
    ev, dm, k, path, t_geo = ev[hit], dm[hit], k[hit], path[hit], t_geo[hit]

    # ---- photoelectron times (Pandel + jitter), at most max_samples per DOM, weighted
    ns = np.minimum(k, cfg.max_samples)
    rep = np.repeat(np.arange(len(ev)), ns)
    weight = np.repeat(k / ns, ns)
    lam = cfg.pandel_scale * det.lambda_scat[dm]
    shape = np.maximum(path / lam, 1e-3)
    rate = 1.0 / cfg.pandel_tau + c_ice / det.lambda_abs[dm]
    delay = rng.gamma(shape[rep], 1.0 / rate[rep])
    t_pe = t_geo[rep] + delay + rng.normal(0.0, cfg.jitter_ns, len(rep))
    q_pe = weight * np.maximum(rng.normal(1.0, 0.3, len(rep)), 0.05)
    pe_ev, pe_dom = ev[rep], dm[rep]

    # ---- shift each event so that its light starts at first_light_ns; add dark noise
    first = np.full(n, np.inf)
    np.minimum.at(first, pe_ev, t_pe)
    has_light = np.isfinite(first)
    shift = np.where(has_light, cfg.first_light_ns + rng.uniform(0, 100, n) - np.where(has_light, first, 0.0), 0.0)
    t_pe = t_pe + shift[pe_ev]
    w0, w1 = cfg.window_ns
    noise_mu = cfg.noise_rate_hz * 1e-9 * (w1 - w0) * det.rde.sum()
    n_noise = rng.poisson(noise_mu, n)
    nz_ev = np.repeat(np.arange(n), n_noise)
    p_dom = det.rde / det.rde.sum()
    nz_dom = rng.choice(m, size=len(nz_ev), p=p_dom)
    nz_t = rng.uniform(w0, w1, len(nz_ev))
    nz_q = np.maximum(rng.normal(1.0, 0.3, len(nz_ev)), 0.05)

    all_ev = np.concatenate([pe_ev, nz_ev])
    all_dom = np.concatenate([pe_dom, nz_dom])
    all_t = np.concatenate([t_pe, nz_t])
    all_q = np.concatenate([q_pe, nz_q])
    all_noise = np.concatenate([np.zeros(len(pe_ev), bool), np.ones(len(nz_ev), bool)])
    inside = (all_t >= w0) & (all_t < w1)
    all_ev, all_dom, all_t, all_q, all_noise = (a[inside] for a in (all_ev, all_dom, all_t, all_q, all_noise))

    # ---- photoelectrons -> pulses: per (event, DOM), split where the time gap exceeds merge_ns
    o = np.lexsort((all_t, all_dom, all_ev))
    all_ev, all_dom, all_t, all_q, all_noise = (a[o] for a in (all_ev, all_dom, all_t, all_q, all_noise))
    new = np.ones(len(all_t), dtype=bool)
    new[1:] = (all_ev[1:] != all_ev[:-1]) | (all_dom[1:] != all_dom[:-1]) | (np.diff(all_t) > cfg.merge_ns)
    starts = np.flatnonzero(new)
    p_ev, p_dom, p_t, p_noise = all_ev[starts], all_dom[starts], all_t[starts], all_noise[starts]
    p_q = np.add.reduceat(all_q, starts) if len(starts) else np.zeros(0)
    p_q = np.maximum(np.round(p_q / 0.025) * 0.025, 0.025)
    p_t = np.floor(p_t).astype(np.int64)

    aux = ~_local_coincidence(p_ev, det.sensor_id[p_dom], p_t, cfg.hlc_span, cfg.hlc_ns)
    # ---- trigger: at least min_hlc_doms DOMs with a non-auxiliary pulse
    key = p_ev.astype(np.int64) * m + p_dom
    hlc_doms = np.bincount(p_ev[~aux][np.unique(key[~aux], return_index=True)[1]], minlength=n)
    keep_ev = hlc_doms >= cfg.min_hlc_doms
    keep = keep_ev[p_ev]
    p_ev, p_dom, p_t, p_q, p_noise, aux = (a[keep] for a in (p_ev, p_dom, p_t, p_q, p_noise, aux))
    o = np.lexsort((p_dom, p_t, p_ev))  # time order within each event, as in Kaggle files
    p_ev, p_dom, p_t, p_q, p_noise, aux = (a[o] for a in (p_ev, p_dom, p_t, p_q, p_noise, aux))
    kept = np.flatnonzero(keep_ev)
    counts = np.bincount(p_ev, minlength=n)[kept]
    t0 = shift[kept]
    return SimEvents(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        sensor_id=det.sensor_id[p_dom].astype(np.int16),
        time=p_t,
        charge=p_q,
        auxiliary=aux,
        noise=p_noise,
        truth={
            "azimuth": azimuth[kept],
            "zenith": zenith[kept],
            "energy": energy[kept],
            "is_track": is_track[kept].astype(np.int64),
            "pos_x": ref[kept, 0],
            "pos_y": ref[kept, 1],
            "pos_z": ref[kept, 2],
            "t0": t0,
        },
    )


def _local_coincidence(ev: np.ndarray, sid: np.ndarray, t: np.ndarray, span: int, dt: float) -> np.ndarray:
    """True for pulses with a pulse on a neighbouring DOM (same string, within ``span``) within ``dt``."""
    if len(ev) == 0:
        return np.zeros(0, dtype=bool)
    tbits = 1 << 26  # times are < 67 ms
    comp = (ev.astype(np.int64) * icecube.N_SENSORS + sid) * tbits + t
    order = np.argsort(comp, kind="stable")
    sc = comp[order]
    dom = sid.astype(np.int64) % icecube.DOMS_PER_STRING
    hit = np.zeros(len(ev), dtype=bool)
    base = (ev.astype(np.int64) * icecube.N_SENSORS + sid) * tbits
    lo_t, hi_t = np.floor(t - dt).astype(np.int64), np.floor(t + dt).astype(np.int64)
    for d in [s for s in range(-span, span + 1) if s]:
        ok = (dom + d >= 0) & (dom + d < icecube.DOMS_PER_STRING)
        shift = d * tbits
        lo = np.searchsorted(sc, base + shift + np.maximum(lo_t, 0), side="left")
        hi = np.searchsorted(sc, base + shift + np.minimum(hi_t, tbits - 1), side="right")
        hit |= ok & (hi > lo)
    return hit


def _concat(parts: list[SimEvents]) -> SimEvents:
    counts = np.concatenate([np.diff(p.offsets) for p in parts])
    return SimEvents(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        sensor_id=np.concatenate([p.sensor_id for p in parts]),
        time=np.concatenate([p.time for p in parts]),
        charge=np.concatenate([p.charge for p in parts]),
        auxiliary=np.concatenate([p.auxiliary for p in parts]),
        noise=np.concatenate([p.noise for p in parts]),
        truth={k: np.concatenate([p.truth[k] for p in parts]) for k in parts[0].truth},
    )


def _head(ev: SimEvents, n: int) -> SimEvents:
    rows = int(ev.offsets[n])
    return SimEvents(
        ev.offsets[: n + 1],
        ev.sensor_id[:rows],
        ev.time[:rows],
        ev.charge[:rows],
        ev.auxiliary[:rows],
        ev.noise[:rows],
        {k: v[:n] for k, v in ev.truth.items()},
    )


def simulate(
    n_events: int, seed: int | Sequence[int], config: SimConfig | None = None, detector: Detector | None = None
) -> SimEvents:
    """``n_events`` triggered events, deterministic for ``seed`` (and ``config``)."""
    cfg = config or SimConfig()
    det = detector or Detector.load()
    rng = np.random.default_rng(seed)
    parts, have = [], 0
    while have < n_events:
        part = _simulate_block(rng, cfg.block, det, cfg)
        parts.append(part)
        have += len(part)
    return _head(_concat(parts), n_events)


# --------------------------------------------------------------------------- Kaggle layout
def _write_batch(args: tuple[Path, int, int, int, int, dict[str, Any]]) -> tuple[int, dict[str, np.ndarray]]:
    import pandas as pd

    out_dir, batch_id, n, first_event_id, seed, cfg_dict = args
    cfg = SimConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    ev = simulate(n, seed=[seed, batch_id], config=cfg)
    event_id = np.arange(first_event_id, first_event_id + n, dtype=np.int64)
    counts = np.diff(ev.offsets)
    pulses = pd.DataFrame(
        {"sensor_id": ev.sensor_id, "time": ev.time, "charge": ev.charge, "auxiliary": ev.auxiliary},
        index=pd.Index(np.repeat(event_id, counts), name="event_id"),
    )
    from physfm.io import atomic_path

    with atomic_path(Path(out_dir) / "train" / f"batch_{batch_id}.parquet") as tmp:
        pulses.to_parquet(tmp, engine="pyarrow", row_group_size=1 << 20)
    meta = {
        "batch_id": np.full(n, batch_id, dtype=np.int64),
        "event_id": event_id,
        "first_pulse_index": ev.offsets[:-1].astype(np.int64),
        "last_pulse_index": (ev.offsets[1:] - 1).astype(np.int64),
        **ev.truth,
    }
    return batch_id, meta


def generate_icecube(
    out_dir: str | Path,
    n_events: int,
    seed: int,
    *,
    events_per_batch: int = 10_000,
    workers: int | None = None,
    config: SimConfig | None = None,
    progress: bool = True,
) -> list[Path]:
    """Simulate ``n_events`` and write them in the Kaggle layout under ``out_dir``; return the files.

    Writes ``train/batch_<k>.parquet`` (k = 1, 2, ...; ``events_per_batch`` events each),
    ``train_meta.parquet`` (the Kaggle columns plus truth: energy, is_track, pos_x/y/z, t0) and
    ``sensor_geometry.csv`` (the 5083 IceCube-86 in-ice DOMs of the geometry table). Each batch has
    its own random stream from (seed, batch), so the output does not depend on ``workers``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from physfm.io import atomic_path

    if n_events < 1 or events_per_batch < 1:
        raise ValueError(f"n_events and events_per_batch must be >= 1, got {n_events}, {events_per_batch}")
    cfg = config or SimConfig()
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    n_batches = -(-n_events // events_per_batch)
    jobs = [
        (
            out,
            b + 1,
            min(events_per_batch, n_events - b * events_per_batch),
            b * events_per_batch + 1,
            seed,
            asdict(cfg),
        )
        for b in range(n_batches)
    ]
    workers = max(1, min(workers or mp.cpu_count(), n_batches))
    metas: dict[int, dict[str, np.ndarray]] = {}
    bar = tqdm(total=n_events, unit="ev", desc="generate icecube", disable=not progress)
    if workers == 1:
        results = map(_write_batch, jobs)
        for b, meta in results:
            metas[b] = meta
            bar.update(len(meta["event_id"]))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for b, meta in pool.imap_unordered(_write_batch, jobs):
                metas[b] = meta
                bar.update(len(meta["event_id"]))
    bar.close()
    meta_df = pd.concat([pd.DataFrame(metas[b]) for b in sorted(metas)], ignore_index=True)
    with atomic_path(out / "train_meta.parquet") as tmp:
        meta_df.to_parquet(tmp, engine="pyarrow", index=False, row_group_size=events_per_batch)
    g = icecube.load_ic86_geometry()
    with atomic_path(out / "sensor_geometry.csv") as tmp:
        pd.DataFrame({"sensor_id": g["sensor_id"], "x": g["x"], "y": g["y"], "z": g["z"]}).to_csv(tmp, index=False)
    files = [out / "train" / f"batch_{b}.parquet" for b in sorted(metas)]
    return [*files, out / "train_meta.parquet", out / "sensor_geometry.csv"]
