"""Supervised and zero-label baselines of the label-efficiency study (issue 18).

* :mod:`physfm.baselines.observables`: jet observables from the constituents (FastJet + contrib);
* :mod:`physfm.baselines.bdt`: a gradient-boosted tree (scikit-learn) on those observables;
* :mod:`physfm.baselines.pfn`: a Particle Flow Network (Deep Sets) trained from scratch;
* :mod:`physfm.baselines.cut`: the zero-label soft-drop-mass-window tagger;
* :mod:`physfm.baselines.run`: one baseline cell (method, labels, seed) -> test metrics;
* :mod:`physfm.baselines.linefit`: LineFit for the IceCube direction, and its refinement within a budget.
"""
