"""sslprune: iterative magnitude pruning of CNNs trained with or without labels (Caron et al. 2020).

Two planes, one-way imports:
- `sslprune.control`: config schema and validation, identity and store paths, the stage graph,
  submission, status, report tables and plots, W&B sync. Imports no torch, torchvision, torchcodec,
  scikit-learn or scipy: it runs on a login node.
- `sslprune.compute`: models, tasks, masks, loaders, the training loop, evaluation: what a job
  imports. It may use control-plane types, never the reverse (a stage hands itself to the compute
  plane only when it runs: `Stage.run`).
- `sslprune.launch` (the repository's launch/): the Hydra apps; `sslprune.conf` (conf/): their configs.
"""
