"""An example sslprune plugin (docs/extending.md): a network (`patchpos.nets.tiny_cnn`) and a pretext
task (`patchpos.tasks.PatchPosition`), named in a config by their import paths, and an experiment
that prunes with them (`patchpos/conf/experiment/patch_position.yaml`).

Nothing here is imported when sslprune plans, submits or reports: only when a stage builds them.
"""
