"""Stage 4, analysis: structure and meaning read from a recording, never from the model:
layer runs and their consumers, the init fingerprint, recommended scales and gains, the
depth profile, the re-init call for a tensor.
"""
