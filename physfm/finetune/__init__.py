"""Fine-tuning under label-count ablations: nested label subsets, downstream tasks, the one training loop."""
