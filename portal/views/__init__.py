"""The portal's views, one module per part: ``account`` (sign-up, home), ``keys``,
``team``, ``buyer`` (the console), ``provider``. Each view parses with a form, checks
the member (portal.access), calls one service or selector, renders."""
