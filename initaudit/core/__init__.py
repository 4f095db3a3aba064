"""Shared foundations every stage may use: errors, the typed recording (plain data, no
torch), option levels, number formatting, files, progress, and the one module of model
knowledge (:mod:`.knowledge`: module families, gate layouts, fans of transposed convs).
"""
