"""sslprune: iterative magnitude pruning of CNNs trained with or without labels (Caron et al. 2020).

Three layers, one way:
- `sslprune.core`: what both planes share, torch-free: the config schema, its validation and sweeps,
  identity and digests, every exception class, the store's files, stage records (where a stage
  lives, what it needs, whether it is done) and the progress protocol.
- `sslprune.control`: plans, submits, reports status, writes tables and plots, mirrors to W&B.
  Imports no torch, torchvision, torchcodec, scikit-learn or scipy: it runs on a login node.
- `sslprune.compute`: models, tasks, masks, loaders, the training loop, evaluation: what a job
  imports. Its entry point `sslprune.compute.runner.run` is the one place a stage is computed.
- Control and compute import core, never each other (tests/test_planes.py). The app layer
  (`sslprune.api` and the apps) joins them: it hands the compute plane's entry point to the control
  plane's runners (`sslprune.api.compute`) and the W&B mirror to the compute plane.
- `sslprune.launch` (the repository's launch/): the Hydra apps; `sslprune.conf` (conf/): their configs.
"""
