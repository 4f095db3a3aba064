"""Stage 5, rules: the registry (:mod:`.registry`), the engine that runs rules on a
recording (:mod:`.engine`), and the built-in rules (:mod:`.builtin`, one module per family,
every module there loaded). A rule is a function of recorded facts; it never runs the model.
"""
