"""Fine-tuning under label-count ablations: nested label subsets, classifier heads, the training loop."""
