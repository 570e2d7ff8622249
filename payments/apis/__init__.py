"""HTTP endpoints of payments: top-ups and saved methods (buyers), refunds and the
reconciliation (operator finance), invoice collection attempts (buyers read their
own; operator finance may retry now), Connect onboarding and payouts (providers),
and Stripe's webhook. One view per operation; tenancy is decided in selectors.

Amounts go out as ``*_micros`` integers and decimal text, and come in as decimal
text (``"25.00"``), as everywhere in the API.

One module per resource: ``top_ups`` (with refunds, saved methods and auto-recharge),
``invoice_payments``, ``payouts`` (with Connect onboarding), ``reconciliation`` and
``stripe_webhook``; what they share is in ``common``.
"""
