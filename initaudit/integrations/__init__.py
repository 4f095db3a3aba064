"""The gate where training starts: callbacks for the frameworks that start it.

- :mod:`initaudit.integrations.transformers`: ``InitAuditCallback`` for Hugging Face's
  ``Trainer`` (``pip install 'initaudit[transformers]'``);
- :mod:`initaudit.integrations.lightning`: ``InitAuditCallback`` for Lightning's ``Trainer``
  (``pip install 'initaudit[lightning]'``).

Each imports its framework; importing :mod:`initaudit` imports neither. What they share
(the first batch read without disturbing the run, the audit, the verdict every process
agrees on, the report written once) is in :mod:`initaudit.integrations.start`.
"""
