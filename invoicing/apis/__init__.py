"""HTTP endpoints of billing under /api/v1/: accounts and balances, the journal, the
trial balance and finance's manual corrections; the price book, invoices and credit
notes, billing profiles, and providers' monthly statements.

One view per operation: parse input, check permission, call one selector or service,
serialize output. Tenancy is decided in invoicing.selectors from ``request.caller``.
Amounts go out twice: exact integer micro-units (``*_micros``) and the same as
decimal text (``"25.00"``). They come in as decimal text only (``"12.34"``), never as
JSON numbers, which many clients turn into binary floats.

One module per resource: ``invoices``, ``invoice_documents`` (HTML and PDF), ``lifecycle``
(finalize, void, uncollectible, paid, a job's invoice), ``credit_notes``,
``profiles`` and ``statements``; what they share is in ``common``.
"""
