"""Together's platform surface beyond fine-tuning: projects and discovery (``/v3/whoami``,
``/v2/projects/{id}/models``, ``/v2/supported-models``), GPU clusters on marketplace
orders and leases (``/v1/compute/...``) and the usage report (``/v1/billing/usage``).

A Tandem organization is a Together project: its public id is ``proj_<org id>``."""
