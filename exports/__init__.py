"""Finance exports and reports for the operator's finance staff.

- ``builders``: the pandas frames (invoice register, revenue, provider earnings and
  payouts, receivables aging, trial balance and deferred revenue at a date, usage
  detail of one buyer and month), each in a module named for it (``revenue``,
  ``receivables``, ``balances``, ``provider_earnings``, ``usage_detail``; ``frames``
  and ``journal`` what they share);
- ``services``: recording an export and writing it as CSV, Parquet or XLSX in chunks;
- ``tasks``: the dramatiq actor that runs an export in the background;
- ``reconciliation``: the reconciliation of ledger, invoices, payments and payouts;
- ``monthly_report``: the revenue chart and the monthly finance report;
- ``apis`` / ``urls``: ``/api/v1/finance/…``, operator finance staff only.
"""
