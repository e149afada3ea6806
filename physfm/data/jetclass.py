"""The JetClass ROOT schema (Qu, Li, Qian 2022, arXiv:2202.03772): the one place that names its branches.

Both the Pythia 8 generator (which writes it) and the converter (which reads it) use these
constants, so a real JetClass file and a generated one take exactly the same path.
"""

from __future__ import annotations

TREE_NAME = "tree"

#: Per-particle (jagged) branches, in the order they are stored in shards, with units.
PARTICLE_BRANCHES: dict[str, str] = {
    "part_px": "GeV",
    "part_py": "GeV",
    "part_pz": "GeV",
    "part_energy": "GeV",
    "part_deta": "1 (eta_particle - eta_jet)",
    "part_dphi": "rad (phi_particle - phi_jet, wrapped to [-pi, pi))",
    "part_d0val": "mm (zero in generated files: no detector)",
    "part_d0err": "mm (zero in generated files)",
    "part_dzval": "mm (zero in generated files)",
    "part_dzerr": "mm (zero in generated files)",
    "part_charge": "e",
    "part_isChargedHadron": "bool as float",
    "part_isNeutralHadron": "bool as float",
    "part_isPhoton": "bool as float",
    "part_isElectron": "bool as float",
    "part_isMuon": "bool as float",
}

#: Per-jet branches with units.
JET_BRANCHES: dict[str, str] = {
    "jet_pt": "GeV",
    "jet_eta": "1",
    "jet_phi": "rad",
    "jet_energy": "GeV",
    "jet_nparticles": "count",
    "jet_sdmass": "GeV (soft drop, beta=0, z_cut=0.1)",
}

#: All JetClass label branches in the order of the published dataset.
ALL_LABELS: tuple[str, ...] = (
    "label_QCD",
    "label_Hbb",
    "label_Hcc",
    "label_Hgg",
    "label_H4q",
    "label_Hqql",
    "label_Zqq",
    "label_Wqq",
    "label_Tbqq",
    "label_Tbl",
)

#: Processes physfm's generator can make, mapped to their JetClass label branch.
PROCESS_LABELS: dict[str, str] = {
    "qcd": "label_QCD",
    "tbqq": "label_Tbqq",
    "wqq": "label_Wqq",
    "zqq": "label_Zqq",
    "dijet": "label_QCD",  # QCD dijet events, two jets each (physfm.data.generate_jets.DIJET_BRANCHES)
    "resonance": "label_Resonance",  # A -> B C dijet signal (not a JetClass class)
}

#: Per-particle inputs that real data sets often lack (the public top-tagging and quark/gluon sets
#: carry four-momenta only), by group. A file may omit these branches: the converter stores zeros and
#: the dataset's manifest names the groups that are absent or all zero (``missing_inputs``).
OPTIONAL_GROUPS: dict[str, tuple[str, ...]] = {
    "charge": ("part_charge",),
    "pid": ("part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon"),
    "impact_parameters": ("part_d0val", "part_d0err", "part_dzval", "part_dzerr"),
}
OPTIONAL_BRANCHES: tuple[str, ...] = tuple(b for group in OPTIONAL_GROUPS.values() for b in group)

#: Branches that must exist for a file to be read as JetClass (the optional inputs may be absent).
REQUIRED_BRANCHES: tuple[str, ...] = tuple(b for b in PARTICLE_BRANCHES if b not in OPTIONAL_BRANCHES) + tuple(
    JET_BRANCHES
)
