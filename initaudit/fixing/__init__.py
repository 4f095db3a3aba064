"""Stage 8, fixing: repair in place what an audit found (safe fixes, LSUV, unsafe untying).
It returns what it changed; :func:`initaudit.api.audit` runs the audit again.
"""
