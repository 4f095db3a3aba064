"""Stage 3, recording: the only code that runs the model. One forward with hooks and one
backward on the target device, every statistic queued on the device and brought to the
host at once, the model left exactly as it was found. Produces a
:class:`~initaudit.core.records.Recording`.
"""
