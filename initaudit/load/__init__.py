"""Stage 1, loading: the target's model (a factory in a file or module), a checkpoint,
the example input (given or inferred from the first layer), and the model's fx trace.
"""
