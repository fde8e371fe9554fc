"""sslprune: iterative magnitude pruning of CNNs trained with or without labels (Caron et al. 2020).

The library takes plain typed configs (`sslprune.config`); Hydra lives in `launch/`.
"""
