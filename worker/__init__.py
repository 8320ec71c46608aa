"""The commitd daemon: intake, ledger, audit, AWS sessions, execution, Celery app and CLI."""
