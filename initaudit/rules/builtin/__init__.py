"""The built-in rules: every module in this package is imported by
:func:`initaudit.rules.registry.load_rules`.
"""
