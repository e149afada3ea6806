"""Self-supervised pretraining loop, checkpoints and saved backbones (see :mod:`physfm.pretrain.train`)."""
